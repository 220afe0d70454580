"""A hostile web server on 127.0.0.1 for the `web` source's defences: it answers each path with exactly the status,
headers and bytes a test sets (decompression bombs, stacked encodings, `Disallow: /`, an empty `<urlset>`),
optionally trickled one byte at a time. The standard library's http.server, so nothing rewrites the bytes.

Pure test-support code: it never imports ``kbsync``.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["HostileServer", "Reply", "gzip_bomb"]


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    trickle_seconds: float = 0.0  # > 0: the body goes out one byte at a time, this far apart


def gzip_bomb(decoded_bytes: int, layers: int = 1) -> bytes:
    """`decoded_bytes` zero bytes, gzipped `layers` times (1 GiB is about 1 MB once, a few KB twice)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    parts = []
    for _ in range(decoded_bytes // len(block)):
        parts.append(compressor.compress(block))
    parts.append(compressor.compress(bytes(decoded_bytes % len(block))))
    parts.append(compressor.flush())
    data = b"".join(parts)
    for _ in range(layers - 1):
        data = gzip.compress(data, compresslevel=9, mtime=0)
    return data


class HostileServer:
    """`replies[path]` answers GET `path` (anything else: 404). `requests` lists the paths asked for, `hosts` the
    Host header of each request."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.replies: dict[str, Reply] = {}
        self.requests: list[str] = []
        self.hosts: list[str] = []
        self._lock = threading.Lock()
        handler = self._handler()
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="hostile-web", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                with server._lock:
                    server.requests.append(path)
                    server.hosts.append(self.headers.get("Host", ""))
                    reply = server.replies.get(path, Reply(404, {"content-type": "text/plain"}, b"not found"))
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                try:
                    if reply.trickle_seconds <= 0:
                        self.wfile.write(reply.body)
                        return
                    for index in range(len(reply.body)):
                        self.wfile.write(reply.body[index : index + 1])
                        self.wfile.flush()
                        time.sleep(reply.trickle_seconds)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def handle(self) -> None:
                try:
                    super().handle()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client hung up on a bomb: that is the point

            def log_message(self, *_args: object) -> None:
                pass

        return Handler

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
