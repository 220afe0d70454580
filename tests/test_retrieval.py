"""The query path (kbsync.retrieval): results grouped per article, raw chunk ranking on request, neighbouring
chunks, fusion of the dense and lexical legs. Real engine, real embedded Chroma, real model."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbsync.retrieval import fuse, minmax
from kbsync.runs import ProjectKey

KEY = ProjectKey("acme", "alpha")
QUESTION = "how do agents handle conversations"


def long_article() -> str:
    sections = []
    for i in range(8):
        text = " ".join(f"Section {i} sentence {j} describes how agents handle conversations." for j in range(12))
        sections.append(f"## Part {i}\n\n{text}")
    return "---\ntitle: Handling conversations\nlocale: en\n---\n\n" + "\n\n".join(sections)


SHORT = {
    "refunds.md": "---\ntitle: Refunds\nlocale: en\n---\n\nRefunds are paid back within 5 working days.",
    "assign.md": "---\ntitle: Assigning conversations\nlocale: en\n---\n\nAn admin assigns conversations to agents.",
    "teams.md": "---\ntitle: Teams\nlocale: en\n---\n\nAgents in a team share the conversations of the team.",
}


@pytest.fixture
def synced(engine, docs_dir: Path):
    (docs_dir / "guide.md").write_text(long_article())
    for name, text in SHORT.items():
        (docs_dir / name).write_text(text)
    assert engine.reconcile(KEY).outcome == "ok"
    return engine


def test_results_are_distinct_articles_each_with_its_best_chunk(synced) -> None:
    raw = synced.query(KEY, QUESTION, k=5, group="chunk")
    assert len({h.metadata["doc_id"] for h in raw}) < len(raw), "the long article fills the raw chunk ranking"
    grouped = synced.query(KEY, QUESTION, k=4, lexical_weight=0.0)
    doc_ids = [h.metadata["doc_id"] for h in grouped]
    assert len(doc_ids) == len(set(doc_ids)) == 4
    # Dense only, each article's result is its best chunk, and the articles come in the order of those chunks.
    best: dict[str, float] = {}
    for hit in synced.query(KEY, QUESTION, k=50, group="chunk"):
        best.setdefault(hit.metadata["doc_id"], hit.score)
    assert doc_ids == sorted(best, key=lambda d: -best[d])[:4]
    for hit in grouped:
        assert hit.dense == pytest.approx(best[hit.metadata["doc_id"]], abs=1e-6)
    scores = [h.score for h in grouped]
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(1.0)


def test_chunk_ranking_is_chromas_own(synced) -> None:
    raw = synced.query(KEY, QUESTION, k=5, group="chunk")
    vector = synced.embedder.embed([QUESTION])[0]
    direct = synced.store.query(KEY.collection, vector, k=5)
    assert [h.id for h in raw] == [h.id for h in direct]
    assert [h.score for h in raw] == [h.score for h in direct]


def test_expand_adds_the_neighbouring_chunks_of_the_same_article(synced) -> None:
    index = synced.store.index(KEY.collection)
    guide = index.docs["files:guide.md"]
    by_index = {meta["chunk_index"]: chunk_id for chunk_id, meta in guide.chunks.items()}
    assert len(by_index) >= 4
    hits = synced.query(KEY, "Section 4 sentence 7 describes how agents handle conversations", k=3, expand=1)
    guide_hit = next(h for h in hits if h.metadata["doc_id"] == "files:guide.md")
    position = guide_hit.metadata["chunk_index"]
    expected = [by_index[i] for i in (position - 1, position + 1) if i in by_index]
    assert [c.id for c in guide_hit.context] == expected
    texts = {h.id: h.text for h in synced.store.get(KEY.collection, expected)}
    assert [c.text for c in guide_hit.context] == [texts[i] for i in expected]
    result = guide_hit.as_result()
    assert [c["chunk_index"] for c in result["context"]] == [i for i in (position - 1, position + 1) if i in by_index]
    # A one-chunk article has no neighbours; without expand no result carries context.
    assert all(not h.context for h in hits if h.metadata["doc_id"] != "files:guide.md")
    assert all("context" not in h.as_result() for h in synced.query(KEY, QUESTION, k=3))


def test_the_result_shape_only_adds_keys(synced) -> None:
    result = synced.query(KEY, QUESTION, k=1)[0].as_result()
    assert {"id", "score", "text", "title", "heading", "url", "locale", "doc_id", "source", "updated_at"} <= set(result)
    assert result["dense_score"] is not None and result["text"].startswith(result["title"])


def test_fusion_normalises_each_leg_and_weighs_them() -> None:
    dense = {"a": 0.9, "b": 0.7, "c": 0.5}
    lexical = {"c": 12.0, "d": 4.0}
    assert minmax(dense) == pytest.approx({"a": 1.0, "b": 0.5, "c": 0.0})
    assert minmax({"x": 3.0}) == {"x": 1.0}
    assert [d for d, _ in fuse(dense, lexical, 0.0)] == ["a", "b", "c", "d"]
    assert [d for d, _ in fuse(dense, lexical, 1.0)][:2] == ["c", "a"]
    fused = dict(fuse(dense, lexical, 0.4))
    assert fused["a"] == pytest.approx(0.6) and fused["c"] == pytest.approx(0.4) and fused["d"] == pytest.approx(0.0)
    assert fused["b"] == pytest.approx(0.3)
