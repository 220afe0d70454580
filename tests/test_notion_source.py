"""The Notion source against the Notion API-compatible server: the walk (child pages, child databases, paging),
archived and trashed pages, the last_edited_time gate, search polls, the second look, faults."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from kbsync.errors import ConfigError, IncompleteListing
from kbsync.settings import NotionSourceSettings, load_settings
from kbsync.sources._http import HttpOptions, RejectedStatus
from kbsync.sources.apis import open_api_source
from kbsync.sources.notion import NotionSource
from tests.servers.notion import TOKEN, FakeNotion, Fault, NotionServer, rich

FAST = HttpOptions(
    read_timeout=1.0,
    attempt_deadline_seconds=2.0,
    retry_budget_seconds=3.0,
    backoff_initial=0.01,
    backoff_max=0.05,
    requests_per_second=1000,
)
OLD = 1_690_000_000


def para(text: str) -> dict:
    return {"type": "paragraph", "paragraph": {"rich_text": [rich(text)]}}


@pytest.fixture
def fake() -> FakeNotion:
    return FakeNotion()


@pytest.fixture
def server(fake: FakeNotion) -> Iterator[NotionServer]:
    with NotionServer(fake) as running:
        yield running


@pytest.fixture
def make_source(write_settings, server: NotionServer, monkeypatch) -> Iterator[Callable[..., NotionSource]]:
    monkeypatch.setenv("NOTION_TOKEN", TOKEN)
    with ExitStack() as stack:

        def make(root: str) -> NotionSource:
            path = write_settings(
                f"""
                [[tenants]]
                id = "acme"
                [[tenants.projects]]
                id = "docs"
                [[tenants.projects.sources]]
                kind = "notion"
                root = "{root}"
                token_env = "NOTION_TOKEN"
                base_url = "{server.base_url}"
                """
            )
            settings = load_settings(path).tenants[0].projects[0].sources[0]
            assert isinstance(settings, NotionSourceSettings)
            source = open_api_source(settings, stack, options=FAST)
            assert isinstance(source, NotionSource)
            return source

        yield make


def tree(fake: FakeNotion) -> dict[str, str]:
    """root > guide (toggle, code, table) > nested; root > FAQ database (2 rows, one archived); an outsider."""
    root = fake.add_page("Handbook", [para("Welcome.")], edited=OLD)
    guide = fake.add_page(
        "Guide",
        [
            {"type": "heading_2", "heading_2": {"rich_text": [rich("Setup")]}},
            {"type": "toggle", "toggle": {"rich_text": [rich("Details")]}, "children": [para("Hidden but kept.")]},
            {"type": "code", "code": {"rich_text": [rich("make install")], "language": "shell"}},
            {"type": "image", "image": {"type": "external", "external": {"url": "https://x/y.png"}}},
            {
                "type": "table",
                "table": {"table_width": 2, "has_column_header": True},
                "children": [
                    {"type": "table_row", "table_row": {"cells": [[rich("k")], [rich("v")]]}},
                    {"type": "table_row", "table_row": {"cells": [[rich("a")], [rich("1")]]}},
                ],
            },
        ],
        parent=root,
        edited=OLD + 60,
    )
    nested = fake.add_page("Nested", [para("Deep down.")], parent=guide, edited=OLD + 120)
    faq = fake.add_database("FAQ", parent=root)
    row = fake.add_page("How to pay?", [para("By card.")], database=faq, edited=OLD + 180)
    archived_row = fake.add_page("Old answer", [para("Obsolete.")], database=faq, edited=OLD - 86_400)
    fake.pages[archived_row].archived = True
    outsider = fake.add_page("Private notes", [para("Not under the root.")], edited=OLD + 300)
    for page in (root, guide):
        fake.pages[page].edited = OLD
    return {"root": root, "guide": guide, "nested": nested, "faq": faq, "row": row, "outsider": outsider}


def test_walks_child_pages_and_databases(fake: FakeNotion, make_source) -> None:
    ids = tree(fake)
    listing = make_source(ids["root"]).list()
    assert listing.complete
    assert sorted(d.title for d in listing.documents) == ["Guide", "Handbook", "How to pay?", "Nested"]
    guide = next(d for d in listing.documents if d.title == "Guide")
    assert guide.doc_id == "notion:" + ids["guide"].replace("-", "")
    assert guide.url.startswith("https://www.notion.so/Guide-") and guide.locale == "en"
    assert "## Setup" in guide.text and "Hidden but kept." in guide.text
    assert "```shell\nmake install\n```" in guide.text and "| k | v |" in guide.text
    assert "y.png" not in guide.text and "Nested" not in guide.text  # child pages are documents of their own


def test_a_database_root_lists_its_rows_with_paging(fake: FakeNotion, make_source) -> None:
    parent = fake.add_page("Top", [])
    database = fake.add_database("Rows", parent=parent)
    for n in range(130):
        fake.add_page(f"Row {n}", [para(f"Answer {n}")], database=database, edited=OLD + n * 60)
    listing = make_source(database.replace("-", "")).list()
    assert len(listing.documents) == 130
    assert fake.faults.count("/query") == 2


def test_long_pages_are_paged(fake: FakeNotion, make_source) -> None:
    page = fake.add_page("Long", [para(f"Line {n}") for n in range(250)], edited=OLD)
    [doc] = make_source(page).list().documents
    assert "Line 0" in doc.text and "Line 249" in doc.text
    assert fake.faults.count(f"/v1/blocks/{page.replace('-', '')}/children") == 3


def test_unchanged_pages_cost_no_body(fake: FakeNotion, make_source) -> None:
    ids = tree(fake)
    source = make_source(ids["root"])
    first = source.list()
    source.applied(first, [d.doc_id for d in first.documents])
    fake.faults.clear_requests()
    second = source.list()
    assert second.documents == [] and len(second.unchanged) == 4
    assert fake.faults.count("/children") == 0
    fake.edit_page(ids["nested"], [para("Deeper still.")])
    third = source.list()
    assert [d.text for d in third.documents] == ["Deeper still.\n"]


def test_an_edit_in_the_same_minute_as_the_read_is_not_trusted(fake: FakeNotion, make_source) -> None:
    import time

    now = int(time.time())
    page = fake.add_page("Fresh", [para("v1")], edited=now)
    source = make_source(page)
    first = source.list()
    source.applied(first, [d.doc_id for d in first.documents])
    fake.children[page].clear()
    fake.edit_page(page, [para("v2")], advance=0)
    fake.pages[page].edited = now  # same minute stamp
    assert [d.text for d in source.list().documents] == ["v2\n"]


def test_poll_reads_only_what_changed_under_the_root(fake: FakeNotion, make_source) -> None:
    ids = tree(fake)
    source = make_source(ids["root"])
    listing = source.list()
    source.applied(listing, [d.doc_id for d in listing.documents])
    fake.faults.clear_requests()
    quiet = source.changes_since(listing.watermark or 0)
    assert (quiet.published, quiet.gone, quiet.requests, quiet.complete) == ([], set(), 1, True)
    fake.edit_page(ids["nested"], [para("Edited.")])
    fake.edit_page(ids["outsider"], [para("Edited elsewhere.")])
    changes = source.changes_since(quiet.newest)
    assert [d.title for d in changes.published] == ["Nested"]
    assert fake.faults.count("/children") == 1  # the nested page's body, nothing else


def test_the_second_look(fake: FakeNotion, make_source) -> None:
    ids = tree(fake)
    source = make_source(ids["root"])
    listing = source.list()
    doc = {k: "notion:" + v.replace("-", "") for k, v in ids.items()}
    assert source.confirm_gone({doc["nested"], doc["row"]}) == set()
    fake.trash_page(ids["nested"])
    fake.pages[ids["row"]].parent = {"type": "workspace", "workspace": True}  # moved out of the tree
    source._tree.clear()
    assert source.confirm_gone({doc["nested"], doc["row"], doc["guide"]}) == {doc["nested"], doc["row"]}
    assert listing.complete


def test_an_edit_during_the_walk_is_caught_by_the_next_poll(fake: FakeNotion, make_source) -> None:
    ids = tree(fake)
    # Once the walk reads the nested page, edit the guide it has already passed.
    nested = ids["nested"].replace("-", "")
    fake.faults.before(f"/v1/pages/{nested}", lambda: fake.edit_page(ids["guide"], [para("Rewritten guide.")]))
    source = make_source(ids["root"])
    listing = source.list()
    guide = next(d for d in listing.documents if d.title == "Guide")
    assert "Rewritten" not in guide.text
    source.applied(listing, [d.doc_id for d in listing.documents])
    changes = source.changes_since(listing.watermark or 0)
    assert [(d.title, d.text) for d in changes.published] == [("Guide", "Rewritten guide.\n")]


def test_a_child_database_the_api_cannot_query_is_skipped(fake: FakeNotion, make_source) -> None:
    ids = tree(fake)
    linked = {
        "object": "error",
        "status": 400,
        "code": "validation_error",
        "message": "Database with ID x is a linked database.",
    }
    fake.faults.add(Fault(path_contains="/query", status=400, body=linked))
    listing = make_source(ids["root"]).list()
    assert listing.complete and sorted(d.title for d in listing.documents) == ["Guide", "Handbook", "Nested"]


def test_a_child_that_keeps_failing_makes_the_listing_incomplete(fake: FakeNotion, make_source) -> None:
    ids = tree(fake)
    fake.faults.add(Fault(path_contains=f"/v1/pages/{ids['nested'].replace('-', '')}", status=502, times=None))
    with pytest.raises(IncompleteListing, match="nothing may be deleted"):
        make_source(ids["root"]).list()


def test_transient_faults_and_retry_after_are_ridden_out(fake: FakeNotion, make_source) -> None:
    ids = tree(fake)
    fake.faults.add(
        Fault(
            path_contains="/children",
            status=429,
            headers={"retry-after": "1"},
            body={"object": "error", "status": 429, "code": "rate_limited", "message": "slow down"},
        )
    )
    fake.faults.add(Fault(path_contains="/query", truncate_at=30))
    fake.faults.add(Fault(path_contains="/v1/pages/", status=503, skip=1))
    fake.faults.add(Fault(path_contains="/children", delay=1.5, skip=2))
    assert len(make_source(ids["root"]).list().documents) == 4
    assert fake.faults.pending == 0


def test_not_shared_and_bad_token_say_what_to_fix(fake: FakeNotion, make_source, monkeypatch) -> None:
    hidden = fake.add_page("Hidden", [], shared=False)
    with pytest.raises(RejectedStatus, match="Connections, and add the integration"):
        make_source(hidden).list()
    monkeypatch.setenv("NOTION_TOKEN", "secret_wrong_token_value")
    with pytest.raises(RejectedStatus, match="check NOTION_TOKEN") as info:
        make_source(hidden).list()
    assert info.value.status == 401 and "secret_wrong_token_value" not in str(info.value)


def test_root_must_be_a_notion_id(write_settings, monkeypatch) -> None:
    monkeypatch.setenv("NOTION_TOKEN", TOKEN)
    base = """
        [[tenants]]
        id = "acme"
        [[tenants.projects]]
        id = "docs"
        [[tenants.projects.sources]]
        kind = "notion"
        token_env = "NOTION_TOKEN"
        """
    with pytest.raises(ConfigError, match="32-hex Notion page or database id") as info:
        load_settings(write_settings(base + 'root = "not-an-id"\n'))
    assert info.value.key == "tenants[0].projects[0].sources[0].root"
    url = "https://www.notion.so/Handbook-0123456789abcdef0123456789ABCDEF"
    settings = load_settings(write_settings(base + f'root = "{url}"\n'))
    assert settings.tenants[0].projects[0].sources[0].source_id == "notion:0123456789abcdef0123456789abcdef"
