"""What a collection holds, as kbsync writes and reads it back: the chunk records written, the documents and
projects read back from the chunks' own metadata, and the hits a query returns. Plain data, no chromadb
(kbsync/store.py reads and writes these)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ChunkRecord", "IndexedDoc", "ProjectIndex", "QueryHit"]


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """One chunk to write. `embedding` is None for a chunk already stored whose text (and so id) is unchanged."""

    id: str
    text: str
    metadata: Mapping[str, str | int]
    embedding: np.ndarray | None = None


@dataclass(slots=True)
class IndexedDoc:
    """What a collection holds of one document, read back from the chunks' own metadata.

    `doc_hash` is the first chunk's; only an `intact` document (every chunk carries one hash, and as many chunks
    are held as they count) may pass for unchanged: a write or delete that failed partway leaves one that is not.
    `updated_at` is the oldest `doc_updated_at` of its chunks, so a metadata refresh that failed partway is done
    again."""

    doc_id: str
    source: str
    doc_hash: str
    updated_at: int
    chunks: dict[str, dict[str, Any]] = field(default_factory=dict)  # chunk id -> metadata

    @property
    def intact(self) -> bool:
        """Every held chunk carries one hash and one count, and the count is what is held."""
        hashes = {str(m.get("doc_hash", "")) for m in self.chunks.values()}
        counts = {int(m.get("chunk_count", 0) or 0) for m in self.chunks.values()}
        return len(hashes) == 1 and counts == {len(self.chunks)}


@dataclass(slots=True)
class ProjectIndex:
    """Documents of a collection, read back from it: the index is its own record of what was written.
    `complete` is False while only some documents were read (a poll reads just the ones it saw change)."""

    docs: dict[str, IndexedDoc] = field(default_factory=dict)
    complete: bool = True

    @property
    def chunk_count(self) -> int:
        return sum(len(d.chunks) for d in self.docs.values())

    def locales(self) -> set[str]:
        """Every locale the chunks carry."""
        return {str(m.get("locale", "")) for d in self.docs.values() for m in d.chunks.values()}

    def of_source(self, source: str) -> dict[str, IndexedDoc]:
        return {doc_id: doc for doc_id, doc in self.docs.items() if doc.source == source}

    def add(self, chunk_id: str, metadata: Mapping[str, Any]) -> None:
        doc_id = str(metadata.get("doc_id", ""))
        doc = self.docs.get(doc_id)
        if doc is None:
            doc = self.docs[doc_id] = IndexedDoc(
                doc_id=doc_id,
                source=str(metadata.get("source", "")),
                doc_hash=str(metadata.get("doc_hash", "")),
                updated_at=int(metadata.get("doc_updated_at", 0) or 0),
            )
        doc.chunks[chunk_id] = dict(metadata)
        doc.updated_at = min(doc.updated_at, int(metadata.get("doc_updated_at", 0) or 0))


@dataclass(frozen=True, slots=True)
class QueryHit:
    id: str
    score: float
    text: str
    metadata: dict[str, Any]

    def as_result(self) -> dict[str, Any]:
        """The result shape of `/v1/query` and `kbsync query --json` (README "HTTP API")."""
        meta = self.metadata
        return {
            "id": self.id,
            "score": round(self.score, 6),
            "text": self.text,
            "title": meta.get("title", ""),
            "heading": meta.get("heading", ""),
            "url": meta.get("url", ""),
            "locale": meta.get("locale", ""),
            "doc_id": meta.get("doc_id", ""),
            "source": meta.get("source", ""),
            "updated_at": meta.get("doc_updated_at", 0),
        }
