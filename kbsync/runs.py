"""What a run is about and what it did: `ProjectKey` (a tenant's project), `RunReport` (the counters `resync`
prints, `status` shows and the state database records) and `Progress` (told how far a run is)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

from kbsync.errors import KbsyncError, SourceError, UnknownProject
from kbsync.store import collection_name

__all__ = ["Progress", "ProjectKey", "RunReport"]


@dataclass(frozen=True, slots=True, order=True)
class ProjectKey:
    tenant: str
    project: str

    @property
    def collection(self) -> str:
        return collection_name(self.tenant, self.project)

    def __str__(self) -> str:
        return f"{self.tenant}/{self.project}"


# RunReport fields that are not counters.
_NOT_COUNTS = frozenset(
    {
        "tenant",
        "project",
        "kind",
        "errors",
        "permanent_errors",
        "warnings",
        "failed_sources",
        "sources",
        "interrupted",
        "busy",
    }
)


@dataclass(slots=True)
class RunReport:
    """What one run did; the counters are what `resync` prints and `status` shows."""

    tenant: str
    project: str
    kind: str
    docs_seen: int = 0
    docs_added: int = 0
    docs_updated: int = 0
    docs_unchanged: int = 0
    docs_deleted: int = 0
    chunks_embedded: int = 0
    chunks_written: int = 0
    chunks_deleted: int = 0
    chunks_total: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    # The errors a retry cannot fix (SourceError.transient False: a rejected token, an unknown portal; a project
    # without the source): the webhook worker dead-letters an item whose refresh failed with these alone.
    permanent_errors: list[str] = field(default_factory=list)
    failed_sources: int = 0
    sources: int = 0
    requests: int = 0
    interrupted: bool = False
    busy: bool = False  # another replica held the project's lease: nothing was done
    warnings: list[str] = field(default_factory=list)  # e.g. deletions deferred; the outcome stays ok
    # Reachability (kbsync.reachability): chunks queried with their own vector, found unreachable, repaired.
    chunks_checked: int = 0
    chunks_unreachable: int = 0
    chunks_repaired: int = 0
    collections_rebuilt: int = 0
    check_seconds: float = 0.0

    @property
    def outcome(self) -> str:
        if self.busy:
            return "busy"
        if self.interrupted:
            return "interrupted"
        if not self.errors:
            return "ok"
        return "failed" if self.failed_sources >= self.sources > 0 or self.sources == 0 else "partial"

    @property
    def permanent(self) -> bool:
        """Whether the run failed and every error it met is permanent (retrying will not help)."""
        return bool(self.errors) and len(self.permanent_errors) == len(self.errors)

    def add_error(self, exc: KbsyncError) -> None:
        """Record an error, keeping whether a retry can help."""
        self.errors.append(str(exc))
        if isinstance(exc, UnknownProject) or (isinstance(exc, SourceError) and not exc.transient):
            self.permanent_errors.append(str(exc))

    def counts(self) -> dict[str, object]:
        return {key: value for key, value in asdict(self).items() if key not in _NOT_COUNTS}

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "outcome": self.outcome}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunReport:
        """A report from `as_dict()` (what the daemon answers); `outcome` is recomputed from the counters, and
        keys this version does not know are left out."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


class Progress(Protocol):
    """Told how far a run is; the CLI draws a progress bar with it."""

    def listed(self, key: ProjectKey, source_id: str, total: int) -> None: ...

    def advanced(self, key: ProjectKey, done: int) -> None: ...
