"""A run report keeps transient and permanent errors apart (issue 14, part 2): the webhook worker dead-letters an
item whose refresh failed permanently (401 bad token, 404 unknown portal) and retries one that failed transiently
(5xx, timeouts). Against the Chatwoot-compatible server."""

from __future__ import annotations

import pytest

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


def refreshed(kb: Kb, fake: FakeChatwoot, status: int):
    assert kb.reconcile().outcome == "ok"
    fake.fail(path_contains=f"/portals/{TINY}", status=status, times=None)
    article = min(fake.published_ids(TINY))
    return kb.engine.refresh(kb.key(), f"chatwoot:{TINY}", "article_updated", doc_id(TINY, article))


@pytest.mark.parametrize("status", [401, 404])
def test_a_rejected_refresh_is_permanent(status: int, kb_factory, fake: FakeChatwoot) -> None:
    report = refreshed(kb_factory(tenant(projects={"alpha": [TINY]})), fake, status)
    assert report.outcome == "failed" and report.permanent
    assert report.permanent_errors == report.errors and len(report.errors) == 1
    assert report.as_dict()["permanent_errors"] == report.errors


@pytest.mark.parametrize("status", [500, 503])
def test_a_refresh_the_server_could_not_answer_is_transient(status: int, kb_factory, fake: FakeChatwoot) -> None:
    report = refreshed(kb_factory(tenant(projects={"alpha": [TINY]})), fake, status)
    assert report.outcome == "failed" and not report.permanent and report.permanent_errors == []


def test_a_refresh_of_a_source_the_project_lacks_is_permanent(kb_factory, fake: FakeChatwoot) -> None:
    kb = kb_factory(tenant(projects={"alpha": [TINY]}))
    report = kb.engine.refresh(kb.key(), "chatwoot:no-such-portal", "article_updated", None)
    assert report.permanent and "no source chatwoot:no-such-portal" in report.errors[0]
