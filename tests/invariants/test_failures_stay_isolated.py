"""Invariant 7 (docs/invariants.md): one project's writes are serialized; different projects proceed in parallel; one
failing source or tenant does not stop the others. Also: two tenants whose Chatwoot installations use the same
article ids (and so the same doc ids) are kept apart in their own collections.

Ordering is read from the run records the engine keeps in the state database (what `kbsync status` shows).
"""

from __future__ import annotations

import threading
import time

from tests.chatwoot_fixtures import MULTI, OTHER_TOKEN, SMALL, TINY, Kb, doc_id, published_doc_ids, source, tenant
from tests.servers.chatwoot import FakeChatwoot


def test_rejected_token_of_one_tenant_does_not_stop_another_tenant(kb_factory, fake: FakeChatwoot) -> None:
    """If broken, one customer's revoked token stalls every other customer's sync."""
    kb = kb_factory(
        tenant("acme", token="revoked-token", projects={"alpha": [TINY]}),
        tenant("globex", projects={"beta": [TINY]}),
    )
    failed = kb.reconcile("acme", "alpha")
    synced = kb.reconcile("globex", "beta")
    assert failed.outcome == "failed" and "token rejected" in failed.errors[0]
    assert synced.outcome == "ok" and kb.doc_ids("globex", "beta") == published_doc_ids(fake, TINY)
    assert kb.doc_ids("acme", "alpha") == set()


def test_failing_source_neither_stops_nor_shrinks_its_project(kb_factory, fake: FakeChatwoot) -> None:
    """Two portals feed one project; one starts failing. If broken, the healthy portal's changes are not applied,
    or the failing portal's articles are dropped."""
    kb = kb_factory(tenant(projects={"alpha": [TINY, source(MULTI, locales=["fr"])]}))
    assert kb.reconcile().outcome == "ok"
    tiny = published_doc_ids(fake, TINY)
    fake.fail(path_contains=f"/portals/{TINY}", status=500, times=None)
    withdrawn = sorted(fake.published_ids(MULTI, "fr"))[0]
    fake.set_status(MULTI, withdrawn, "archived")
    report = kb.reconcile()
    assert report.outcome == "partial" and len(report.errors) == 1 and TINY in report.errors[0]
    assert report.docs_deleted == 1
    assert kb.doc_ids() == tiny | published_doc_ids(fake, MULTI, "fr")


def test_unknown_portal_does_not_stop_the_other_source(kb_factory, fake: FakeChatwoot) -> None:
    kb = kb_factory(tenant(projects={"alpha": [TINY, "no-such-portal"]}))
    report = kb.reconcile()
    assert report.outcome == "partial" and "portal 'no-such-portal' not found" in report.errors[0]
    assert kb.doc_ids() == published_doc_ids(fake, TINY)


def test_tenants_with_the_same_article_ids_are_kept_apart(
    kb_factory, fake: FakeChatwoot, other_chatwoot, other_fake: FakeChatwoot
) -> None:
    """Two Chatwoot installations, one portal slug, the same article ids, different text. If broken, one tenant's
    articles overwrite, answer for, or delete the other's."""
    kb = kb_factory(
        tenant("acme", projects={"help": [TINY]}),
        tenant("globex", server=other_chatwoot, token=OTHER_TOKEN, projects={"help": [TINY]}),
    )
    kb.reconcile("acme", "help")
    kb.reconcile("globex", "help")
    assert fake.published_ids(TINY) == other_fake.published_ids(TINY)
    assert kb.doc_ids("acme", "help") == kb.doc_ids("globex", "help") == published_doc_ids(fake, TINY)
    for article_id in fake.published_ids(TINY):
        ours, theirs = fake.get_article(TINY, article_id), other_fake.get_article(TINY, article_id)
        assert ours["title"] != theirs["title"]
        assert {m["title"] for m in kb.chunks(doc_id(TINY, article_id), "acme", "help").values()} == {ours["title"]}
        assert {m["title"] for m in kb.chunks(doc_id(TINY, article_id), "globex", "help").values()} == {theirs["title"]}
    gone = min(other_fake.published_ids(TINY))
    other_fake.delete_article(TINY, gone)
    assert kb.reconcile("globex", "help").docs_deleted == 1
    assert kb.reconcile("acme", "help").docs_deleted == 0
    assert doc_id(TINY, gone) in kb.doc_ids("acme", "help") and doc_id(TINY, gone) not in kb.doc_ids("globex", "help")


def test_runs_of_one_project_never_overlap(kb_factory, fake: FakeChatwoot) -> None:
    """A reconcile and a poll of one project started together, with a slow Chatwoot. If broken, both runs write
    the same collection at once."""
    kb: Kb = kb_factory(tenant(projects={"alpha": [TINY]}))
    fake.delay(0.3, path_contains=f"/portals/{TINY}/articles", times=None)
    runs = [threading.Thread(target=kb.reconcile), threading.Thread(target=kb.poll)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=60)
    records = kb.engine.state.last_runs("acme", "alpha")
    first, second = sorted(records.values(), key=lambda r: r.started_at)
    assert {first.kind, second.kind} == {"reconcile", "poll"}
    assert first.finished_at is not None and first.finished_at <= second.started_at


def test_different_projects_run_in_parallel(kb_factory, fake: FakeChatwoot) -> None:
    """A project stuck on a slow portal does not hold up another project. If broken, one slow Chatwoot delays
    every project behind it."""
    kb: Kb = kb_factory(tenant(projects={"slow": [SMALL], "quick": [TINY]}))
    fake.delay(1.0, path_contains=f"/portals/{SMALL}/articles", times=None)
    slow = threading.Thread(target=kb.reconcile, args=("acme", "slow"))
    slow.start()
    deadline = time.monotonic() + 10
    while fake.request_count(f"/portals/{SMALL}/articles") == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    quick = kb.reconcile("acme", "quick")
    slow.join(timeout=120)
    assert quick.outcome == "ok" and not slow.is_alive()
    slow_run = kb.engine.state.last_runs("acme", "slow")["reconcile"]
    quick_run = kb.engine.state.last_runs("acme", "quick")["reconcile"]
    assert slow_run.outcome == "ok"
    assert slow_run.started_at < quick_run.started_at and quick_run.finished_at < slow_run.finished_at
