"""A real `kbsync run` subprocess against the Chatwoot-compatible test server (tests/servers/chatwoot.py).

One Chatwoot server and one daemon per module (real servers start once, signals and `kill -9` run
against a real subprocess). Two tenants on the same server: `acme` (account 1, portal `acme-help`, a few short
articles) and `globex` (account 2, portal `globex-help`). Tests that stop or kill the daemon leave it stopped; the
`daemon` fixture starts it again on the same state dir before the next test.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kbsync.http import sign
from tests.conftest import MODEL_DIR, REPO
from tests.servers.chatwoot import ChatwootServer, FakeChatwoot, corpus_path

ACME_PORTAL = "acme-help"
GLOBEX_PORTAL = "globex-help"
ACME_ARTICLES = 9  # short corpus articles: the first reconcile embeds a few dozen chunks (~14 chunks/s on 2 cores)
GLOBEX_ARTICLES = 2


@dataclass(frozen=True)
class Secrets:
    """Every secret the daemon is given; distinctive values, so a leak into the log is unambiguous."""

    acme_api: str = field(default_factory=lambda: f"acme-api-{secrets.token_hex(12)}")
    acme_webhook: str = field(default_factory=lambda: f"acme-whsec-{secrets.token_hex(12)}")
    acme_query: str = field(default_factory=lambda: f"acme-query-{secrets.token_hex(12)}")
    globex_api: str = field(default_factory=lambda: f"globex-api-{secrets.token_hex(12)}")
    globex_webhook: str = field(default_factory=lambda: f"globex-whsec-{secrets.token_hex(12)}")
    globex_query: str = field(default_factory=lambda: f"globex-query-{secrets.token_hex(12)}")
    admin: str = field(default_factory=lambda: f"admin-{secrets.token_hex(12)}")

    def values(self) -> list[str]:
        return list(vars(self).values())

    def env(self) -> dict[str, str]:
        return {
            "ACME_CHATWOOT_TOKEN": self.acme_api,
            "ACME_WEBHOOK_SECRET": self.acme_webhook,
            "ACME_QUERY_TOKEN": self.acme_query,
            "GLOBEX_CHATWOOT_TOKEN": self.globex_api,
            "GLOBEX_WEBHOOK_SECRET": self.globex_webhook,
            "GLOBEX_QUERY_TOKEN": self.globex_query,
            "KBSYNC_ADMIN_TOKEN": self.admin,
        }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without any KBSYNC_* variable, plus the model location and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBSYNC_")}
    env["KBSYNC_EMBEDDING__MODEL_DIR"] = str(MODEL_DIR)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def short_corpus_articles(count: int, *, skip: int = 0) -> list[dict[str, Any]]:
    """The `count` shortest English chatwoot-docs articles (after `skip`), so the startup sync stays small."""
    data = json.loads(corpus_path("chatwoot-docs").read_text(encoding="utf-8"))
    english = [a for a in data["articles"] if a.get("locale") == "en" and a.get("status", "published") == "published"]
    english.sort(key=lambda a: (len(a["content"] or ""), a["id"]))
    return english[skip : skip + count]


def settings_text(state_dir: Path, port: int, chatwoot_url: str) -> str:
    return textwrap.dedent(
        f"""
        state_dir = "{state_dir}"
        log_format = "json"
        log_level = "info"

        [server]
        host = "127.0.0.1"
        port = {port}
        admin_token_env = "KBSYNC_ADMIN_TOKEN"

        [schedule]
        poll_interval_seconds = 3600       # only webhooks (and the start-up reconcile) drive changes
        reconcile_interval_minutes = 1440
        jitter_seconds = 0

        [[tenants]]
        id = "acme"
        chatwoot_url = "{chatwoot_url}"
        account_id = 1
        api_token_env = "ACME_CHATWOOT_TOKEN"
        webhook_secret_env = "ACME_WEBHOOK_SECRET"
        query_token_env = "ACME_QUERY_TOKEN"

        [[tenants.projects]]
        id = "alpha"

        [[tenants.projects.sources]]
        kind = "chatwoot"
        portal = "{ACME_PORTAL}"

        [[tenants]]
        id = "globex"
        chatwoot_url = "{chatwoot_url}"
        account_id = 2
        api_token_env = "GLOBEX_CHATWOOT_TOKEN"
        webhook_secret_env = "GLOBEX_WEBHOOK_SECRET"
        query_token_env = "GLOBEX_QUERY_TOKEN"

        [[tenants.projects]]
        id = "beta"

        [[tenants.projects.sources]]
        kind = "chatwoot"
        portal = "{GLOBEX_PORTAL}"
        """
    )


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 when there is none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class DaemonProcess:
    """One `kbsync run` subprocess on a fixed config and state dir; can be stopped, killed and started again.

    Its stderr (the JSON log) of every start is appended to one file, so a test can read all of it."""

    def __init__(
        self,
        config: Path,
        port: int,
        env: dict[str, str],
        log_path: Path,
        secrets_: Secrets,
        args: tuple[str, ...] = (),
    ) -> None:
        self.config = config
        self.args = args  # after `run`, e.g. ("--workers", "1")
        self.port = port
        self.env = env
        self.log_path = log_path
        self.secrets = secrets_
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    # -- lifecycle -------------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, *, wait_reconciled: bool = True, timeout: float = 120) -> None:
        assert not self.alive, "the daemon is already running"
        self.started_at = time.time()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kbsync", "--config", str(self.config), "run", *self.args],
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self.wait_ready(timeout)
        if wait_reconciled:
            self.wait_startup_reconcile(timeout)

    def wait_ready(self, timeout: float = 120) -> None:
        def ready() -> bool:
            if not self.alive:
                pytest.fail(f"the daemon exited with {self.proc.returncode if self.proc else None}:\n{self.log_tail()}")
            try:
                return self.http.get("/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout, "GET /readyz", interval=0.2)

    def wait_startup_reconcile(self, timeout: float = 120) -> dict[str, Any]:
        """Until every project's reconcile of this start has an outcome; returns the status."""

        def reconciled() -> dict[str, Any] | None:
            status = self.status()
            for project in status["projects"]:
                run = project["last_runs"].get("reconcile")
                if run is None or run["started_at"] < self.started_at - 1 or run["outcome"] is None:
                    return None
            return status

        return wait_for(reconciled, timeout, "the start-up reconcile", interval=0.25)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not stop."""
        if not self.alive:
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- the API ---------------------------------------------------------------------------------------

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets.admin}"}

    def status(self) -> dict[str, Any]:
        response = self.http.get("/v1/status", headers=self.admin_headers())
        assert response.status_code == 200, response.text
        return response.json()

    def project_status(self, tenant: str, project: str) -> dict[str, Any]:
        return next(p for p in self.status()["projects"] if (p["tenant"], p["project"]) == (tenant, project))

    def metrics(self) -> str:
        response = self.http.get("/metrics", headers=self.admin_headers())
        assert response.status_code == 200
        return response.text

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(self.metrics(), name, **labels)

    def query(
        self,
        text: str,
        *,
        tenant: str = "acme",
        project: str = "alpha",
        k: int = 5,
        token: str | None = "",
        locale: str | None = None,
    ) -> httpx.Response:
        """POST /v1/query; `token=""` means the tenant's own query token, None no Authorization header."""
        if token == "":
            token = self.secrets.acme_query if tenant == "acme" else self.secrets.globex_query
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        body: dict[str, Any] = {"tenant": tenant, "project": project, "query": text, "k": k}
        if locale is not None:
            body["locale"] = locale
        return self.http.post("/v1/query", json=body, headers=headers)

    def results(self, text: str, **kwargs: Any) -> list[dict[str, Any]]:
        response = self.query(text, **kwargs)
        assert response.status_code == 200, response.text
        return response.json()["results"]

    def webhook(
        self,
        event: str,
        article_id: int | None = None,
        *,
        tenant: str = "acme",
        portal: str = ACME_PORTAL,
        account: int = 1,
        article: dict[str, Any] | None = None,
        secret: str | None = None,
        delivery: str | None = None,
        timestamp: int | None = None,
        body: bytes | None = None,
        signature: str | None = None,
    ) -> httpx.Response:
        """A webhook signed as Chatwoot signs them (`secret` defaults to the tenant's own)."""
        if body is None:
            payload: dict[str, Any] = {"event": event, "account": {"id": account}, "portal": {"slug": portal}}
            if article_id is not None or article is not None:
                payload["article"] = article if article is not None else {"id": article_id}
            body = json.dumps(payload).encode()
        if secret is None:
            secret = self.secrets.globex_webhook if tenant == "globex" else self.secrets.acme_webhook
        ts = str(int(time.time()) if timestamp is None else timestamp)
        headers = {
            "Content-Type": "application/json",
            "X-Chatwoot-Timestamp": ts,
            "X-Chatwoot-Signature": signature if signature is not None else sign(secret, ts, body),
            "X-Chatwoot-Delivery": delivery or str(uuid.uuid4()),
        }
        return self.http.post(f"/webhooks/{tenant}", content=body, headers=headers)

    def wait_queryable(self, marker: str, timeout: float = 20, **kwargs: Any) -> float:
        """Seconds until a chunk containing `marker` comes back from /v1/query (k=50: the test collections are
        small, so this does not depend on how the chunk ranks)."""
        kwargs.setdefault("k", 50)
        started = time.monotonic()
        wait_for(
            lambda: any(marker in r["text"] for r in self.results(marker, **kwargs)),
            timeout,
            f"{marker!r} to become queryable",
        )
        return time.monotonic() - started

    def doc_ids(self, tenant: str = "acme", project: str = "alpha") -> set[str]:
        """Every doc_id in a small collection: all its chunks come back for k=50."""
        results = self.results("help", tenant=tenant, project=project, k=50)
        assert len(results) < 50, "the collection outgrew doc_ids(): fewer test articles, or another way to list"
        return {r["doc_id"] for r in results}

    def queue_drained(self) -> bool:
        return self.status()["queue"]["pending"] == 0

    def close(self) -> None:
        self.stop()
        self.http.close()


@dataclass
class Stack:
    """The module's Chatwoot server, the ids of its seeded articles and the daemon."""

    chatwoot: ChatwootServer
    fake: FakeChatwoot
    daemon: DaemonProcess
    secrets: Secrets
    config: Path
    state_dir: Path
    acme_ids: list[int]
    globex_ids: list[int]

    def cli(self, *args: str, admin_token: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`kbsync --config <the daemon's config> ARGS` in a subprocess (KBSYNC_ADMIN_TOKEN set unless told)."""
        env = base_env(self.secrets.env())
        if not admin_token:
            env.pop("KBSYNC_ADMIN_TOKEN")
        return subprocess.run(
            [sys.executable, "-m", "kbsync", "--config", str(self.config), *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def seed_chatwoot(secrets_: Secrets) -> tuple[FakeChatwoot, list[int], list[int]]:
    fake = FakeChatwoot(with_default_tokens=False, tie_order="stable")
    fake.add_token(1, secrets_.acme_api, role="agent", name="Acme Agent")
    fake.add_token(2, secrets_.globex_api, role="agent", name="Globex Agent")
    fake.add_portal(1, ACME_PORTAL, name="Acme Help")
    fake.add_portal(2, GLOBEX_PORTAL, name="Globex Help")
    base = fake.now() - 3600
    acme_ids = [
        fake.add_article(ACME_PORTAL, title=a["title"], content=a["content"], status="published", updated_at=base + n)
        for n, a in enumerate(short_corpus_articles(ACME_ARTICLES))
    ]
    globex_ids = [
        fake.add_article(GLOBEX_PORTAL, title=a["title"], content=a["content"], status="published", updated_at=base + n)
        for n, a in enumerate(short_corpus_articles(GLOBEX_ARTICLES, skip=ACME_ARTICLES))
    ]
    fake.snapshot()
    return fake, acme_ids, globex_ids


@pytest.fixture(scope="module")
def daemon_options() -> tuple[tuple[str, ...], dict[str, str]]:
    """Arguments after `kbsync run` and extra environment of the module's daemon; a module overrides it."""
    return (), {}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, daemon_options: tuple[tuple[str, ...], dict[str, str]]
) -> Iterator[Stack]:
    """Chatwoot server + a started daemon whose start-up reconcile has finished."""
    root = tmp_path_factory.mktemp("daemon")
    secrets_ = Secrets()
    fake, acme_ids, globex_ids = seed_chatwoot(secrets_)
    with ChatwootServer(fake) as chatwoot:
        port = free_port()
        state_dir = root / "state"
        config = root / "settings.toml"
        config.write_text(settings_text(state_dir, port, chatwoot.base_url), encoding="utf-8")
        args, extra_env = daemon_options
        env = base_env({**secrets_.env(), **extra_env})
        daemon = DaemonProcess(config, port, env, root / "daemon.log", secrets_, args)
        try:
            daemon.start()
            yield Stack(chatwoot, fake, daemon, secrets_, config, state_dir, acme_ids, globex_ids)
        finally:
            daemon.close()


@pytest.fixture
def daemon(stack: Stack) -> DaemonProcess:
    """The module's daemon, started again (same state dir) if an earlier test stopped or killed it, with the
    webhooks of earlier tests applied (so a test's counters move only by what it did)."""
    if not stack.daemon.alive:
        stack.fake.reset_faults()
        stack.daemon.start()
    wait_for(stack.daemon.queue_drained, 30, "the queue of earlier tests to drain")
    time.sleep(0.05)  # the applied counter moves just after the item is marked done
    return stack.daemon


@pytest.fixture
def fake(stack: Stack) -> Iterator[FakeChatwoot]:
    """The module's fake Chatwoot; faults a test left behind are dropped afterwards (its data is kept: the
    daemon's index mirrors it)."""
    yield stack.fake
    stack.fake.reset_faults()
