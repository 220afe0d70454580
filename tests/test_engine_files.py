"""The pipeline over a `files` source and a real embedded Chroma store (README "Collections"; invariants 2-4 and 6
of docs/invariants.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kbsync.errors import StoreLocked
from kbsync.runs import ProjectKey
from kbsync.store import Store

KEY = ProjectKey("acme", "alpha")
META_KEYS = {
    "tenant",
    "project",
    "source",
    "source_kind",
    "doc_id",
    "title",
    "url",
    "locale",
    "category",
    "heading",
    "chunk_index",
    "chunk_count",
    "doc_hash",
    "doc_updated_at",
    "indexed_at",
}


def long_article(edit: str = "") -> str:
    sections = []
    for i in range(8):
        text = " ".join(f"Section {i} sentence {j} describes how agents handle conversations." for j in range(12))
        if i == 4 and edit:
            text = edit + " " + text
        sections.append(f"## Part {i}\n\n{text}")
    return "---\ntitle: Handling conversations\nlocale: en\ncategory: Guides\n---\n\n" + "\n\n".join(sections)


def chunk_ids(engine, doc_id: str | None = None) -> set[str]:
    index = engine.store.index(KEY.collection)
    return {cid for d in index.docs.values() if doc_id in (None, d.doc_id) for cid in d.chunks}


def test_initial_sync_writes_every_chunk_with_full_metadata(engine, docs_dir: Path) -> None:
    (docs_dir / "guide.md").write_text(long_article())
    (docs_dir / "sub").mkdir()
    (docs_dir / "sub" / "faq.md").write_text("# Billing FAQ\n\n## Refunds\n\nRefunds take five days.\n")
    report = engine.reconcile(KEY)
    assert report.outcome == "ok" and report.docs_added == 2
    index = engine.store.index(KEY.collection)
    assert set(index.docs) == {"files:guide.md", "files:sub/faq.md"}
    assert report.chunks_embedded == index.chunk_count == report.chunks_total
    for doc in index.docs.values():
        for chunk_id, meta in doc.chunks.items():
            assert set(meta) == META_KEYS
            assert chunk_id.startswith(doc.doc_id + "#")
            assert meta["chunk_count"] == len(doc.chunks)
    faq = next(iter(index.docs["files:sub/faq.md"].chunks.values()))
    assert faq["title"] == "Billing FAQ" and faq["url"] == "https://docs.acme.example/sub/faq.md"
    assert faq["heading"] == "Refunds" and faq["source_kind"] == "files" and faq["source"] == "files:docs"
    hits = engine.query(KEY, "how long does a refund take", k=1)
    assert hits[0].metadata["doc_id"] == "files:sub/faq.md" and 0 < hits[0].score <= 1


def test_unchanged_documents_cost_zero_embeddings(engine, docs_dir: Path) -> None:
    """Invariant 4. If broken, every run re-embeds the whole corpus."""
    (docs_dir / "guide.md").write_text(long_article())
    engine.reconcile(KEY)
    before = chunk_ids(engine)
    os.utime(docs_dir / "guide.md", (1, 2_000_000_000))  # touched, content unchanged
    report = engine.reconcile(KEY)
    assert report.chunks_embedded == 0 and report.docs_unchanged == 1 and report.chunks_deleted == 0
    assert chunk_ids(engine) == before
    assert engine.store.index(KEY.collection).docs["files:guide.md"].updated_at == 2_000_000_000


def test_one_paragraph_edited_re_embeds_only_its_chunks(engine, docs_dir: Path) -> None:
    """Invariant 4 and its target: one paragraph edited in a long article embeds <= 2 chunks."""
    (docs_dir / "guide.md").write_text(long_article())
    first = engine.reconcile(KEY)
    assert first.chunks_embedded >= 8
    before = chunk_ids(engine)
    (docs_dir / "guide.md").write_text(long_article(edit="Supervisors can now reassign conversations in bulk."))
    report = engine.reconcile(KEY)
    assert report.docs_updated == 1
    assert 1 <= report.chunks_embedded <= 2
    after = chunk_ids(engine)
    assert len(before - after) == report.chunks_deleted
    assert len(after - before) == report.chunks_embedded
    assert len(before & after) >= len(before) - 1  # every other chunk kept its id and its vector
    hits = engine.query(KEY, "reassign conversations in bulk", k=1)
    assert "in bulk" in hits[0].text


def test_deleted_file_leaves_the_index(engine, docs_dir: Path) -> None:
    (docs_dir / "a.md").write_text("# A\n\nAlpha text.\n")
    (docs_dir / "b.md").write_text("# B\n\nBravo text.\n")
    engine.reconcile(KEY)
    (docs_dir / "b.md").unlink()
    report = engine.reconcile(KEY)
    assert report.docs_deleted == 1 and report.chunks_deleted == 1
    assert set(engine.store.index(KEY.collection).docs) == {"files:a.md"}


def test_missing_folder_deletes_nothing(engine, docs_dir: Path) -> None:
    """Invariant 2: a failed listing deletes nothing."""
    (docs_dir / "a.md").write_text("# A\n\nAlpha text.\n")
    engine.reconcile(KEY)
    docs_dir.rename(docs_dir.with_name("moved"))
    report = engine.reconcile(KEY)
    assert report.outcome == "failed" and "does not exist" in report.errors[0]
    assert set(engine.store.index(KEY.collection).docs) == {"files:a.md"}


def test_unreadable_file_makes_the_listing_incomplete(engine, docs_dir: Path) -> None:
    """Invariant 2: a partial listing syncs what it read and deletes nothing."""
    (docs_dir / "a.md").write_text("# A\n\nAlpha text.\n")
    (docs_dir / "b.md").write_text("# B\n\nBravo text.\n")
    engine.reconcile(KEY)
    (docs_dir / "a.md").write_bytes(b"\xff\xfe not utf-8 \xff")
    (docs_dir / "b.md").unlink()
    (docs_dir / "c.md").write_text("# C\n\nCharlie text.\n")
    report = engine.reconcile(KEY)
    # The source listed (c.md was synced) but not completely: partial, not failed (no source failed outright).
    assert report.outcome == "partial" and report.failed_sources == 0 and report.docs_added == 1
    assert any("a.md" in e for e in report.errors)
    assert set(engine.store.index(KEY.collection).docs) == {"files:a.md", "files:b.md", "files:c.md"}


def test_older_version_never_overwrites_a_newer_one(engine, docs_dir: Path) -> None:
    """Invariant 5 (newer wins) on `updated_at` from front matter."""
    newer = "---\ntitle: Plans\nupdated_at: 2025-06-01T00:00:00+00:00\n---\n\nThe Pro plan costs 20 dollars.\n"
    older = "---\ntitle: Plans\nupdated_at: 2024-01-01T00:00:00+00:00\n---\n\nThe Pro plan costs 10 dollars.\n"
    (docs_dir / "plans.md").write_text(newer)
    engine.reconcile(KEY)
    (docs_dir / "plans.md").write_text(older)
    report = engine.reconcile(KEY)
    assert report.chunks_embedded == 0
    hits = engine.query(KEY, "price of the pro plan", k=1)
    assert "20 dollars" in hits[0].text


def test_rebuild_re_embeds_everything_and_converges(engine, docs_dir: Path) -> None:
    """Invariant 6: a repeated run ends in the same index."""
    (docs_dir / "guide.md").write_text(long_article())
    first = engine.reconcile(KEY)
    ids = chunk_ids(engine)
    rebuilt = engine.reconcile(KEY, rebuild=True)
    assert rebuilt.chunks_embedded == first.chunks_embedded and rebuilt.chunks_deleted == 0
    assert chunk_ids(engine) == ids
    assert engine.reconcile(KEY).chunks_embedded == 0


def test_html_file_main_content_is_indexed(engine, docs_dir: Path) -> None:
    (docs_dir / "page.html").write_text(
        "<html><head><title>Webhooks guide</title></head><body><nav>Home | Pricing | Login</nav>"
        "<main><h1>Webhooks guide</h1><p>Chatwoot sends a POST request to your webhook URL for every new "
        "message. The payload includes the conversation and the sender.</p><p>Verify the signature header "
        "before trusting the payload.</p></main><footer>Copyright ACME</footer></body></html>"
    )
    engine.reconcile(KEY)
    doc = engine.store.index(KEY.collection).docs["files:page.html"]
    meta = next(iter(doc.chunks.values()))
    assert meta["title"] == "Webhooks guide"
    hit = engine.query(KEY, "verify webhook signature", k=1)[0]
    assert "signature" in hit.text and "Pricing" not in hit.text


def test_second_process_cannot_open_the_embedded_store(engine, files_settings: Path) -> None:
    """Chroma is not process-safe: the store's lock refuses a second owner with a clear error."""
    import subprocess
    import sys

    code = (
        "from pathlib import Path; from kbsync.store import Store; "
        f"Store.open_embedded(Path({str(engine.settings.state_dir)!r}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "StoreLocked" in result.stderr and "another kbsync process" in result.stderr
    with pytest.raises(StoreLocked):
        # In-process too: flock is per open file description, so a second open conflicts.
        Store.open_embedded(engine.settings.state_dir)
