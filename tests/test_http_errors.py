"""Every error of the HTTP API has one body shape, `{"error": {"status", "message"[, "fields"]}}`: the routes' own
answers, FastAPI's HTTPException and validation errors, and unknown routes. The real app over a real engine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from kbsync.engine import Engine
from kbsync.http import ApiContext, create_app
from kbsync.http_errors import error_message
from kbsync.metrics import Metrics
from kbsync.queue import Queue


@pytest.fixture
def client(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    app = create_app(ApiContext(engine.settings, engine, Queue(engine.state), Metrics(), ready=lambda: True))
    with TestClient(app) as opened:
        yield opened


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["status"] == status, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def test_every_error_has_the_one_shape(client: TestClient) -> None:
    # HTTPException from a dependency: the admin token variable is not set, so admin routes are disabled.
    assert "admin routes are disabled" in error_of(client.get("/v1/status"), 403)["message"]
    # HTTPException from the query route's token check.
    assert error_of(client.post("/v1/query", json={"tenant": "acme", "project": "alpha", "query": "x"}), 401)
    # A body is validated only after the token check (issue 17): without a token, 401 whatever the body. Its 422
    # naming the offending field: tests/daemon/test_http_hardening.py (a daemon with query tokens).
    error_of(client.post("/v1/query", json={"tenant": "acme", "project": "alpha", "query": "x", "k": 0}), 401)
    # The webhook route's own answers (an unknown tenant answers as a bad signature does: issue 17).
    assert "X-Chatwoot-Signature" in error_of(client.post("/webhooks/initech", content=b"{}"), 401)["message"]
    # Starlette's own 404 and 405.
    error_of(client.get("/no/such/route"), 404)
    error_of(client.get("/v1/query"), 405)


def test_a_client_reads_the_message_and_the_fields() -> None:
    body = {"error": {"status": 422, "message": "invalid request", "fields": [{"field": "body.k", "message": "≥ 1"}]}}
    assert error_message(body) == "invalid request: body.k: ≥ 1"
    assert error_message({"detail": "not ours"}) is None
