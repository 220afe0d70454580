"""State database size over a simulated month of polling, with and without retention, side by side in one run.

Each simulated day, per project: a poll run every 60 s (1,440), a reconcile every 6 h, `--webhooks` webhooks (a
queue item with its delivery id, claimed, a refresh run, applied) and one replica restart that leaves a stale
lease. With retention the daemon's prune (kbsync/retention.py, default `[retention]` settings) runs every simulated
hour. Rows are written through State and Queue as the daemon writes them; the simulated clock replaces time.time
(measurement only). Sizes are the SQLite file after a WAL checkpoint.

    python bench/state_growth.py [--days 30] [--projects 1] [--webhooks 100]   # ~35 min on 2 busy cores
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kbsync.engine import RunReport
from kbsync.queue import Queue
from kbsync.retention import prune
from kbsync.settings import RetentionSettings
from kbsync.state import State

POLL_SECONDS = 60
RECONCILE_EVERY = 360  # polls
REPORT_DAYS = (1, 7, 14, 21, 30, 45, 60)


class Clock:
    """Simulated seconds since the epoch, installed as time.time."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def record_run(state: State, project: str, kind: str, clock: Clock) -> None:
    report = RunReport("bench", project, kind, docs_seen=25, docs_unchanged=25, requests=1, sources=1)
    run_id = state.start_run("bench", project, kind, "bench-host:1")
    clock.now += 0.2
    state.finish_run(run_id, report.outcome, report.counts(), None)


def webhook(state: State, queue: Queue, project: str, clock: Clock, serial: int) -> None:
    queue.enqueue("bench", project, "chatwoot:help", "article_updated", {"article_id": serial}, f"delivery-{serial}")
    item = queue.claim("bench-host:1:0", 30)
    if item is not None:
        record_run(state, item.project, "refresh", clock)
        queue.done(item, "bench-host:1:0", covered_until=clock.now)


def simulate_day(
    state: State,
    queue: Queue,
    projects: int,
    webhooks: int,
    day: int,
    clock: Clock,
    retention: RetentionSettings | None,
) -> None:
    start = clock.now
    every = max(1, 1440 // max(1, webhooks))
    serial = day * 1_000_000
    state.acquire_lease(f"replica:bench-host:{day}", f"bench-host:{day}", 30)  # a restart: the old one stays
    for minute in range(1440):
        clock.now = start + minute * POLL_SECONDS
        for n in range(projects):
            project = f"p{n}"
            record_run(state, project, "reconcile" if minute % RECONCILE_EVERY == 0 else "poll", clock)
            if webhooks and minute % every == 0:
                serial += 1
                webhook(state, queue, project, clock, serial)
        if retention is not None and minute % 60 == 59:
            prune(state, queue, retention, owner="bench-host:1", now=clock.now)
    clock.now = start + 86_400


def size_mb(state: State, folder: Path) -> float:
    with state.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return (folder / "state.db").stat().st_size / 1e6


def grow(days: int, projects: int, webhooks: int, retention: RetentionSettings | None) -> dict[int, float]:
    sizes: dict[int, float] = {}
    clock = Clock()
    real_time = time.time
    time.time = clock  # type: ignore[assignment]  # measurement only: rows get simulated timestamps
    try:
        with tempfile.TemporaryDirectory(prefix="kbsync-growth-") as tmp:
            folder = Path(tmp)
            state = State.open_sqlite(folder)
            queue = Queue(state)
            try:
                for day in range(1, days + 1):
                    simulate_day(state, queue, projects, webhooks, day, clock, retention)
                    if day in REPORT_DAYS or day == days:
                        sizes[day] = size_mb(state, folder)
            finally:
                state.close()
    finally:
        time.time = real_time  # type: ignore[assignment]
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--projects", type=int, default=1)
    parser.add_argument("--webhooks", type=int, default=100, help="webhooks per project per day")
    args = parser.parse_args()
    started = time.perf_counter()
    kept = grow(args.days, args.projects, args.webhooks, RetentionSettings())
    unbounded = grow(args.days, args.projects, args.webhooks, None)
    print(f"{args.projects} projects, a poll every {POLL_SECONDS} s, {args.webhooks} webhooks per project per day")
    print(f"{'day':>4} {'retention MB':>13} {'no retention MB':>16} {'ratio':>6}")
    for day in sorted(kept):
        print(f"{day:>4} {kept[day]:>13.2f} {unbounded[day]:>16.2f} {unbounded[day] / kept[day]:>6.2f}")
    steady = [day for day in sorted(kept) if day >= 7]
    if len(steady) >= 2:
        first, last = kept[steady[0]], kept[steady[-1]]
        without = f"{unbounded[steady[0]]:.2f} -> {unbounded[steady[-1]]:.2f} MB"
        print(
            f"with retention, day {steady[0]} -> day {steady[-1]}: {first:.2f} -> {last:.2f} MB "
            f"({(last / first - 1) * 100:+.1f}%); without: {without}"
        )
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
