"""The engine over Chatwoot portals: multi-locale portals and the changes that do not bump `updated_at`.

End to end against the Chatwoot-compatible server (tests/chatwoot_fixtures.py); the kanboard-mini portal holds
English, French and Spanish articles in localized categories.
"""

from __future__ import annotations

from tests.chatwoot_fixtures import (  # noqa: F401  (fixtures)
    MULTI,
    SMALL,
    Kb,
    chatwoot,
    doc_id,
    fake,
    kb,
    kb_factory,
    published_doc_ids,
    settings_factory,
    source,
    tenant,
)
from tests.servers.chatwoot import FakeChatwoot


def locales_held(kb: Kb, project: str) -> dict[str, str]:
    """doc id -> locale of its chunks."""
    return {
        doc.doc_id: next(iter({m["locale"] for m in doc.chunks.values()}))
        for doc in kb.index("acme", project).docs.values()
    }


def test_multi_locale_portal_is_indexed_per_locale_and_filtered(kb_factory, fake: FakeChatwoot) -> None:
    """Each article's locale is its category's; `locales = ["fr"]` indexes the French articles only."""
    kb = kb_factory(tenant(projects={"all": [MULTI], "french": [source(MULTI, locales=["fr"])]}))
    assert kb.reconcile("acme", "all").outcome == kb.reconcile("acme", "french").outcome == "ok"
    held = locales_held(kb, "all")
    assert set(held) == published_doc_ids(fake, MULTI)
    for article_id in fake.published_ids(MULTI):
        assert held[doc_id(MULTI, article_id)] == fake.get_article(MULTI, article_id)["category"]["locale"]
    assert set(held.values()) == {"en", "fr", "es"}
    assert set(locales_held(kb, "french").values()) == {"fr"}
    assert kb.doc_ids("acme", "french") == published_doc_ids(fake, MULTI, "fr")
    hits = kb.engine.query(kb.key("acme", "all"), "créer un projet", k=5, locale="fr")
    assert hits and {h.metadata["locale"] for h in hits} == {"fr"}


def test_article_moved_out_of_the_filtered_locale_leaves_that_project(kb_factory, fake: FakeChatwoot) -> None:
    """Moving an article to an English category changes its locale (a normal save): the French project's poll
    removes it, the project without a filter re-labels it."""
    kb = kb_factory(tenant(projects={"all": [MULTI], "french": [source(MULTI, locales=["fr"])]}))
    kb.reconcile("acme", "all")
    kb.reconcile("acme", "french")
    moved = sorted(fake.published_ids(MULTI, "fr"))[0]
    english = fake.get_article(MULTI, sorted(fake.published_ids(MULTI, "en"))[0])["category"]["id"]
    fake.edit_article(MULTI, moved, category_id=english)
    french = kb.poll("acme", "french")
    assert french.docs_deleted == 1 and doc_id(MULTI, moved) not in kb.doc_ids("acme", "french")
    everything = kb.poll("acme", "all")
    assert everything.docs_updated == 1 and everything.chunks_embedded == 0  # same text: metadata only
    assert locales_held(kb, "all")[doc_id(MULTI, moved)] == "en"


def test_deleted_category_is_picked_up_by_reconcile(kb: Kb, fake: FakeChatwoot) -> None:
    """Deleting a category nullifies its articles' category without bumping `updated_at`: no poll can see it,
    the reconcile refreshes the metadata (no embedding: the chunk texts do not change)."""
    kb.reconcile()
    category = fake.get_article(SMALL, sorted(fake.published_ids(SMALL))[0])["category"]
    members = {
        doc_id(SMALL, i)
        for i in fake.published_ids(SMALL)
        if fake.get_article(SMALL, i)["category"]["id"] == category["id"]
    }
    fake.delete_category(SMALL, category["id"])
    assert kb.poll().docs_updated == 0  # invisible to the list's order
    report = kb.reconcile()
    assert report.docs_updated == len(members) and report.chunks_embedded == 0
    index = kb.index()
    for member in members:
        assert {m["category"] for m in index.docs[member].chunks.values()} == {""}
        assert {m["locale"] for m in index.docs[member].chunks.values()} == {"en"}  # the portal default
    others = set(index.docs) - members
    assert all(m["category"] for d in others for m in index.docs[d].chunks.values())


def test_renamed_category_is_picked_up_by_reconcile(kb: Kb, fake: FakeChatwoot) -> None:
    """A category rename does not touch its articles either."""
    kb.reconcile()
    article_id = sorted(fake.published_ids(SMALL))[0]
    category = fake.get_article(SMALL, article_id)["category"]
    fake.edit_category(SMALL, category["id"], name="Renamed section")
    report = kb.reconcile()
    assert report.docs_updated >= 1 and report.chunks_embedded == 0
    assert {m["category"] for m in kb.chunks(doc_id(SMALL, article_id)).values()} == {"Renamed section"}


def test_citation_urls_follow_the_portals_custom_domain(kb: Kb, fake: FakeChatwoot) -> None:
    """Chatwoot's own rule: https://<custom_domain>/hc/<portal>/articles/<slug> when the portal has one."""
    fake.update_portal(SMALL, custom_domain="help.acme.example")
    kb.reconcile()
    article_id = sorted(fake.published_ids(SMALL))[0]
    slug = fake.get_article(SMALL, article_id)["slug"]
    urls = {m["url"] for m in kb.chunks(doc_id(SMALL, article_id)).values()}
    assert urls == {f"https://help.acme.example/hc/{SMALL}/articles/{slug}"}
