"""The metadata every chunk carries in its collection: the contract with the bot layer that reads the store."""

from __future__ import annotations

from kbsync.chunking import Chunk
from kbsync.runs import ProjectKey
from kbsync.sources import Document

__all__ = ["chunk_metadata"]


def chunk_metadata(
    key: ProjectKey, doc: Document, chunk: Chunk, count: int, doc_hash: str, indexed_at: int
) -> dict[str, str | int]:
    """Every key always present (Chroma's upsert merges metadata; None would delete a key).
    String values are kept within Chroma Cloud's 4 KB per value."""
    return {
        "tenant": key.tenant,
        "project": key.project,
        "source": _clip(doc.source),
        "source_kind": doc.kind,
        "doc_id": doc.doc_id,
        "title": _clip(doc.title),
        "url": _clip(doc.url),
        "locale": _clip(doc.locale),
        "category": _clip(doc.category),
        "heading": _clip(chunk.heading),
        "chunk_index": chunk.index,
        "chunk_count": count,
        "doc_hash": doc_hash,
        "doc_updated_at": int(doc.updated_at),
        "indexed_at": indexed_at,
    }


def _clip(value: str, limit: int = 4000) -> str:
    """At most `limit` UTF-8 bytes, cut on a character boundary."""
    data = value.encode("utf-8")
    return value if len(data) <= limit else data[:limit].decode("utf-8", errors="ignore")
