"""A query's locale filter and the project's locales (issue 14, part 2). The filter is dropped when the project
holds only the asked locale (a filter matching most of a collection makes Chroma slow), so the project's locales
must be known before chunks of a new locale are written: a project that held only `en` and gains `fr` through a
poll or a webhook must not answer `locale="en"` with French chunks. Against the Chatwoot-compatible server."""

from __future__ import annotations

import pytest

from tests.chatwoot_fixtures import (  # noqa: F401  (fixtures)
    MULTI,
    Kb,
    chatwoot,
    doc_id,
    fake,
    kb_factory,
    settings_factory,
    tenant,
)
from tests.servers.chatwoot import FakeChatwoot


def english_only(kb_factory, fake: FakeChatwoot) -> tuple[Kb, int]:
    """The kanboard-mini portal with its French and Spanish articles unpublished, reconciled (so only `en` is
    held) and queried once in English; returns kbsync and a French article id, still a draft."""
    others = sorted(fake.published_ids(MULTI, "fr") | fake.published_ids(MULTI, "es"))
    for article_id in others:
        fake.set_status(MULTI, article_id, "draft")
    kb = kb_factory(tenant(projects={"all": [MULTI]}))
    assert kb.reconcile("acme", "all").outcome == "ok"
    assert {m["locale"] for d in kb.index("acme", "all").docs.values() for m in d.chunks.values()} == {"en"}
    assert kb.engine.query(kb.key("acme", "all"), "project", k=3, locale="en")  # the project is known as en-only
    french = next(a for a in others if fake.get_article(MULTI, a)["category"]["locale"] == "fr")
    fake.advance(60)
    fake.set_status(MULTI, french, "published")
    return kb, french


def assert_no_french_for_english(kb: Kb, fake: FakeChatwoot, french: int) -> None:
    held = kb.chunks(doc_id(MULTI, french), "acme", "all")
    assert held and {m["locale"] for m in held.values()} == {"fr"}  # the French article is indexed now
    text = fake.get_article(MULTI, french)["content"]  # its own text: it would be the top hit unfiltered
    hits = kb.engine.query(kb.key("acme", "all"), text, k=5, locale="en")
    assert hits and {h.metadata["locale"] for h in hits} == {"en"}
    french_hits = kb.engine.query(kb.key("acme", "all"), text, k=5, locale="fr")
    assert french_hits[0].metadata["doc_id"] == doc_id(MULTI, french)


@pytest.mark.parametrize("path", ["poll", "webhook"])
def test_a_project_that_gains_a_locale_never_answers_another_locale_with_it(path: str, kb_factory, fake) -> None:
    """If broken: the `locale="en"` query returns the French chunk (the filter was dropped because the locale
    cache still said the project held only `en`; it was refreshed only by a full index)."""
    kb, french = english_only(kb_factory, fake)
    key = kb.key("acme", "all")
    if path == "poll":
        report = kb.engine.poll(key)
    else:  # what the webhook worker runs for an article_published event
        report = kb.engine.refresh(key, f"chatwoot:{MULTI}", "article_published", doc_id(MULTI, french))
    assert report.outcome == "ok" and report.docs_added == 1
    assert_no_french_for_english(kb, fake, french)
    kb.restart()  # the recorded locales survive a restart (they live in the state database)
    assert_no_french_for_english(kb, fake, french)


def test_a_reconcile_forgets_a_locale_the_project_no_longer_holds(kb_factory, fake: FakeChatwoot) -> None:
    """Once the last French article is gone, a reconcile records `en` alone again, so English queries skip the
    filter once more; answers stay English either way."""
    kb, french = english_only(kb_factory, fake)
    kb.poll("acme", "all")
    assert kb.engine.state.locales("acme", "all") == {"en", "fr"}
    fake.advance(60)
    fake.set_status(MULTI, french, "draft")
    assert kb.reconcile("acme", "all").outcome == "ok"
    assert kb.engine.state.locales("acme", "all") == {"en"}
