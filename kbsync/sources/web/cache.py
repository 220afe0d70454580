"""Conditional-request validators of stored pages (ETag, Last-Modified, sitemap `<lastmod>`), by normalized URL."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any, Protocol

__all__ = ["MemoryPageCache", "PageCache", "PageValidators"]


@dataclass(frozen=True, slots=True)
class PageValidators:
    """What a page answered last time it was stored, keyed by its normalized URL; plain JSON values only."""

    doc_id: str
    etag: str = ""
    last_modified: str = ""  # the `Last-Modified` header as sent
    lastmod: int = 0  # the sitemap's <lastmod>, epoch seconds (0 = none)
    title: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PageValidators:
        return cls(
            doc_id=str(data["doc_id"]),
            etag=str(data.get("etag") or ""),
            last_modified=str(data.get("last_modified") or ""),
            lastmod=int(data.get("lastmod") or 0),
            title=str(data.get("title") or ""),
        )


class PageCache(Protocol):
    """Validators of stored pages, by normalized URL. Backed by the state database in production."""

    def get(self, url: str) -> PageValidators | None: ...

    def put(self, url: str, validators: PageValidators) -> None: ...

    def delete(self, url: str) -> None: ...

    def url_for(self, doc_id: str) -> str | None:
        """A URL whose validators carry `doc_id` (the second look needs the URL behind a hashed doc_id)."""
        ...


class MemoryPageCache:
    """An in-memory PageCache (tests, benchmarks)."""

    def __init__(self) -> None:
        self._entries: dict[str, PageValidators] = {}
        self._lock = threading.Lock()

    def get(self, url: str) -> PageValidators | None:
        with self._lock:
            return self._entries.get(url)

    def put(self, url: str, validators: PageValidators) -> None:
        with self._lock:
            self._entries[url] = validators

    def delete(self, url: str) -> None:
        with self._lock:
            self._entries.pop(url, None)

    def url_for(self, doc_id: str) -> str | None:
        with self._lock:
            return next((url for url, v in self._entries.items() if v.doc_id == doc_id), None)

    def copy(self) -> MemoryPageCache:
        other = MemoryPageCache()
        with self._lock:
            other._entries = dict(self._entries)
        return other

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
