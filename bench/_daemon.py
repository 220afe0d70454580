"""A `kbsync run` subprocess for the benchmarks: settings in a temp folder, secrets in its environment only."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench._common import REPO, model_dir


def settings_head(state_dir: Path, port: int, *, log_level: str = "warning") -> str:
    """The top of a benchmark daemon's settings.toml: its state dir, JSON logs, its port, and schedules long
    enough that only what the benchmark triggers runs. Tenants follow."""
    return (
        f'state_dir = "{state_dir}"\nlog_format = "json"\nlog_level = "{log_level}"\n\n'
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n\n'
        "[schedule]\npoll_interval_seconds = 3600\nreconcile_interval_minutes = 1440\njitter_seconds = 0\n\n"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of a non-empty list."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class BenchDaemon:
    """Starts `python -m kbsync --config CONFIG run`, waits for /readyz and the start-up reconcile, stops with
    SIGTERM. Its log goes to `<folder>/daemon.log`."""

    def __init__(self, config: Path, port: int, secrets: dict[str, str], admin_token: str) -> None:
        self.config = config
        self.port = port
        self.admin_token = admin_token
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KBSYNC_")}
        self.env.update(secrets)
        self.env["KBSYNC_EMBEDDING__MODEL_DIR"] = str(model_dir())
        self.log_path = config.parent / "daemon.log"
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> BenchDaemon:
        self.start()
        try:
            self.wait_reconciled()
        except BaseException:
            self.stop()
            raise
        return self

    def start(self) -> None:
        """Start the process and wait for /readyz (not for the start-up reconcile)."""
        self.spawn()
        self.wait_ready()

    def spawn(self) -> None:
        """Start the process without waiting for it (replicas started together race for the project leases)."""
        self.started = time.time()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kbsync", "--config", str(self.config), "run"],
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def wait_ready(self) -> None:
        """Until /readyz answers 200; stops the process if it never does."""
        try:
            self._wait(lambda: self.http.get("/readyz", timeout=2).status_code == 200, 300, "/readyz")
        except BaseException:
            self.stop()
            raise

    def wait_reconciled(self) -> None:
        """Until every project has a reconcile that began after this daemon started and has ended."""
        self._wait(lambda: self._reconciled(self.started), 3600, "the start-up reconcile")

    def __exit__(self, *_exc: object) -> None:
        self.stop()
        self.http.close()

    def _wait(self, check: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace").splitlines()[-20:]
                raise RuntimeError(f"the daemon exited with {self.proc.returncode}:\n" + "\n".join(tail))
            try:
                if check():
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.25)

    def _reconciled(self, started: float) -> bool:
        status = self.status()
        runs = [p["last_runs"].get("reconcile") for p in status["projects"]]
        return all(r is not None and r["started_at"] >= started - 1 and r["outcome"] for r in runs)

    def status(self) -> dict[str, Any]:
        response = self.http.get("/v1/status", headers={"Authorization": f"Bearer {self.admin_token}"})
        response.raise_for_status()
        return response.json()

    def metrics(self) -> str:
        return self.http.get("/metrics", headers={"Authorization": f"Bearer {self.admin_token}"}).text

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
