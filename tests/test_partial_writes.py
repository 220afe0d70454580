"""A write or delete that fails partway is repaired by the next run (issue 17 item 4).

A document counts as unchanged only when every held chunk carries its hash and as many chunks are held as they
count. Failures are real Chroma calls that raise (tests/store_faults.py), in the middle of a real run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kbsync.engine import Engine
from kbsync.runs import ProjectKey
from kbsync.settings import load_settings
from kbsync.store import MAX_RECORDS_PER_WRITE
from kbsync.wiring import open_engine
from tests.store_faults import fail_nth, heal

KEY = ProjectKey("acme", "alpha")
SETTINGS = """
state_dir = "var"
log_format = "json"
log_level = "error"
[chunking]
max_tokens = {max_tokens}
[[tenants]]
id = "acme"
[[tenants.projects]]
id = "alpha"
[[tenants.projects.sources]]
kind = "files"
path = "docs"
url_base = "https://docs.acme.example/"
"""


@pytest.fixture
def open_kb(write_settings: Callable[..., Path], docs_dir: Path) -> Iterator[Callable[[int], Engine]]:
    with_stack: list = []

    def open_with(max_tokens: int) -> Engine:
        context = open_engine(load_settings(write_settings(SETTINGS.format(max_tokens=max_tokens))))
        with_stack.append(context)
        return context.__enter__()

    yield open_with
    for context in reversed(with_stack):
        context.__exit__(None, None, None)


def held(engine: Engine, doc_id: str) -> set[str]:
    doc = engine.store.index(KEY.collection).docs.get(doc_id)
    return set(doc.chunks) if doc is not None else set()


def sections(words: list[str]) -> str:
    """One chunk per section at max_tokens 128: each is more than half a chunk, so none is packed with another."""
    return "\n\n".join(
        f"## Part {i}\n\n" + " ".join(f"{word} step {j} explains how agents route conversations." for j in range(7))
        for i, word in enumerate(words)
    )


def many_steps(count: int) -> str:
    """`count` sections of one chunk each at max_tokens 32 (each more than half a chunk: none is packed)."""
    step = "## Step {i}\n\nClick the button number {i} now and wait for the page to reload."
    return "\n\n".join(step.format(i=i) for i in range(count))


def test_failed_delete_leaves_stale_chunks_that_the_next_run_deletes(open_kb, docs_dir: Path) -> None:
    """The first section stays (its chunk keeps its row and gets the new hash), the others change, and the delete
    of the stale ones fails. If broken, the next runs read the first chunk's new hash, call the document unchanged
    and keep the stale chunks for ever, reporting ok."""
    engine = open_kb(128)
    (docs_dir / "guide.md").write_text("# Guide\n\n" + sections(["Intro", "Alpha", "Beta", "Gamma"]))
    assert engine.reconcile(KEY).outcome == "ok"
    old = held(engine, "files:guide.md")
    assert len(old) == 4
    (docs_dir / "guide.md").write_text("# Guide\n\n" + sections(["Intro", "Delta", "Epsilon", "Zeta"]))
    fail_nth(engine.store, KEY.collection, "delete")
    failed = engine.reconcile(KEY)
    heal(engine.store, KEY.collection)
    assert failed.outcome == "failed" and "injected failure of delete" in failed.errors[0]
    partial = held(engine, "files:guide.md")
    assert len(partial) == 7 and old <= partial  # 3 new chunks written, 3 stale ones still there

    repaired = engine.reconcile(KEY)
    assert repaired.outcome == "ok" and repaired.docs_updated == 1 and repaired.docs_unchanged == 0
    assert repaired.chunks_deleted == 3 and repaired.chunks_embedded == 0
    now = held(engine, "files:guide.md")
    assert now == partial - (old - now) and len(now) == 4 and len(now & old) == 1
    again = engine.reconcile(KEY)
    assert again.docs_unchanged == 1 and again.chunks_deleted == 0 and again.chunks_embedded == 0


def test_upsert_failing_between_batches_leaves_missing_chunks_that_the_next_run_writes(open_kb, docs_dir: Path) -> None:
    """A document of more than 300 chunks is written in two upserts; the second fails. If broken, the 300 chunks
    written carry the document's hash, so every later run calls it unchanged and its last chunks never arrive."""
    engine = open_kb(32)
    count = MAX_RECORDS_PER_WRITE + 20
    steps = many_steps(count)
    (docs_dir / "steps.md").write_text("# Steps\n\n" + steps)
    fail_nth(engine.store, KEY.collection, "upsert", nth=2)
    failed = engine.reconcile(KEY)
    heal(engine.store, KEY.collection)
    assert failed.outcome == "failed" and "injected failure of upsert" in failed.errors[0]
    written = held(engine, "files:steps.md")
    assert len(written) == MAX_RECORDS_PER_WRITE  # the first batch only

    repaired = engine.reconcile(KEY)
    assert repaired.outcome == "ok" and repaired.docs_updated == 1
    assert repaired.chunks_embedded == 20 and repaired.chunks_written == 20 and repaired.chunks_deleted == 0
    whole = held(engine, "files:steps.md")
    assert len(whole) == count and written < whole
    doc = engine.store.index(KEY.collection).docs["files:steps.md"]
    assert doc.intact and all(m["chunk_count"] == count for m in doc.chunks.values())
    assert engine.reconcile(KEY).docs_unchanged == 1


def test_metadata_refresh_failing_partway_is_done_again(open_kb, docs_dir: Path) -> None:
    """Only `updated_at` changes (a touched file); the refresh of the metadata fails after its first update. The
    document's `updated_at` is the oldest of its chunks, so the next run refreshes it again."""
    import os

    engine = open_kb(32)
    steps = many_steps(MAX_RECORDS_PER_WRITE + 5)
    (docs_dir / "steps.md").write_text("# Steps\n\n" + steps)
    assert engine.reconcile(KEY).outcome == "ok"
    os.utime(docs_dir / "steps.md", (1, 2_000_000_000))
    fail_nth(engine.store, KEY.collection, "update", nth=2)
    assert engine.reconcile(KEY).outcome == "failed"
    heal(engine.store, KEY.collection)
    stamps = {m["doc_updated_at"] for m in engine.store.index(KEY.collection).docs["files:steps.md"].chunks.values()}
    assert len(stamps) == 2 and 2_000_000_000 in stamps
    repaired = engine.reconcile(KEY)
    assert repaired.outcome == "ok" and repaired.chunks_embedded == 0
    doc = engine.store.index(KEY.collection).docs["files:steps.md"]
    assert {m["doc_updated_at"] for m in doc.chunks.values()} == {2_000_000_000} and doc.updated_at == 2_000_000_000
