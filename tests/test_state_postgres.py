"""One schema, one code path, two dialects (README "Scaling out"): the state and the queue on a real PostgreSQL,
shared by several processes' worth of State objects (replicas), and on SQLite."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from kbsync.errors import StateError, StateLocked
from kbsync.queue import Queue
from kbsync.state import State, Watermark
from tests.servers.postgres import PostgresServer


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.destroy()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    state = State.open_postgres(postgres.url)
    with state.engine.begin() as tx:  # a clean schema per test
        for table in (
            "queue_items",
            "deliveries",
            "leases",
            "runs",
            "watermarks",
            "web_pages",
            "project_locales",
            "project_counts",
            "kbsync_schema",
        ):
            tx.execute(sa.text(f"DROP TABLE IF EXISTS {table} CASCADE"))
    state.close()
    return postgres.url


@pytest.fixture(params=["sqlite", "postgresql"])
def replicas(request, tmp_path) -> Iterator[list[State]]:
    """Two State objects on one database (two replicas on PostgreSQL; SQLite serves one process only)."""
    if request.param == "sqlite":
        state = State.open_sqlite(tmp_path)
        yield [state, state]
        state.close()
        return
    url = request.getfixturevalue("pg_url")
    states = [State.open_postgres(url), State.open_postgres(url)]
    yield states
    for state in states:
        state.close()


def test_runs_and_watermarks_round_trip(replicas) -> None:
    a, b = replicas
    run = a.start_run("acme", "alpha", "reconcile", "host:1")
    a.finish_run(run, "ok", {"docs_added": 3}, None)
    (record,) = b.last_runs("acme", "alpha").values()
    assert record.outcome == "ok" and record.counts == {"docs_added": 3} and record.owner == "host:1"
    a.set_watermark("acme", "alpha", "chatwoot:p", Watermark(100, 7))
    a.set_watermark("acme", "alpha", "chatwoot:p", Watermark(120, 8))
    assert b.watermark("acme", "alpha", "chatwoot:p") == Watermark(120, 8)


def test_a_run_cut_off_is_closed_as_abandoned_by_the_next_run_of_its_project(replicas) -> None:
    """A replica killed mid-run (or cut off from the database) never records its run's end; the next run of that
    project, which holds the lease, closes it so `status` does not show it running for ever. If broken: the run
    stays open, or a run of another project is closed while it may still be working."""
    a, b = replicas
    cut = a.start_run("acme", "alpha", "reconcile", "host:1")
    other = a.start_run("acme", "beta", "poll", "host:1")
    before = time.time()
    b.start_run("acme", "alpha", "poll", "host:2")
    runs = b.last_runs("acme", "alpha")
    assert runs["reconcile"].id == cut and runs["reconcile"].outcome == "abandoned"
    assert runs["reconcile"].finished_at is not None and runs["reconcile"].finished_at >= before
    assert "killed" in (runs["reconcile"].error or "")
    assert runs["poll"].outcome is None  # the new run itself is running
    (beta,) = b.last_runs("acme", "beta").values()
    assert beta.id == other and beta.outcome is None and beta.finished_at is None


def test_duplicate_delivery_is_detected_across_replicas(replicas) -> None:
    qa, qb = Queue(replicas[0]), Queue(replicas[1])
    first = qa.enqueue("acme", "alpha", "chatwoot:p", "article_updated", {"article_id": 1}, "delivery-1")
    again = qb.enqueue("acme", "alpha", "chatwoot:p", "article_updated", {"article_id": 1}, "delivery-1")
    assert not first.duplicate and again.duplicate
    assert qb.depth() == {"pending": 1, "dead": 0}


def test_one_item_per_project_is_claimed_at_a_time_across_replicas(replicas) -> None:
    """Invariant 7: items of one project never run on two replicas at once; other projects proceed."""
    qa, qb = Queue(replicas[0]), Queue(replicas[1])
    for n in range(3):
        qa.enqueue("acme", "alpha", "chatwoot:p", "article_updated", {"n": n}, f"a{n}")
    qa.enqueue("acme", "beta", "chatwoot:q", "article_updated", {}, "b0")
    first = qa.claim("replica-a", 60)
    second = qb.claim("replica-b", 60)
    assert first is not None and second is not None
    assert {first.project, second.project} == {"alpha", "beta"}
    assert qb.claim("replica-b", 60) is None  # alpha is claimed by replica-a
    assert qa.done(first, "replica-a", covered_until=time.time()) == 3  # its two later siblings were covered
    assert qa.depth() == {"pending": 1, "dead": 0}


def test_an_expired_claim_is_taken_back(replicas) -> None:
    """A replica killed with an item claimed only delays it (invariant 9)."""
    qa, qb = Queue(replicas[0]), Queue(replicas[1])
    qa.enqueue("acme", "alpha", "chatwoot:p", "article_updated", {}, "x")
    assert qa.claim("dead-replica", 0.2) is not None
    assert qb.claim("replica-b", 60) is None
    time.sleep(0.3)
    taken = qb.claim("replica-b", 60)
    assert taken is not None and taken.delivery_id == "x"


def test_failed_items_retry_then_die(replicas) -> None:
    queue = Queue(replicas[0], max_attempts=2)
    queue.enqueue("acme", "alpha", "chatwoot:p", "article_updated", {}, "y")
    item = queue.claim("r", 60)
    assert queue.release(item, "r", error="boom", retry=True, delay_seconds=0) == "pending"
    item = queue.claim("r", 60)
    assert queue.release(item, "r", error="boom again", retry=True, delay_seconds=0) == "dead"
    assert queue.depth() == {"pending": 0, "dead": 1}
    assert queue.dead()[0]["error"] == "boom again"


def test_leases_exclude_other_owners_until_they_expire(replicas) -> None:
    a, b = replicas
    assert a.acquire_lease("project:acme/alpha", "replica-a", 0.3)
    assert not b.acquire_lease("project:acme/alpha", "replica-b", 30)
    assert a.renew_lease("project:acme/alpha", "replica-a", 0.3)
    time.sleep(0.4)
    assert b.acquire_lease("project:acme/alpha", "replica-b", 30)  # replica-a stopped renewing
    assert not a.renew_lease("project:acme/alpha", "replica-a", 30)
    b.release_lease("project:acme/alpha", "replica-b")
    assert a.acquire_lease("project:acme/alpha", "replica-a", 30)


def test_live_leases_counts_the_unexpired_ones_with_a_prefix(replicas) -> None:
    """Replicas count each other by their `replica:` leases; an expired one (a dead replica) does not count."""
    a, b = replicas
    assert a.acquire_lease("replica:host:1", "host:1", 30)
    assert b.acquire_lease("replica:host:2", "host:2", 0.2)
    assert a.acquire_lease("project:acme/alpha", "host:1", 30)
    assert a.live_leases("replica:") == 2
    time.sleep(0.4)
    assert b.live_leases("replica:") == 1
    assert a.live_leases("replica_") == 0  # the prefix is literal, not a LIKE pattern


def test_racing_replicas_get_a_lease_exactly_once(pg_url: str) -> None:
    states = [State.open_postgres(pg_url) for _ in range(6)]
    winners: list[int] = []
    barrier = threading.Barrier(len(states))

    def race(n: int) -> None:
        barrier.wait()
        if states[n].acquire_lease("project:acme/race", f"replica-{n}", 30):
            winners.append(n)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(len(states))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    for state in states:
        state.close()


def test_postgres_unreachable_is_a_clear_state_error(postgres: PostgresServer) -> None:
    url = f"postgresql://kbsync@127.0.0.1:{postgres.port + 1}/kbsync"  # nothing listens there
    with pytest.raises(StateError, match="cannot open the state database"):
        State.open_postgres(url)


def test_password_never_appears_in_errors() -> None:
    from pydantic import SecretStr

    with pytest.raises(StateError) as raised:
        State.open_postgres("postgresql://kbsync@127.0.0.1:1/kbsync", SecretStr("hunter2-secret"))
    assert "hunter2-secret" not in str(raised.value)


def test_second_process_on_one_sqlite_state_dir_is_refused(tmp_path) -> None:
    import subprocess
    import sys

    state = State.open_sqlite(tmp_path)
    try:
        code = f"from pathlib import Path; from kbsync.state import State; State.open_sqlite(Path({str(tmp_path)!r}))"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert result.returncode != 0 and "StateLocked" in result.stderr and "another kbsync process" in result.stderr
        with pytest.raises(StateLocked):
            State.open_sqlite(tmp_path)
    finally:
        state.close()


def test_project_locales_are_recorded_once_and_replaced_by_a_whole_read(replicas) -> None:
    """A write records its locales (a repeat is no error, from either replica); a reconcile's exact set replaces
    them. Per project: another project's locales are untouched."""
    a, b = replicas
    a.add_locales("acme", "alpha", {"en"})
    b.add_locales("acme", "alpha", {"en", "fr"})
    a.add_locales("acme", "beta", {"de"})
    assert a.locales("acme", "alpha") == {"en", "fr"} and b.locales("acme", "beta") == {"de"}
    b.set_locales("acme", "alpha", {"fr"})
    assert a.locales("acme", "alpha") == {"fr"} and a.locales("acme", "beta") == {"de"}
    a.set_locales("acme", "alpha", set())
    assert b.locales("acme", "alpha") == set()


def test_project_counts_round_trip_and_are_forgotten(replicas) -> None:
    a, b = replicas
    assert a.counts("acme", "alpha") is None
    a.set_counts("acme", "alpha", (3, 7))
    b.set_counts("acme", "alpha", (4, 9))
    assert a.counts("acme", "alpha") == (4, 9) and a.counts("acme", "beta") is None
    b.set_counts("acme", "alpha", None)
    assert a.counts("acme", "alpha") is None
