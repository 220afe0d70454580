"""The status report of `kbsync status --json` and `GET /v1/status`: one builder for both."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kbsync.settings import Settings
from kbsync.state import State
from kbsync.store import Store, collection_name

if TYPE_CHECKING:
    from kbsync.queue import Queue

__all__ = ["status_payload"]


def status_payload(
    settings: Settings,
    state: State,
    store_for: Callable[[str], Store] | None,
    *,
    store_note: str = "ok",
    queue: Queue | None = None,
) -> dict[str, Any]:
    """Per project: docs and chunks held (kept in the state database by the runs; read from the store,
    `store_for(tenant)`, only while not known yet), last run of each kind, last error, queue depth; plus
    collections no project owns any more. Never carries a secret (invariant 10)."""
    keys = [(t.id, p.id) for t in settings.tenants for p in t.projects]
    projects = []
    for tenant, project in keys:
        name = collection_name(tenant, project)
        held: dict[str, int | None] = {"docs": None, "chunks": None}
        counts = state.counts(tenant, project)  # kept by every run: no read of every chunk's metadata
        if counts is None and store_for is not None:  # not known until the project's next run records them
            index = store_for(tenant).index(name)
            counts = (len(index.docs), index.chunk_count)
        if counts is not None:
            held = {"docs": counts[0], "chunks": counts[1]}
        runs = state.last_runs(tenant, project)
        last_error = state.last_error(tenant, project)
        projects.append(
            {
                "tenant": tenant,
                "project": project,
                "collection": name,
                **held,
                "last_runs": {kind: run.as_dict() for kind, run in runs.items()},
                "last_error": last_error.error if last_error else None,
                "last_error_at": last_error.finished_at if last_error else None,
                "queue": queue.depth(tenant, project) if queue is not None else None,
            }
        )
    orphans: list[str] = []
    if store_for is not None:
        names = {collection_name(t, p) for t, p in keys}
        stores = {id(store_for(t.id)): store_for(t.id) for t in settings.tenants} or {0: store_for("")}
        orphans = sorted({c for store in stores.values() for c in store.collections() if c not in names})
    payload: dict[str, Any] = {"projects": projects, "orphaned_collections": orphans, "store": store_note}
    if queue is not None:
        payload["queue"] = {**queue.depth(), "dead_items": queue.dead()}
    return payload
