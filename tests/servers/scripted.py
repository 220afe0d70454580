"""A raw HTTP/1.1 server on 127.0.0.1 that answers each request with the next scripted reply.

For testing HTTP clients against what real servers do wrong: statuses with `Retry-After`, bodies cut off before
their Content-Length, bodies trickled a byte at a time, compressed bodies, silence. Replies are plain data
(`Reply`), consumed in order per path; a path with no reply left answers 200 `{"ok": true}`.

Pure test-support code: it must never import `kbsync`.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Reply", "ScriptedServer"]


@dataclass
class Reply:
    """One scripted answer. `body` bytes are sent as they are; anything else is sent as JSON.

    `cut_at`: send only this many body bytes, then close (Content-Length still announces all of them).
    `trickle`: seconds between body bytes. `stall`: seconds to wait before answering at all."""

    status: int = 200
    body: Any = field(default_factory=lambda: {"ok": True})
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    cut_at: int | None = None
    trickle: float = 0.0
    stall: float = 0.0


class ScriptedServer:
    """Serves scripted replies; `requests` lists (method, path with query, headers) of every request."""

    def __init__(self) -> None:
        self._replies: dict[str, deque[Reply]] = defaultdict(deque)
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # header names lower-cased
        self.client_ports: list[int] = []  # one per request: equal ports mean one pooled connection
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                server._handle(self)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that hung up on a trickled or cut-off reply is the point of the test

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="scripted-http", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> ScriptedServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def script(self, path: str, *replies: Reply) -> None:
        """Queue `replies` for `path` (without the query string)."""
        with self._lock:
            self._replies[path].extend(replies)

    def count(self, path: str) -> int:
        return sum(1 for _, p, _ in self.requests if p.split("?")[0] == path)

    def _next(self, path: str) -> Reply:
        with self._lock:
            queue = self._replies.get(path)
            return queue.popleft() if queue else Reply()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?")[0]
        with self._lock:
            self.requests.append((handler.command, handler.path, {k.lower(): v for k, v in handler.headers.items()}))
            self.client_ports.append(handler.client_address[1])
        reply = self._next(path)
        if reply.stall:
            time.sleep(reply.stall)
        body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        try:
            handler.send_response(reply.status)
            handler.send_header("content-type", reply.content_type)
            handler.send_header("content-length", str(len(body)))
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            if reply.cut_at is not None:
                handler.send_header("connection", "close")
            handler.end_headers()
            sent = body if reply.cut_at is None else body[: reply.cut_at]
            if reply.trickle:
                for index in range(len(sent)):
                    handler.wfile.write(sent[index : index + 1])
                    handler.wfile.flush()
                    time.sleep(reply.trickle)
            else:
                handler.wfile.write(sent)
            handler.wfile.flush()
            if reply.cut_at is not None:
                handler.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True
