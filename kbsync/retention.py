"""Retention: what the state database forgets, so a daemon that runs for months keeps it bounded.

A 60 s poll adds 1,440 run records per project per day; every webhook adds a queue item and a delivery id. Pruned
by the daemon every `[retention] interval_minutes` (jittered), in batches of `batch_rows` per statement:
- runs older than `runs_days`, and beyond the newest `runs_per_project` of a project (the newest run of each kind
  always stays: it is what `kbsync status` shows);
- applied queue items after `done_items_days`, dead ones after `dead_items_days` (pending items never);
- delivery ids after `deliveries_days` (a replay older than the 300 s signature window is refused anyway);
- leases that expired over an hour ago (left by processes that died).
The SQL lives in state.py and queue.py; this module decides what and when. With replicas on PostgreSQL one of them
prunes at a time (a lease), though pruning twice would be harmless.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from kbsync.errors import KbsyncError
from kbsync.leases import LeaseKeeper
from kbsync.queue import Queue
from kbsync.settings import RetentionSettings
from kbsync.state import State

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

__all__ = ["PruneReport", "prune", "schedule_pruning"]

log = structlog.get_logger(__name__)

DAY = 86_400.0
STALE_LEASE_SECONDS = 3_600.0
LEASE = "retention"
LEASE_SECONDS = 60.0
# The first prune after a start: soon, so a daemon restarted more often than `interval_minutes` still prunes,
# but after the start-up reconcile has begun.
FIRST_PRUNE_DELAY_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class PruneReport:
    """Rows deleted by one prune."""

    runs: int = 0
    queue_rows: int = 0  # queue items and delivery ids
    leases: int = 0
    seconds: float = 0.0
    skipped: bool = False  # another replica was pruning

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def prune(
    state: State, queue: Queue, settings: RetentionSettings, *, owner: str, now: float | None = None
) -> PruneReport:
    """Delete what `settings` no longer keeps, as of `now` (default: the current time). Holds the `retention`
    lease while it works; returns `skipped` when another replica holds it."""
    started = time.monotonic()
    now = time.time() if now is None else now
    lease = LeaseKeeper(state, LEASE, owner, LEASE_SECONDS)  # renewed while a long first prune works
    if not lease.acquire():
        return PruneReport(skipped=True)
    try:
        runs = state.prune_runs(
            before=now - settings.runs_days * DAY, keep_per_project=settings.runs_per_project, batch=settings.batch_rows
        )
        queue_rows = queue.prune(
            done_before=now - settings.done_items_days * DAY,
            dead_before=now - settings.dead_items_days * DAY,
            deliveries_before=now - settings.deliveries_days * DAY,
            batch=settings.batch_rows,
        )
        leases = state.prune_leases(expired_before=now - STALE_LEASE_SECONDS, spare=LEASE)
    finally:
        lease.release()
    return PruneReport(runs, queue_rows, leases, round(time.monotonic() - started, 3))


def schedule_pruning(
    scheduler: BaseScheduler, state: State, queue: Queue, settings: RetentionSettings, owner: str
) -> None:
    """Add the daemon's pruning jobs to its APScheduler `scheduler`: one soon after the start, then every
    `interval_minutes`, jittered by a tenth of it (replicas started together do not prune together)."""
    from apscheduler.triggers.interval import IntervalTrigger

    def job() -> None:
        try:
            report = prune(state, queue, settings, owner=owner)
        except KbsyncError as exc:  # the database is away: the next interval tries again
            log.warning("retention.failed", error=str(exc))
            return
        log.info("retention.pruned", **report.as_dict())

    interval = settings.interval_minutes * 60
    scheduler.add_job(job, IntervalTrigger(seconds=interval, jitter=interval // 10), id="retention")
    first = datetime.now(UTC) + timedelta(seconds=FIRST_PRUNE_DELAY_SECONDS)
    scheduler.add_job(job, "date", run_date=first, id="retention:startup")
