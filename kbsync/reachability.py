"""Every live chunk can be found: verify after write, repair, rebuild, audit (chroma-core/chroma#7758).

chromadb 1.5.9's HNSW index can leave live records that no query returns, even with their own stored vector and a
large k, while `get()` still returns them; reopening the store does not help. A record counts as reachable when an
unfiltered query with its own vector (as a bot queries) returns it among the first `k`; one that is missing is
asked again with `RECHECK_K` before it counts, since identical vectors (a repeated chunk text) can fill the first k.

Repair after a write, cheapest first: a few unreachable records are deleted and added again by id (same vector,
document and metadata) and checked again. When that does not make them reachable, or more than `rebuild_share` of
the collection is unreachable at once, and always for an audit, the collection is rebuilt without re-embedding:
every record is copied into a fresh collection with the same configuration and metadata, the copy is verified
(count, ids, every record reachable), then swapped in under the same name. A rebuild that fails drops the copy and
leaves the old collection in place; the error says why. Callers hold the project's lease (no write may land in the
old collection meanwhile).

Measured on chromadb 1.5.9 (tests/test_reachability.py, the upstream reproduction: 4000 inserts, delete half,
upsert 30% of the rest, l2): 1-8 of the 2000 live records unreachable, a fresh copy of them none. Re-adding fixed
them in the running process, but after reopening the store another record was unreachable; a rebuilt collection
stayed whole after reopening. Reopening can change which records are reachable, so the daemon audits soon after it
starts as well as on its schedule.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from kbsync.errors import RebuildFailed, StoreError
from kbsync.records import ChunkRecord
from kbsync.store import Store

if TYPE_CHECKING:
    from kbsync.runs import RunReport
    from kbsync.settings import Settings

__all__ = ["RECHECK_K", "TWIN_DISTANCE", "Options", "Outcome", "audit", "find_unreachable", "rebuild", "verify_written"]

log = structlog.get_logger(__name__)

RECHECK_K = 100
# A neighbour this close holds the same vector (float rounding of a distance 0, cosine or l2).
TWIN_DISTANCE = 1e-6


@dataclass(frozen=True, slots=True)
class Options:
    """How to check and when to rebuild (settings `[reachability]`)."""

    k: int = 10
    rebuild_share: float = 0.02
    repair: bool = True

    @classmethod
    def of(cls, settings: Settings, *, repair: bool = True) -> Options:
        section = settings.reachability
        return cls(k=section.k, rebuild_share=section.rebuild_share, repair=repair)


@dataclass(slots=True)
class Outcome:
    """What one check found and did. `remaining`: unreachable records left after it (0 when repaired)."""

    checked: int = 0
    unreachable: list[str] = field(default_factory=list)
    rewritten: int = 0
    rebuilt: bool = False
    remaining: int = 0
    seconds: float = 0.0
    error: str | None = None

    def add_to(self, report: RunReport) -> None:
        """Count this check in a run's report."""
        report.chunks_checked += self.checked
        report.chunks_unreachable += len(self.unreachable)
        report.chunks_repaired += self.repaired
        report.collections_rebuilt += int(self.rebuilt)
        report.check_seconds = round(report.check_seconds + self.seconds, 3)

    @property
    def repaired(self) -> int:
        return max(0, len(self.unreachable) - self.remaining)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "repaired": self.repaired}


def find_unreachable(store: Store, name: str, ids: Sequence[str], embeddings: np.ndarray, k: int) -> list[str]:
    """Ids among `ids` that an unfiltered query with their own vector does not return (k, then RECHECK_K). A record
    whose exact twin (the same vector: a chunk text repeated in another article) comes back counts as found: its
    text is, and HNSW links exact duplicates so sparsely that no rebuild returns every one of them."""
    if not len(ids):
        return []
    found = store.knn(name, embeddings, k=k)
    missing = [i for i, (chunk_id, near) in enumerate(zip(ids, found)) if not _found(chunk_id, near)]
    if not missing or k >= RECHECK_K:
        return [ids[i] for i in missing]
    wider = store.knn(name, embeddings[missing], k=RECHECK_K)
    return [ids[i] for i, near in zip(missing, wider) if not _found(ids[i], near)]


def _found(chunk_id: str, near: list[tuple[str, float]]) -> bool:
    return any(other == chunk_id or distance <= TWIN_DISTANCE for other, distance in near)


def verify_written(store: Store, name: str, records: Sequence[ChunkRecord], options: Options) -> Outcome:
    """Check that every record just written with a vector is reachable; repair the ones that are not."""
    started = time.monotonic()
    written = [r for r in records if r.embedding is not None]
    outcome = Outcome(checked=len(written))
    if written:
        vectors = np.stack([r.embedding for r in written])  # type: ignore[misc]
        outcome.unreachable = find_unreachable(store, name, [r.id for r in written], vectors, options.k)
    if outcome.unreachable:
        log.warning("reachability.unreachable_after_write", collection=name, chunks=len(outcome.unreachable))
        _repair(store, name, outcome, options, rewrite=True)
    outcome.seconds = time.monotonic() - started
    return outcome


def audit(store: Store, name: str, options: Options) -> Outcome:
    """Query every live record of a collection with its own vector; with `options.repair`, rebuild a collection
    where some are unreachable (re-writing records fixed them in memory, but measured after a reopen of the embedded
    store another record was unreachable: more churn; a rebuilt collection stayed whole after reopening)."""
    started = time.monotonic()
    outcome = Outcome()
    outcome.checked, outcome.unreachable = _scan(store, name, options.k)
    outcome.remaining = len(outcome.unreachable)
    if outcome.unreachable:
        log.warning("reachability.unreachable", collection=name, chunks=len(outcome.unreachable))
        if options.repair:
            _repair(store, name, outcome, options, rewrite=False)
    outcome.seconds = time.monotonic() - started
    return outcome


def _scan(store: Store, name: str, k: int) -> tuple[int, list[str]]:
    checked, lost = 0, []
    for page in store.export(name):
        checked += len(page["ids"])
        vectors = np.asarray(page["embeddings"], dtype=np.float32)
        lost.extend(find_unreachable(store, name, list(page["ids"]), vectors, k))
    return checked, lost


def _repair(store: Store, name: str, outcome: Outcome, options: Options, *, rewrite: bool) -> None:
    """With `rewrite`, re-write the unreachable records when they are few and check them again; rebuild the
    collection when that was not tried or did not do."""
    lost = outcome.unreachable
    outcome.remaining = len(lost)
    if rewrite and len(lost) <= options.rebuild_share * store.count(name):
        batch = store.records(name, lost)
        store.rewrite(name, batch)
        outcome.rewritten = len(batch["ids"])
        still = find_unreachable(store, name, batch["ids"], np.asarray(batch["embeddings"]), options.k)
        if not still:
            outcome.remaining = 0
            log.info("reachability.rewritten", collection=name, chunks=outcome.rewritten)
            return
        outcome.remaining = len(still)
    try:
        left = rebuild(store, name, options.k, first=lost)
    except RebuildFailed as exc:
        outcome.error = str(exc)
        log.error("reachability.rebuild_failed", collection=name, error=str(exc))
        return
    outcome.rebuilt = True
    outcome.remaining = len(left)


def rebuild(store: Store, name: str, k: int = 10, *, first: Sequence[str] = ()) -> list[str]:
    """Copy `name` into a fresh collection with the same configuration (vectors included, nothing re-embedded),
    verify the copy, and swap it in under `name`. Returns the records still unreachable in it (none, mostly).
    Raises RebuildFailed, with the old collection left in place, when the copy fails, its count or ids differ, or
    it loses as many records as the collection it would replace.

    The records of `first` (the unreachable ones) are copied before the others. A copy that still leaves some
    unreachable (HNSW's graph misses some however built; measured on a fresh collection: the chatwoot-docs
    corpus' own vectors 12 of 1785, plain random vectors 9-13 of 2000) is made again with a denser graph
    (`Store.clone(denser=True)`: 1 of the 1785, 0 of the 2000), twice at most: each build is random. The last copy
    is taken when it loses fewer records than the collection (measured on the churned corpus: 43 -> 2)."""
    started = time.monotonic()
    early = list(first)
    for attempt in range(1, _COPY_ATTEMPTS + 1):
        spare = f"{name}.rebuild-{int(time.time())}-{attempt}"
        try:
            copied = store.clone(name, spare, first=early, denser=attempt > 1)
            problem, lost = _copy_problem(store, name, spare, copied, k)
            if lost and attempt < _COPY_ATTEMPTS:
                store.drop(spare)
                early.extend(chunk_id for chunk_id in lost if chunk_id not in early)
                continue
            if lost:
                held = len(_scan(store, name, k)[1])
                problem = None if len(lost) < held else f"{problem}, the collection {held}"
            if problem:
                raise RebuildFailed(
                    f"the rebuilt copy of {name!r} is not whole ({problem}); the old collection is left in place"
                )
            store.swap(name, spare)
        except StoreError as exc:
            _drop_quietly(store, spare)
            if isinstance(exc, RebuildFailed):
                raise
            raise RebuildFailed(f"rebuilding {name!r} failed, the old collection is left in place: {exc}") from exc
        log.info(
            "reachability.rebuilt",
            collection=name,
            chunks=copied,
            attempts=attempt,
            unreachable=len(lost),
            seconds=round(time.monotonic() - started, 3),
        )
        return lost
    raise AssertionError("unreachable: the last attempt returns or raises")


_COPY_ATTEMPTS = 3


def _drop_quietly(store: Store, spare: str) -> None:
    try:
        store.drop(spare)
    except StoreError as exc:  # the copy stays behind, listed as an orphaned collection
        log.warning("reachability.copy_left", collection=spare, error=str(exc))


def _copy_problem(store: Store, name: str, spare: str, copied: int, k: int) -> tuple[str | None, list[str]]:
    """What makes the copy unfit to replace the original, and the records unreachable in it."""
    held, count = store.count(name), store.count(spare)
    if not held == count == copied:
        return f"{count} records in the copy, {copied} copied, {held} in the collection", []
    differing = store.ids(name) ^ store.ids(spare)
    if differing:
        return f"{len(differing)} ids differ, e.g. {sorted(differing)[0]!r}", []
    lost = _scan(store, spare, k)[1]
    if lost:
        return f"{len(lost)} records unreachable in the copy, e.g. {lost[0]!r}", lost
    return None, []
