"""A real PostgreSQL server in a temp folder on 127.0.0.1, for the replica tests.

Debian's `postgresql` package provides initdb and pg_ctl (`.ci/run` installs it). Both refuse to run as root, so
as root the cluster runs as the unprivileged `postgres` user (runuser). Without PostgreSQL the tests that need it
skip with a reason that says what to install; under CI (`CI=true`) they fail instead.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.servers.chroma import free_port

INSTALL_HINT = "PostgreSQL is not installed: apt-get install postgresql (provides initdb and pg_ctl)"


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def require_postgres() -> None:
    """Skip (or fail under CI) when initdb/pg_ctl are missing."""
    if _bin("initdb") and _bin("pg_ctl"):
        return
    if os.environ.get("CI") == "true":
        pytest.fail(INSTALL_HINT + " (CI must run the PostgreSQL tests)")
    pytest.skip(INSTALL_HINT)


class PostgresServer:
    """initdb + pg_ctl start on a free port; `url` connects as the superuser `kbsync` (trust auth, loopback)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="kbsync-pg-"))
        self.data = self.root / "data"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            self._as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.root, "postgres", "postgres")
            os.chmod(self.root, 0o755)

    @property
    def url(self) -> str:
        return f"postgresql://kbsync@127.0.0.1:{self.port}/kbsync"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self._as_user, *args], capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> PostgresServer:
        require_postgres()
        if not self.data.exists():
            self._run(_bin("initdb") or "initdb", "-D", str(self.data), "-A", "trust", "-U", "kbsync", "--no-sync")
        self._run(
            _bin("pg_ctl") or "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            "start",
        )
        if not self._database_exists():
            createdb = _bin("createdb") or "createdb"
            self._run(createdb, "-h", "127.0.0.1", "-p", str(self.port), "-U", "kbsync", "kbsync")
        return self

    def _database_exists(self) -> bool:
        psql = _bin("psql") or "psql"
        result = self._run(
            psql,
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "kbsync",
            "-d",
            "postgres",
            "-tAc",
            "SELECT 1 FROM pg_database WHERE datname = 'kbsync'",
            check=False,
        )
        return result.stdout.strip() == "1"

    def stop(self, mode: str = "fast") -> None:
        if self.data.exists():
            self._run(_bin("pg_ctl") or "pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def wait_down(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (self.data / "postmaster.pid").exists():
            time.sleep(0.1)
