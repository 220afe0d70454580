"""Per-host politeness: a limit on requests in flight and a minimum interval between request starts."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

__all__ = ["HostGate"]


class HostGate:
    """Per-host politeness: at most `per_host` requests in flight, request starts `interval` seconds apart."""

    def __init__(self, per_host: int, interval: float) -> None:
        self._per_host = max(1, per_host)
        self._default = max(0.0, interval)
        self._lock = threading.Lock()
        self._slots: dict[str, threading.Semaphore] = {}
        self._next: dict[str, float] = {}
        self._intervals: dict[str, float] = {}

    def set_interval(self, host: str, seconds: float) -> None:
        with self._lock:
            self._intervals[host] = max(self._default, seconds)

    @contextlib.contextmanager
    def slot(self, host: str) -> Iterator[None]:
        with self._lock:
            semaphore = self._slots.setdefault(host, threading.Semaphore(self._per_host))
        with semaphore:
            with self._lock:
                now = time.monotonic()
                start = max(now, self._next.get(host, now))
                self._next[host] = start + self._intervals.get(host, self._default)
            if start > now:
                time.sleep(start - now)
            yield
