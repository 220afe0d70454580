"""Invariant 4 (docs/invariants.md; the targets are in bench/): unchanged documents cost zero embeddings; an edit
re-embeds only the chunks whose text changed; a poll with nothing changed is one HTTP request per portal.

"Zero embeddings" is read from the run report's counters, requests from both the report and the server's log.
"""

from __future__ import annotations

from tests.chatwoot_fixtures import LONG_ID, SMALL, STAGED_ID, Kb, doc_id
from tests.servers.chatwoot import FakeChatwoot

LONG = doc_id(SMALL, LONG_ID)


def test_second_reconcile_with_nothing_changed_embeds_and_writes_nothing(kb: Kb, fake: FakeChatwoot) -> None:
    """If broken, every scheduled reconcile re-embeds the whole portal."""
    first = kb.reconcile()
    report = kb.reconcile()
    assert report.outcome == "ok"
    assert (report.chunks_embedded, report.chunks_written, report.chunks_deleted) == (0, 0, 0)
    assert report.docs_unchanged == first.docs_added == len(fake.published_ids(SMALL))


def test_poll_with_nothing_changed_is_one_request_and_no_embedding(kb: Kb, fake: FakeChatwoot) -> None:
    """Design §8: one HTTP request per portal. If broken, polls page through the portal every minute."""
    kb.reconcile()
    for _ in range(3):
        fake.clear_requests()
        report = kb.poll()
        assert report.outcome == "ok" and report.requests == 1 and fake.request_count() == 1
        assert (report.chunks_embedded, report.chunks_written, report.docs_deleted) == (0, 0, 0)
    (request,) = fake.requests
    assert request.path.endswith(f"/portals/{SMALL}/articles") and request.query == {"page": "1"}


def test_one_edited_paragraph_re_embeds_only_its_chunks(kb: Kb, fake: FakeChatwoot) -> None:
    """Design §8: one paragraph edited in a long article embeds at most 2 chunks; the others keep their ids and
    vectors. If broken, each edit re-embeds the whole article (or the portal)."""
    kb.reconcile()
    before = kb.chunk_ids(doc=LONG)
    paragraphs = fake.get_article(SMALL, LONG_ID)["content"].split("\n\n")
    paragraphs[1] += " Supervisors can also reassign conversations in bulk."
    fake.edit_article(SMALL, LONG_ID, content="\n\n".join(paragraphs))
    report = kb.poll()
    after = kb.chunk_ids(doc=LONG)
    assert report.docs_updated == 1 and report.docs_added == 0
    assert 1 <= report.chunks_embedded <= 2 < len(before)
    assert len(after - before) == report.chunks_embedded
    assert len(before - after) == report.chunks_deleted
    assert len(before & after) >= len(before) - 2
    assert kb.engine.query(kb.key(), "reassign conversations in bulk", k=1)[0].metadata["doc_id"] == LONG


def test_save_without_a_content_change_costs_no_embedding(kb: Kb, fake: FakeChatwoot) -> None:
    """A save that bumps `updated_at` but changes nothing indexed (a position or view-count change through a
    normal save) only refreshes `doc_updated_at`. If broken, every such save re-embeds the article."""
    kb.reconcile()
    ids = kb.chunk_ids(doc=LONG)
    fake.edit_article(SMALL, LONG_ID, position=990)
    stamp = fake.get_article(SMALL, LONG_ID)["updated_at"]
    report = kb.poll()
    assert report.chunks_embedded == 0 and report.docs_updated == 0
    assert kb.chunk_ids(doc=LONG) == ids
    assert {m["doc_updated_at"] for m in kb.chunks(LONG).values()} == {stamp}


def test_restart_resumes_polling_from_the_stored_watermark(kb: Kb, fake: FakeChatwoot) -> None:
    """Watermarks live in the state database. If broken, every restart re-lists (or re-embeds) every portal."""
    kb.reconcile()
    kb.restart()
    fake.clear_requests()
    fake.edit_article(SMALL, STAGED_ID, content="Edited while kbsync was down.")
    report = kb.poll()
    assert report.outcome == "ok" and report.docs_updated == 1 and report.chunks_embedded == 1
    # No full listing: page 1 of the list, plus the portal once (for citation URLs) in the new process.
    assert fake.request_count(f"/portals/{SMALL}/articles") == 1 and report.requests == fake.request_count() <= 2
    fake.clear_requests()
    assert kb.poll().requests == 1 == fake.request_count()
