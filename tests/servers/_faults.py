"""Fault injection and request logs shared by the Confluence and Notion test servers.

Pure test-support code: it must never import `kbsync`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse, Response

__all__ = ["Fault", "FaultBook"]


@dataclass
class Fault:
    """Answer requests whose path contains `path_contains` (and whose query contains `query_contains`) with
    `status` (and `body`), a JSON body cut after `truncate_at` bytes, or after a `delay`; `times` requests
    (None: every one), after skipping the first `skip`."""

    path_contains: str = ""
    query_contains: str = ""
    status: int | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    truncate_at: int | None = None
    delay: float = 0.0
    times: int | None = 1
    skip: int = 0


class FaultBook:
    """Faults, hooks that run before a matching request is answered, and the log of requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._hooks: list[tuple[str, str, int, Callable[[], None]]] = []
        self.requests: list[tuple[str, str, str]] = []  # (method, path, query)

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self._hooks.clear()

    def before(
        self, path_contains: str, callback: Callable[[], None], *, query_contains: str = "", times: int = 1
    ) -> None:
        """Run `callback` just before answering the next `times` matching requests (content that changes
        between two pages of a listing)."""
        with self._lock:
            self._hooks.append((path_contains, query_contains, times, callback))

    @property
    def pending(self) -> int:
        """Faults not yet fired."""
        with self._lock:
            return len(self._faults)

    def count(self, path_contains: str = "", method: str | None = None) -> int:
        with self._lock:
            return sum(1 for m, p, _ in self.requests if path_contains in p and (method is None or m == method))

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def log(self, method: str, path: str, query: str) -> None:
        with self._lock:
            self.requests.append((method, path, query))
        self._run_hooks(path, query)

    def _run_hooks(self, path: str, query: str) -> None:
        due: list[Callable[[], None]] = []
        with self._lock:
            kept = []
            for path_part, query_part, times, callback in self._hooks:
                if path_part in path and query_part in query:
                    due.append(callback)
                    times -= 1
                if times > 0:
                    kept.append((path_part, query_part, times, callback))
            self._hooks = kept
        for callback in due:
            callback()

    def take(self, path: str, query: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.path_contains in path and fault.query_contains in query:
                    if fault.skip > 0:
                        fault.skip -= 1
                        continue
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    async def middleware(
        self, request: Any, call_next: Any, *, authorized: bool, refuse: Callable[[], Response]
    ) -> Response:
        """Log the request, then answer it with its fault (status, delay, truncated body), `refuse()` when not
        authorized, or normally."""
        self.log(request.method, request.url.path, request.url.query)
        fault = self.take(request.url.path, request.url.query)
        if fault is not None and fault.delay:
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.status is not None:
            body = fault.body if fault.body is not None else {"message": "injected"}
            return JSONResponse(body, fault.status, headers=fault.headers)
        if not authorized:
            return refuse()
        response = await call_next(request)
        if fault is not None and fault.truncate_at is not None:
            chunks = [chunk async for chunk in response.body_iterator]
            return Response(b"".join(chunks)[: fault.truncate_at], response.status_code, media_type="application/json")
        return response
