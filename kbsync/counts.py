"""Each project's document and chunk counts, kept in the state database for `kbsync status` and /v1/status so
they need not read every chunk's metadata. Counts are informational: failing to record them never fails a run."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from kbsync.errors import KbsyncError

if TYPE_CHECKING:
    from kbsync.records import ProjectIndex
    from kbsync.runs import ProjectKey, RunReport
    from kbsync.state import State
    from kbsync.store import Store

__all__ = ["forget_counts", "record_counts"]

log = structlog.get_logger(__name__)


def record_counts(state: State, store: Store, key: ProjectKey, index: ProjectIndex, report: RunReport) -> None:
    """Exact counts from a whole index, else the last counts moved by what this run added and deleted (a poll that
    changed nothing writes nothing)."""
    try:
        if index.complete:
            state.set_counts(key.tenant, key.project, (len(index.docs), index.chunk_count))
            return
        if not (report.docs_added or report.docs_deleted or report.chunks_written or report.chunks_deleted):
            return
        held = state.counts(key.tenant, key.project)
        docs = None if held is None else held[0] + report.docs_added - report.docs_deleted
        chunks = store.count(key.collection)  # Chroma counts without reading metadata
        state.set_counts(key.tenant, key.project, None if docs is None else (docs, chunks))
    except KbsyncError as exc:
        log.warning("counts.not_recorded", error=str(exc))
        forget_counts(state, key)


def forget_counts(state: State, key: ProjectKey) -> None:
    """Drop the project's counts (a write may have failed midway): status or the next run recounts."""
    try:
        state.set_counts(key.tenant, key.project, None)
    except KbsyncError as exc:
        log.warning("counts.not_forgotten", error=str(exc))
