"""A total deadline for one HTTP exchange. httpx's timeouts bound each socket operation, so a server trickling one
byte every 10 s never trips them; here every socket read, write and connect of the exchange gets at most what is
left of its deadline (`DeadlineStream`, installed by the crawler's network backend), and the body loop checks it
too (for clients passed in from outside). The deadline lives in a context variable: sync httpx does its socket work
on the calling thread, so each worker thread's exchange sees its own."""

from __future__ import annotations

import contextlib
import contextvars
import ssl
import time
from collections.abc import Iterator
from typing import Any

import httpcore

__all__ = ["DeadlineStream", "bounded", "deadline", "passed"]

_ENDS: contextvars.ContextVar[float | None] = contextvars.ContextVar("kbsync_web_deadline", default=None)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Everything inside must finish within `seconds` (or within an enclosing, earlier deadline)."""
    ends = time.monotonic() + seconds
    outer = _ENDS.get()
    token = _ENDS.set(ends if outer is None else min(ends, outer))
    try:
        yield
    finally:
        _ENDS.reset(token)


def passed() -> bool:
    """Whether the current deadline (if any) has passed."""
    ends = _ENDS.get()
    return ends is not None and time.monotonic() >= ends


def bounded(timeout: float | None) -> float | None:
    """`timeout` cut to what is left of the current deadline; raises httpcore.ReadTimeout once it has passed
    (httpx turns that into its ReadTimeout, which the crawler reports)."""
    ends = _ENDS.get()
    if ends is None:
        return timeout
    left = ends - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout("the request's total deadline passed")
    return left if timeout is None else min(timeout, left)


class DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every operation is bounded by the current deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, bounded(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, bounded(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, bounded(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)
