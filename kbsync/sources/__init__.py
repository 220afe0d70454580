"""Sources turn a configured origin into Documents: Chatwoot portals, web pages, files on disk.

Every source lists its documents (`Listing.complete` says whether the listing may justify deletes) and confirms,
with a second look, that documents missing from a complete listing are really gone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = [
    "Changes",
    "ChangesObserver",
    "DocError",
    "Document",
    "Listing",
    "ListingObserver",
    "Polling",
    "Source",
    "make_doc_id",
    "newest_per_id",
]

_MAX_DOC_ID_BYTES = 96


def make_doc_id(kind: str, key: str) -> str:
    """`<kind>:<key>`, or `<kind>:sha256:<32 hex>` when that exceeds 96 bytes (chunk ids stay under 128)."""
    doc_id = f"{kind}:{key}"
    if len(doc_id.encode("utf-8")) <= _MAX_DOC_ID_BYTES:
        return doc_id
    return f"{kind}:sha256:{hashlib.sha256(doc_id.encode('utf-8')).hexdigest()[:32]}"


@dataclass(frozen=True, slots=True)
class Document:
    """One source document, normalised to markdown. `updated_at` is the source's epoch seconds."""

    doc_id: str
    source: str
    kind: str
    title: str
    text: str
    url: str = ""
    locale: str = ""
    category: str = ""
    updated_at: int = 0
    # Whether `updated_at` orders versions (newer wins). Web pages: no — servers rewrite Last-Modified freely,
    # so the content hash alone decides.
    versioned: bool = True

    def content_hash(self, chunker_fingerprint: str) -> str:
        """Hash of everything that shapes the stored chunks and their metadata (not `updated_at`)."""
        payload = json.dumps(
            [chunker_fingerprint, self.title, self.text, self.url, self.locale, self.category, self.source],
            ensure_ascii=False,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class DocError:
    """A document that could not be read; it keeps whatever the index already holds of it."""

    doc_id: str
    message: str


@dataclass(slots=True)
class Listing:
    """What a source holds now. Only a `complete` listing may remove documents from the index."""

    documents: list[Document]
    complete: bool
    errors: list[DocError] = field(default_factory=list)
    # Documents the source knows are present and unchanged without reading them again (an HTTP 304):
    # they cost nothing and are never deleted by this listing.
    unchanged: set[str] = field(default_factory=set)
    # For sources that can poll (Chatwoot): the newest `updated_at` this listing saw, and the source's own count of
    # everything it holds. Stored as the poll watermark after a complete listing was applied.
    watermark: int | None = None
    total: int | None = None
    # What the source chose not to read or not to trust (a symlink out of the folder, a robots.txt rule): the
    # engine copies these into the run report's warnings.
    warnings: list[str] = field(default_factory=list)

    @property
    def doc_ids(self) -> set[str]:
        return {d.doc_id for d in self.documents} | {e.doc_id for e in self.errors} | self.unchanged


class Source(Protocol):
    """What the engine needs of a source. A source may also be `Polling` (a cheap change scan) and a
    `ListingObserver` (told which documents the index holds once a listing was applied) and a `ChangesObserver`
    (told the same after a poll's changes were applied)."""

    source_id: str
    kind: str

    def list(self, *, rebuild: bool = False) -> Listing:
        """Every current document (`rebuild`: read everything again, no shortcuts). Raises SourceError when
        nothing trustworthy could be listed."""
        ...

    def confirm_gone(self, doc_ids: Collection[str]) -> set[str]:
        """The second look: of `doc_ids` (missing from a complete listing), those that are really gone."""
        ...


@dataclass(frozen=True, slots=True)
class Changes:
    """What a newest-first poll saw since a watermark.

    `published`: current documents updated at or after `watermark - overlap` (the engine's hash check makes the
    overlap free). `gone`: doc ids the source itself says are no longer indexable (no second look needed).
    `newest`: the largest `updated_at` seen, never below the watermark, and exactly the watermark when the poll is
    not `complete` (so a caller that stores it never skips what this poll missed). `all_articles_count`: the
    source's total; a drop below the last known total means a hard delete, which no poll can see, and makes the
    engine reconcile. `requests`: HTTP requests this poll made (retries not counted).
    """

    published: list[Document]
    gone: set[str]
    newest: int
    all_articles_count: int
    requests: int
    complete: bool


@runtime_checkable
class Polling(Protocol):
    """A source with a cheap change scan (Chatwoot: newest-first down to the watermark); the others are read by
    reconcile only."""

    def changes_since(self, watermark: int) -> Changes:
        """What changed at or after `watermark` (epoch seconds). Raises SourceError when the scan failed."""
        ...


@runtime_checkable
class ListingObserver(Protocol):
    """A source told, after a listing was applied, which documents the index now holds (the web source keeps
    only those pages' validators, so a page whose write failed is fetched again)."""

    def applied(self, listing: Listing, indexed: Collection[str]) -> None:
        """`listing` was applied; `indexed` are the doc ids the index holds now."""
        ...


@runtime_checkable
class ChangesObserver(Protocol):
    """A polling source told, after a poll's changes were applied, which documents the index now holds (the API
    sources' change gate remembers only versions whose documents were written)."""

    def applied_changes(self, changes: Changes, indexed: Collection[str]) -> None:
        """`changes` were applied; `indexed` are the doc ids the index holds now (a partial view after a poll)."""
        ...


def newest_per_id(documents: Sequence[Document]) -> list[Document]:
    """A listing read while it shifts can return a document twice: keep its newest version."""
    newest: dict[str, Document] = {}
    for doc in documents:
        if doc.doc_id not in newest or doc.updated_at > newest[doc.doc_id].updated_at:
            newest[doc.doc_id] = doc
    return list(newest.values())
