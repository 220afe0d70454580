"""The Chatwoot source against the Chatwoot-compatible server on 127.0.0.1 (tests/servers/chatwoot.py).

The server shuffles `updated_at` ties on every request, as Postgres may without a tie-breaker, so every listing
here also proves that ties straddling a page boundary are collected. Faults come from the server's controls.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from kbsync.errors import IncompleteListing, SourceRejected, SourceUnavailable
from kbsync.settings import TenantSettings, load_settings
from kbsync.sources import Listing
from kbsync.sources.chatwoot import ChatwootClient, ChatwootClientOptions, ChatwootSource
from tests.servers.chatwoot import AGENT_TOKEN, ChatwootServer, FakeChatwoot

CW = "chatwoot-docs"
KB = "kanboard-docs"
SMALL = "small-help"
FAST = ChatwootClientOptions(
    connect_timeout=2.0,
    read_timeout=5.0,
    attempts=3,
    retry_budget_seconds=5.0,
    backoff_initial=0.01,
    backoff_max=0.05,
    requests_per_second=None,
)
SHORT_READ = ChatwootClientOptions(
    connect_timeout=1.0,
    read_timeout=0.2,
    attempts=3,
    retry_budget_seconds=5.0,
    backoff_initial=0.01,
    backoff_max=0.05,
    requests_per_second=None,
)

MakeSource = Callable[..., ChatwootSource]


@pytest.fixture(scope="module")
def server() -> Iterator[ChatwootServer]:
    """One server for the module; `fake` resets it for each test."""
    fake = FakeChatwoot.with_corpora(CW, KB)
    fake.add_portal(1, SMALL)
    for n in range(30):  # two pages, distinct timestamps: no ties to re-read
        fake.add_article(
            SMALL, title=f"Small {n}", content=f"Text {n}.", status="published", updated_at=1_700_000_000 + n
        )
    fake.snapshot()
    with ChatwootServer(fake) as srv:
        yield srv


@pytest.fixture()
def fake(server: ChatwootServer) -> Iterator[FakeChatwoot]:
    server.fake.reset()
    yield server.fake
    server.fake.reset()


@pytest.fixture()
def tenant_factory(
    server: ChatwootServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., TenantSettings]:
    """Tenants loaded the way kbsync loads them: a settings file plus the token's environment variable."""
    counter = iter(range(1000))

    def make(
        portal: str = CW,
        *,
        token: str = AGENT_TOKEN,
        locales: list[str] | None = None,
        public_url: str = "",
        tenant_lines: str = "",
    ) -> TenantSettings:
        n = next(counter)
        monkeypatch.setenv(f"CW_TOKEN_{n}", token)
        locales_line = f"locales = {json.dumps(locales)}" if locales is not None else ""
        path = tmp_path / f"settings-{n}.toml"
        path.write_text(
            f"""
[[tenants]]
id = "acme"
chatwoot_url = "{server.base_url}"
account_id = 1
api_token_env = "CW_TOKEN_{n}"
{tenant_lines}

[[tenants.projects]]
id = "alpha"

[[tenants.projects.sources]]
kind = "chatwoot"
portal = "{portal}"
public_url = "{public_url}"
{locales_line}
""",
            encoding="utf-8",
        )
        return load_settings(path).tenants[0]

    return make


@pytest.fixture()
def make_source(fake: FakeChatwoot, tenant_factory: Callable[..., TenantSettings]) -> Iterator[MakeSource]:
    clients: list[ChatwootClient] = []

    def make(
        portal: str = CW,
        *,
        token: str = AGENT_TOKEN,
        locales: list[str] | None = None,
        public_url: str = "",
        options: ChatwootClientOptions = FAST,
        **kwargs: Any,
    ) -> ChatwootSource:
        tenant = tenant_factory(portal, token=token, locales=locales, public_url=public_url)
        client = ChatwootClient(tenant, options)
        clients.append(client)
        source = tenant.projects[0].sources[0]
        assert source.kind == "chatwoot"
        return ChatwootSource(tenant, source, client, **kwargs)

    yield make
    for client in clients:
        client.close()


def article_ids(listing: Listing) -> set[int]:
    return {int(d.doc_id.rsplit(":", 1)[1]) for d in listing.documents}


def doc_id(portal: str, article_id: int) -> str:
    return f"chatwoot:{portal}:{article_id}"


def oldest_article(fake: FakeChatwoot, portal: str = CW) -> int:
    """An article on the last page (the list is newest first)."""
    return min(fake.all_articles(portal), key=lambda a: (a["updated_at"], a["id"]))["id"]


def newest_stamp(fake: FakeChatwoot, portal: str = CW) -> int:
    return max(a["updated_at"] for a in fake.all_articles(portal))


# ------------------------------------------------------------------------------------------ complete listing


@pytest.mark.parametrize("portal", [CW, KB])
def test_complete_listing_holds_exactly_the_published_articles(
    make_source: MakeSource, fake: FakeChatwoot, portal: str
) -> None:
    """Invariant 2's input. If broken, articles in ties that straddle pages drop out of every reconcile."""
    listing = make_source(portal).list()
    assert listing.complete
    assert article_ids(listing) == fake.published_ids(portal)
    assert len(listing.documents) == len(article_ids(listing))
    # Where the next poll starts: the newest save, and the total a hard delete makes drop.
    assert listing.watermark == newest_stamp(fake, portal)
    assert listing.total == len(fake.all_articles(portal))


def test_drafts_and_archived_articles_are_not_listed(make_source: MakeSource, fake: FakeChatwoot) -> None:
    """Invariant 1. If broken, unpublished text reaches the bots."""
    ids = sorted(fake.published_ids(CW))
    fake.set_status(CW, ids[0], "draft")
    fake.set_status(CW, ids[1], "archived")
    new_draft = fake.add_article(CW, title="Work in progress", content="secret plans", status="draft")
    listing = make_source().list()
    assert listing.complete
    assert article_ids(listing) == fake.published_ids(CW)
    assert not {ids[0], ids[1], new_draft} & article_ids(listing)


def test_draft_title_and_content_are_ignored(make_source: MakeSource, fake: FakeChatwoot) -> None:
    """Invariant 1: staged edits of a published article (Chatwoot 4.16) are not live content."""
    article_id = sorted(fake.published_ids(CW))[0]
    live = fake.get_article(CW, article_id)
    fake.edit_article(CW, article_id, draft_title="Unreleased title", draft_content="Unreleased text")
    doc = next(d for d in make_source().list().documents if d.doc_id == doc_id(CW, article_id))
    assert (doc.title, doc.text) == (live["title"], live["content"])


def test_document_fields_follow_the_article(
    make_source: MakeSource, fake: FakeChatwoot, server: ChatwootServer
) -> None:
    article_id = sorted(fake.published_ids(CW))[3]
    article = fake.get_article(CW, article_id)
    doc = next(d for d in make_source().list().documents if d.doc_id == doc_id(CW, article_id))
    assert doc.source == "chatwoot:chatwoot-docs" and doc.kind == "chatwoot"
    assert doc.title == article["title"] and doc.text == article["content"]
    assert doc.url == f"{server.base_url}/hc/{CW}/articles/{article['slug']}"
    assert doc.locale == article["category"]["locale"] == "en"
    assert doc.category == article["category"]["name"]
    assert doc.updated_at == article["updated_at"]


def test_citation_url_prefers_public_url_then_custom_domain(make_source: MakeSource, fake: FakeChatwoot) -> None:
    fake.update_portal(CW, custom_domain="help.example.com")
    article_id = sorted(fake.published_ids(CW))[0]
    slug = fake.get_article(CW, article_id)["slug"]
    by_domain = {d.doc_id: d for d in make_source().list().documents}
    assert by_domain[doc_id(CW, article_id)].url == f"https://help.example.com/hc/{CW}/articles/{slug}"
    by_public = {d.doc_id: d for d in make_source(public_url="https://docs.example.org/").list().documents}
    assert by_public[doc_id(CW, article_id)].url == f"https://docs.example.org/hc/{CW}/articles/{slug}"


def test_locale_comes_from_the_category_else_the_portal_default(make_source: MakeSource, fake: FakeChatwoot) -> None:
    fake.update_portal(KB, default_locale="fr")
    loose = fake.add_article(KB, title="Loose notes", content="No category.", status="published", locale="fr")
    turkish = next(a for a in fake.all_articles(KB) if a["locale"] == "tr" and a["category_id"] is not None)
    docs = {d.doc_id: d for d in make_source(KB).list().documents}
    assert docs[doc_id(KB, loose)].locale == "fr"
    assert docs[doc_id(KB, loose)].category == ""
    assert docs[doc_id(KB, turkish["id"])].locale == "tr"


def test_locales_filter_keeps_only_those_locales(make_source: MakeSource, fake: FakeChatwoot) -> None:
    listing = make_source(KB, locales=["fr", "cs"]).list()
    assert listing.complete
    assert article_ids(listing) == fake.published_ids(KB, "fr") | fake.published_ids(KB, "cs")
    assert {d.locale for d in listing.documents} == {"fr", "cs"}


def test_archived_portal_lists_nothing_and_confirms_everything_gone(
    make_source: MakeSource, fake: FakeChatwoot
) -> None:
    """An archived portal is 404 publicly: its articles must leave the index."""
    fake.update_portal(CW, archived=True)
    source = make_source()
    listing = source.list()
    assert listing.complete and listing.documents == []
    held = {doc_id(CW, i) for i in sorted(fake.published_ids(CW))[:3]}
    assert source.confirm_gone(held) == held


# ------------------------------------------------------------------------------------------ moving lists


def test_article_edited_between_pages_is_not_missed(make_source: MakeSource, fake: FakeChatwoot) -> None:
    """Invariant 2. The edit moves an unread article to page 1; if broken, it drops out of the listing."""
    moved = oldest_article(fake)
    fake.edit_between_pages(CW, moved, after_page=1, content="Rewritten while the list was read.")
    listing = make_source().list()
    assert listing.complete
    assert article_ids(listing) == fake.published_ids(CW)
    assert (
        next(d for d in listing.documents if d.doc_id == doc_id(CW, moved)).text == "Rewritten while the list was read."
    )


def test_article_unpublished_between_pages_is_not_listed(make_source: MakeSource, fake: FakeChatwoot) -> None:
    gone = oldest_article(fake)

    def unpublish(f: FakeChatwoot, _portal: str, _page: int) -> None:
        f.set_status(CW, gone, "draft")

    fake.on_page_read(unpublish, portal=CW, page=2, times=1)
    listing = make_source().list()
    assert listing.complete
    assert gone not in article_ids(listing)
    assert article_ids(listing) == fake.published_ids(CW)


def test_article_created_while_another_is_deleted_is_not_missed(make_source: MakeSource, fake: FakeChatwoot) -> None:
    """The counts stay equal (one in, one out), so only the last look at page 1 shows the newcomer."""
    created: list[int] = []

    def swap(f: FakeChatwoot, _portal: str, _page: int) -> None:
        newest = max(f.published_ids(SMALL))
        created.append(
            f.add_article(SMALL, title="Newcomer", content="Fresh.", status="published", updated_at=1_800_000_000)
        )
        f.delete_article(SMALL, newest)

    fake.on_page_read(swap, portal=SMALL, page=2, times=1)
    listing = make_source(SMALL).list()
    assert listing.complete
    assert created[0] in article_ids(listing)
    assert fake.request_count("/articles") == 4  # pages 1, 2; page 1 shows the newcomer; page 1 again is quiet


def test_listing_that_never_settles_is_not_complete(make_source: MakeSource, fake: FakeChatwoot) -> None:
    """Invariant 2: an article published on every page read shifts the list; the listing must say so."""

    def publish_one(f: FakeChatwoot, _portal: str, page: int) -> None:
        f.add_article(CW, title=f"Breaking news {page}", content="Hot off the press.", status="published")

    fake.on_page_read(publish_one, portal=CW, times=None)
    listing = make_source(max_passes=2).list()
    assert not listing.complete and listing.watermark is None
    assert fake.request_count("/articles") < 40  # bounded


# ------------------------------------------------------------------------------------------ errors


def test_rejected_token_raises_source_rejected_without_the_token(make_source: MakeSource, fake: FakeChatwoot) -> None:
    """Invariant 10. If broken, the token ends up in a run report or a log line."""
    token = "wrong-secret-token-9f3a2b"
    with capture_logs() as logs, pytest.raises(SourceRejected) as caught:
        make_source(token=token).list()
    assert "token rejected" in str(caught.value)
    assert token not in str(caught.value) and token not in repr(caught.value.args)
    assert token not in repr(logs)
    assert not caught.value.transient
    assert fake.request_count() == 1  # a permanent error is not retried


def test_unknown_portal_is_rejected(make_source: MakeSource, fake: FakeChatwoot) -> None:
    with pytest.raises(SourceRejected, match="portal 'no-such-portal' not found"):
        make_source("no-such-portal").list()


def test_server_error_once_is_retried(make_source: MakeSource, fake: FakeChatwoot) -> None:
    fake.fail(path_contains="/articles", page=1, status=500, times=1)
    with capture_logs() as logs:
        listing = make_source().list()
    assert listing.complete and article_ids(listing) == fake.published_ids(CW)
    first_pages = [r.status for r in fake.requests if r.path.endswith("/articles") and r.query.get("page") == "1"]
    assert first_pages[:2] == [500, 200]
    assert any(e["event"] == "chatwoot.retry" for e in logs)
    assert AGENT_TOKEN not in repr(logs)


def test_throttled_request_without_retry_after_is_retried(make_source: MakeSource, fake: FakeChatwoot) -> None:
    fake.fail(path_contains="/articles", status=429, times=2)
    listing = make_source().list()
    assert listing.complete and article_ids(listing) == fake.published_ids(CW)
    assert [r.status for r in fake.requests].count(429) == 2


def test_retry_after_is_respected(tenant_factory: Callable[..., TenantSettings]) -> None:
    calls: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        if len(calls) == 1:
            return httpx.Response(503, headers={"retry-after": "1"}, text="busy")
        return httpx.Response(200, json={"slug": CW, "archived": False, "meta": {}, "config": {}})

    with ChatwootClient(tenant_factory(), FAST, transport=httpx.MockTransport(handler)) as client:
        assert client.portal(CW)["slug"] == CW
    assert calls[1] - calls[0] >= 0.95


def test_persistent_server_error_on_page_two_raises_incomplete_listing(
    make_source: MakeSource, fake: FakeChatwoot
) -> None:
    """Invariant 2. If broken, a reconcile would delete every article past page one."""
    fake.fail(path_contains="/articles", page=2, status=500, times=None)
    with pytest.raises(IncompleteListing) as caught:
        make_source().list()
    assert "page 2" in str(caught.value) and "articles?page=2" in caught.value.url
    assert isinstance(caught.value.__cause__, SourceUnavailable)
    assert caught.value.transient
    page_two = [r for r in fake.requests if r.query.get("page") == "2"]
    assert len(page_two) == FAST.attempts


def test_truncated_json_is_retried_then_reported_with_its_url(make_source: MakeSource, fake: FakeChatwoot) -> None:
    fake.truncate(path_contains="/articles", page=1, times=1)
    assert make_source().list().complete
    fake.truncate(path_contains="/articles", page=1, times=None)
    with pytest.raises(IncompleteListing) as caught:
        make_source().list()
    assert "truncated or invalid JSON" in str(caught.value)
    assert f"/portals/{CW}/articles?page=1" in str(caught.value)


def test_html_instead_of_json_is_rejected_with_its_url(make_source: MakeSource, fake: FakeChatwoot) -> None:
    fake.non_json(status=200, path_contains=f"/portals/{CW}", times=None)
    with pytest.raises(SourceRejected, match="expected JSON") as caught:
        make_source().list()
    assert caught.value.url.endswith(f"/api/v1/accounts/1/portals/{CW}")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"data": []}, "no `payload` list"),
        ({"payload": [], "counts": {}}, "no `meta` object"),
        ({"payload": [], "meta": {"current_page": 1}}, "no `meta` object with `articles_count`"),
        (
            {"payload": [{"id": 1, "slug": "a", "title": "A", "status": "published"}], "meta": {"articles_count": 1}},
            "no integer `updated_at`",
        ),
    ],
)
def test_payload_of_the_wrong_shape_is_rejected(
    make_source: MakeSource, fake: FakeChatwoot, body: dict[str, Any], message: str
) -> None:
    fake.fail(path_contains="/articles", status=200, body=body, times=None)
    with pytest.raises(SourceRejected, match=message) as caught:
        make_source().list()
    assert "articles?page=1" in caught.value.url


def test_timeout_is_retried_then_succeeds(make_source: MakeSource, fake: FakeChatwoot) -> None:
    fake.delay(1.0, path_contains="/articles", page=1, times=1)
    listing = make_source(options=SHORT_READ).list()
    assert listing.complete and article_ids(listing) == fake.published_ids(CW)


def test_persistent_timeout_raises_source_unavailable(make_source: MakeSource, fake: FakeChatwoot) -> None:
    fake.delay(1.0, path_contains=f"/portals/{CW}", times=None)
    started = time.monotonic()
    with pytest.raises(SourceUnavailable, match="timed out") as caught:
        make_source(options=SHORT_READ).list()
    assert f"after {SHORT_READ.attempts} attempts" in str(caught.value)
    assert time.monotonic() - started < 3


# ------------------------------------------------------------------------------------------ confirm_gone


def test_confirm_gone_returns_only_articles_really_gone(make_source: MakeSource, fake: FakeChatwoot) -> None:
    """Invariant 2's second look. If broken, an article that moved while the list was read is deleted."""
    source = make_source()
    assert source.list().complete
    deleted, unpublished, archived, moved, kept = sorted(fake.published_ids(CW))[:5]
    fake.delete_article(CW, deleted)
    fake.set_status(CW, unpublished, "draft")
    fake.set_status(CW, archived, "archived")
    fake.edit_between_pages(CW, moved, after_page=1, content="moved")
    asked = {doc_id(CW, i) for i in (deleted, unpublished, archived, moved, kept)}
    assert source.confirm_gone(asked) == {doc_id(CW, i) for i in (deleted, unpublished, archived)}


def test_confirm_gone_confirms_nothing_when_the_listing_fails(make_source: MakeSource, fake: FakeChatwoot) -> None:
    deleted = sorted(fake.published_ids(CW))[0]
    fake.delete_article(CW, deleted)
    fake.fail(path_contains="/articles", page=2, status=502, times=None)
    assert make_source().confirm_gone({doc_id(CW, deleted)}) == set()


def test_confirm_gone_respects_the_locales_filter(make_source: MakeSource, fake: FakeChatwoot) -> None:
    french = sorted(fake.published_ids(KB, "fr"))[0]
    english = sorted(fake.published_ids(KB, "en"))[0]
    source = make_source(KB, locales=["fr"])
    assert source.confirm_gone({doc_id(KB, french), doc_id(KB, english)}) == {doc_id(KB, english)}


# ------------------------------------------------------------------------------------------ changes_since


def test_poll_with_nothing_changed_makes_one_request(make_source: MakeSource, fake: FakeChatwoot) -> None:
    """Design §8: one HTTP request per portal when nothing changed."""
    source = make_source()
    watermark = source.list().watermark
    assert watermark is not None
    fake.clear_requests()
    changes = source.changes_since(watermark)
    assert fake.request_count() == 1 and changes.requests == 1
    assert changes.complete and changes.newest == watermark and changes.gone == set()
    assert changes.all_articles_count == len(fake.all_articles(CW))


def test_poll_returns_an_edited_article(make_source: MakeSource, fake: FakeChatwoot) -> None:
    source = make_source()
    source.list()
    watermark = newest_stamp(fake)
    edited = oldest_article(fake)
    fake.edit_article(CW, edited, content="Edited after the last poll.", updated_at=watermark + 10)
    changes = source.changes_since(watermark)
    assert [d.doc_id for d in changes.published if d.updated_at > watermark] == [doc_id(CW, edited)]
    assert next(d for d in changes.published if d.doc_id == doc_id(CW, edited)).text == "Edited after the last poll."
    assert changes.newest == watermark + 10 and changes.complete and changes.requests == 1


def test_poll_reports_unpublished_article_as_gone(make_source: MakeSource, fake: FakeChatwoot) -> None:
    source = make_source()
    source.list()
    watermark = newest_stamp(fake)
    unpublished, deleted = sorted(fake.published_ids(CW))[:2]
    fake.set_status(CW, unpublished, "draft", updated_at=watermark + 5)
    fake.delete_article(CW, deleted)
    changes = source.changes_since(watermark)
    assert changes.gone == {doc_id(CW, unpublished)}
    assert doc_id(CW, unpublished) not in {d.doc_id for d in changes.published}
    # A hard delete leaves no trace in the list; the count is the hint that a reconcile is due.
    assert changes.all_articles_count == len(fake.all_articles(CW)) == 160


def test_poll_collects_a_tie_group_that_straddles_pages(make_source: MakeSource, fake: FakeChatwoot) -> None:
    """A bulk status update gives 30 articles one timestamp: pages 1 and 2 each show a shuffled part of them."""
    source = make_source(KB)
    source.list()
    stamp = newest_stamp(fake, KB) + 100
    bulk = sorted(fake.published_ids(KB))[:30]
    for article_id in bulk:
        fake.edit_article(KB, article_id, updated_at=stamp)
    changes = source.changes_since(stamp - 50)
    assert changes.complete and changes.newest == stamp
    assert {d.doc_id for d in changes.published} == {doc_id(KB, i) for i in bulk}


def test_poll_of_an_archived_portal_reports_its_articles_gone(make_source: MakeSource, fake: FakeChatwoot) -> None:
    source = make_source()
    source.list()
    watermark = newest_stamp(fake)
    edited = oldest_article(fake)
    fake.update_portal(CW, archived=True)
    source.list()  # the listing refreshes what the poll knows of the portal
    fake.edit_article(CW, edited, content="Edited in an archived portal.", updated_at=watermark + 10)
    changes = source.changes_since(watermark)
    assert changes.published == [] and doc_id(CW, edited) in changes.gone


def test_poll_without_a_listing_fetches_the_portal_once(make_source: MakeSource, fake: FakeChatwoot) -> None:
    source = make_source()
    watermark = newest_stamp(fake)
    first = source.changes_since(watermark)
    second = source.changes_since(watermark)
    assert (first.requests, second.requests) == (2, 1)
    assert fake.request_count(f"/portals/{CW}/articles") == 2 and fake.request_count() == 3


# ------------------------------------------------------------------------------------------ client


def test_rate_limit_spaces_requests_across_threads(
    tenant_factory: Callable[..., TenantSettings], fake: FakeChatwoot
) -> None:
    options = ChatwootClientOptions(requests_per_second=40, backoff_initial=0.01, backoff_max=0.05)
    with ChatwootClient(tenant_factory(), options) as client:
        started = time.monotonic()
        threads = [threading.Thread(target=lambda: [client.portal(CW) for _ in range(3)]) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
    assert fake.request_count() == 9
    assert elapsed >= 8 / 40 * 0.95


def test_the_tenant_setting_paces_a_client_built_without_options(
    tenant_factory: Callable[..., TenantSettings], fake: FakeChatwoot
) -> None:
    """`chatwoot_requests_per_second` is what the daemon's clients use. If broken: the setting is ignored (the
    10 per second default would make 6 requests take >= 0.5 s, 4 per second >= 1.25 s)."""
    with ChatwootClient(tenant_factory(tenant_lines="chatwoot_requests_per_second = 4")) as client:
        started = time.monotonic()
        for _ in range(6):
            client.portal(CW)
        elapsed = time.monotonic() - started
    assert fake.request_count() == 6
    assert elapsed >= 5 / 4 * 0.95


def test_closed_client_refuses_requests(tenant_factory: Callable[..., TenantSettings], fake: FakeChatwoot) -> None:
    client = ChatwootClient(tenant_factory(), FAST)
    client.close()
    client.close()  # idempotent
    assert client.closed
    with pytest.raises(RuntimeError):
        client.portal(CW)
    assert fake.request_count() == 0
