"""The engine: the one place that orders the pipeline.

source -> Document -> chunk -> embed (only new chunk texts) -> write -> delete stale -> record the run.

Diffs are made on id sets read back from the collection (the index is its own record), never on clocks:
- a document whose hash is unchanged costs no chunking and no embedding (a changed `updated_at` alone only
  refreshes metadata);
- a changed document embeds only the chunks whose text is new (chunk ids come from their text);
- new chunks are written first, stale ones deleted after the write returned (a document never disappears
  while it is updated);
- a document leaves the index only when a complete listing lacks it and the source confirms it is gone;
- an older version never overwrites a newer one (`doc_updated_at`).
The CLI, the daemon and the HTTP API are shells over `Engine`; it never prints or exits.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import structlog

from kbsync import reachability
from kbsync.chunking import Chunk, Chunker
from kbsync.counts import forget_counts, record_counts
from kbsync.deletion_guard import check_deletes
from kbsync.embedding import Embedder
from kbsync.errors import Interrupted, KbsyncError, SourceError, UnknownProject
from kbsync.leases import LeaseKeeper
from kbsync.lexical import LexicalIndex, converge_lexical
from kbsync.locking import try_lock
from kbsync.memory import release_free_memory
from kbsync.metadata import chunk_metadata
from kbsync.records import ChunkRecord, IndexedDoc, ProjectIndex
from kbsync.retrieval import Group, RankedHit, Retrieval
from kbsync.runs import Progress, ProjectKey, RunReport
from kbsync.settings import ProjectSettings, Settings, TenantSettings
from kbsync.sources import ChangesObserver, Document, ListingObserver, Polling, Source, newest_per_id
from kbsync.state import State, Watermark
from kbsync.store import Store, check_storable
from kbsync.webhooks import WebhookEvent

__all__ = ["Engine"]

log = structlog.get_logger(__name__)

# Fresh chunks gathered across documents before one embedding call: length-sorted batches of a larger group pad
# less, and a group this size still embeds in a few seconds on 2 cores, so a stop request is honoured quickly.
_EMBED_GROUP = 64
# Documents (new, changed or with metadata to refresh) written together at most: one write call per group.
_WRITE_GROUP = 100


@dataclass(slots=True)
class _Pending:
    doc: Document
    doc_hash: str
    chunks: list[Chunk]
    held: IndexedDoc | None
    fresh: list[Chunk]


class Engine:
    """Reconciles projects and answers queries over one store; one project's work runs one at a time."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        tenant_stores: Mapping[str, Store] | None = None,
        embedder: Embedder,
        chunker: Chunker,
        state: State,
        sources: dict[ProjectKey, list[Source]],
        lexical: LexicalIndex | None = None,
    ) -> None:
        self.settings = settings
        self.lexical = lexical  # the lexical leg (kbsync.lexical), written right after each store write/delete
        self._lexical_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kbsync-lexical")
        self.store = store  # the [chroma] store
        self._tenant_stores = dict(tenant_stores or {})  # tenants with a [tenants.chroma] server of their own
        self.embedder = embedder
        self.chunker = chunker
        self.state = state
        self.sources = sources
        self._locks = {key: threading.Lock() for key in self.projects()}
        # Replicas sharing PostgreSQL serialize a project's writes through a lease; in one process the lock does.
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._leases: dict[ProjectKey, LeaseKeeper] = {}
        # Set by the daemon on shutdown: runs stop between document groups (what was written stays valid).
        self.stop_event = threading.Event()
        self._observers: list[Callable[[RunReport], None]] = []

    def store_for(self, key: ProjectKey | str) -> Store:
        """The store holding a project's (or a tenant's) collections."""
        tenant = key.tenant if isinstance(key, ProjectKey) else key
        return self._tenant_stores.get(tenant, self.store)

    def problems(self) -> list[str]:
        """What keeps this engine from working now: stores or the state database not answering (readiness)."""
        found = []
        stores = {id(s): s for s in [self.store, *self._tenant_stores.values()]}
        for store in stores.values():
            try:
                store.heartbeat()
            except KbsyncError as exc:
                found.append(str(exc))
        try:
            self.state.ping()
        except KbsyncError as exc:
            found.append(str(exc))
        return found

    def running(self) -> set[ProjectKey]:
        """Projects this engine is working on now (it holds their leases)."""
        return set(self._leases.copy())  # copy() is atomic; iterating a dict other threads change is not

    def observe(self, observer: Callable[[RunReport], None]) -> None:
        """Call `observer` with every finished run (the daemon's metrics)."""
        self._observers.append(observer)

    def _check_stop(self, key: ProjectKey) -> None:
        if self.stop_event.is_set():
            raise Interrupted("kbsync is stopping; the run was interrupted (the next run converges)")
        lease = self._leases.get(key)
        if lease is not None and not lease.held():
            raise Interrupted(f"the lease of {key} was lost or not renewed before it expired; the run stopped")

    # -- projects ----------------------------------------------------------------------------------------

    def projects(self, tenant: str | None = None, project: str | None = None) -> list[ProjectKey]:
        """Configured projects, optionally narrowed; UnknownProject when a given id matches nothing."""
        keys = [
            ProjectKey(t.id, p.id)
            for t in self.settings.tenants
            if tenant is None or t.id == tenant
            for p in t.projects
            if project is None or p.id == project
        ]
        if not keys and (tenant is not None or project is not None):
            raise UnknownProject(f"no project {tenant or '*'}/{project or '*'} in the settings")
        return keys

    def _project_settings(self, key: ProjectKey) -> tuple[TenantSettings, ProjectSettings]:
        tenant = self.settings.tenant(key.tenant)
        project = tenant.project(key.project) if tenant else None
        if tenant is None or project is None:
            raise UnknownProject(f"no project {key} in the settings")
        return tenant, project

    # -- reconcile ---------------------------------------------------------------------------------------

    def _run(
        self,
        key: ProjectKey,
        kind: str,
        work: Callable[[list[Source], ProjectIndex, RunReport], None],
        *,
        full_index: bool = True,
        wait: bool = True,
    ) -> RunReport:
        """Run `work` on one project under its lock and lease, recorded in the state database and told to
        observers. Without `full_index`, `work` gets an empty index and reads what it needs (`_ensure_docs`,
        `_ensure_full`): a poll that finds nothing changed reads nothing from the store. Without `wait`, a project
        another thread of this process is running is not waited for: the report comes back `busy` at once."""
        self._project_settings(key)
        report = RunReport(key.tenant, key.project, kind)
        started = time.monotonic()
        with (
            try_lock(self._locks[key], wait) as locked,
            structlog.contextvars.bound_contextvars(tenant=key.tenant, project=key.project, trigger=kind),
        ):
            if not locked:
                report.busy = True
                log.info("run.skipped_busy", reason="another run of the project is in progress in this process")
                return report
            lease = LeaseKeeper(self.state, f"project:{key}", self.owner, self.settings.state.lease_seconds)
            if not lease.acquire():
                report.busy = True
                log.info("run.skipped_busy", reason="another replica holds the project's lease")
                for observer in self._observers:  # counted as kbsync_runs_total{outcome="busy"}
                    observer(report)
                return report
            self._leases[key] = lease
            try:
                run_id = self.state.start_run(key.tenant, key.project, kind, self.owner)
            except KbsyncError:
                del self._leases[key]
                lease.release()
                raise
            try:
                sources = self.sources.get(key, [])
                report.sources = len(sources)
                index = self.store_for(key).index(key.collection) if full_index else ProjectIndex(complete=False)
                work(sources, index, report)
                if index.complete:
                    report.chunks_total = index.chunk_count
                    self.state.set_locales(key.tenant, key.project, index.locales())
                record_counts(self.state, self.store_for(key), key, index, report)
            except Interrupted as exc:
                record_counts(
                    self.state, self.store_for(key), key, index, report
                )  # what was applied before the stop is counted
                report.interrupted = True
                report.errors.append(str(exc))
                log.warning("run.interrupted")
            except KbsyncError as exc:
                report.add_error(exc)
                report.failed_sources = report.sources
                log.error("run.failed", error=str(exc))
                forget_counts(self.state, key)  # a write may have failed midway: recounted by status or the next run
            finally:
                report.seconds = round(time.monotonic() - started, 3)
                try:
                    self.state.finish_run(
                        run_id, report.outcome, report.counts(), "; ".join(report.errors) if report.errors else None
                    )
                finally:
                    del self._leases[key]
                    lease.release()
            log.info("run.finished", outcome=report.outcome, **report.counts())
        for observer in self._observers:
            observer(report)
        return report

    def reconcile(
        self,
        key: ProjectKey,
        *,
        rebuild: bool = False,
        progress: Progress | None = None,
        allow_mass_delete: bool = False,
    ) -> RunReport:
        """Full reconcile of one project: every source listed, changed documents synced, vanished ones deleted.

        A source that fails is reported and skipped (the others still run); it deletes nothing.
        `rebuild` re-embeds every chunk. `allow_mass_delete` lifts the mass-delete breaker (kbsync.deletion_guard).
        """

        def work(sources: list[Source], index: ProjectIndex, report: RunReport) -> None:
            for source in sources:
                self._reconcile_source(
                    key, source, index, report, rebuild=rebuild, progress=progress, allow_mass_delete=allow_mass_delete
                )
            self._converge_lexical(key, index, report)

        return self._run(key, "reconcile", work)

    def poll(self, key: ProjectKey) -> RunReport:
        """Cheap change scan of the sources that can poll (Chatwoot: newest-first down to the stored watermark,
        one request when nothing changed). A source never reconciled, or whose total dropped (a hard delete,
        which leaves no trace in the list), is reconciled instead."""

        def work(sources: list[Source], index: ProjectIndex, report: RunReport) -> None:
            for source in sources:
                self._poll_source(key, source, index, report)

        return self._run(key, "poll", work, full_index=False)

    def refresh(
        self, key: ProjectKey, source_id: str, event: WebhookEvent, doc_id: str | None = None, *, wait: bool = True
    ) -> RunReport:
        """Apply one webhook event (fetch-on-notify: the source is the truth, the payload only a hint).

        `portal_updated` reconciles the source; an article event polls it; a deleted article still held after the
        poll makes a complete listing (the second look of invariant 2) decide. `wait=False`: `busy` at once while
        the project is running here (webhook workers try again later instead of blocking on a long run)."""

        def work(sources: list[Source], index: ProjectIndex, report: RunReport) -> None:
            source = next((s for s in sources if s.source_id == source_id), None)
            if source is None:
                raise UnknownProject(f"project {key} has no source {source_id}")
            if event == WebhookEvent.PORTAL_UPDATED:
                self._reconcile_source(key, source, index, report, rebuild=False, progress=None)
                return
            self._poll_source(key, source, index, report)
            if event == WebhookEvent.ARTICLE_DELETED and doc_id is not None:
                self._ensure_docs(key, index, {doc_id})
                if doc_id in index.docs:
                    self._reconcile_source(key, source, index, report, rebuild=False, progress=None)

        return self._run(key, "refresh", work, full_index=False, wait=wait)

    def _ensure_docs(self, key: ProjectKey, index: ProjectIndex, doc_ids: set[str]) -> None:
        """Read the chunks of `doc_ids` into a partial index (those not read yet)."""
        if index.complete:
            return
        missing = doc_ids - set(index.docs)
        if missing:
            index.docs.update(self.store_for(key).index(key.collection, doc_ids=missing).docs)

    def _ensure_full(self, key: ProjectKey, index: ProjectIndex) -> None:
        """Make a partial index whole (a complete listing diffs against every document)."""
        if not index.complete:
            index.docs.clear()
            index.docs.update(self.store_for(key).index(key.collection).docs)
            index.complete = True

    def _poll_source(self, key: ProjectKey, source: Source, index: ProjectIndex, report: RunReport) -> None:
        if not isinstance(source, Polling):
            return  # files and web sources are read by reconcile
        with structlog.contextvars.bound_contextvars(source=source.source_id):
            mark = self.state.watermark(key.tenant, key.project, source.source_id)
            if mark is None:
                self._reconcile_source(key, source, index, report, rebuild=False, progress=None)
                return
            try:
                changes = source.changes_since(mark.updated_at)
            except SourceError as exc:
                report.add_error(exc)
                report.failed_sources += 1
                log.warning("source.failed", error=str(exc))
                return
            report.requests += changes.requests
            self._ensure_docs(key, index, {d.doc_id for d in changes.published} | changes.gone)
            self.sync_documents(key, changes.published, index, report)
            # The source itself says these are no longer published: no second look is needed.
            gone = {d for d in changes.gone if d in index.docs and index.docs[d].source == source.source_id}
            self._delete_documents(key, gone, index, report)
            if isinstance(source, ChangesObserver):  # the change gate of API sources
                source.applied_changes(changes, index.docs.keys())
            if mark.total is not None and changes.all_articles_count < mark.total:
                log.info("source.total_dropped", was=mark.total, now=changes.all_articles_count)
                self._reconcile_source(key, source, index, report, rebuild=False, progress=None)
                return
            if changes.complete:
                self.state.set_watermark(
                    key.tenant, key.project, source.source_id, Watermark(changes.newest, changes.all_articles_count)
                )

    def _reconcile_source(
        self,
        key: ProjectKey,
        source: Source,
        index: ProjectIndex,
        report: RunReport,
        *,
        rebuild: bool,
        progress: Progress | None,
        allow_mass_delete: bool = False,
    ) -> None:
        with structlog.contextvars.bound_contextvars(source=source.source_id):
            self._ensure_full(key, index)
            try:
                listing = source.list(rebuild=rebuild)
            except SourceError as exc:
                report.add_error(exc)
                report.failed_sources += 1
                log.warning("source.failed", error=str(exc))
                return
            if progress is not None:
                progress.listed(key, source.source_id, len(listing.documents))
            for error in listing.errors:
                report.errors.append(error.message)
            report.warnings.extend(listing.warnings)
            report.docs_seen += len(listing.unchanged)
            report.docs_unchanged += len(listing.unchanged)
            self.sync_documents(key, listing.documents, index, report, rebuild=rebuild, progress=progress)
            if isinstance(source, ListingObserver):
                source.applied(listing, index.docs.keys())
            if not listing.complete:
                log.warning("source.incomplete_listing", errors=len(listing.errors))
                report.warnings.append(f"{source.source_id}: the listing was incomplete, so nothing was deleted")
                return
            held = set(index.of_source(source.source_id))
            candidates = held - listing.doc_ids
            if candidates:
                gone = source.confirm_gone(candidates) & held
                verdict = check_deletes(
                    source.source_id, source.kind, len(held), len(gone), self.settings.sync, allow=allow_mass_delete
                )
                if verdict.allowed:
                    self._delete_documents(key, gone, index, report)
                else:
                    log.warning("source.mass_delete_refused", held=len(held), gone=len(gone))
                    report.warnings.append(verdict.message)
                    report.errors.append(verdict.message)  # the outcome is `partial`
            if listing.watermark is not None:
                self.state.set_watermark(
                    key.tenant, key.project, source.source_id, Watermark(listing.watermark, listing.total)
                )

    def sync_documents(
        self,
        key: ProjectKey,
        documents: Sequence[Document],
        index: ProjectIndex,
        report: RunReport,
        *,
        rebuild: bool = False,
        progress: Progress | None = None,
    ) -> None:
        """Bring each document's chunks in `key`'s collection up to date; `index` is updated to match.

        Documents are applied in groups: one embedding call and one store write per group, because each write
        to the embedded store costs ~27 ms whatever its size (measured: one write per document made a portal
        of short articles spend 3/4 of a sync without embeddings in writes)."""
        pending: list[_Pending] = []
        touched: list[tuple[Document, IndexedDoc]] = []  # same content, newer updated_at: metadata only
        fresh_count = 0
        for doc in newest_per_id(documents):
            report.docs_seen += 1
            held = index.docs.get(doc.doc_id)
            # Arbitrary content meets the chunker and the store's limits here: one document fails, not the run.
            try:
                item = self._plan(doc, held, report, rebuild=rebuild)
            except Exception as exc:
                report.errors.append(f"{doc.source} {doc.doc_id}: cannot be chunked: {type(exc).__name__}: {exc}")
                log.warning("doc.unchunkable", doc_id=doc.doc_id, error=f"{type(exc).__name__}: {exc}")
                continue  # whatever the index holds of it stays
            if isinstance(item, _Pending):
                pending.append(item)
                fresh_count += len(item.fresh)
            else:
                if item is not None and held is not None:
                    touched.append((doc, held))
                if progress is not None:
                    progress.advanced(key, 1)
            if fresh_count >= _EMBED_GROUP or len(pending) + len(touched) >= _WRITE_GROUP:
                self._apply(key, pending, touched, index, report, progress)
                pending, touched, fresh_count = [], [], 0
        if pending or touched:
            self._apply(key, pending, touched, index, report, progress)

    def _plan(
        self, doc: Document, held: IndexedDoc | None, report: RunReport, *, rebuild: bool
    ) -> _Pending | Literal["metadata"] | None:
        """What `doc` needs: a _Pending to chunk and write, "metadata" (same content, newer updated_at), or None."""
        doc_hash = doc.content_hash(self.chunker.fingerprint)
        if held is not None and not rebuild:
            if doc.versioned and held.updated_at > doc.updated_at:
                report.docs_unchanged += 1  # newer wins: this version is older than the indexed one
                log.debug("doc.older_than_indexed", doc_id=doc.doc_id)
                return None
            if held.doc_hash == doc_hash and held.intact:  # a write that failed partway is not unchanged
                report.docs_unchanged += 1
                return "metadata" if held.updated_at != doc.updated_at else None
        chunks = self.chunker.split(doc.doc_id, doc.title, doc.text)
        for chunk in chunks:
            check_storable(chunk.id, chunk.text)
        held_ids = set(held.chunks) if held is not None and not rebuild else set()
        return _Pending(doc, doc_hash, chunks, held, [c for c in chunks if c.id not in held_ids])

    def _apply(
        self,
        key: ProjectKey,
        pending: list[_Pending],
        touched: list[tuple[Document, IndexedDoc]],
        index: ProjectIndex,
        report: RunReport,
        progress: Progress | None,
    ) -> None:
        """Embed a group's new chunk texts, write the group once, then delete its stale chunks."""
        self._check_stop(key)  # before embedding: a group once embedded is always written
        texts = [c.text for item in pending for c in item.fresh]
        vectors = iter(self.embedder.embed(texts)) if texts else iter(())
        report.chunks_embedded += len(texts)
        now = int(time.time())
        records: list[ChunkRecord] = []
        stale: list[str] = []
        planned: list[tuple[_Pending, list[dict[str, str | int]]]] = []
        for item in pending:
            fresh_ids = {c.id for c in item.fresh}
            metadatas = []
            for chunk in item.chunks:
                metadata = chunk_metadata(key, item.doc, chunk, len(item.chunks), item.doc_hash, now)
                metadatas.append(metadata)
                if chunk.id in fresh_ids:
                    records.append(ChunkRecord(chunk.id, chunk.text, metadata, next(vectors)))
                    continue
                # A kept chunk keeps its vector and its indexed_at; only changed metadata is rewritten.
                held_meta = item.held.chunks[chunk.id] if item.held is not None else {}
                metadata["indexed_at"] = int(held_meta.get("indexed_at", now))
                if held_meta != metadata:
                    records.append(ChunkRecord(chunk.id, chunk.text, metadata, None))
            if item.held is not None:
                stale.extend(sorted(set(item.held.chunks) - {c.id for c in item.chunks}))
            planned.append((item, metadatas))
        written = len(records)  # metadata refreshes below are not counted as written chunks (as before batching)
        refreshed = [
            (doc, held, {c: {**m, "doc_updated_at": doc.updated_at} for c, m in held.chunks.items()})
            for doc, held in touched
        ]
        records.extend(ChunkRecord(c, "", m, None) for _, _, metas in refreshed for c, m in metas.items())
        # Locales are recorded before the chunks carrying them are written: a query skips its locale filter only
        # while the project's recorded locales are exactly the asked one (see `query`).
        if records:
            self.state.add_locales(key.tenant, key.project, {str(r.metadata["locale"]) for r in records})
        # New chunks are written before any stale one is deleted: a document never disappears while updated.
        self.store_for(key).write(key.collection, records)
        self._lexical_write(key, records)
        report.chunks_written += written
        self.store_for(key).delete(key.collection, stale)
        self._lexical_delete(key, stale)
        report.chunks_deleted += len(stale)
        if self.settings.reachability.verify_writes:
            self._verify(key, records, report)
        for doc, held, metas in refreshed:
            held.chunks.update(metas)
            held.updated_at = doc.updated_at
        for item, metadatas in planned:
            if item.held is None:
                report.docs_added += 1
            else:
                report.docs_updated += 1
                del index.docs[item.doc.doc_id]
            for chunk, metadata in zip(item.chunks, metadatas):
                index.add(chunk.id, metadata)
            if progress is not None:
                progress.advanced(key, 1)
        release_free_memory()

    def _verify(self, key: ProjectKey, records: list[ChunkRecord], report: RunReport) -> None:
        """Every chunk just written must come back from a query with its own vector (chroma-core/chroma#7758)."""
        options = reachability.Options.of(self.settings)
        outcome = reachability.verify_written(self.store_for(key), key.collection, records, options)
        outcome.add_to(report)
        if outcome.error:
            report.warnings.append(outcome.error)

    def audit(self, key: ProjectKey, *, repair: bool = False) -> RunReport:
        """Query every chunk of a project with its own vector; `repair` re-writes (or rebuilds) what is unreachable.
        Recorded as a run of kind "audit" (`kbsync status`, /v1/status)."""

        def work(_sources: list[Source], _index: ProjectIndex, report: RunReport) -> None:
            options = reachability.Options.of(self.settings, repair=repair)
            outcome = reachability.audit(self.store_for(key), key.collection, options)
            outcome.add_to(report)
            report.chunks_total = outcome.checked
            if outcome.error:
                report.errors.append(outcome.error)
            elif outcome.remaining:
                hint = "after a rebuild" if outcome.rebuilt else "(repair with --repair)"
                report.warnings.append(f"{outcome.remaining} chunks no query returns {hint}")

        return self._run(key, "audit", work, full_index=False)

    def _delete_documents(self, key: ProjectKey, doc_ids: set[str], index: ProjectIndex, report: RunReport) -> None:
        held = [index.docs[d] for d in sorted(doc_ids) if d in index.docs]
        if not held:
            return
        self.store_for(key).delete(key.collection, [c for doc in held for c in sorted(doc.chunks)])
        self._lexical_delete(key, [c for doc in held for c in sorted(doc.chunks)])
        for doc in held:
            del index.docs[doc.doc_id]
            report.docs_deleted += 1
            report.chunks_deleted += len(doc.chunks)
            log.info("doc.deleted", doc_id=doc.doc_id, chunks=len(doc.chunks))

    def _lexical_write(self, key: ProjectKey, records: Sequence[ChunkRecord]) -> None:
        if self.lexical is not None:  # metadata-only refreshes carry no text and leave the rows as they are
            self.lexical.write(key.tenant, key.project, [(r.id, r.text, r.metadata) for r in records if r.text])

    def _lexical_delete(self, key: ProjectKey, chunk_ids: Sequence[str]) -> None:
        if self.lexical is not None:
            self.lexical.delete(key.tenant, key.project, chunk_ids)

    def _converge_lexical(self, key: ProjectKey, index: ProjectIndex, report: RunReport) -> None:
        """Make the lexical rows match the collection (a failed write, or a store older than the lexical leg)."""
        if self.lexical is None or not index.complete:
            return
        added, removed = converge_lexical(
            self.lexical, self.store_for(key), key.tenant, key.project, key.collection, index
        )
        if added or removed:
            log.info("lexical.converged", added=added, removed=removed)
            report.warnings.append(f"lexical index repaired: {added} rows added, {removed} removed")

    # -- query -------------------------------------------------------------------------------------------

    def query(
        self,
        key: ProjectKey,
        text: str,
        *,
        k: int = 5,
        locale: str | None = None,
        group: Group = "doc",
        expand: int = 0,
        lexical_weight: float | None = None,
    ) -> list[RankedHit]:
        """Top-k documents of a project for `text`, each with its best chunk (kbsync.retrieval); `group="chunk"`
        ranks raw chunks by the dense leg alone, `expand` adds neighbouring chunks, `lexical_weight` overrides
        the setting. A locale filter is skipped when the project holds one locale (a filter matching most of a
        collection makes Chroma's search slow); the project's locales come from the state database, where every
        write records them before it happens."""
        self._project_settings(key)
        retrieval = Retrieval(self.store_for(key), self.lexical, self.settings.retrieval.candidates)
        weight = self.settings.retrieval.lexical_weight if lexical_weight is None else lexical_weight
        # The lexical leg needs no vector: it runs while the question is embedded.
        lexical = (
            retrieval.start_lexical(self._lexical_pool, (key.tenant, key.project), text, locale, k=k)
            if (group == "doc" and weight > 0)
            else None
        )
        vector = self.embedder.embed([text])[0]
        where = None
        if locale:
            locales = self.state.locales(key.tenant, key.project)
            if not locales:  # none recorded yet: a collection written before kbsync recorded locales
                locales = self.store_for(key).index(key.collection).locales()
                self.state.add_locales(key.tenant, key.project, locales)
            if locales != {locale}:
                where = {"locale": locale}
        return retrieval.search(
            key.collection,
            (key.tenant, key.project),
            vector,
            text,
            k=k,
            where=where,
            locale=locale,
            group=group,
            expand=expand,
            weight=weight,
            lexical_hits=lexical,
        )
