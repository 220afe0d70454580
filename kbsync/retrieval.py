"""What a query returns: chunk candidates grouped per document, the dense and lexical legs fused by score,
and the neighbouring chunks of each hit added for the bot's context.

The dense leg is Chroma's nearest chunks, the lexical leg the state database's full-text index (`lexical.py`).
Each leg keeps every document's best chunk; per document the fused score is
`(1 - w) * dense + w * lexical`, both min-max normalised over that leg's candidate documents (a document a leg did
not find scores 0 there). Grouping comes before fusion, so four chunks of one article count once.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from kbsync.chunking import doc_id_of
from kbsync.records import QueryHit

__all__ = ["Group", "LexicalHit", "LexicalSearch", "RankedHit", "Retrieval", "fuse", "minmax"]

Group = Literal["doc", "chunk"]


@dataclass(frozen=True, slots=True)
class LexicalHit:
    """One chunk the lexical leg found; `score` grows with relevance (negated BM25, or ts_rank_cd)."""

    chunk_id: str
    doc_id: str
    score: float


class LexicalSearch(Protocol):
    """The lexical leg as the query path needs it (kbsync.lexical.LexicalIndex)."""

    def search(self, tenant: str, project: str, text: str, *, locale: str | None, limit: int) -> list[LexicalHit]: ...


class ChunkReader(Protocol):
    """The store calls the query path makes (kbsync.store.Store)."""

    def query(
        self, name: str, embedding: np.ndarray, *, k: int, where: Mapping[str, Any] | None = None
    ) -> list[QueryHit]: ...

    def nearest(
        self, name: str, embedding: np.ndarray, *, k: int, where: Mapping[str, Any] | None = None
    ) -> list[tuple[str, float]]: ...

    def get(self, name: str, ids: Sequence[str]) -> list[QueryHit]: ...

    def chunks_at(self, name: str, around: Mapping[str, Collection[int]]) -> list[QueryHit]: ...


@dataclass(frozen=True, slots=True)
class RankedHit:
    """One result: a document's best chunk (or one chunk, grouped by chunk) with its fused score.

    `dense` is the chunk's cosine similarity (what `score` meant before grouping), `lexical` its raw lexical
    score; `context` the neighbouring chunks when asked for (`expand`)."""

    hit: QueryHit
    score: float
    dense: float | None
    lexical: float | None = None
    context: tuple[QueryHit, ...] = field(default=())

    @property
    def id(self) -> str:
        return self.hit.id

    @property
    def text(self) -> str:
        return self.hit.text

    @property
    def metadata(self) -> dict[str, Any]:
        return self.hit.metadata

    def as_result(self) -> dict[str, Any]:
        """The result shape of `/v1/query` (README "HTTP API"), with `dense_score`, `lexical_score` and `context`
        added."""
        result = self.hit.as_result()
        result["score"] = round(self.score, 6)
        result["dense_score"] = None if self.dense is None else round(self.dense, 6)
        result["lexical_score"] = None if self.lexical is None else round(self.lexical, 6)
        result["chunk_index"] = self.hit.metadata.get("chunk_index", 0)
        if self.context:
            result["context"] = [
                {
                    "id": c.id,
                    "chunk_index": c.metadata.get("chunk_index", 0),
                    "heading": c.metadata.get("heading", ""),
                    "text": c.text,
                }
                for c in self.context
            ]
        return result


def minmax(scores: Mapping[str, float]) -> dict[str, float]:
    """Scale to 0..1 over the candidates; when all are equal every one gets 1."""
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    if high - low < 1e-12:
        return {key: 1.0 for key in scores}
    return {key: (value - low) / (high - low) for key, value in scores.items()}


def fuse(dense: Mapping[str, float], lexical: Mapping[str, float], weight: float) -> list[tuple[str, float]]:
    """Documents by `(1 - weight) * dense + weight * lexical` (each min-max normalised), best first.
    Ties keep the dense order, then the lexical order."""
    dense_norm, lexical_norm = minmax(dense), minmax(lexical)
    order = {doc: n for n, doc in enumerate([*dense, *(d for d in lexical if d not in dense)])}
    fused = {doc: (1.0 - weight) * dense_norm.get(doc, 0.0) + weight * lexical_norm.get(doc, 0.0) for doc in order}
    return sorted(fused.items(), key=lambda item: (-item[1], order[item[0]]))


@dataclass(frozen=True, slots=True)
class Retrieval:
    """One project's query path over a store and (optionally) the lexical leg."""

    store: ChunkReader
    lexical: LexicalSearch | None
    candidates: int = 100

    def search(
        self,
        collection: str,
        scope: tuple[str, str],
        vector: np.ndarray,
        text: str,
        *,
        k: int,
        where: Mapping[str, Any] | None,
        locale: str | None,
        group: Group = "doc",
        expand: int = 0,
        weight: float = 0.0,
        lexical_hits: Future[list[LexicalHit]] | None = None,
    ) -> list[RankedHit]:
        """Top-k documents (or chunks with `group="chunk"`: today's dense chunk ranking) for one question.
        `lexical_hits` is the lexical leg already started (`start_lexical`); else it runs here when `weight > 0`."""
        if group == "chunk":
            hits = self.store.query(collection, vector, k=k, where=where)
            ranked = [RankedHit(h, h.score, h.score) for h in hits]
        else:
            if lexical_hits is None and weight > 0:
                lexical_hits = self.start_lexical(None, scope, text, locale, k=k)
            found = lexical_hits.result() if lexical_hits is not None else []
            ranked = self._documents(collection, vector, found, k=k, where=where, weight=weight)
        return self._expand(collection, ranked, expand) if expand > 0 else ranked

    def start_lexical(
        self, pool: Executor | None, scope: tuple[str, str], text: str, locale: str | None, *, k: int
    ) -> Future[list[LexicalHit]] | None:
        """The lexical leg's candidates, searched on `pool` (None: now); None without a lexical leg."""
        if self.lexical is None:
            return None
        search = self.lexical.search
        limit = max(self.candidates, k)
        if pool is not None:
            return pool.submit(search, *scope, text, locale=locale, limit=limit)
        done: Future[list[LexicalHit]] = Future()
        done.set_result(search(*scope, text, locale=locale, limit=limit))
        return done

    def _documents(
        self,
        collection: str,
        vector: np.ndarray,
        found: list[LexicalHit],
        *,
        k: int,
        where: Mapping[str, Any] | None,
        weight: float,
    ) -> list[RankedHit]:
        # Candidates as bare ids and scores; texts and metadata are read for the k winners only.
        dense_best: dict[str, tuple[str, float]] = {}
        for chunk_id, similarity in self.store.nearest(collection, vector, k=max(self.candidates, k), where=where):
            dense_best.setdefault(doc_id_of(chunk_id), (chunk_id, similarity))  # best first
        lexical_best: dict[str, LexicalHit] = {}
        for hit in found if weight > 0 else []:
            if hit.doc_id not in lexical_best or hit.score > lexical_best[hit.doc_id].score:
                lexical_best[hit.doc_id] = hit
        fused = fuse(
            {doc: similarity for doc, (_, similarity) in dense_best.items()},
            {doc: hit.score for doc, hit in lexical_best.items()},
            weight if lexical_best else 0.0,
        )
        top = fused[:k]
        # Each winner's chunk: its best dense chunk, else its best lexical one. A chunk the store lacks (a lexical
        # row left by a failed delete) is skipped, so every result exists in Chroma.
        chosen = {doc: dense_best[doc][0] if doc in dense_best else lexical_best[doc].chunk_id for doc, _ in top}
        fetched = {hit.id: hit for hit in self.store.get(collection, list(chosen.values()))} if chosen else {}
        ranked: list[RankedHit] = []
        for doc, score in top:
            chunk = fetched.get(chosen[doc])
            if chunk is None:
                continue
            dense = dense_best[doc][1] if doc in dense_best else None
            lexical = lexical_best[doc].score if doc in lexical_best else None
            best = QueryHit(chunk.id, dense if dense is not None else 0.0, chunk.text, chunk.metadata)
            ranked.append(RankedHit(best, score, dense, lexical))
        return ranked

    def _expand(self, collection: str, ranked: list[RankedHit], expand: int) -> list[RankedHit]:
        """Add the `expand` chunks before and after each hit (by chunk_index, same document)."""
        around: dict[str, set[int]] = {}
        for item in ranked:
            doc_id = str(item.metadata.get("doc_id", ""))
            index = int(item.metadata.get("chunk_index", 0))
            span = {i for i in range(index - expand, index + expand + 1) if i >= 0 and i != index}
            around.setdefault(doc_id, set()).update(span)
        found: dict[tuple[str, int], QueryHit] = {}
        for hit in self.store.chunks_at(collection, around):
            found[(str(hit.metadata.get("doc_id", "")), int(hit.metadata.get("chunk_index", 0)))] = hit
        out = []
        for item in ranked:
            doc_id = str(item.metadata.get("doc_id", ""))
            index = int(item.metadata.get("chunk_index", 0))
            context = tuple(
                found[(doc_id, i)]
                for i in range(index - expand, index + expand + 1)
                if i != index and (doc_id, i) in found
            )
            out.append(RankedHit(item.hit, item.score, item.dense, item.lexical, context))
        return out
