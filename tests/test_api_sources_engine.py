"""Confluence and Notion sources through the engine and the CLI (issue 15): the same guarantees as Chatwoot's —
a partial listing deletes nothing, one failing source never stops the others, polls cost nothing when nothing
changed, an edit re-embeds only its changed chunks, a page that leaves is deleted after the second look."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kbsync.cli import app
from kbsync.runs import ProjectKey
from kbsync.settings import load_settings
from kbsync.sources._http import HttpOptions
from kbsync.wiring import open_engine
from tests.servers.confluence import EMAIL, TOKEN, ConfluenceServer, FakeConfluence, Fault
from tests.servers.notion import TOKEN as NOTION_TOKEN
from tests.servers.notion import FakeNotion, NotionServer, rich

KEY = ProjectKey("acme", "docs")
FAST = HttpOptions(
    read_timeout=1.0,
    attempt_deadline_seconds=2.0,
    retry_budget_seconds=2.0,
    backoff_initial=0.01,
    backoff_max=0.05,
    requests_per_second=1000,
)
runner = CliRunner()


def para(text: str) -> dict:
    return {"type": "paragraph", "paragraph": {"rich_text": [rich(text)]}}


@pytest.fixture
def confluence() -> Iterator[ConfluenceServer]:
    fake = FakeConfluence()
    fake.add_space("DOCS")
    for n, text in enumerate(
        [
            "Refunds are paid within five business days.",
            "Invoices are emailed monthly.",
            "Passwords are reset from the login page.",
        ]
    ):
        fake.add_page("DOCS", f"Billing {n}", f"<h2>Answer</h2><p>{text}</p>", updated=fake.clock - 86_400 * 5 + n)
    with ConfluenceServer(fake) as running:
        yield running


@pytest.fixture
def notion() -> Iterator[NotionServer]:
    fake = FakeNotion()
    root = fake.add_page("Handbook", [para("Welcome to the handbook.")], edited=fake.clock - 86_400 * 5)
    fake.add_page(
        "Shipping", [para("Parcels leave the warehouse every morning.")], parent=root, edited=fake.clock - 86_400 * 4
    )
    fake.add_page(
        "Returns", [para("Returns are accepted for thirty days.")], parent=root, edited=fake.clock - 86_400 * 3
    )
    fake.pages[root].edited = fake.clock - 86_400 * 5
    fake.root = root  # type: ignore[attr-defined]
    with NotionServer(fake) as running:
        yield running


@pytest.fixture
def config(write_settings, confluence: ConfluenceServer, notion: NotionServer, monkeypatch, docs_dir: Path) -> Path:
    monkeypatch.setenv("CONF_EMAIL", EMAIL)
    monkeypatch.setenv("CONF_TOKEN", TOKEN)
    monkeypatch.setenv("NOTION_TOKEN", NOTION_TOKEN)
    monkeypatch.setenv("KBSYNC_ADMIN_TOKEN", "admin-token-for-check")
    (docs_dir / "hours.md").write_text("# Hours\n\nWe answer from nine to five.\n", encoding="utf-8")
    return write_settings(
        f"""
        log_format = "json"
        log_level = "warning"
        [[tenants]]
        id = "acme"
        [[tenants.projects]]
        id = "docs"
        [[tenants.projects.sources]]
        kind = "confluence"
        base_url = "{confluence.site_url}"
        space = "DOCS"
        email_env = "CONF_EMAIL"
        token_env = "CONF_TOKEN"
        requests_per_second = 1000
        [[tenants.projects.sources]]
        kind = "notion"
        root = "{notion.fake.root}"
        token_env = "NOTION_TOKEN"
        base_url = "{notion.base_url}"
        requests_per_second = 1000
        [[tenants.projects.sources]]
        kind = "files"
        path = "{docs_dir.name}"
        """
    )


def held(engine) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for doc in engine.store_for(KEY).index(KEY.collection).docs.values():
        out.setdefault(doc.source, set()).add(doc.doc_id)
    return out


def test_sync_poll_edit_and_delete(config: Path, confluence: ConfluenceServer, notion: NotionServer) -> None:
    space = "confluence:DOCS"
    tree = f"notion:{notion.fake.root.replace('-', '')}"
    with open_engine(load_settings(config), api_options=FAST) as engine:
        first = engine.reconcile(KEY)
        assert first.outcome == "ok", first.errors
        docs = held(engine)
        assert len(docs[space]) == 3 and len(docs[tree]) == 3 and len(docs["files:docs"]) == 1
        hits = engine.query(KEY, "how long do returns take", k=1)
        assert hits[0].hit.metadata["title"] == "Returns"

        quiet = engine.poll(KEY)
        assert quiet.outcome == "ok" and quiet.chunks_embedded == 0
        assert quiet.requests == 3  # Confluence: the CQL window and the count; Notion: one search

        page_id = next(iter(confluence.fake.current_ids("DOCS")))
        confluence.fake.edit("DOCS", page_id, body="<h2>Answer</h2><p>Refunds now take ten business days.</p>")
        returns = next(p.id for p in notion.fake.pages.values() if p.title == "Returns")
        notion.fake.edit_page(returns, [para("Returns are accepted for sixty days.")])
        edited = engine.poll(KEY)
        assert edited.outcome == "ok", edited.errors
        assert edited.docs_updated == 2 and 1 <= edited.chunks_embedded <= 2

        again = engine.reconcile(KEY)
        assert again.chunks_embedded == 0 and again.docs_deleted == 0

        confluence.fake.set_status("DOCS", page_id, "trashed")
        notion.fake.trash_page(returns)
        gone = engine.reconcile(KEY)
        assert gone.outcome == "ok", gone.errors
        assert gone.docs_deleted == 2
        docs = held(engine)
        assert len(docs[space]) == 2 and len(docs[tree]) == 2


def test_a_partial_listing_deletes_nothing_and_the_other_sources_still_sync(
    config: Path, confluence: ConfluenceServer, notion: NotionServer
) -> None:
    with open_engine(load_settings(config), api_options=FAST) as engine:
        assert engine.reconcile(KEY).outcome == "ok"
        before = held(engine)
        for page_id in list(confluence.fake.current_ids("DOCS"))[:2]:
            confluence.fake.set_status("DOCS", page_id, "trashed")
        notion.fake.faults.add(Fault(path_contains="/v1/pages/", status=503, times=None, skip=1))
        confluence.fake.faults.add(Fault(path_contains="/rest/api/search", status=500, times=None))
        report = engine.reconcile(KEY)
        assert report.outcome == "partial"
        assert report.failed_sources == 2 and len(report.errors) == 2
        assert any("nothing may be deleted" in e for e in report.errors)
        assert report.docs_deleted == 0
        assert held(engine) == before
        (Path(config).parent / "docs" / "new.md").write_text("# New\n\nA new file.\n", encoding="utf-8")
        assert engine.reconcile(KEY).docs_added == 1  # the files source kept working


def test_unsharing_most_of_a_tree_is_held_back_by_the_mass_delete_breaker(config: Path, notion: NotionServer) -> None:
    root = notion.fake.root
    for _ in range(3):  # six pages under the root in all: the breaker counts from mass_delete_min_docs (5)
        notion.fake.add_page("More", [para("More text.")], parent=root, edited=notion.fake.clock - 86_400)
    with open_engine(load_settings(config), api_options=FAST) as engine:
        assert engine.reconcile(KEY).outcome == "ok"
        before = held(engine)
        for page in notion.fake.pages.values():
            if page.id != root:
                page.shared = False  # the integration lost access to everything below the root
        notion.fake.pages[root].edited = notion.fake.clock  # the root page changed: its children are read again
        for child in list(notion.fake.children[root]):
            if notion.fake.blocks[child]["type"] == "child_page":
                notion.fake.children[root].remove(child)
        refused = engine.reconcile(KEY)
        assert refused.docs_deleted == 0 and held(engine) == before
        assert any("refused to delete 5 of its 6 documents" in w for w in refused.warnings), refused.warnings
        assert engine.reconcile(KEY, allow_mass_delete=True).docs_deleted == 5


def test_check_verifies_token_space_root_and_counts(config: Path, notion: NotionServer, monkeypatch) -> None:
    result = runner.invoke(app, ["--config", str(config), "check"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "space DOCS (Space DOCS) has 3 current pages" in result.output
    assert "root page 'Handbook' shared with the integration, 2 child pages" in result.output
    monkeypatch.setenv("NOTION_TOKEN", "secret_not_the_right_one")
    result = runner.invoke(app, ["--config", str(config), "check"], catch_exceptions=False)
    assert result.exit_code == 1
    assert "check NOTION_TOKEN" in result.output and "secret_not_the_right_one" not in result.output


def test_resync_exits_1_when_one_source_is_refused(config: Path, monkeypatch) -> None:
    monkeypatch.setenv("CONF_TOKEN", "wrong-confluence-token")
    result = runner.invoke(app, ["--config", str(config), "resync", "--json"], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    [report] = json.loads(result.stdout)
    assert report["outcome"] == "partial" and "check CONF_TOKEN and CONF_EMAIL" in report["errors"][0]
    assert report["docs_added"] == 4  # Notion and files synced
    assert "wrong-confluence-token" not in result.output
