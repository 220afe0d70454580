"""Leases keep a local deadline (issue 17, low): a replica that cannot renew its project lease before it expires
stops writing, instead of writing on while another replica may hold the project."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from kbsync.leases import LeaseKeeper
from kbsync.state import State


def _until(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_lease_that_cannot_be_renewed_is_not_held_past_its_expiry(tmp_path: Path) -> None:
    state = State.open_sqlite(tmp_path)
    keeper = LeaseKeeper(state, "project:acme/alpha", "replica-a", seconds=1.5)
    blocker = sqlite3.connect(tmp_path / "state.db", timeout=1, isolation_level=None)
    try:
        assert keeper.acquire()
        assert keeper.held()
        # The database stops answering this replica: every renewal waits out SQLite's busy timeout and fails.
        blocker.execute("BEGIN EXCLUSIVE")
        assert _until(lambda: not keeper.held(), 5), "the lease still counts as held after its expiry"
        assert not keeper.lost.is_set()  # nobody took it over (yet): not lost, only no longer safe to write under
        blocker.execute("ROLLBACK")
        # The database is back and nobody took the lease meanwhile: the next renewal restores it.
        assert _until(keeper.held, 15), "a renewal that got through did not restore the lease"
    finally:
        blocker.close()
        keeper.release()
        state.close()


def test_a_lease_taken_over_while_away_is_lost(tmp_path: Path) -> None:
    state = State.open_sqlite(tmp_path)
    keeper = LeaseKeeper(state, "project:acme/alpha", "replica-a", seconds=1.5)
    blocker = sqlite3.connect(tmp_path / "state.db", timeout=1, isolation_level=None)
    try:
        assert keeper.acquire()
        blocker.execute("BEGIN EXCLUSIVE")
        assert _until(lambda: not keeper.held(), 5)
        # Another replica takes the expired lease (written here on the blocking connection).
        blocker.execute(
            "UPDATE leases SET owner = 'replica-b', expires_at = ? WHERE name = ?",
            (time.time() + 60, "project:acme/alpha"),
        )
        blocker.execute("COMMIT")
        assert _until(keeper.lost.is_set, 15)
        assert not keeper.held()
    finally:
        blocker.close()
        keeper.release()
        state.close()
