"""Webhook routing (issue 14, part 2): one portal read by two projects is a supported layout, so a webhook for it
must refresh every project that reads it, not only the first one in the settings. The real FastAPI app over a real
engine, queue (SQLite) and the Chatwoot-compatible server; the items are applied as the webhook worker applies them
(`Engine.refresh` per claimed item)."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from fastapi.testclient import TestClient

from kbsync.http import ApiContext, create_app, sign
from kbsync.metrics import Metrics
from kbsync.queue import Queue
from kbsync.runs import ProjectKey
from tests.chatwoot_fixtures import (  # noqa: F401  (fixtures)
    TINY,
    chatwoot,
    doc_id,
    fake,
    kb_factory,
    settings_factory,
    tenant,
)
from tests.servers.chatwoot import FakeChatwoot

SECRET = "acme-webhook-secret-for-routing"


def signed_webhook(client: TestClient, article_id: int) -> int:
    body = json.dumps(
        {"event": "article_updated", "account": {"id": 1}, "portal": {"slug": TINY}, "article": {"id": article_id}}
    ).encode()
    ts = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-Chatwoot-Timestamp": ts,
        "X-Chatwoot-Signature": sign(SECRET, ts, body),
        "X-Chatwoot-Delivery": str(uuid.uuid4()),
    }
    return client.post("/webhooks/acme", content=body, headers=headers).status_code


def test_a_webhook_for_a_shared_portal_refreshes_every_project_that_reads_it(
    kb_factory, fake: FakeChatwoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If broken: only `alpha` (the first project reading the portal) gets a queue item; `beta` keeps the old
    text until its next poll or reconcile."""
    monkeypatch.setenv("ACME_WEBHOOK_SECRET", SECRET)
    kb = kb_factory(
        tenant(projects={"alpha": [TINY], "beta": [TINY]}, extra={"webhook_secret_env": "ACME_WEBHOOK_SECRET"})
    )
    for project in ("alpha", "beta"):
        assert kb.reconcile("acme", project).outcome == "ok"
    article_id = min(fake.published_ids(TINY))
    marker = f"routing-{uuid.uuid4().hex[:8]}"
    fake.advance(60)
    fake.edit_article(TINY, article_id, content=f"{marker}: the edited article.")

    queue = Queue(kb.engine.state)
    app = create_app(ApiContext(kb.engine.settings, kb.engine, queue, Metrics(), ready=lambda: True))
    with TestClient(app) as client:
        assert signed_webhook(client, article_id) == 202

    claimed = [queue.claim(f"worker-{n}", 30) for n in range(3)]
    items = [item for item in claimed if item is not None]
    assert sorted(item.project for item in items) == ["alpha", "beta"]
    for item in items:
        key = ProjectKey(item.tenant, item.project)
        assert kb.engine.refresh(key, item.source, item.event, item.payload.get("doc_id")).outcome == "ok"
        queue.done(item, f"worker-{claimed.index(item)}")
    for project in ("alpha", "beta"):
        held = kb.chunks(doc_id(TINY, article_id), "acme", project)
        assert any(marker in hit.text for hit in kb.engine.store.get(kb.key("acme", project).collection, list(held)))
    assert queue.depth() == {"pending": 0, "dead": 0}
