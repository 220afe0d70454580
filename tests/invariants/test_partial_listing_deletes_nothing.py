"""Invariant 2 (docs/invariants.md): a failed or partial listing deletes nothing; an article missing from a complete
listing is confirmed gone by a second complete listing before its chunks are deleted.

The server sorts by `updated_at` without a tie-breaker and can fail, cut off or shift its list mid-read; the
small-help portal spans two pages (25 + 6 articles).
"""

from __future__ import annotations

from structlog.testing import capture_logs

from tests.chatwoot_fixtures import FAST, SMALL, STAGED_ID, Kb, doc_id, published_doc_ids
from tests.servers.chatwoot import FakeChatwoot


def list_reads(fake: FakeChatwoot, page: int) -> int:
    """How many times page `page` of small-help's article list was requested."""
    return sum(1 for r in fake.requests if r.path.endswith(f"/{SMALL}/articles") and r.query.get("page") == str(page))


def oldest_published(fake: FakeChatwoot) -> int:
    """A published article on page 2 (the list is newest first)."""
    rows = [a for a in fake.all_articles(SMALL) if a["status"] == "published"]
    return min(rows, key=lambda a: a["updated_at"])["id"]


def test_listing_that_fails_on_page_two_deletes_nothing(kb: Kb, fake: FakeChatwoot) -> None:
    """A persistent 500 on page 2. If broken, the reconcile drops every article past page one."""
    kb.reconcile()
    held = kb.doc_ids()
    fake.delete_article(SMALL, oldest_published(fake))  # a real delete that this run must not act on either
    fake.fail(path_contains="/articles", page=2, status=500, times=None)
    fake.clear_requests()
    report = kb.reconcile()
    assert report.outcome == "failed" and "page 2" in report.errors[0]
    assert report.docs_deleted == 0 and report.chunks_deleted == 0
    assert kb.doc_ids() == held
    assert list_reads(fake, 2) == FAST.attempts  # retried, then given up
    fake.reset_faults()
    assert kb.reconcile().docs_deleted == 1  # once the list reads whole, the delete goes through
    assert kb.doc_ids() == published_doc_ids(fake, SMALL)


def test_truncated_json_deletes_nothing(kb: Kb, fake: FakeChatwoot) -> None:
    """A page cut off mid-body (HTTP 200, half the JSON). If broken, the half page passes for a short last page."""
    kb.reconcile()
    held = kb.doc_ids()
    fake.set_status(SMALL, oldest_published(fake), "draft")
    fake.truncate(path_contains="/articles", page=2, times=None)
    report = kb.reconcile()
    assert report.outcome == "failed" and "truncated or invalid JSON" in report.errors[0]
    assert report.docs_deleted == 0 and kb.doc_ids() == held


def test_article_edited_between_page_reads_is_kept_and_updated(kb: Kb, fake: FakeChatwoot) -> None:
    """An edit after page 1 was read moves an unread page-2 article to the top of page 1, so it appears on
    neither page of that pass. If broken, it is deleted as if it had vanished."""
    kb.reconcile()
    moved = oldest_published(fake)
    fake.edit_between_pages(SMALL, moved, after_page=1, content="Rewritten while the list was being read.")
    report = kb.reconcile()
    assert report.outcome == "ok" and report.docs_deleted == 0 and report.docs_updated == 1
    assert kb.doc_ids() == published_doc_ids(fake, SMALL)
    hits = kb.engine.query(kb.key(), "rewritten while the list was being read", k=1)
    assert hits[0].metadata["doc_id"] == doc_id(SMALL, moved)


def test_hard_delete_is_removed_only_after_a_second_complete_listing(kb: Kb, fake: FakeChatwoot) -> None:
    """If broken (no second look), one listing that missed an article is enough to delete it."""
    kb.reconcile()
    deleted = oldest_published(fake)
    fake.delete_article(SMALL, deleted)
    fake.clear_requests()
    report = kb.reconcile()
    assert report.docs_deleted == 1 and doc_id(SMALL, deleted) not in kb.doc_ids()
    # Two complete passes over both pages: the listing, then the confirmation.
    assert list_reads(fake, 2) == 2


def test_failed_second_look_deletes_nothing(kb: Kb, fake: FakeChatwoot) -> None:
    """The first listing is complete, the confirming one fails on page 2. If broken, the unconfirmed candidate
    is deleted anyway."""
    kb.reconcile()
    deleted = oldest_published(fake)
    fake.delete_article(SMALL, deleted)

    def break_page_two(f: FakeChatwoot, _portal: str, _page: int) -> None:
        f.fail(path_contains=f"/{SMALL}/articles", page=2, status=500, times=None)

    fake.on_page_read(break_page_two, portal=SMALL, page=2, times=1)  # after the first listing's page 2
    with capture_logs() as logs:
        report = kb.reconcile()
    assert report.docs_deleted == 0 and doc_id(SMALL, deleted) in kb.doc_ids()
    assert any(e["event"] == "chatwoot.confirm_failed" for e in logs)
    fake.reset_faults()
    assert kb.reconcile().docs_deleted == 1


def test_listing_that_never_settles_deletes_nothing(kb: Kb, fake: FakeChatwoot) -> None:
    """An article published on every page read keeps shifting the list: no pass can prove it saw everything.
    If broken, an article that the shifting hid is deleted."""
    kb.reconcile()
    deleted = oldest_published(fake)
    fake.delete_article(SMALL, deleted)

    def publish_one(f: FakeChatwoot, _portal: str, page: int) -> None:
        f.add_article(SMALL, title=f"Breaking news {page}", content="Hot off the press.", status="published")

    fake.on_page_read(publish_one, portal=SMALL, times=None)
    with capture_logs() as logs:
        report = kb.reconcile()
    assert report.docs_deleted == 0 and doc_id(SMALL, deleted) in kb.doc_ids()
    assert any(e["event"] == "source.incomplete_listing" for e in logs)
    assert report.docs_added > 0  # what it did read is still synced


def test_poll_after_a_hard_delete_reconciles_and_removes_it(kb: Kb, fake: FakeChatwoot) -> None:
    """A hard delete leaves no trace in the list; the poll sees `all_articles_count` drop and reconciles.
    If broken, deleted articles stay indexed until the next scheduled reconcile."""
    kb.reconcile()
    deleted = sorted(fake.published_ids(SMALL) - {STAGED_ID})[0]
    fake.delete_article(SMALL, deleted)
    fake.clear_requests()
    report = kb.poll()
    assert report.kind == "poll" and report.outcome == "ok"
    assert report.docs_deleted == 1 and report.chunks_embedded == 0
    assert kb.doc_ids() == published_doc_ids(fake, SMALL)
    assert list_reads(fake, 2) == 2  # the reconcile's listing and its second look
    fake.clear_requests()
    assert kb.poll().docs_deleted == 0 and fake.request_count() == 1  # the new total is the new baseline


def test_failed_poll_deletes_nothing_and_misses_nothing(kb: Kb, fake: FakeChatwoot) -> None:
    """A poll whose page fails keeps its watermark, so the change it missed is applied by the next poll.
    If broken, the failed poll advances the watermark past the unpublish and it is never seen."""
    kb.reconcile()
    unpublished = oldest_published(fake)
    fake.set_status(SMALL, unpublished, "draft")
    fake.fail(path_contains="/articles", page=1, status=503, times=None)
    report = kb.poll()
    assert report.outcome == "failed" and report.docs_deleted == 0
    fake.reset_faults()
    report = kb.poll()
    assert report.outcome == "ok" and report.docs_deleted == 1
    assert kb.doc_ids() == published_doc_ids(fake, SMALL)
