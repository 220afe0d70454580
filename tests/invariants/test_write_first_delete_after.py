"""Invariant 3 (docs/invariants.md): write first, delete after: a document never disappears from the index while it is
being updated. New chunks are written before stale ones are deleted, so a reader sees the old version, then old
and new together, then the new one, and never nothing.

Observed through the product only: a second thread reads the article's chunks from Chroma over and over while the
engine updates it, and the engine's own stop event interrupts an update between embedding and writing.
"""

from __future__ import annotations

import threading

from tests.chatwoot_fixtures import LONG_ID, SMALL, Kb, doc_id
from tests.servers.chatwoot import FakeChatwoot

LONG = doc_id(SMALL, LONG_ID)


def rewritten(fake: FakeChatwoot) -> str:
    """The long article with every paragraph changed: every chunk gets a new id."""
    content = fake.get_article(SMALL, LONG_ID)["content"]
    return "\n\n".join(p if p.startswith("#") else f"Revised: {p}" for p in content.split("\n\n"))


def test_edited_article_never_disappears_while_it_is_updated(kb: Kb, fake: FakeChatwoot) -> None:
    """If broken (stale chunks deleted before the new ones are embedded and written), a reader sees the article
    vanish for as long as the embedding takes."""
    kb.reconcile()
    old = kb.chunk_ids(doc=LONG)
    assert len(old) >= 3
    fake.edit_article(SMALL, LONG_ID, content=rewritten(fake))
    collection = kb.key().collection
    seen: list[set[str]] = []
    done = threading.Event()

    def read_until_done() -> None:
        while True:
            finished = done.is_set()  # one more read after the run returned
            held = kb.engine.store.index(collection, doc_ids={LONG}).docs.get(LONG)
            seen.append(set(held.chunks) if held is not None else set())
            if finished:
                return

    reader = threading.Thread(target=read_until_done)
    reader.start()
    try:
        report = kb.poll()
    finally:
        done.set()
        reader.join(timeout=30)
    new = kb.chunk_ids(doc=LONG)
    assert report.docs_updated == 1 and report.chunks_embedded == len(new) and not old & new
    assert len(seen) > 3
    assert seen[0] == old and seen[-1] == new
    absent = [ids for ids in seen if not (ids >= old or ids >= new)]
    assert absent == []  # every read held one complete version (both, just after the write)


def test_interrupted_update_leaves_the_old_version_whole(kb: Kb, fake: FakeChatwoot) -> None:
    """The daemon stops between embedding and writing. If broken, a half-applied update (or a deleted article)
    stays in the index until the next run."""
    kb.reconcile()
    old = kb.chunks(LONG)
    fake.edit_article(SMALL, LONG_ID, content=rewritten(fake))
    fake.on_page_read(lambda *_: kb.engine.stop_event.set(), portal=SMALL, page=1, times=1)
    report = kb.poll()
    assert report.outcome == "interrupted" and report.chunks_deleted == 0
    assert kb.chunks(LONG) == old  # not a chunk more, not a chunk less, metadata untouched
    kb.engine.stop_event.clear()
    report = kb.poll()  # the watermark did not move: the next poll still sees the edit
    assert report.outcome == "ok" and report.docs_updated == 1
    assert not set(old) & kb.chunk_ids(doc=LONG)
