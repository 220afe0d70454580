"""Leases kept alive in the background: project leases, the daemon's replica and embedded-store leases, queue claims.

A lease lives in the state database (`State.acquire_lease`); this module only keeps it renewed while its work runs
and says when it was lost to another replica.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from kbsync.errors import KbsyncError
from kbsync.state import State

__all__ = ["LeaseKeeper", "Renewer"]

log = structlog.get_logger(__name__)


class Renewer:
    """Calls `renew` every `interval` seconds on a background thread until `stop()`, or until `renew` returns
    False. What keeps leases and queue claims alive while their work runs."""

    def __init__(self, renew: Callable[[], bool], interval: float, name: str) -> None:
        self._renew, self._interval = renew, interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._done.wait(self._interval) and self._renew():
            pass

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


class LeaseKeeper:
    """Holds a named lease in the state database for a block, renewed in the background every third of its
    length; `lost` is set if a renewal finds it taken over (this process stalled past the expiry). `held()` also
    keeps a local deadline (fencing): a replica cut off from the database, its renewals failing or hanging, stops
    writing when the lease may have passed to another replica (a renewal that gets through again restores it
    only while nobody took it meanwhile)."""

    def __init__(self, state: State, name: str, owner: str, seconds: float) -> None:
        self.state, self.name, self.owner, self.seconds = state, name, owner, seconds
        self.lost = threading.Event()
        self._valid_until = 0.0  # time.monotonic(): the lease is not counted on past it
        self._renewer = Renewer(self._renew, seconds / 3, f"lease {name}")

    def acquire(self) -> bool:
        """Take the lease if it is free (or expired) and start renewing it; False when another owner holds it."""
        asked = time.monotonic()
        if not self.state.acquire_lease(self.name, self.owner, self.seconds):
            return False
        self._extend(asked)
        self._renewer.start()
        return True

    def held(self) -> bool:
        """Whether this process may still write under the lease: not lost, and last renewed within its length."""
        return not self.lost.is_set() and time.monotonic() < self._valid_until

    def _extend(self, asked: float) -> None:
        # Counted from before the request, less a tenth for clock skew between replicas (expiry is wall time).
        self._valid_until = asked + self.seconds * 0.9

    def _renew(self) -> bool:
        asked = time.monotonic()
        try:
            if not self.state.renew_lease(self.name, self.owner, self.seconds):
                self.lost.set()
                log.error("lease.lost", lease=self.name)
                return False
            self._extend(asked)
        except KbsyncError as exc:  # the database is away: keep trying (a run stops writing once not `held()`)
            log.warning("lease.renew_failed", lease=self.name, error=str(exc), expired=not self.held())
        return True

    def release(self) -> None:
        """Stop renewing and give the lease back (it expires by itself if the database is away)."""
        self._renewer.stop()
        try:
            self.state.release_lease(self.name, self.owner)
        except KbsyncError as exc:  # it expires by itself
            log.warning("lease.release_failed", lease=self.name, error=str(exc))
