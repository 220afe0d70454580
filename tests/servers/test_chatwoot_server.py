"""Tests of the fake Chatwoot Help Center server itself, over real HTTP on loopback."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.servers.chatwoot import (
    ADMIN_TOKEN,
    AGENT_TOKEN,
    PER_PAGE,
    ChatwootServer,
    FakeChatwoot,
    corpus_dir,
)

CW = "chatwoot-docs"
KB = "kanboard-docs"
ARTICLE_KEYS = [
    "id",
    "slug",
    "title",
    "content",
    "description",
    "status",
    "draft_title",
    "draft_content",
    "position",
    "account_id",
    "updated_at",
    "meta",
    "category",
    "views",
    "author",
    "associated_articles",
]
META_KEYS = {
    "all_articles_count",
    "archived_articles_count",
    "articles_count",
    "current_page",
    "draft_articles_count",
    "mine_articles_count",
    "published_count",
}


@pytest.fixture(scope="module")
def server() -> Iterator[ChatwootServer]:
    """One server for the whole module; each test resets it (see ``fake``)."""
    fake = FakeChatwoot.with_corpora(CW, KB)
    fake.add_token(2, "other-account-token")
    with ChatwootServer(fake) as srv:
        yield srv


@pytest.fixture()
def fake(server: ChatwootServer) -> Iterator[FakeChatwoot]:
    server.fake.reset()
    yield server.fake
    server.fake.reset()


@pytest.fixture()
def client(server: ChatwootServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers={"api_access_token": ADMIN_TOKEN}, timeout=5) as c:
        yield c


def articles(client: httpx.Client, portal: str = CW, **params: Any) -> dict[str, Any]:
    response = client.get(f"/api/v1/accounts/1/portals/{portal}/articles", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def all_pages(client: httpx.Client, portal: str = CW, **params: Any) -> list[list[dict[str, Any]]]:
    pages, page = [], 1
    while True:
        payload = articles(client, portal, page=page, **params)["payload"]
        if not payload:
            return pages
        pages.append(payload)
        page += 1


def test_corpus_dir_points_at_shared_corpus() -> None:
    assert (corpus_dir() / "chatwoot-docs.json").is_file()


def test_article_shape(fake: FakeChatwoot, client: httpx.Client) -> None:
    body = articles(client, page=1)
    assert set(body["meta"]) == META_KEYS
    assert body["meta"]["current_page"] == "1"  # echo of the string param
    item = body["payload"][0]
    assert list(item) == ARTICLE_KEYS
    assert isinstance(item["updated_at"], int)
    assert item["status"] == "published" and item["meta"] == {} and item["associated_articles"] == []
    assert set(item["category"]) == {"id", "name", "slug", "locale", "icon", "icon_color"}
    assert item["author"]["role"] == "administrator" and item["account_id"] == 1
    assert "locale" not in item
    assert articles(client)["meta"]["current_page"] == 1  # integer when page is omitted


def test_updated_at_converted_from_corpus_iso(fake: FakeChatwoot, client: httpx.Client) -> None:
    records = json.loads((corpus_dir() / "chatwoot-docs.json").read_text())["articles"]
    first = records[0]  # 2023-09-19T09:40:59+05:30
    assert first["updated_at"] == "2023-09-19T09:40:59+05:30"
    assert fake.get_article(CW, first["id"])["updated_at"] == 1695096659


def test_uncategorized_article_keeps_null_category(fake: FakeChatwoot, client: httpx.Client) -> None:
    before = fake.get_article(CW, 1001)
    fake.delete_category(CW, before["category"]["id"])
    after = fake.get_article(CW, 1001)
    assert after["category"] == {k: None for k in ("id", "name", "slug", "locale", "icon", "icon_color")}
    assert after["updated_at"] == before["updated_at"]  # dependent: :nullify does not bump
    listed = {a["id"]: a for page in all_pages(client) for a in page}
    assert listed[1001]["category"]["id"] is None


def test_paging_25_per_page(fake: FakeChatwoot, client: httpx.Client) -> None:
    fake.tie_order = "stable"
    pages = all_pages(client)
    assert [len(p) for p in pages] == [PER_PAGE] * 6 + [11]
    assert len(pages) == math.ceil(161 / PER_PAGE)
    assert len({a["id"] for p in pages for a in p}) == 161
    assert articles(client, page=8)["payload"] == []
    assert articles(client, page="0")["meta"]["current_page"] == "0"  # page 1 served, raw echo


def test_order_updated_at_desc_and_position_with_category(fake: FakeChatwoot, client: httpx.Client) -> None:
    stamps = [a["updated_at"] for p in all_pages(client) for a in p]
    assert stamps == sorted(stamps, reverse=True)
    positions = [a["position"] for a in articles(client, category_slug="channels")["payload"]]
    assert positions == sorted(positions) and len(positions) == 25


def test_ties_shuffle_between_requests_unless_stable(fake: FakeChatwoot, client: httpx.Client) -> None:
    def tie_ids() -> list[int]:
        rows = [a for p in [articles(client, KB, page=1)["payload"]] for a in p]
        top = rows[0]["updated_at"]
        return [a["id"] for a in rows if a["updated_at"] == top]

    assert len({tuple(tie_ids()) for _ in range(5)}) > 1
    fake.tie_order = "stable"
    assert len({tuple(tie_ids()) for _ in range(3)}) == 1


def test_meta_counts_ignore_status_filter(fake: FakeChatwoot, client: httpx.Client) -> None:
    fake.set_status(CW, 1001, "draft")
    fake.set_status(CW, 1002, "archived")
    meta = articles(client, status="published")["meta"]
    assert meta["articles_count"] == 161 and meta["all_articles_count"] == 396 - 235
    assert (meta["published_count"], meta["draft_articles_count"], meta["archived_articles_count"]) == (159, 1, 1)
    assert meta["mine_articles_count"] == 161
    drafts = articles(client, status="draft")["payload"]
    assert [a["id"] for a in drafts] == [1001] and drafts[0]["status"] == "draft"
    assert fake.published_ids(CW) == {a for a in range(1001, 1162)} - {1001, 1002}


def test_locale_filter_on_kanboard(fake: FakeChatwoot, client: httpx.Client) -> None:
    body = articles(client, KB, locale="fr")
    assert body["meta"]["articles_count"] == 13 and body["meta"]["all_articles_count"] == 235
    assert {a["category"]["locale"] for a in body["payload"]} == {"fr"}
    assert len(fake.published_ids(KB, locale="fr")) == 13


def test_associated_articles_partial(fake: FakeChatwoot, client: httpx.Client) -> None:
    roots = [a for p in all_pages(client, KB, locale="en") for a in p if a["associated_articles"]]
    assert roots
    child = roots[0]["associated_articles"][0]
    assert list(child) == [
        "id",
        "category_id",
        "title",
        "content",
        "description",
        "status",
        "account_id",
        "portal",
        "views",
        "author",
    ]
    assert child["portal"]["slug"] == KB


def test_auth_errors(fake: FakeChatwoot, server: ChatwootServer) -> None:
    url = server.url("/api/v1/accounts/1/portals")
    assert httpx.get(url).json() == {"error": "Invalid Access Token"}
    bad = httpx.get(url, headers={"api_access_token": "nope"})
    assert (bad.status_code, bad.json()) == (401, {"error": "Invalid Access Token"})
    other = httpx.get(url, headers={"api_access_token": "other-account-token"})
    assert (other.status_code, other.json()) == (401, {"error": "You are not authorized to do this action"})


def test_unknown_portal_is_404(fake: FakeChatwoot, client: httpx.Client) -> None:
    for path in ("/portals/nope", "/portals/nope/articles", "/portals/nope/categories"):
        response = client.get("/api/v1/accounts/1" + path)
        assert (response.status_code, response.json()) == (404, {"error": "Resource could not be found"})


def test_show_article_is_admin_only(fake: FakeChatwoot, client: httpx.Client) -> None:
    path = f"/api/v1/accounts/1/portals/{CW}/articles/1001"
    assert client.get(path).json()["payload"]["id"] == 1001
    agent = client.get(path, headers={"api_access_token": AGENT_TOKEN})
    assert (agent.status_code, agent.json()) == (401, {"error": "You are not authorized to do this action"})
    # An agent can still list.
    assert (
        client.get(f"/api/v1/accounts/1/portals/{CW}/articles", headers={"api_access_token": AGENT_TOKEN}).status_code
        == 200
    )
    assert client.get(f"/api/v1/accounts/1/portals/{CW}/articles/999999").status_code == 404


def test_portals_and_categories_shapes(fake: FakeChatwoot, client: httpx.Client) -> None:
    index = client.get("/api/v1/accounts/1/portals").json()
    assert index["meta"] == {"current_page": 1, "portals_count": 2}
    kb = next(p for p in index["payload"] if p["slug"] == KB)
    assert kb["meta"]["all_articles_count"] == 0 and kb["meta"]["published_count"] is None
    assert {loc["code"]: loc["articles_count"] for loc in kb["config"]["allowed_locales"]}["fr"] == 13
    show = client.get(f"/api/v1/accounts/1/portals/{KB}").json()
    assert show["meta"]["all_articles_count"] == 235 and show["meta"]["default_locale"] == "en"
    assert (
        client.get(f"/api/v1/accounts/1/portals/{KB}", params={"locale": "fr"}).json()["meta"]["published_count"] == 13
    )
    cats = client.get(f"/api/v1/accounts/1/portals/{KB}/categories", params={"locale": "fr"}).json()
    assert cats["meta"]["categories_count"] == 2
    assert {"related_categories", "icon", "meta"} <= set(cats["payload"][0])


def test_status_fault_fires_once(fake: FakeChatwoot, client: httpx.Client) -> None:
    fake.fail(page=2, status=429)
    fake.fail(path_contains="/portals", status=502, times=1)
    assert client.get("/api/v1/accounts/1/portals").status_code == 502
    assert articles(client, page=1)["payload"]
    throttled = client.get(f"/api/v1/accounts/1/portals/{CW}/articles", params={"page": 2})
    assert throttled.status_code == 429 and "retry-after" not in throttled.headers
    assert throttled.text == "Retry later\n"
    assert articles(client, page=2)["payload"]
    assert fake.pending_faults() == 0
    statuses = [r.status for r in fake.requests]
    assert statuses == [502, 200, 429, 200]


def test_truncate_and_non_json(fake: FakeChatwoot, client: httpx.Client) -> None:
    fake.truncate(page=1)
    truncated = client.get(f"/api/v1/accounts/1/portals/{CW}/articles")
    assert truncated.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(truncated.content)
    fake.non_json(status=200)
    html = client.get(f"/api/v1/accounts/1/portals/{CW}/articles")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert articles(client)["payload"]


def test_delay_causes_client_timeout_once(fake: FakeChatwoot, client: httpx.Client) -> None:
    fake.delay(1.0, path_contains="/articles")
    with pytest.raises(httpx.ReadTimeout):
        client.get(f"/api/v1/accounts/1/portals/{CW}/articles", timeout=0.2)
    assert articles(client)["payload"]
    assert fake.request_count("/articles") == 2


def test_edit_between_pages_shifts_list(fake: FakeChatwoot, client: httpx.Client) -> None:
    fake.tie_order = "stable"
    before = all_pages(client)
    fake.clear_requests()
    moved = before[2][0]["id"]  # starts on page 3
    fake.edit_between_pages(CW, moved, after_page=1, title="Edited while paging")
    during = all_pages(client)
    ids = [a["id"] for p in during for a in p]
    assert moved not in ids  # it jumped to page 1, which was already read
    assert len(ids) == 161 and len(set(ids)) == 160  # last item of page 1 is served again on page 2
    assert during[1][0]["id"] == before[0][-1]["id"]
    fresh = articles(client, page=1)["payload"][0]
    assert (fresh["id"], fresh["title"]) == (moved, "Edited while paging")


def test_clock_edit_and_reset(fake: FakeChatwoot, client: httpx.Client) -> None:
    fake.set_time(2_000_000_000)
    new_id = fake.add_article(CW, title="Brand new", content="Hello", status="published")
    fake.edit_article(CW, 1005, content="changed")
    top = articles(client, page=1)["payload"][:2]
    assert {a["id"] for a in top} == {new_id, 1005}
    assert {a["updated_at"] for a in top} == {2_000_000_000}
    fake.delete_article(CW, 1006)
    assert 1006 not in fake.published_ids(CW)
    fake.reset()
    assert new_id not in fake.published_ids(CW) and 1006 in fake.published_ids(CW)
    assert fake.request_count() == 0
