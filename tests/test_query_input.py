"""What a user may type into `/v1/query` (README "Query"): the real app over a real engine, with an admin token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kbsync.http import ApiContext, create_app
from kbsync.metrics import Metrics
from kbsync.queue import Queue

ADMIN = {"Authorization": "Bearer qa-admin"}


@pytest.fixture
def client(files_settings: Path, docs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    from kbsync.runs import ProjectKey
    from kbsync.settings import load_settings
    from kbsync.wiring import open_engine

    monkeypatch.setenv("KBSYNC_ADMIN_TOKEN", "qa-admin")
    (docs_dir / "refunds.md").write_text("# Refunds\n\nRefunds are paid back within five business days.\n")
    with open_engine(load_settings(files_settings)) as engine:
        engine.reconcile(ProjectKey("acme", "alpha"))
        app = create_app(ApiContext(engine.settings, engine, Queue(engine.state), Metrics(), ready=lambda: True))
        with TestClient(app) as opened:
            yield opened


def query(client: TestClient, text: str):
    return client.post("/v1/query", json={"tenant": "acme", "project": "alpha", "query": text}, headers=ADMIN)


@pytest.mark.parametrize("text", [" ", "\t\n  "])
def test_a_blank_question_is_422_naming_the_field(client: TestClient, text: str) -> None:
    response = query(client, text)
    assert response.status_code == 422, response.text
    (field,) = response.json()["error"]["fields"]
    assert field == {"field": "body.query", "message": "the question holds only whitespace"}


@pytest.mark.parametrize("text", ['"refund', "refund* NEAR paid", "-refund title:paid", "the of and"])
def test_search_syntax_is_plain_text(client: TestClient, text: str) -> None:
    response = query(client, text)
    assert response.status_code == 200, response.text
    assert [r["doc_id"] for r in response.json()["results"]] == ["files:refunds.md"]
