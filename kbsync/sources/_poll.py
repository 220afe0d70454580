"""What the API sources that poll share: the memory of which version of each document the index holds (the
change gate that lets a listing or a poll skip the bodies of unchanged pages), the second look page by page, and
ISO timestamps as epochs.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass

import structlog

from kbsync.errors import SourceError
from kbsync.sources import Changes, Listing

__all__ = ["GatedSource", "Versions", "iso_to_epoch"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class _Seen:
    version: str
    read_at: float  # epoch seconds when the body of this version was read


class Versions:
    """doc id -> the version (Confluence `version.number`, Notion `last_edited_time`) whose body the index holds.

    Filled by a source as it reads bodies, pruned to what the index really holds by `applied` (so a document
    that failed to be written is read again). Only this process's memory: a fresh process reads every body once.
    `settle_seconds`: a version is trusted only when its body was read this long after the version's time, for
    APIs whose timestamps are coarse (Notion rounds `last_edited_time` down to the minute, so an edit in the
    same minute as a read would carry the same stamp)."""

    def __init__(self, settle_seconds: float = 0.0) -> None:
        self._settle = settle_seconds
        self._seen: dict[str, _Seen] = {}
        self._pending: dict[str, _Seen] = {}
        self._lock = threading.Lock()

    def read(self, doc_id: str, version: str, read_at: float) -> None:
        """A body of `version` was read at `read_at`; it counts once the index holds the document."""
        with self._lock:
            self._pending[doc_id] = _Seen(version, read_at)

    def unchanged(self, doc_id: str, version: str, version_time: float | None = None) -> bool:
        """Whether the index holds exactly `version` of `doc_id`, read late enough to trust the stamp."""
        with self._lock:
            seen = self._seen.get(doc_id)
        if seen is None or seen.version != version:
            return False
        return version_time is None or seen.read_at >= version_time + self._settle

    def applied(self, indexed: Collection[str], *, whole_index: bool) -> None:
        """The index now holds `indexed`: bodies read for those ids become trusted, the rest are forgotten.
        `whole_index`: `indexed` is every document of the collection (after a listing), so versions of ids it
        lacks are dropped too; after a poll it is only the part of the index that poll read."""
        held = set(indexed)
        with self._lock:
            self._seen.update({d: s for d, s in self._pending.items() if d in held})
            self._pending.clear()
            if whole_index:
                self._seen = {d: s for d, s in self._seen.items() if d in held}

    def forget(self, doc_ids: Collection[str]) -> None:
        with self._lock:
            for doc_id in doc_ids:
                self._seen.pop(doc_id, None)
                self._pending.pop(doc_id, None)

    def __len__(self) -> int:
        return len(self._seen)


def iso_to_epoch(value: str) -> int:
    """An ISO-8601 timestamp (`2024-05-01T10:00:00.000Z`) as unix seconds; naive means UTC."""
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp())


class GatedSource:
    """The part of the Confluence and Notion sources that is the same: the version gate told what the index
    holds (`ListingObserver`, `ChangesObserver`) and the second look, one page read at a time."""

    source_id: str
    _versions: Versions

    def applied(self, listing: Listing, indexed: Collection[str]) -> None:
        """After a listing was applied: the versions of what the index holds are the change gate."""
        self._versions.applied(indexed, whole_index=True)

    def applied_changes(self, changes: Changes, indexed: Collection[str]) -> None:
        """After a poll was applied: what it wrote is held now."""
        self._versions.applied(indexed, whole_index=False)

    def _confirm_each(self, doc_ids: Collection[str], is_gone: Callable[[str], bool]) -> set[str]:
        """Of `doc_ids`, those `is_gone(page id)` says are gone; a page that cannot be read confirms nothing."""
        gone: set[str] = set()
        for doc_id in doc_ids:
            try:
                if is_gone(doc_id.rsplit(":", 1)[-1]):
                    gone.add(doc_id)
            except SourceError as exc:
                log.warning("source.confirm_failed", source=self.source_id, doc_id=doc_id, error=str(exc))
        self._versions.forget(gone)
        return gone
