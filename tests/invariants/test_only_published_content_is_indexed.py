"""Invariant 1 (docs/invariants.md): only published content is indexed; unpublish, archive and delete remove it;
Chatwoot's `draft_*` fields are ignored.

kbsync runs end to end (engine, Chroma, model) against the Chatwoot-compatible server; the small-help portal holds
published articles, two drafts, one archived article and one published article with staged `draft_*` edits.
"""

from __future__ import annotations

from tests.chatwoot_fixtures import (
    ARCHIVED_ID,
    DRAFT_IDS,
    SMALL,
    STAGED_CONTENT,
    STAGED_ID,
    STAGED_TITLE,
    Kb,
    doc_id,
    published_doc_ids,
)
from tests.servers.chatwoot import FakeChatwoot


def pick_published(fake: FakeChatwoot, count: int) -> list[int]:
    return sorted(fake.published_ids(SMALL) - {STAGED_ID})[:count]


def test_reconcile_indexes_exactly_the_published_articles(kb: Kb, fake: FakeChatwoot, chatwoot) -> None:
    """If broken, drafts or archived articles reach the bots, or published ones are missing."""
    report = kb.reconcile()
    assert report.outcome == "ok" and report.docs_added == len(fake.published_ids(SMALL))
    assert kb.doc_ids() == published_doc_ids(fake, SMALL)
    assert not {doc_id(SMALL, i) for i in (*DRAFT_IDS, ARCHIVED_ID)} & kb.doc_ids()
    article_id = pick_published(fake, 1)[0]
    article = fake.get_article(SMALL, article_id)
    (meta,) = kb.chunks(doc_id(SMALL, article_id)).values()
    assert meta["source"] == f"chatwoot:{SMALL}" and meta["source_kind"] == "chatwoot"
    assert meta["title"] == article["title"] and meta["category"] == article["category"]["name"]
    assert meta["url"] == f"{chatwoot.base_url}/hc/{SMALL}/articles/{article['slug']}"
    assert meta["locale"] == "en" and meta["doc_updated_at"] == article["updated_at"]


def test_unpublished_archived_and_deleted_articles_leave_the_index_on_the_next_poll(kb: Kb, fake: FakeChatwoot) -> None:
    """Unpublish and archive bump `updated_at`, so the poll sees them; a hard delete only lowers
    `all_articles_count`, which makes the poll reconcile. If broken, withdrawn articles stay answerable."""
    kb.reconcile()
    unpublished, archived, deleted = pick_published(fake, 3)
    fake.set_status(SMALL, unpublished, "draft")
    fake.set_status(SMALL, archived, "archived")
    fake.delete_article(SMALL, deleted)
    report = kb.poll()
    assert report.outcome == "ok" and report.docs_deleted == 3
    assert kb.doc_ids() == published_doc_ids(fake, SMALL)
    assert not {doc_id(SMALL, i) for i in (unpublished, archived, deleted)} & kb.doc_ids()


def test_unpublished_archived_and_deleted_articles_leave_the_index_on_reconcile(kb: Kb, fake: FakeChatwoot) -> None:
    """The safety net alone (no poll in between). If broken, only polls could ever remove content."""
    kb.reconcile()
    unpublished, archived, deleted = pick_published(fake, 3)
    fake.set_status(SMALL, unpublished, "draft")
    fake.set_status(SMALL, archived, "archived")
    fake.delete_article(SMALL, deleted)
    report = kb.reconcile()
    assert report.outcome == "ok" and report.docs_deleted == 3 and report.chunks_embedded == 0
    assert kb.doc_ids() == published_doc_ids(fake, SMALL)


def test_a_draft_is_indexed_only_once_published(kb: Kb, fake: FakeChatwoot) -> None:
    """If broken, a draft that an editor is still writing becomes an answer."""
    kb.reconcile()
    draft = fake.add_article(SMALL, title="Upcoming pricing", content="Pro will cost 99 dollars.", status="draft")
    assert kb.poll().docs_added == 0
    assert doc_id(SMALL, draft) not in kb.doc_ids()
    fake.set_status(SMALL, draft, "published")
    report = kb.poll()
    assert report.docs_added == 1 and report.chunks_embedded == 1
    assert kb.doc_ids() == published_doc_ids(fake, SMALL)


def test_staged_draft_title_and_content_are_never_indexed(kb: Kb, fake: FakeChatwoot) -> None:
    """Chatwoot 4.16 stages edits of a published article in `draft_title`/`draft_content`; they are not live.
    If broken, unreleased text is indexed (and a draft autosave costs an embedding)."""
    kb.reconcile()
    live = fake.get_article(SMALL, STAGED_ID)
    assert live["draft_title"] == STAGED_TITLE  # the portal really carries a staged edit
    (held,) = kb.engine.store.index(kb.key().collection, doc_ids={doc_id(SMALL, STAGED_ID)}).docs.values()
    assert {m["title"] for m in held.chunks.values()} == {live["title"]}

    # An autosave of the staged text, even one that bumps updated_at, changes nothing indexed.
    fake.edit_article(SMALL, STAGED_ID, draft_content=STAGED_CONTENT + " Revised.")
    report = kb.poll()
    assert report.chunks_embedded == 0 and report.docs_updated == 0
    hits = kb.engine.query(kb.key(), "secret Omega plan launch", k=5)
    assert hits and not any("Omega" in hit.text or STAGED_TITLE in hit.text for hit in hits)


def test_archived_portal_leaves_the_index(kb: Kb, fake: FakeChatwoot) -> None:
    """An archived portal answers 404 publicly: none of its articles is published content any more."""
    kb.reconcile()
    fake.update_portal(SMALL, archived=True)
    report = kb.reconcile()
    assert report.outcome == "ok" and report.docs_deleted == len(fake.published_ids(SMALL))
    assert kb.doc_ids() == set()
