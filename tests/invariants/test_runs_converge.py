"""Invariant 6 (docs/invariants.md): idempotent and convergent: any run repeated, or two runs racing, end in the same
index as one clean run.

"The same index" is compared on what the bot layer sees: chunk ids (which come from the chunk texts) with their
metadata, minus the keys that name the project or the time of writing. The clean run is a second project of the
same tenant reading the same portal once, after every change.
"""

from __future__ import annotations

import threading
from typing import Any

from tests.chatwoot_fixtures import LONG_ID, SMALL, Kb, tenant
from tests.servers.chatwoot import FakeChatwoot

TWO_PROJECTS = tenant(projects={"alpha": [SMALL], "clean": [SMALL]})


def content(kb: Kb, project: str) -> dict[str, dict[str, Any]]:
    """Chunk id -> metadata, without the keys that differ between two projects holding the same content."""
    index = kb.index("acme", project)
    return {
        chunk_id: {k: v for k, v in meta.items() if k not in ("project", "indexed_at")}
        for doc in index.docs.values()
        for chunk_id, meta in doc.chunks.items()
    }


def change_the_portal(fake: FakeChatwoot) -> None:
    """An edit, an unpublish, a hard delete and a new article."""
    ids = sorted(fake.published_ids(SMALL) - {LONG_ID})
    paragraphs = fake.get_article(SMALL, LONG_ID)["content"].split("\n\n")
    fake.edit_article(SMALL, LONG_ID, content="\n\n".join([*paragraphs[:-1], "A replaced last paragraph."]))
    fake.set_status(SMALL, ids[0], "draft")
    fake.delete_article(SMALL, ids[1])
    fake.add_article(SMALL, title="Holiday hours", content="Support is closed on public holidays.", status="published")


def test_repeated_reconcile_keeps_the_same_chunk_ids(kb: Kb) -> None:
    """If broken, chunk ids drift between runs (ids not derived from content) and bots see churn."""
    kb.reconcile()
    first = content(kb, "alpha")
    report = kb.reconcile()
    assert report.chunks_embedded == report.chunks_written == report.chunks_deleted == 0
    assert content(kb, "alpha") == first


def test_polls_then_reconcile_end_in_the_index_of_one_clean_run(kb_factory, fake: FakeChatwoot) -> None:
    """Changes applied by a poll, then the reconcile, must leave exactly what a fresh reconcile builds. If broken,
    the index drifts from the portal in ways only a rebuild would fix.

    The hard delete and the new article between two polls leave `all_articles_count` unchanged, so the poll
    cannot see the delete (the list shows no trace of it): the reconcile is what removes it."""
    kb = kb_factory(TWO_PROJECTS)
    kb.reconcile("acme", "alpha")
    change_the_portal(fake)
    poll = kb.poll("acme", "alpha")
    assert poll.outcome == "ok" and (poll.docs_added, poll.docs_updated, poll.docs_deleted) == (1, 1, 1)
    reconcile = kb.reconcile("acme", "alpha")
    assert reconcile.docs_deleted == 1 and reconcile.chunks_embedded == 0
    assert kb.reconcile("acme", "clean").outcome == "ok"
    assert content(kb, "alpha") == content(kb, "clean")
    settle = kb.reconcile("acme", "alpha")  # the safety net finds nothing left to do
    assert (settle.chunks_embedded, settle.chunks_written, settle.chunks_deleted, settle.docs_deleted) == (0, 0, 0, 0)


def test_racing_runs_of_one_project_end_in_the_index_of_one_clean_run(kb_factory, fake: FakeChatwoot) -> None:
    """Two reconciles and a poll started together on one project, while the portal changes. If broken (no
    per-project serialization), chunks get written twice, deleted under another run, or left behind."""
    kb = kb_factory(TWO_PROJECTS)
    kb.reconcile("acme", "alpha")
    change_the_portal(fake)
    runs = [
        threading.Thread(target=kb.reconcile, args=("acme", "alpha")),
        threading.Thread(target=kb.poll, args=("acme", "alpha")),
        threading.Thread(target=kb.reconcile, args=("acme", "alpha")),
    ]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=120)
    kb.reconcile("acme", "clean")
    assert content(kb, "alpha") == content(kb, "clean")
    runs_held = kb.engine.state.last_runs("acme", "alpha")
    assert {r.outcome for r in runs_held.values()} == {"ok"}
