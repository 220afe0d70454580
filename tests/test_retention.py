"""Retention (issue 14, part 3): the state database forgets old runs, finished queue items, delivery ids and stale
leases, in batches, on SQLite and on a real PostgreSQL, and never what is still needed (pending items, the newest
run of each kind, live leases). Time is moved by passing `now` to `prune`, not by waiting."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from kbsync.queue import Queue
from kbsync.retention import DAY, prune
from kbsync.settings import RetentionSettings
from kbsync.state import State, metadata
from tests.servers.postgres import PostgresServer

SMALL_BATCHES = RetentionSettings(runs_per_project=10, batch_rows=3)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.destroy()


@pytest.fixture(params=["sqlite", "postgresql"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[State]:
    if request.param == "sqlite":
        opened = State.open_sqlite(tmp_path)
    else:
        url = request.getfixturevalue("postgres").url
        with sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://")).begin() as tx:
            for table in reversed(metadata.sorted_tables):  # a clean schema per test
                tx.execute(sa.text(f"DROP TABLE IF EXISTS {table.name} CASCADE"))
        opened = State.open_postgres(url)
    yield opened
    opened.close()


def run(state: State, project: str, kind: str, *, finish: bool = True) -> int:
    run_id = state.start_run("acme", project, kind, "host:1")
    if finish:
        state.finish_run(run_id, "ok", {"docs_seen": 1}, None)
    return run_id


def run_ids(state: State, project: str) -> set[int]:
    runs = metadata.tables["runs"]
    with state.engine.connect() as conn:
        return set(conn.execute(sa.select(runs.c.id).where(runs.c.project == project)).scalars())


def test_runs_past_the_window_go_but_the_newest_of_each_kind_stays(state: State) -> None:
    """If broken: every run is kept for ever (1,440 a day per project at a 60 s poll), or `status` loses the
    last reconcile of a project that has not run for a month."""
    queue = Queue(state)
    polls = [run(state, "alpha", "poll") for _ in range(5)]
    reconcile = run(state, "alpha", "reconcile")
    other = run(state, "beta", "poll")
    assert prune(state, queue, SMALL_BATCHES, owner="me", now=time.time() + 29 * DAY).runs == 0
    report = prune(state, queue, SMALL_BATCHES, owner="me", now=time.time() + 31 * DAY)
    assert report.runs == 4 and not report.skipped
    assert run_ids(state, "alpha") == {polls[-1], reconcile} and run_ids(state, "beta") == {other}
    assert {k: r.id for k, r in state.last_runs("acme", "alpha").items()} == {"poll": polls[-1], "reconcile": reconcile}


def test_runs_beyond_the_per_project_cap_go_oldest_first(state: State) -> None:
    queue = Queue(state)
    reconciles = [run(state, "alpha", "reconcile") for _ in range(3)]
    polls = [run(state, "alpha", "poll") for _ in range(25)]
    beta = {run(state, "beta", "poll") for _ in range(5)}
    report = prune(state, queue, SMALL_BATCHES, owner="me")
    assert report.runs == 3 + 25 - 10 - 1  # the newest reconcile stays beside the 10 newest runs
    assert run_ids(state, "alpha") == set(polls[-10:]) | {reconciles[-1]}
    assert run_ids(state, "beta") == beta


def test_a_running_run_is_never_pruned(state: State) -> None:
    queue = Queue(state)
    running = run(state, "alpha", "reconcile", finish=False)
    assert prune(state, queue, SMALL_BATCHES, owner="me", now=time.time() + 365 * DAY).runs == 0
    assert run_ids(state, "alpha") == {running}


def test_finished_queue_items_and_delivery_ids_go_pending_items_stay(state: State) -> None:
    queue = Queue(state)
    for n in range(3):
        queue.enqueue("acme", ["alpha", "beta", "gamma"][n], "chatwoot:p", "article_updated", {"n": n}, f"d{n}")
    done, dead = queue.claim("w1", 30), queue.claim("w2", 30)
    assert done is not None and dead is not None
    queue.done(done, "w1")
    queue.release(dead, "w2", error="HTTP 401", retry=False, delay_seconds=0)
    assert queue.depth() == {"pending": 1, "dead": 1}

    assert prune(state, queue, SMALL_BATCHES, owner="me", now=time.time() + 0.5 * DAY).queue_rows == 0
    week = prune(state, queue, SMALL_BATCHES, owner="me", now=time.time() + 8 * DAY)
    assert week.queue_rows == 1 + 3  # the applied item and the three delivery ids
    assert queue.depth() == {"pending": 1, "dead": 1} and len(queue.dead()) == 1
    month = prune(state, queue, SMALL_BATCHES, owner="me", now=time.time() + 31 * DAY)
    assert month.queue_rows == 1 and queue.depth() == {"pending": 1, "dead": 0}
    # A delivery id forgotten after its window is a new delivery (the signature window refuses real replays).
    assert not queue.enqueue("acme", "alpha", "chatwoot:p", "article_updated", {}, "d0").duplicate


def test_stale_leases_go_live_ones_stay(state: State) -> None:
    queue = Queue(state)
    assert state.acquire_lease("replica:dead-host:1", "dead-host:1", 30)
    assert state.acquire_lease("project:acme/alpha", "live-host:2", 10 * DAY)
    report = prune(state, queue, SMALL_BATCHES, owner="me", now=time.time() + 2 * 3600)
    assert report.leases == 1
    assert not state.acquire_lease("project:acme/alpha", "me", 30)  # still held by its live owner
    assert state.live_leases("replica:") == 0


def test_one_replica_prunes_at_a_time(state: State) -> None:
    queue = Queue(state)
    run(state, "alpha", "poll")
    run(state, "alpha", "poll")
    assert state.acquire_lease("retention", "other-replica", 60)
    report = prune(state, queue, SMALL_BATCHES, owner="me", now=time.time() + 31 * DAY)
    assert report.skipped and report.runs == 0 and len(run_ids(state, "alpha")) == 2
