"""Exclusive, non-blocking file locks (flock) that mark one process as the owner of a folder's contents, and
`try_lock` for a thread lock taken only if free.

The kernel releases a flock when its process dies, `kill -9` included: no stale lock files to clean up.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["FileLock", "lock_holder", "try_lock"]


class FileLock:
    """Holds `path` exclusively; `acquire()` returns False when another process holds it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def lock_holder(path: Path) -> str | None:
    """The pid written by the process holding `path`, or None when nobody holds it (checked, not kept)."""
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextmanager
def try_lock(lock: threading.Lock, wait: bool) -> Iterator[bool]:
    """Hold `lock` for the block if it could be taken (waiting for it when `wait`); yields whether it was."""
    taken = lock.acquire(blocking=wait)
    try:
        yield taken
    finally:
        if taken:
            lock.release()
