"""uvicorn in a background thread on a loopback port: the shared base of the test servers."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn


class _ThreadedUvicorn(uvicorn.Server):
    """uvicorn server that never touches signal handlers (it runs off the main thread)."""

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        pass

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # uvicorn >= 0.29
        yield


class ThreadedServer:
    """Binds `host:port` (0 = a free port) first, so the real port is known before the app is built."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, name: str = "test-server") -> None:
        self.host = host
        self._requested_port = port
        self._name = name
        self._port: int | None = None
        self._server: _ThreadedUvicorn | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def port(self) -> int:
        """The bound port (only while started)."""
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def base_url(self) -> str:
        """Base URL such as ``http://127.0.0.1:54321`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    def bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        self._port = sock.getsockname()[1]
        return sock

    def serve(self, app: Any, sock: socket.socket, timeout: float) -> None:
        """Serve `app` on `sock` and return once the server accepts connections."""
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2)
        self._server = _ThreadedUvicorn(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"{self._name}:{self._port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self._name} failed to start")
            time.sleep(0.01)
        # Started means listening; one real connection proves the socket accepts.
        with socket.create_connection((self.host, self.port), timeout=timeout):
            pass

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None
        self._port = None
