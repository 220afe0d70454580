"""Prometheus metrics of one daemon (README "HTTP API"), in a registry of its own: no process-global collectors."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

__all__ = ["Metrics"]


class Metrics:
    """The daemon's counters and gauges; `render()` is the /metrics body."""

    def __init__(self, queue_depth: Callable[[], float] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.webhooks = Counter(
            "kbsync_webhooks_total",
            "Webhook requests by outcome (queued, duplicate, ignored, rejected, unavailable).",
            ["tenant", "outcome"],
            registry=self.registry,
        )
        self.queue_items = Counter(
            "kbsync_queue_items_total",
            "Queue items by outcome (applied, retried, dead).",
            ["outcome"],
            registry=self.registry,
        )
        self.queue_depth = Gauge("kbsync_queue_depth", "Pending webhook queue items.", registry=self.registry)
        if queue_depth is not None:
            self.queue_depth.set_function(queue_depth)
        self.runs = Counter(
            "kbsync_runs_total",
            "Runs by kind (reconcile, poll, refresh) and outcome.",
            ["tenant", "project", "kind", "outcome"],
            registry=self.registry,
        )
        self.embeddings = Counter("kbsync_embeddings_total", "Chunk texts embedded.", registry=self.registry)
        self.chunks_written = Counter(
            "kbsync_chunks_written_total", "Chunk records written (new or metadata refreshed).", registry=self.registry
        )
        self.chunks_deleted = Counter("kbsync_chunks_deleted_total", "Chunks deleted.", registry=self.registry)
        self.last_success = Gauge(
            "kbsync_last_success_timestamp_seconds",
            "End of the last successful run of a project.",
            ["tenant", "project"],
            registry=self.registry,
        )

        self.unreachable = Gauge(
            "kbsync_unreachable_chunks",
            "Chunks that no query with their own vector returned at the project's last audit, and not repaired.",
            ["tenant", "project"],
            registry=self.registry,
        )

    def observe_run(self, report: object) -> None:
        """Count one finished run (a kbsync.engine.RunReport)."""
        r = report  # duck-typed to keep this module free of engine imports
        self.runs.labels(r.tenant, r.project, r.kind, r.outcome).inc()  # type: ignore[attr-defined]
        self.embeddings.inc(r.chunks_embedded)  # type: ignore[attr-defined]
        self.chunks_written.inc(r.chunks_written)  # type: ignore[attr-defined]
        self.chunks_deleted.inc(r.chunks_deleted)  # type: ignore[attr-defined]
        if r.kind == "audit" and not r.busy:  # type: ignore[attr-defined]
            left = r.chunks_unreachable - r.chunks_repaired  # type: ignore[attr-defined]
            self.unreachable.labels(r.tenant, r.project).set(left)  # type: ignore[attr-defined]
        if r.outcome == "ok":  # type: ignore[attr-defined]
            self.last_success.labels(r.tenant, r.project).set_to_current_time()  # type: ignore[attr-defined]

    def render(self) -> bytes:
        return generate_latest(self.registry)
