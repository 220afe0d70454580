"""`kbsync run`: the one process that owns the store, with the scheduler, the webhook workers and the HTTP server.

Signals belong to this module alone (uvicorn's own handlers are switched off): SIGTERM or SIGINT stops taking work,
interrupts runs between document groups (what was written stays valid; the next run converges), lets workers give
their item back, stops the server and closes the store. A second SIGINT exits at once. Accepted webhooks survive
any crash: they are committed to the state database before the 202.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import os
import random
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import TYPE_CHECKING, Any

import structlog
import uvicorn

from kbsync.engine import Engine
from kbsync.errors import KbsyncError, StoreLocked
from kbsync.http import ApiContext, create_app
from kbsync.leases import LeaseKeeper, Renewer
from kbsync.memory import limit_malloc_arenas
from kbsync.metrics import Metrics
from kbsync.queue import Queue, QueueItem
from kbsync.retention import schedule_pruning
from kbsync.runs import ProjectKey
from kbsync.settings import Settings
from kbsync.webhooks import POLLED_EVENTS, WebhookEvent
from kbsync.wiring import open_engine

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

    from kbsync.http import AuditBody, ResyncBody
    from kbsync.runs import RunReport
    from kbsync.sources._http import HttpOptions

__all__ = ["Daemon", "DaemonOptions"]

log = structlog.get_logger(__name__)

# What a successful refresh after one of these events covers: the earlier items of these events (a poll applied
# them too). After any other event (a deletion's second look, a portal reconcile), every earlier item.
_COVERED_BY_POLL = frozenset(event.value for event in POLLED_EVENTS)


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    workers: int = 2  # webhook workers: one slow project never blocks the others' webhooks
    # A queue claim lasts this long (None: state.lease_seconds) and is renewed while its item is worked, so a
    # replica killed with `kill -9` holds the item, and through per-project claims its project, no longer than that.
    claim_seconds: float | None = None
    idle_seconds: float = 1.0  # a worker with nothing to do sleeps this long unless a webhook wakes it
    max_backoff_seconds: float = 300.0
    startup_reconcile: bool = True
    # A stop that has not finished after this long (a run or a worker blocked in a slow source request, which
    # checks the stop only between document groups) exits anyway: what is in flight is abandoned as after a crash,
    # which loses nothing (accepted webhooks are durable, writes go before deletes). systemd's TimeoutStopSec is 30.
    stop_seconds: float = 7.0
    chatwoot_options: HttpOptions | None = None  # of the Chatwoot clients: tests shrink timeouts and retries


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the daemon owns SIGTERM and SIGINT."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Daemon:
    """Owns the engine for the life of the process; `run()` returns the exit code."""

    def __init__(self, settings: Settings, options: DaemonOptions | None = None) -> None:
        self.settings = settings
        self.options = options or DaemonOptions()
        self.stop = threading.Event()
        self._wake = threading.Event()
        self._ready = threading.Event()
        self._failed: str | None = None
        self._server: _Server | None = None
        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        self._exit_callbacks: list[Callable[[], None]] = []
        self._stop_timer: threading.Timer | None = None
        self._jobs: BackgroundScheduler | None = None  # the APScheduler scheduler, for deferred runs
        self._share_changed = threading.Condition()
        self._taken: Counter[ProjectKey] = Counter()  # projects whose scheduled runs this replica is doing

    def run(self) -> int:
        """Serve until a signal (0) or a dead worker (1); 3 when the HTTP server could not start."""
        limit_malloc_arenas()
        with open_engine(self.settings, chatwoot_options=self.options.chatwoot_options) as engine:
            if self.settings.chroma.mode == "embedded" and self.settings.state.url:
                # PostgreSQL state invites replicas, but an embedded store is one machine's private copy:
                # refuse a second daemon rather than let replicas write diverging stores.
                keeper = LeaseKeeper(engine.state, "embedded-store", engine.owner, self.settings.state.lease_seconds)
                if not keeper.acquire():
                    raise StoreLocked(
                        "another kbsync daemon shares this PostgreSQL state with an embedded Chroma store: "
                        'replicas need chroma.mode = "http" (a Chroma server they all use)'
                    )
                self._exit_callbacks.append(keeper.release)
            queue = Queue(engine.state)
            if engine.state.dialect == "sqlite":
                # SQLite state is held by this process alone: queue claims and project leases found now were left
                # by a process that died (kill -9). Without this the start-up reconcile is skipped as "busy" and
                # the project's webhooks wait out the dead claim. (PostgreSQL: other replicas' are live; they
                # expire on their own.)
                claims, leases = queue.release_claims(), engine.state.release_all_leases()
                if claims or leases:
                    log.info("state.dead_owner_released", queue_claims=claims, leases=leases)
            if self.settings.state.url:
                # Replicas count each other through these leases to take a fair share of the scheduled runs.
                replica = LeaseKeeper(
                    engine.state, f"replica:{engine.owner}", engine.owner, self.settings.state.lease_seconds
                )
                replica.acquire()
                self._exit_callbacks.append(replica.release)
            metrics = Metrics(queue_depth=lambda: _queue_depth(queue))
            engine.observe(metrics.observe_run)
            # Webhook intake and /readyz get threads of their own: queries or a burst of requests filling the
            # default pool must not hold a webhook past Chatwoot's 5 s (issue 17).
            intake = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="kbsync-intake")
            self._exit_callbacks.append(lambda: intake.shutdown(wait=False, cancel_futures=True))
            context = ApiContext(
                self.settings,
                engine,
                queue,
                metrics,
                self._ready.is_set,
                self._wake.set,
                submit_resync=lambda keys, options: self._submit_resync(engine, keys, options),
                intake=intake,
                submit_audit=lambda keys, options: self._submit_audit(engine, keys, options),
            )
            app = create_app(context)
            server = self.settings.server
            config = uvicorn.Config(
                app,
                host=server.host,
                port=server.port,
                log_config=None,
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=5,
                limit_concurrency=server.limit_concurrency,
                timeout_keep_alive=server.keep_alive_seconds,
            )
            self._server = _Server(config)
            self._install_signals(engine)
            scheduler = self._scheduler(engine)
            schedule_pruning(scheduler, engine.state, queue, self.settings.retention, engine.owner)
            workers = [
                threading.Thread(target=self._work, args=(engine, queue, metrics, n), name=f"kbsync-worker-{n}")
                for n in range(self.options.workers)
            ]
            for worker in workers:
                worker.start()
            scheduler.start()
            self._ready.set()
            log.info("daemon.started", host=config.host, port=config.port, projects=len(engine.projects()))
            try:
                self._server.run()
            finally:
                self._shutdown(engine, scheduler, workers)
            for callback in self._exit_callbacks:
                callback()
            if not self._server.started:
                log.error("daemon.server_failed", host=config.host, port=config.port)
                return 3
        log.info("daemon.stopped", failure=self._failed)  # the stop timer stays armed: a blocked thread would
        # otherwise hold the interpreter's exit (it joins non-daemon threads) as long as its request lasts
        return 1 if self._failed else 0

    def request_stop(self, reason: str = "signal") -> None:
        """Begin a graceful stop (idempotent)."""
        if not self.stop.is_set():
            log.info("daemon.stopping", reason=reason)
            self._stop_timer = threading.Timer(self.options.stop_seconds, self._stop_overdue)
            self._stop_timer.daemon = True
            self._stop_timer.start()
        self.stop.set()
        self._wake.set()
        if self._server is not None:
            self._server.should_exit = True

    def _stop_overdue(self) -> None:
        """The graceful stop took too long: some thread is blocked (typically a source request that is slow to
        time out, in a scheduled run, a webhook worker or a /v1/resync). Exit now, as a crash would: nothing
        accepted is lost. Exit code 0 for a requested stop, 1 when a worker died."""
        busy = sorted(t.name for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon)
        log.warning("daemon.stop_overdue", seconds=self.options.stop_seconds, abandoned_threads=busy)
        logging.shutdown()
        os._exit(1 if self._failed else 0)

    def _install_signals(self, engine: Engine) -> None:
        def handle(signum: int, _frame: FrameType | None) -> None:
            if self.stop.is_set() and signum == signal.SIGINT:
                os._exit(130)  # a second Ctrl-C: stop now; accepted webhooks are already durable
            engine.stop_event.set()
            self.request_stop(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def _shutdown(self, engine: Engine, scheduler: BackgroundScheduler, workers: list[threading.Thread]) -> None:
        engine.stop_event.set()
        self.request_stop("shutdown")
        scheduler.shutdown(wait=True)  # running jobs stop at their next document group
        deadline = time.monotonic() + 8
        for worker in workers:
            worker.join(timeout=max(0.1, deadline - time.monotonic()))

    # -- scheduled runs ------------------------------------------------------------------------------

    def _scheduler(self, engine: Engine) -> BackgroundScheduler:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.interval import IntervalTrigger

        schedule = self.settings.schedule
        keys = engine.projects()
        scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=max(2, min(4, len(keys))))},
            # coalesce: a run missed while the previous one was still going happens once, not N times.
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
            timezone="UTC",
        )
        for key in keys:
            scheduler.add_job(
                self._scheduled,
                IntervalTrigger(seconds=schedule.poll_interval_seconds, jitter=schedule.jitter_seconds),
                args=[engine, key, "poll"],
                id=f"poll:{key}",
            )
            scheduler.add_job(
                self._scheduled,
                IntervalTrigger(minutes=schedule.reconcile_interval_minutes, jitter=schedule.jitter_seconds),
                args=[engine, key, "reconcile"],
                id=f"reconcile:{key}",
            )
            self._schedule_audit(scheduler, engine, key)
            if self.options.startup_reconcile:
                # Replicas started together wait a moment to see each other before taking their shares.
                delay = self._share_delay() if self.settings.state.url else 0.0
                scheduler.add_job(
                    self._scheduled,
                    "date",
                    run_date=datetime.now(UTC) + timedelta(seconds=delay),
                    args=[engine, key, "reconcile"],
                    id=f"startup:{key}",
                )
        self._jobs = scheduler
        return scheduler

    def _schedule_audit(self, scheduler: BackgroundScheduler, engine: Engine, key: ProjectKey) -> None:
        """Audit `key` every `reachability.audit_interval_hours`, jittered by a tenth of it (at most an hour); the
        first one within the first tenth after start: reopening a store can change which chunks are reachable."""
        from apscheduler.triggers.interval import IntervalTrigger

        hours = self.settings.reachability.audit_interval_hours
        if hours <= 0:
            return
        jitter = min(3600.0, hours * 360.0)
        first = datetime.now(UTC) + timedelta(seconds=random.uniform(jitter / 2, jitter))
        scheduler.add_job(
            self._scheduled,
            IntervalTrigger(hours=hours, jitter=int(jitter)),
            args=[engine, key, "audit"],
            id=f"audit:{key}",
            next_run_time=first,
        )

    def _submit_resync(
        self, engine: Engine, keys: list[ProjectKey], options: ResyncBody
    ) -> concurrent.futures.Future[list[dict[str, Any]]]:
        """POST /v1/resync: reconcile `keys` one after the other in the scheduler's pool, off the request path, with
        the request's `rebuild` and `allow_mass_delete`; the future gets their reports (or what stopped them)."""
        return self._submit(
            "resync",
            lambda key: engine.reconcile(key, rebuild=options.rebuild, allow_mass_delete=options.allow_mass_delete),
            keys,
        )

    def _submit_audit(
        self, engine: Engine, keys: list[ProjectKey], options: AuditBody
    ) -> concurrent.futures.Future[list[dict[str, Any]]]:
        """POST /v1/audit: audit `keys` (with the request's `repair`) in the scheduler's pool, like a resync."""
        return self._submit("audit", lambda key: engine.audit(key, repair=options.repair), keys)

    def _submit(
        self, what: str, run: Callable[[ProjectKey], RunReport], keys: list[ProjectKey]
    ) -> concurrent.futures.Future[list[dict[str, Any]]]:
        future: concurrent.futures.Future[list[dict[str, Any]]] = concurrent.futures.Future()

        def job() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result([run(key).as_dict() for key in keys])
            except BaseException as exc:  # the job's edge: the caller gets it; the scheduler lives on
                log.exception(f"{what}.crashed")
                future.set_exception(exc)

        try:
            if self._jobs is None:
                raise KbsyncError("the scheduler has not started")
            self._jobs.add_job(job, "date", run_date=datetime.now(UTC), misfire_grace_time=None)
        except Exception as exc:  # the scheduler stopped (the daemon is stopping)
            future.set_exception(KbsyncError(f"{what} not started: {exc}"))
        return future

    def _share_delay(self) -> float:
        return min(5.0, self.settings.state.lease_seconds / 3)

    def _take_share(self, engine: Engine, key: ProjectKey) -> bool:
        """With replicas (PostgreSQL state): take `key` unless this replica already works its fair share of the
        projects, ceil(projects / live replicas), waiting a moment for a share to free; False: another replica
        should take it. Without this the first replica up took every project its run pool could hold (measured:
        2 replicas, 2 projects, 1 replica did both). Checking and taking are one step: the pool's threads start
        their runs at the same moment."""
        deadline = time.monotonic() + self._share_delay()
        with self._share_changed:
            while True:
                taken = engine.running() | set(self._taken)
                if not self.settings.state.url or key in taken or len(taken) < self._share(engine):
                    self._taken[key] += 1
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.stop.is_set():
                    return False
                # Also woken by time: webhook workers' runs (engine.running) end without a notification.
                self._share_changed.wait(min(remaining, 0.5))

    @staticmethod
    def _done_elsewhere(engine: Engine, key: ProjectKey, kind: str, since: float) -> bool:
        """Whether a run of `kind` that began after `since` ended well (another replica took the deferred run)."""
        try:
            run = engine.state.last_runs(key.tenant, key.project).get(kind)
        except KbsyncError:
            return False
        return run is not None and run.started_at >= since and run.outcome == "ok"

    def _share(self, engine: Engine) -> int:
        try:
            replicas = max(1, engine.state.live_leases("replica:"))
        except KbsyncError:
            replicas = 1  # the run itself will report the database
        return math.ceil(len(engine.projects()) / replicas)

    def _scheduled(self, engine: Engine, key: ProjectKey, kind: str, deferred_since: float | None = None) -> None:
        if self.stop.is_set():
            return
        if deferred_since is not None and self._done_elsewhere(engine, key, kind, deferred_since):
            log.info(
                "run.skipped_done",
                tenant=key.tenant,
                project=key.project,
                trigger=kind,
                reason="another replica ran it while it was deferred",
            )
            return
        if not self._take_share(engine, key):
            # Try again later: by then another replica has done it (skipped then) or this replica has a share free.
            log.debug("run.deferred", tenant=key.tenant, project=key.project, kind=kind, reason="fair share")
            when = datetime.now(UTC) + timedelta(seconds=self._share_delay())
            # A run another replica began a moment before this one was due serves as well (scheduled runs jitter).
            since = deferred_since if deferred_since is not None else time.time() - self._share_delay()
            if self._jobs is None:  # never: scheduled runs come from the scheduler
                return
            try:
                self._jobs.add_job(
                    self._scheduled,
                    "date",
                    run_date=when,
                    args=[engine, key, kind, since],
                    id=f"deferred:{kind}:{key}",
                    replace_existing=True,
                )
            except Exception:  # the scheduler stopped meanwhile: nothing to defer to
                log.debug("run.defer_failed", exc_info=True)
            return
        try:
            if kind == "poll":
                engine.poll(key)
            elif kind == "audit":
                engine.audit(key, repair=self.settings.reachability.audit_repair)
            else:
                engine.reconcile(key)
        except Exception:  # the job's edge: one failed run never stops the scheduler
            log.exception("run.crashed", tenant=key.tenant, project=key.project, kind=kind)
        finally:
            with self._share_changed:
                self._taken[key] -= 1
                if self._taken[key] <= 0:
                    del self._taken[key]
                self._share_changed.notify_all()

    # -- webhook workers -----------------------------------------------------------------------------

    def _work(self, engine: Engine, queue: Queue, metrics: Metrics, number: int) -> None:
        owner = f"{self._owner}:{number}"
        claim_seconds = self.options.claim_seconds or float(self.settings.state.lease_seconds)
        try:
            while not self.stop.is_set():
                try:
                    item = queue.claim(owner, claim_seconds)
                except KbsyncError as exc:
                    log.error("queue.claim_failed", error=str(exc))
                    self.stop.wait(1.0)
                    continue
                if item is None:
                    self._wake.wait(self.options.idle_seconds)
                    self._wake.clear()
                    continue
                self._apply(engine, queue, metrics, item, owner, claim_seconds)
        except Exception as exc:  # a dead worker ends the daemon (non-zero) so systemd restarts it
            log.exception("worker.died")
            self._failed = f"worker {number} died: {exc}"
            self.request_stop("worker died")

    def _apply(
        self, engine: Engine, queue: Queue, metrics: Metrics, item: QueueItem, owner: str, claim_seconds: float
    ) -> None:
        key = ProjectKey(item.tenant, item.project)
        started = time.time()
        with structlog.contextvars.bound_contextvars(
            tenant=item.tenant, project=item.project, queue_item=item.id, webhook_event=item.event
        ):
            with _claim_renewed(queue, item, owner, claim_seconds):
                try:
                    # wait=False: a project busy in a long run here is tried again shortly (released as busy, below)
                    # while this worker applies other projects' webhooks, instead of blocking on its lock.
                    report = engine.refresh(
                        key, item.source, WebhookEvent(item.event), item.payload.get("doc_id"), wait=False
                    )
                    error = None if report.outcome == "ok" else "; ".join(report.errors) or report.outcome
                except Exception as exc:  # the loop's edge: one bad item never stops the worker
                    log.exception("queue.item_crashed")
                    error = str(exc)
                    report = None
            try:
                self._settle(queue, metrics, item, owner, report, error, started)
            except KbsyncError as exc:
                # The state database is away: the claim lapses and the item is tried again (a refresh is
                # idempotent). The worker lives on; a dead worker would stop the whole replica.
                log.error("queue.settle_failed", error=str(exc))

    def _settle(
        self,
        queue: Queue,
        metrics: Metrics,
        item: QueueItem,
        owner: str,
        report: RunReport | None,
        error: str | None,
        started: float,
    ) -> None:
        """Record an item's outcome: done (with the items its refresh covered), retried later, or dead."""
        if report is not None and report.busy:
            # Another replica is working this project: try again shortly, without counting an attempt.
            queue.release(item, owner, error="project busy", retry=True, delay_seconds=1.0, count=False)
            return
        if error is None:
            covered = _COVERED_BY_POLL if item.event in _COVERED_BY_POLL else None
            closed = queue.done(item, owner, covered_until=started, cover_events=covered)
            metrics.queue_items.labels("applied").inc(closed)
            log.info("queue.item_applied", covered=closed - 1, latency_s=round(time.time() - item.received_at, 3))
            return
        interrupted = self.stop.is_set()
        delay = 0.0 if interrupted else min(self.options.max_backoff_seconds, 2.0 ** (item.attempts + 1))
        # A permanent failure (401 bad token, 404 unknown portal) is dead at once: retrying cannot fix it.
        permanent = report is not None and report.permanent and not interrupted
        status = queue.release(item, owner, error=error, retry=not permanent, delay_seconds=delay)
        metrics.queue_items.labels("retried" if status == "pending" else "dead").inc()
        log.warning("queue.item_failed", status=status, attempts=item.attempts + 1, error=error)


@contextmanager
def _claim_renewed(queue: Queue, item: QueueItem, owner: str, seconds: float) -> Iterator[None]:
    """Keep an item's queue claim alive while it is worked: renewed every third of its length."""

    def renew() -> bool:
        try:
            queue.renew(item, owner, seconds)
        except KbsyncError as exc:  # the database is away: the claim may lapse, and the item is retried
            log.warning("queue.renew_failed", error=str(exc))
        return True

    renewer = Renewer(renew, seconds / 3, f"kbsync-claim-{item.id}")
    renewer.start()
    try:
        yield
    finally:
        renewer.stop()


def _queue_depth(queue: Queue) -> float:
    """Pending items for /metrics; NaN while the state database is away, so the scrape itself still answers (and
    shows the webhooks refused as unavailable) instead of failing with a 500."""
    try:
        return float(queue.depth()["pending"])
    except KbsyncError:
        return math.nan
