"""One 20,000-character unbroken token (issue 17, finding 9): the tokenizer counts it as one [UNK], so only a cap
on chunk BYTES keeps its chunk under Chroma's 16 KB document limit; and a document that still cannot be chunked
fails alone (reported), while a document added beside it is indexed."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbsync.chunking import MAX_CHUNK_BYTES, Chunker, split_bytes
from kbsync.embedding import TokenCounter
from kbsync.runs import ProjectKey, RunReport
from kbsync.sources import Document
from kbsync.store import MAX_DOCUMENT_BYTES

KEY = ProjectKey("acme", "alpha")
TOKEN = "Zq" * 10_000  # 20,000 characters, no space


@pytest.fixture(scope="module")
def chunker(model_dir: Path) -> Chunker:
    return Chunker(TokenCounter(model_dir), 128)


def test_an_unbroken_token_is_cut_into_chunks_under_the_byte_cap(chunker: Chunker) -> None:
    chunks = chunker.split("files:t.md", "Token", f"Before it.\n\n{TOKEN}\n\nAfter it.")
    assert all(len(c.text.encode()) <= MAX_CHUNK_BYTES < MAX_DOCUMENT_BYTES for c in chunks)
    assert all(c.tokens <= 128 for c in chunks)
    bodies = "".join(c.text.removeprefix("Token\n\n") for c in chunks)
    assert TOKEN in bodies.replace("Before it.", "").replace("After it.", "")  # nothing lost, order kept


def test_a_huge_title_is_cut_too(chunker: Chunker) -> None:
    [chunk] = chunker.split("files:t.md", TOKEN, "Short body.")
    assert len(chunk.text.encode()) <= MAX_CHUNK_BYTES and chunk.text.endswith("Short body.")


@pytest.mark.parametrize("text", ["é" * 9000, "漢字" * 5000, "a " * 10_000, "word " + "x" * 30_000 + " tail"])
def test_split_bytes_keeps_every_character(text: str) -> None:
    pieces = split_bytes(text, 4096)
    assert all(len(p.encode()) <= 4096 for p in pieces)
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")


def test_the_token_and_its_neighbour_are_both_indexed(engine, docs_dir: Path) -> None:
    (docs_dir / "token.md").write_text(f"# Build id\n\nThe build id follows.\n\n{TOKEN}\n")
    (docs_dir / "refunds.md").write_text("# Refunds\n\nRefunds are paid within five business days.\n")

    report = engine.reconcile(KEY)

    assert report.outcome == "ok", report.errors
    assert set(engine.store.index(KEY.collection).docs) == {"files:token.md", "files:refunds.md"}


def test_a_document_that_cannot_be_chunked_fails_alone(engine) -> None:
    """A lone surrogate (Chatwoot's JSON can carry `\\ud800`) cannot be encoded: that document is reported."""
    bad = Document("files:bad.md", "files:docs", "files", "Bad", "Broken \ud800 text.")
    good = Document("files:good.md", "files:docs", "files", "Invoices", "Invoices are emailed monthly.")
    report = RunReport(KEY.tenant, KEY.project, "test", sources=1)
    index = engine.store.index(KEY.collection)

    engine.sync_documents(KEY, [bad, good], index, report)

    [error] = report.errors
    assert "files:bad.md" in error and "cannot be chunked" in error
    assert report.outcome == "partial" and report.docs_added == 1
    assert set(engine.store.index(KEY.collection).docs) == {"files:good.md"}
