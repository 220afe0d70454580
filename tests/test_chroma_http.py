"""Chroma server mode (issue 8; README "Collections", "Scaling out"): the same collections as embedded mode,
readable by a bot with nothing but chromadb, tenants on servers of their own, and `copy-store` without re-embedding."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from kbsync.cli import app
from kbsync.runs import ProjectKey
from kbsync.settings import load_settings
from kbsync.wiring import open_engine
from tests.servers.chroma import ChromaServer

KEY = ProjectKey("acme", "alpha")
ARTICLES = {
    "refunds.md": "# Refunds\n\nRefunds are paid back within five business days after approval.\n",
    "sso.md": "# Single sign-on\n\n## SAML\n\nConfigure SAML with your identity provider's metadata URL.\n",
    "hours.md": "# Business hours\n\nOutside business hours the widget shows an away message to visitors.\n",
    "export.md": "# Exporting data\n\nAdmins can export conversations as CSV from the reports page.\n",
    "webhooks.md": "# Webhooks\n\nA webhook posts every new message to your URL, signed with your secret.\n",
    "mobile.md": "# Mobile app\n\nThe iOS and Android apps send push notifications for new conversations.\n",
}


@pytest.fixture(scope="module")
def chroma(tmp_path_factory) -> Iterator[ChromaServer]:
    with ChromaServer(tmp_path_factory.mktemp("chroma") / "data") as server:
        yield server


@pytest.fixture(scope="module")
def chroma_model_cache(model_dir: Path) -> None:
    """A bot's chromadb embeds query_texts with the model in Chroma's cache (as Chroma would download it)."""
    cache = Path.home() / ".cache" / "chroma" / "onnx_models" / "all-MiniLM-L6-v2" / "onnx"
    if not (cache / "model.onnx").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        for item in model_dir.iterdir():
            shutil.copy2(item, cache / item.name)


def settings_text(docs: Path, *, mode: str, chroma: ChromaServer | None, database: str, extra: str = "") -> str:
    server = f'host = "{chroma.host}"\nport = {chroma.port}\n' if chroma else ""
    return f"""
log_format = "json"
log_level = "warning"
[chroma]
mode = "{mode}"
{server}database = "{database}"
[chunking]
max_tokens = 128
[[tenants]]
id = "acme"
[[tenants.projects]]
id = "alpha"
[[tenants.projects.sources]]
kind = "files"
path = "{docs}"
{extra}
"""


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in ARTICLES.items():
        (folder / name).write_text(text)
    return folder


def records(store, name: str) -> dict[str, tuple]:
    out = {}
    for batch in store.export(name):
        for chunk_id, vector, document, meta in zip(
            batch["ids"], batch["embeddings"], batch["documents"], batch["metadatas"]
        ):
            meta = {k: v for k, v in meta.items() if k != "indexed_at"}
            out[chunk_id] = (np.asarray(vector, dtype=np.float32), document, meta)
    return out


def test_http_mode_holds_exactly_what_embedded_mode_holds(write_settings, docs, chroma, tmp_path) -> None:
    embedded = write_settings(settings_text(docs, mode="embedded", chroma=None, database="same"), "embedded.toml")
    http = write_settings(settings_text(docs, mode="http", chroma=chroma, database="same-http"), "http.toml")
    with open_engine(load_settings(embedded)) as engine:
        assert engine.reconcile(KEY).outcome == "ok"
        local = records(engine.store, KEY.collection)
    with open_engine(load_settings(http)) as engine:
        report = engine.reconcile(KEY)
        assert report.outcome == "ok" and engine.store.description.startswith("http://127.0.0.1")
        remote = records(engine.store, KEY.collection)
        assert engine.reconcile(KEY).chunks_embedded == 0
    assert set(local) == set(remote) and len(local) >= len(ARTICLES)
    for chunk_id, (vector, document, meta) in local.items():
        other_vector, other_document, other_meta = remote[chunk_id]
        assert document == other_document and meta == other_meta
        assert np.abs(vector - other_vector).max() <= 1e-6


def test_a_bot_with_plain_chromadb_gets_the_same_top_5(write_settings, docs, chroma, chroma_model_cache) -> None:
    import chromadb

    config = write_settings(settings_text(docs, mode="http", chroma=chroma, database="bots"))
    question = "how long until I get my money back"
    with open_engine(load_settings(config)) as engine:
        engine.reconcile(KEY)
        ours = [hit.id for hit in engine.query(KEY, question, k=5, group="chunk")]
    client = chromadb.HttpClient(host=chroma.host, port=chroma.port, database="bots")
    theirs = client.get_collection("acme__alpha").query(query_texts=[question], n_results=5)["ids"][0]
    assert theirs == ours and ours[0].startswith("files:refunds.md#")


def test_a_tenant_on_its_own_server(write_settings, docs, chroma, tmp_path) -> None:
    """[tenants.chroma]: the tenant's collections live on its server, not on the default one."""
    with ChromaServer(tmp_path / "own" / "data") as own:
        extra = f'[tenants.chroma]\nhost = "{own.host}"\nport = {own.port}\n'
        text = settings_text(docs, mode="http", chroma=chroma, database="spread")
        text = text.replace("[[tenants.projects]]", extra + "[[tenants.projects]]", 1)
        config = write_settings(text)
        with open_engine(load_settings(config)) as engine:
            assert engine.reconcile(KEY).outcome == "ok"
            assert engine.store_for(KEY) is not engine.store
            assert engine.store_for(KEY).count(KEY.collection) > 0
            assert "acme__alpha" not in engine.store.collections()


def test_copy_store_moves_the_embedded_store_without_re_embedding(write_settings, docs, chroma) -> None:
    embedded = write_settings(settings_text(docs, mode="embedded", chroma=None, database="copied"), "e.toml")
    with open_engine(load_settings(embedded)) as engine:
        engine.reconcile(KEY)
        local = records(engine.store, KEY.collection)
    result = CliRunner().invoke(
        app, ["--config", str(embedded), "copy-store", "--to-http", "--host", chroma.host, "--port", str(chroma.port)]
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "acme__alpha:" in result.stdout
    http = write_settings(settings_text(docs, mode="http", chroma=chroma, database="copied"), "h.toml")
    with open_engine(load_settings(http)) as engine:
        assert engine.reconcile(KEY).chunks_embedded == 0  # the copy is complete: nothing left to embed
        remote = records(engine.store, KEY.collection)
    assert set(remote) == set(local)


def test_a_server_that_goes_away_loses_nothing(write_settings, docs, tmp_path) -> None:
    server = ChromaServer(tmp_path / "flaky" / "data")
    server.start()
    config = write_settings(settings_text(docs, mode="http", chroma=server, database="flaky"))
    try:
        with open_engine(load_settings(config)) as engine:
            first = engine.reconcile(KEY)
            server.stop()
            (docs / "new.md").write_text("# New\n\nA page added while the server was down.\n")
            failed = engine.reconcile(KEY)
            assert failed.outcome == "failed" and "Chroma" in failed.errors[0]
            server.start()
            converged = engine.reconcile(KEY)
            assert converged.outcome == "ok"
            assert set(engine.store.index(KEY.collection).docs) == {f"files:{n}" for n in [*ARTICLES, "new.md"]}
            assert converged.chunks_embedded == 1 and first.chunks_embedded >= len(ARTICLES)
    finally:
        server.stop()
