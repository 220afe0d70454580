"""`status` counts (issue 14, part 3): docs and chunks come from the state database, kept by every run, so
/v1/status does not read every chunk's metadata on each call; they stay equal to what the collection holds through
reconciles, polls that add or remove articles, and webhook refreshes. Against the Chatwoot-compatible server."""

from __future__ import annotations

from kbsync.status import status_payload
from tests.chatwoot_fixtures import (  # noqa: F401  (fixtures)
    TINY,
    Kb,
    chatwoot,
    doc_id,
    fake,
    kb_factory,
    settings_factory,
    tenant,
)
from tests.servers.chatwoot import FakeChatwoot


def shown(kb: Kb, *, with_store: bool = True) -> tuple[int | None, int | None]:
    store_for = kb.engine.store_for if with_store else None
    (project,) = status_payload(kb.engine.settings, kb.engine.state, store_for)["projects"]
    return project["docs"], project["chunks"]


def held(kb: Kb) -> tuple[int, int]:
    index = kb.index()
    return len(index.docs), index.chunk_count


def test_status_counts_follow_every_run_without_reading_the_store(kb_factory, fake: FakeChatwoot) -> None:
    """If broken: the counts drift from the collection after a poll or a refresh, or status has none without
    reading the store (`with_store=False`: it must not need it once a run recorded them)."""
    kb = kb_factory(tenant(projects={"alpha": [TINY]}))
    assert shown(kb, with_store=False) == (None, None)  # nothing recorded, no store to read
    kb.reconcile()
    assert shown(kb, with_store=False) == held(kb) == (3, held(kb)[1])

    fake.advance(60)
    added = fake.add_article(
        TINY, title="Counting sheep", content="A new article.\n\nWith two paragraphs.", status="published"
    )
    assert kb.poll().docs_added == 1
    assert shown(kb, with_store=False) == held(kb) and held(kb)[0] == 4

    fake.advance(60)
    fake.set_status(TINY, added, "archived")
    report = kb.engine.refresh(kb.key(), f"chatwoot:{TINY}", "article_archived", doc_id(TINY, added))
    assert report.docs_deleted == 1
    assert shown(kb, with_store=False) == held(kb) and held(kb)[0] == 3

    kb.poll()  # nothing changed: the counts stay
    assert shown(kb, with_store=False) == held(kb)
    kb.restart()
    assert shown(kb, with_store=False) == held(kb)
