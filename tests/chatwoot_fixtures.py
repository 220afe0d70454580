"""Fixtures for tests that run kbsync end to end against the Chatwoot-compatible server (tests/servers/chatwoot.py).

One server per session holds both corpora plus three small portals built from them, so that a reconcile embeds
a few dozen short chunks, not the corpus (embedding the whole corpus takes minutes on two cores):

- `small-help`: 31 chatwoot-docs articles cut to their first paragraph, on two list pages (25 + 6), with
  distinct `updated_at` values: 27 short published articles, one longer published article of six sections
  (`LONG_ID`, four chunks), two drafts, one archived article, and one published article carrying staged
  `draft_*` edits.
- `kanboard-mini`: kanboard-docs articles in English, French and Spanish, with their localized categories.
- `tiny-help`: three short articles, for tests that only need something to sync.

`fake` resets the server's state for each test; `kb_factory` writes a settings.toml for one or more tenants whose
chatwoot sources point at the server (tokens in environment variables, as in production) and opens the engine
with fast retries and no rate limit. A second server (`other_chatwoot`) serves a `tiny-help` portal with the
same article ids and different text: another tenant's Chatwoot installation.

tests/invariants/conftest.py re-exports the fixtures; a test module elsewhere imports the ones it uses.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from kbsync.engine import Engine
from kbsync.records import ProjectIndex
from kbsync.runs import ProjectKey, RunReport
from kbsync.settings import load_settings
from kbsync.sources.chatwoot import ChatwootClientOptions
from kbsync.wiring import open_engine
from tests.servers.chatwoot import AGENT_TOKEN, ChatwootServer, FakeChatwoot, corpus_path

__all__ = [
    "ARCHIVED_ID",
    "CW",
    "DRAFT_IDS",
    "FAST",
    "KB",
    "LONG_ID",
    "MULTI",
    "OTHER_TOKEN",
    "SMALL",
    "STAGED_CONTENT",
    "STAGED_ID",
    "STAGED_TITLE",
    "TINY",
    "Kb",
    "chatwoot",
    "doc_id",
    "fake",
    "kb",
    "kb_factory",
    "other_chatwoot",
    "other_fake",
    "published_doc_ids",
    "settings_factory",
    "source",
    "tenant",
]

CW = "chatwoot-docs"
KB = "kanboard-docs"
SMALL = "small-help"
MULTI = "kanboard-mini"
TINY = "tiny-help"

SMALL_BASE_ID = 50_001
LONG_ID = 50_031  # published, six short sections: four chunks at max_tokens = 96
DRAFT_IDS = (50_028, 50_029)
ARCHIVED_ID = 50_030
STAGED_ID = 50_002  # published, with an unpublished draft_title/draft_content staged on it (Chatwoot 4.16)
STAGED_TITLE = "Staged title nobody may read yet"
STAGED_CONTENT = "Staged draft text that is not live: the launch of the secret Omega plan."
OTHER_TOKEN = "globex-agent-token"

MAX_TOKENS = 96  # small chunks: the long article is four of them

# Retries that cost milliseconds, no rate limit: faults are injected by the server and must not slow the suite.
FAST = ChatwootClientOptions(
    connect_timeout=2.0,
    read_timeout=5.0,
    attempts=3,
    retry_budget_seconds=5.0,
    backoff_initial=0.01,
    backoff_max=0.05,
    requests_per_second=None,
)


def doc_id(portal: str, article_id: int) -> str:
    return f"chatwoot:{portal}:{article_id}"


def published_doc_ids(fake: FakeChatwoot, portal: str, locale: str | None = None) -> set[str]:
    """What a correct sync of `portal` holds: its published articles (of one locale)."""
    return {doc_id(portal, i) for i in fake.published_ids(portal, locale)}


# ------------------------------------------------------------------------------------------ the portals


def _paragraphs(markdown: str) -> list[str]:
    """Plain prose paragraphs of a corpus article (no headings, images, tables, code or HTML)."""
    return [
        p.strip()
        for p in re.split(r"\n\s*\n", markdown)
        if p.strip()
        and not p.strip().startswith(("#", "!", "|", "`", "<", "-", "*", "="))
        and not re.match(r"^[-=]{3,}$", p.strip().splitlines()[-1])
    ]


def _first_paragraphs(markdown: str, limit: int = 200) -> str:
    out = ""
    for paragraph in _paragraphs(markdown):
        if out and len(out) + len(paragraph) > limit:
            break
        out = f"{out}\n\n{paragraph}" if out else paragraph
    return out[: 2 * limit] or "See the documentation."


def _iso(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat()


def _record(article: dict[str, Any], new_id: int, content: str, updated_at: int, status: str = "published") -> dict:
    return {
        **article,
        "id": new_id,
        "slug": f"{article['slug']}-{new_id}",  # slugs are unique across the installation
        "content": content,
        "status": status,
        "updated_at": _iso(updated_at),
        "associated_article_id": None,
    }


def _corpus(name: str) -> dict[str, Any]:
    return json.loads(corpus_path(name).read_text(encoding="utf-8"))


def _small_portal(folder: Path) -> Path:
    data = _corpus(CW)
    articles = sorted(data["articles"], key=lambda a: a["id"])
    records = []
    for n, article in enumerate(articles[:30]):
        new_id = SMALL_BASE_ID + n
        status = "draft" if new_id in DRAFT_IDS else "archived" if new_id == ARCHIVED_ID else "published"
        text = _first_paragraphs(article["content"])
        records.append(_record(article, new_id, text, 1_700_000_000 + 3600 * n, status))
    long_source = next(a for a in articles[30:] if len(_paragraphs(a["content"])) >= 8)
    # Six short sections: at max_tokens = 96 the chunker makes four chunks of them, and an edit inside one section
    # changes one chunk (as in real articles, which have headings).
    long_text = "\n\n".join(
        f"## Step {n}\n\n{paragraph[:400]}" for n, paragraph in enumerate(_paragraphs(long_source["content"])[:6], 1)
    )
    # In the middle of the list by time: it sits on page 1, older articles on page 2.
    records.append(_record(long_source, LONG_ID, long_text, 1_700_000_000 + 3600 * 12 + 1800))
    path = folder / f"{SMALL}.json"
    path.write_text(json.dumps({"portal": {**data["portal"], "slug": SMALL}, "articles": records}), encoding="utf-8")
    return path


def _multi_portal(folder: Path) -> Path:
    data = _corpus(KB)
    chosen: list[dict[str, Any]] = []
    for locale, count in (("en", 5), ("fr", 5), ("es", 2)):
        chosen += [a for a in sorted(data["articles"], key=lambda a: a["id"]) if a["locale"] == locale][:count]
    records = [
        _record(a, 60_001 + n, _first_paragraphs(a["content"]), 1_710_000_000 + 3600 * n) for n, a in enumerate(chosen)
    ]
    portal = {**data["portal"], "slug": MULTI, "locales": ["en", "fr", "es"]}
    path = folder / f"{MULTI}.json"
    path.write_text(json.dumps({"portal": portal, "articles": records}), encoding="utf-8")
    return path


def _tiny_portal(folder: Path, corpus: str, name: str) -> Path:
    """Three short articles with ids 70001-70003; `corpus` picks their text."""
    data = _corpus(corpus)
    articles = sorted(data["articles"], key=lambda a: a["id"])[40:43]
    records = [
        _record(a, 70_001 + n, _first_paragraphs(a["content"]), 1_720_000_000 + 3600 * n)
        for n, a in enumerate(articles)
    ]
    for record in records:  # the same slugs in both installations, whatever the text
        record["slug"] = f"tiny-{record['id']}"
    path = folder / name
    path.write_text(json.dumps({"portal": {**data["portal"], "slug": TINY}, "articles": records}), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def chatwoot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatwootServer]:
    """The Chatwoot-compatible server: both corpora and the three small portals, account 1, tokens of account 1."""
    folder = tmp_path_factory.mktemp("portals")
    fake = FakeChatwoot.with_corpora(CW, KB)
    fake.load_corpus(1, _small_portal(folder), SMALL)
    fake.load_corpus(1, _multi_portal(folder), MULTI)
    fake.load_corpus(1, _tiny_portal(folder, CW, "tiny.json"), TINY)
    staged = fake.get_article(SMALL, STAGED_ID)
    fake.edit_article(
        SMALL, STAGED_ID, draft_title=STAGED_TITLE, draft_content=STAGED_CONTENT, updated_at=staged["updated_at"]
    )
    fake.snapshot()
    with ChatwootServer(fake) as server:
        yield server


@pytest.fixture(scope="session")
def other_chatwoot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatwootServer]:
    """Another tenant's Chatwoot: a `tiny-help` portal with the same article ids and slugs, other text."""
    folder = tmp_path_factory.mktemp("other-portals")
    fake = FakeChatwoot(with_default_tokens=False)
    fake.add_token(1, OTHER_TOKEN, role="agent", name="Globex Agent")
    fake.load_corpus(1, _tiny_portal(folder, KB, "tiny.json"), TINY)
    fake.snapshot()
    with ChatwootServer(fake) as server:
        yield server


@pytest.fixture()
def fake(chatwoot: ChatwootServer) -> Iterator[FakeChatwoot]:
    """The server's state, reset to its baseline for each test (faults, hooks and request log cleared)."""
    chatwoot.fake.reset()
    yield chatwoot.fake
    chatwoot.fake.reset()


@pytest.fixture()
def other_fake(other_chatwoot: ChatwootServer) -> Iterator[FakeChatwoot]:
    other_chatwoot.fake.reset()
    yield other_chatwoot.fake
    other_chatwoot.fake.reset()


# ------------------------------------------------------------------------------------------ settings and engine


def source(portal: str, *, locales: Sequence[str] | None = None, public_url: str = "") -> dict[str, Any]:
    """A `kind = "chatwoot"` source of a project."""
    return {"portal": portal, "locales": list(locales) if locales is not None else None, "public_url": public_url}


def tenant(
    tenant_id: str = "acme",
    *,
    server: ChatwootServer | None = None,
    token: str = AGENT_TOKEN,
    projects: Mapping[str, Sequence[str | dict[str, Any]]] | None = None,
    extra: Mapping[str, float | int | str] | None = None,
) -> dict[str, Any]:
    """A tenant whose projects read chatwoot portals (a slug or a `source(...)`); default: alpha <- small-help.
    `extra`: more tenant keys (e.g. chatwoot_retry_seconds)."""
    projects = projects or {"alpha": [SMALL]}
    return {
        "id": tenant_id,
        "extra": dict(extra or {}),
        "server": server,
        "token": token,
        "projects": {p: [s if isinstance(s, dict) else source(s) for s in srcs] for p, srcs in projects.items()},
    }


def _toml(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)  # JSON strings and lists of strings are valid TOML


SettingsFactory = Callable[..., Path]


@pytest.fixture()
def settings_factory(chatwoot: ChatwootServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SettingsFactory:
    """Write a settings.toml for the given tenants (default: acme/alpha reading small-help) and set their token
    variables; returns its path. `name` picks another file (and state folder) in the same test."""

    def write(*tenants: dict[str, Any], name: str = "settings.toml", state_dir: str = "var") -> Path:
        lines = [
            f"state_dir = {_toml(state_dir)}",
            'log_format = "json"',
            'log_level = "warning"',
            "[chunking]",
            f"max_tokens = {MAX_TOKENS}",
        ]
        for spec in tenants or (tenant(),):
            env = f"{spec['id'].upper().replace('-', '_')}_CHATWOOT_TOKEN"
            monkeypatch.setenv(env, spec["token"])
            lines += [
                "[[tenants]]",
                f"id = {_toml(spec['id'])}",
                f"chatwoot_url = {_toml((spec['server'] or chatwoot).base_url)}",
                "account_id = 1",
                f"api_token_env = {_toml(env)}",
                *(f"{k} = {_toml(v)}" for k, v in spec.get("extra", {}).items()),
            ]
            for project, sources in spec["projects"].items():
                lines += ["[[tenants.projects]]", f"id = {_toml(project)}"]
                for src in sources:
                    lines += ["[[tenants.projects.sources]]", 'kind = "chatwoot"', f"portal = {_toml(src['portal'])}"]
                    if src["locales"] is not None:
                        lines.append(f"locales = {_toml(src['locales'])}")
                    if src["public_url"]:
                        lines.append(f"public_url = {_toml(src['public_url'])}")
        path = tmp_path / name
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    return write


class Kb:
    """kbsync opened on one settings file: the engine plus the reads a test makes of the index."""

    def __init__(self, config: Path, options: ChatwootClientOptions = FAST) -> None:
        self.config = config
        self.options = options
        self._stack: ExitStack | None = None
        self.engine: Engine = self.open()

    def open(self) -> Engine:
        self._stack = ExitStack()
        self.engine = self._stack.enter_context(open_engine(load_settings(self.config), chatwoot_options=self.options))
        return self.engine

    def close(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def restart(self) -> Engine:
        """Close everything and open it again on the same settings and state (a process restart)."""
        self.close()
        return self.open()

    @staticmethod
    def key(tenant_id: str = "acme", project: str = "alpha") -> ProjectKey:
        return ProjectKey(tenant_id, project)

    def reconcile(self, tenant_id: str = "acme", project: str = "alpha") -> RunReport:
        return self.engine.reconcile(self.key(tenant_id, project))

    def poll(self, tenant_id: str = "acme", project: str = "alpha") -> RunReport:
        return self.engine.poll(self.key(tenant_id, project))

    def index(self, tenant_id: str = "acme", project: str = "alpha") -> ProjectIndex:
        """What the project's collection holds, read back from Chroma."""
        return self.engine.store.index(self.key(tenant_id, project).collection)

    def doc_ids(self, tenant_id: str = "acme", project: str = "alpha") -> set[str]:
        return set(self.index(tenant_id, project).docs)

    def chunk_ids(self, tenant_id: str = "acme", project: str = "alpha", *, doc: str | None = None) -> set[str]:
        index = self.index(tenant_id, project)
        return {cid for d in index.docs.values() if doc in (None, d.doc_id) for cid in d.chunks}

    def chunks(self, doc: str, tenant_id: str = "acme", project: str = "alpha") -> dict[str, dict[str, Any]]:
        """Chunk id -> metadata of one document."""
        held = self.index(tenant_id, project).docs.get(doc)
        return dict(held.chunks) if held is not None else {}


KbFactory = Callable[..., Kb]


@pytest.fixture()
def kb_factory(settings_factory: SettingsFactory, fake: FakeChatwoot) -> Iterator[KbFactory]:
    """Open kbsync for the given tenants (see `tenant`); closed after the test."""
    opened: list[Kb] = []

    def make(*tenants: dict[str, Any], name: str = "settings.toml", state_dir: str = "var") -> Kb:
        kb = Kb(settings_factory(*tenants, name=name, state_dir=state_dir))
        opened.append(kb)
        return kb

    yield make
    for kb in reversed(opened):
        kb.close()


@pytest.fixture()
def kb(kb_factory: KbFactory) -> Kb:
    """Tenant acme, project alpha, one chatwoot source: the small-help portal."""
    return kb_factory()
