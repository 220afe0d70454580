"""Three `kbsync run` replicas sharing one PostgreSQL, two tenants on two Chroma servers (README "Scaling out",
issue 8).

One cluster per module (real servers start once): a real PostgreSQL in a temp folder
(tests/servers/postgres.py), two real `chroma run` servers, A for tenant `acme` (the `[chroma]` server) and B for
tenant `globex` (its `[tenants.chroma]`), one Chatwoot-compatible server with one small portal per tenant, and three
`kbsync run` subprocesses with the same settings except their port and state_dir (which holds only their log
here: state and vectors live on the servers). Polls are hours apart: webhooks and the start-up reconcile drive
every change. Faults come from the servers themselves (the fake Chatwoot's delays, a stopped Chroma or PostgreSQL,
SIGKILL), never from patching kbsync.

What the tests observe comes from the product and the shared state: HTTP answers,
`/metrics`, `/v1/query` of each replica, the collections read with plain chromadb, and the `runs`, `leases` and
`queue_items` tables in PostgreSQL. The `healthy` fixture hands each test a cluster with every server up, every
replica alive (a killed one started again), no Chatwoot fault left and nothing in flight.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from kbsync.http import sign
from tests.conftest import MODEL_DIR, REPO
from tests.servers.chatwoot import ChatwootServer, FakeChatwoot, corpus_path
from tests.servers.chroma import ChromaServer, free_port
from tests.servers.postgres import PostgresServer, require_postgres

ACME_PORTAL = "acme-help"
GLOBEX_PORTAL = "globex-help"
ARTICLES_PER_TENANT = 7  # short corpus articles: ~25 chunks in all, embedded at ~14 chunks/s on 2 shared cores
LEASE_SECONDS = 6  # state.lease_seconds: a killed replica's projects are free again within this
REPLICAS = 3
PROJECTS = (("acme", "alpha"), ("globex", "beta"))
MARKER = re.compile(r"\brev\d{4}a\d+\b")  # the revision note each edit writes into an article


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll `predicate` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 when there is none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@dataclass(frozen=True)
class Secrets:
    acme_api: str = field(default_factory=lambda: f"acme-api-{secrets.token_hex(8)}")
    acme_webhook: str = field(default_factory=lambda: f"acme-whsec-{secrets.token_hex(8)}")
    acme_query: str = field(default_factory=lambda: f"acme-query-{secrets.token_hex(8)}")
    globex_api: str = field(default_factory=lambda: f"globex-api-{secrets.token_hex(8)}")
    globex_webhook: str = field(default_factory=lambda: f"globex-whsec-{secrets.token_hex(8)}")
    globex_query: str = field(default_factory=lambda: f"globex-query-{secrets.token_hex(8)}")
    admin: str = field(default_factory=lambda: f"admin-{secrets.token_hex(8)}")

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

    def webhook(self, tenant: str) -> str:
        return self.acme_webhook if tenant == "acme" else self.globex_webhook

    def query(self, tenant: str) -> str:
        return self.acme_query if tenant == "acme" else self.globex_query


@dataclass
class Article:
    """One seeded article and the revision note its newest edit carries (None: never edited)."""

    tenant: str
    project: str
    portal: str
    account: int
    id: int
    base: str
    marker: str | None = None

    @property
    def doc_id(self) -> str:
        return f"chatwoot:{self.portal}:{self.id}"

    @property
    def content(self) -> str:
        """The body its newest revision saved (what a sender's article payload carries, so two edits never
        send the same signed bytes: those are a replay, deduplicated by kbsync)."""
        return f"{self.base}\n\nRevision note {self.marker}." if self.marker else self.base

    @property
    def collection(self) -> str:
        return f"{self.tenant}__{self.project}"


@dataclass
class Sent:
    """One webhook as sent and answered."""

    replica: str
    article: Article
    delivery: str
    status: int
    seconds: float
    body: bytes


def settings_text(
    state_dir: Path, port: int, chatwoot_url: str, pg: PostgresServer, a: ChromaServer, b: ChromaServer
) -> str:
    """The one configuration every replica runs, except its own port and state_dir."""
    return textwrap.dedent(
        f"""
        state_dir = "{state_dir}"
        log_format = "json"
        log_level = "info"

        [chroma]
        mode = "http"
        host = "{a.host}"
        port = {a.port}

        [state]
        url = "{pg.url}"
        lease_seconds = {LEASE_SECONDS}

        [server]
        host = "127.0.0.1"
        port = {port}
        admin_token_env = "KBSYNC_ADMIN_TOKEN"

        [schedule]
        poll_interval_seconds = 3600       # webhooks and the start-up reconcile drive every change
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

        [tenants.chroma]
        host = "{b.host}"
        port = {b.port}

        [[tenants.projects]]
        id = "beta"

        [[tenants.projects.sources]]
        kind = "chatwoot"
        portal = "{GLOBEX_PORTAL}"
        """
    )


class Replica:
    """One `kbsync run` subprocess; can be killed and started again (a new pid, so a new owner)."""

    def __init__(
        self, name: str, config: Path, port: int, env: dict[str, str], log_path: Path, secrets_: Secrets
    ) -> None:
        self.name = name
        self.config = config
        self.port = port
        self.env = env
        self.log_path = log_path
        self.secrets = secrets_
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def __repr__(self) -> str:
        return f"<{self.name} pid={self.pid} port={self.port}>"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def owner(self) -> str:
        """How the replica names itself in `runs.owner` and `leases.owner` (host:pid)."""
        return f"{socket.gethostname()}:{self.pid}"

    def start(self) -> None:
        assert not self.alive, f"{self.name} is already running"
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kbsync", "--config", str(self.config), "run"],
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def wait_ready(self, timeout: float = 180) -> None:
        def ready() -> bool:
            if not self.alive:
                pytest.fail(
                    f"{self.name} exited with {self.proc.returncode if self.proc else None}:\n{self.log_tail()}"
                )
            try:
                return self.http.get("/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout, f"GET /readyz of {self.name}", interval=0.3)

    def kill(self) -> float:
        """SIGKILL; returns the time it was sent."""
        assert self.proc is not None and self.alive
        sent = time.time()
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=10) == -signal.SIGKILL
        return sent

    def stop(self) -> None:
        if not self.alive:
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        self.http.close()

    # -- its log ---------------------------------------------------------------------------------------

    def log_text(self, *, this_start: bool = False) -> str:
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset if this_start else 0)
            return log.read().decode("utf-8", errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log lines of this start."""
        events = []
        for line in self.log_text(this_start=True).splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def startup_reconciles_settled(self) -> bool:
        """Each project's start-up reconcile of this start ran, or found the project busy on another replica, or
        was done by another replica while it waited for a fair share."""
        settled = {
            (e.get("tenant"), e.get("project"))
            for e in self.log_events()
            if e.get("trigger") == "reconcile"
            and e.get("event") in ("run.finished", "run.skipped_busy", "run.skipped_done")
        }
        return all(key in settled for key in PROJECTS)

    # -- its API ---------------------------------------------------------------------------------------

    def webhook(self, body: bytes, tenant: str, delivery: str) -> httpx.Response:
        ts = str(int(time.time()))
        return self.http.post(
            f"/webhooks/{tenant}",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-Chatwoot-Timestamp": ts,
                "X-Chatwoot-Signature": sign(self.secrets.webhook(tenant), ts, body),
                "X-Chatwoot-Delivery": delivery,
            },
        )

    def query(self, tenant: str, project: str, text: str, k: int = 50) -> httpx.Response:
        return self.http.post(
            "/v1/query",
            json={"tenant": tenant, "project": project, "query": text, "k": k, "group": "chunk"},
            headers={"Authorization": f"Bearer {self.secrets.query(tenant)}"},
        )

    def resync(self, tenant: str, project: str, *, rebuild: bool, timeout: float = 120) -> httpx.Response:
        return self.http.post(
            "/v1/resync",
            json={"tenant": tenant, "project": project, "rebuild": rebuild, "wait": True},
            headers={"Authorization": f"Bearer {self.secrets.admin}"},
            timeout=timeout,
        )

    def metrics(self) -> str:
        response = self.http.get("/metrics", headers={"Authorization": f"Bearer {self.secrets.admin}"})
        assert response.status_code == 200, f"{self.name} /metrics: {response.status_code} {response.text[:300]}"
        return response.text


@dataclass
class Cluster:
    root: Path
    pg: PostgresServer
    chroma_a: ChromaServer
    chroma_b: ChromaServer
    chatwoot: ChatwootServer
    fake: FakeChatwoot
    secrets: Secrets
    replicas: list[Replica]
    articles: list[Article]
    db: sa.Engine
    created_at: float = field(default_factory=time.time)
    killed: dict[str, float] = field(default_factory=dict)  # owner -> when it was sent SIGKILL
    pg_up: bool = True
    _revisions: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    # -- servers ---------------------------------------------------------------------------------------

    def server_of(self, tenant: str) -> ChromaServer:
        return self.chroma_a if tenant == "acme" else self.chroma_b

    def stop_postgres(self) -> float:
        self.pg_up = False
        self.pg.stop("fast")
        self.pg.wait_down()
        return time.time()

    def start_postgres(self) -> float:
        self.pg.start()
        self.pg_up = True
        return time.time()

    def replica_of(self, owner: str) -> Replica | None:
        return next((r for r in self.replicas if r.alive and r.owner == owner), None)

    # -- Chatwoot edits and webhooks -------------------------------------------------------------------

    def tenant_articles(self, tenant: str) -> list[Article]:
        return [a for a in self.articles if a.tenant == tenant]

    def edit(self, article: Article) -> str:
        """Save a new revision of `article` in Chatwoot (the truth kbsync fetches on notify)."""
        marker = f"rev{next(self._revisions):04d}a{article.id}"
        article.marker = marker
        self.fake.edit_article(article.portal, article.id, content=article.content)
        return marker

    def send(
        self,
        article: Article,
        replica: Replica,
        *,
        event: str = "article_updated",
        delivery: str | None = None,
        body: bytes | None = None,
    ) -> Sent:
        """A webhook about `article`, signed as Chatwoot signs them, to one replica."""
        if body is None:
            payload = {
                "event": event,
                "account": {"id": article.account},
                "portal": {"slug": article.portal},
                "article": {"id": article.id, "content": article.content},
            }
            body = json.dumps(payload).encode()
        delivery = delivery or str(uuid.uuid4())
        started = time.monotonic()
        try:
            status = replica.webhook(body, article.tenant, delivery).status_code
        except httpx.HTTPError:
            status = 0  # no answer at all
        return Sent(replica.name, article, delivery, status, time.monotonic() - started, body)

    # -- the shared state ------------------------------------------------------------------------------

    def sql(self, query: str, **params: Any) -> list[Any]:
        with self.db.connect() as conn:
            return list(conn.execute(sa.text(query), params))

    def runs(self, *, since: float = 0.0) -> list[Any]:
        return self.sql(
            "SELECT id, tenant, project, kind, owner, started_at, finished_at, outcome FROM runs "
            "WHERE started_at >= :since ORDER BY started_at",
            since=since,
        )

    def lease_owner(self, tenant: str, project: str) -> str | None:
        rows = self.sql(
            "SELECT owner FROM leases WHERE name = :name AND expires_at > :now",
            name=f"project:{tenant}/{project}",
            now=time.time(),
        )
        return rows[0].owner if rows else None

    def held_leases(self) -> list[Any]:
        return self.sql(
            "SELECT name, owner, expires_at FROM leases WHERE name LIKE 'project:%' AND expires_at > :now",
            now=time.time(),
        )

    def queue_counts(self) -> dict[str, int]:
        return {
            row.status: int(row.n) for row in self.sql("SELECT status, count(*) AS n FROM queue_items GROUP BY status")
        }

    def delivery_status(self, deliveries: list[str]) -> dict[str, str]:
        """Each delivery id's queue item status; a delivery never stored is absent."""
        if not deliveries:
            return {}
        rows = self.sql(
            "SELECT delivery_id, status FROM queue_items WHERE delivery_id = ANY(:ids)", ids=list(deliveries)
        )
        return {row.delivery_id: row.status for row in rows}

    def pending_items(self) -> list[Any]:
        return self.sql(
            "SELECT id, tenant, project, attempts, owner, claimed_until, not_before, last_error "
            "FROM queue_items WHERE status = 'pending' ORDER BY id"
        )

    def wait_quiet(self, timeout: float) -> None:
        """Until nothing is in flight: the queue empty, no project lease held, every start-up reconcile done."""
        deadline = time.monotonic() + timeout
        while True:
            for replica in self.replicas:
                if not replica.alive:
                    pytest.fail(
                        f"{replica.name} died (exit {replica.proc.returncode if replica.proc else None}):"
                        f"\n{replica.log_tail()}"
                    )
            if (
                all(r.startup_reconciles_settled() for r in self.replicas)
                and not self.pending_items()
                and not self.held_leases()
            ):
                return
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the cluster did not settle within {timeout:.0f} s (queue empty, no lease held, "
                    f"start-up reconciles done):\n{self.describe()}"
                )
            time.sleep(0.3)

    def describe(self) -> str:
        """What is in flight, for failure messages."""
        lines = [
            f"replicas: {self.replicas}",
            f"queue: {self.queue_counts()}",
            f"held leases: {[tuple(r) for r in self.held_leases()]}",
        ]
        for row in self.pending_items()[:10]:
            lines.append(f"pending item: {tuple(row)}")
        return "\n".join(lines)

    # -- the index -------------------------------------------------------------------------------------

    @staticmethod
    def _article_problems(article: Article, texts: list[str] | None, where: str) -> list[str]:
        if not texts:
            return [f"{where}: {article.doc_id} is missing"]
        held = set(MARKER.findall("\n".join(texts)))
        expected = {article.marker} if article.marker else set()
        if held != expected:
            return [f"{where}: {article.doc_id} holds revisions {sorted(held)}, expected {sorted(expected)}"]
        return []

    def query_problems(self, replicas: list[Replica] | None = None) -> list[str]:
        """Where `/v1/query` of a replica does not return every article's newest revision, and only that."""
        problems: list[str] = []
        for replica in replicas or self.replicas:
            for tenant, project in PROJECTS:
                try:
                    response = replica.query(tenant, project, "help")
                except httpx.HTTPError as exc:
                    problems.append(f"{replica.name} /v1/query {tenant}/{project}: {exc!r}")
                    continue
                if response.status_code != 200:
                    problems.append(f"{replica.name} /v1/query {tenant}/{project}: {response.status_code}")
                    continue
                texts: dict[str, list[str]] = defaultdict(list)
                for hit in response.json()["results"]:
                    texts[hit["doc_id"]].append(hit["text"])
                for article in self.tenant_articles(tenant):
                    problems += self._article_problems(article, texts.get(article.doc_id), f"{replica.name} /v1/query")
        return problems

    def chroma_problems(self) -> list[str]:
        """The same, read with nothing but chromadb from each tenant's own server; and each collection only
        there. Every chunk of a document is of one version (one doc_hash, chunk_count chunks): applied once."""
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        problems: list[str] = []
        for tenant, project in PROJECTS:
            mine, other = self.server_of(tenant), self.chroma_b if tenant == "acme" else self.chroma_a
            name = f"{tenant}__{project}"
            client = chromadb.HttpClient(
                host=mine.host, port=mine.port, settings=ChromaSettings(anonymized_telemetry=False)
            )
            elsewhere = chromadb.HttpClient(
                host=other.host, port=other.port, settings=ChromaSettings(anonymized_telemetry=False)
            )
            if name not in {c.name for c in client.list_collections()}:
                problems.append(f"{name} is not on its tenant's Chroma server :{mine.port}")
                continue
            if name in {c.name for c in elsewhere.list_collections()}:
                problems.append(f"{name} is also on the other tenant's Chroma server :{other.port}")
            got = client.get_collection(name).get(include=["documents", "metadatas"])
            if len(got["ids"]) >= 50:
                problems.append(f"{name} holds {len(got['ids'])} chunks: k=50 queries no longer see them all")
            texts: dict[str, list[str]] = defaultdict(list)
            metas: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for document, meta in zip(got["documents"], got["metadatas"]):
                texts[meta["doc_id"]].append(document)
                metas[meta["doc_id"]].append(meta)
            for article in self.tenant_articles(tenant):
                problems += self._article_problems(article, texts.get(article.doc_id), f"chromadb :{mine.port}")
                chunks = metas.get(article.doc_id, [])
                hashes = {m["doc_hash"] for m in chunks}
                if chunks and (len(hashes) != 1 or {m["chunk_count"] for m in chunks} != {len(chunks)}):
                    problems.append(f"{article.doc_id}: {len(chunks)} chunks of {len(hashes)} versions")
            unknown = set(texts) - {a.doc_id for a in self.tenant_articles(tenant)}
            if unknown:
                problems.append(f"{name} holds documents no article has: {sorted(unknown)}")
        return problems

    def wait_converged(self, timeout: float, what: str) -> None:
        """Until the queue is drained and every replica answers every article's newest revision; then the same
        must hold read straight from the Chroma servers, and no queue item may have died."""
        deadline = time.monotonic() + timeout
        first = next(r for r in self.replicas if r.alive)
        problems: list[str] = ["not checked yet"]
        while time.monotonic() < deadline:
            if not self.pending_items():
                problems = self.query_problems([first])
                if not problems:
                    break
            time.sleep(0.5)
        else:
            pending = self.pending_items()
            raise AssertionError(
                f"{what}: not converged after {timeout:.0f} s; {len(pending)} queue items pending\n"
                + "\n".join(problems[:10])
                + "\n"
                + self.describe()
            )
        alive = [r for r in self.replicas if r.alive]
        problems = self.query_problems(alive) + self.chroma_problems()
        assert not problems, f"{what}:\n" + "\n".join(problems)
        assert self.queue_counts().get("dead", 0) == 0, f"{what}: dead queue items: {self.describe()}"

    def assert_runs_serialized(self, *, since: float) -> list[Any]:
        """Invariant 7 across the cluster, from the run records: no two runs of one project overlap in time.

        A run whose owner was killed never records its end (the next run of its project closes it as abandoned):
        it counts as running until the kill. Returns the runs checked."""
        rows = self.runs(since=since)
        overlaps = []
        by_project: dict[tuple[str, str], list[Any]] = defaultdict(list)
        for row in rows:
            by_project[(row.tenant, row.project)].append(row)
        for key, project_runs in by_project.items():
            spans = []
            for row in project_runs:
                end = row.finished_at if row.finished_at is not None else math.inf
                if row.finished_at is None or row.outcome == "abandoned":
                    end = min(end, self.killed.get(row.owner, math.inf))
                spans.append((row.started_at, end, row))
            spans.sort(key=lambda span: span[0])
            for i, (start, end, row) in enumerate(spans):
                for other_start, _other_end, other in spans[i + 1 :]:
                    if other_start >= end:
                        break
                    overlaps.append(
                        f"{key[0]}/{key[1]}: run {row.id} ({row.kind}, {row.owner}, {start:.3f}-{end:.3f}) overlaps "
                        f"run {other.id} ({other.kind}, {other.owner}, from {other_start:.3f})"
                    )
        assert not overlaps, "a project was worked by two runs at once:\n" + "\n".join(overlaps)
        return rows


def short_articles(count: int, *, skip: int = 0) -> list[dict[str, Any]]:
    """The `count` shortest English chatwoot-docs articles after `skip`: a cheap start-up sync."""
    data = json.loads(corpus_path("chatwoot-docs").read_text(encoding="utf-8"))
    english = [a for a in data["articles"] if a.get("locale") == "en" and a.get("status", "published") == "published"]
    english.sort(key=lambda a: (len(a["content"] or ""), a["id"]))
    return english[skip : skip + count]


def seed_chatwoot(secrets_: Secrets) -> tuple[FakeChatwoot, list[Article]]:
    fake = FakeChatwoot(with_default_tokens=False, tie_order="stable")
    fake.add_token(1, secrets_.acme_api, role="agent", name="Acme Agent")
    fake.add_token(2, secrets_.globex_api, role="agent", name="Globex Agent")
    fake.add_portal(1, ACME_PORTAL, name="Acme Help")
    fake.add_portal(2, GLOBEX_PORTAL, name="Globex Help")
    base = fake.now() - 3600
    articles = []
    for tenant, project, portal, account, skip in (
        ("acme", "alpha", ACME_PORTAL, 1, 0),
        ("globex", "beta", GLOBEX_PORTAL, 2, ARTICLES_PER_TENANT),
    ):
        for n, record in enumerate(short_articles(ARTICLES_PER_TENANT, skip=skip)):
            article_id = fake.add_article(
                portal, title=record["title"], content=record["content"], status="published", updated_at=base + n
            )
            articles.append(Article(tenant, project, portal, account, article_id, record["content"]))
    fake.snapshot()
    return fake, articles


def replica_env(secrets_: Secrets) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBSYNC_")}
    env["KBSYNC_EMBEDDING__MODEL_DIR"] = str(MODEL_DIR)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(secrets_.env())
    return env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """PostgreSQL, Chroma servers A and B, the Chatwoot server and three started replicas whose start-up
    reconciles have run."""
    require_postgres()
    root = tmp_path_factory.mktemp("cluster")
    secrets_ = Secrets()
    with ExitStack() as stack:
        pg = PostgresServer().start()
        stack.callback(pg.destroy)
        chroma_a = ChromaServer(root / "chroma-a" / "data").start()
        stack.callback(chroma_a.stop)
        chroma_b = ChromaServer(root / "chroma-b" / "data").start()
        stack.callback(chroma_b.stop)
        fake, articles = seed_chatwoot(secrets_)
        chatwoot = stack.enter_context(ChatwootServer(fake))
        db = sa.create_engine(pg.url.replace("postgresql://", "postgresql+psycopg://"), pool_pre_ping=True)
        stack.callback(db.dispose)
        replicas = []
        for n in range(1, REPLICAS + 1):
            port = free_port()
            state_dir = root / f"replica-{n}"
            state_dir.mkdir()
            config = state_dir / "settings.toml"
            config.write_text(
                settings_text(state_dir, port, chatwoot.base_url, pg, chroma_a, chroma_b), encoding="utf-8"
            )
            replica = Replica(f"replica-{n}", config, port, replica_env(secrets_), state_dir / "kbsync.log", secrets_)
            stack.callback(replica.close)
            replicas.append(replica)
        for replica in replicas:  # all at once, as a deployment rolls them out
            replica.start()
        for replica in replicas:
            replica.wait_ready()
        cluster = Cluster(root, pg, chroma_a, chroma_b, chatwoot, fake, secrets_, replicas, articles, db)
        cluster.wait_quiet(180)
        yield cluster


@pytest.fixture
def healthy(cluster: Cluster) -> Cluster:
    """The module's cluster with every server up, every replica alive, no Chatwoot fault and nothing in flight."""
    cluster.fake.reset_faults()
    if not cluster.pg_up:
        cluster.start_postgres()
    for server in (cluster.chroma_a, cluster.chroma_b):
        if server._process is None:
            server.start()
    restarted = [r for r in cluster.replicas if not r.alive]
    for replica in restarted:
        replica.start()
    for replica in restarted:
        replica.wait_ready()
    cluster.wait_quiet(120)
    return cluster
