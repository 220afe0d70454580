"""The Chroma store: collection names, what a collection holds, writes, deletes and queries.

The only module that imports chromadb. Chroma errors are translated into `StoreError` here.

Embedded mode opens a PersistentClient at `<state_dir>/chroma` under an exclusive lock (`StoreLocked` for a second
process): Chroma is not process-safe, and two processes on one path silently lose vectors (docs/chroma.md §1).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kbsync.embedding import MODEL_NAME
from kbsync.errors import ModelMismatch, StoreError, StoreLocked
from kbsync.locking import FileLock, lock_holder
from kbsync.memory import release_free_memory
from kbsync.records import ChunkRecord, ProjectIndex, QueryHit

if TYPE_CHECKING:
    from pydantic import SecretStr

    from kbsync.settings import Settings, TenantSettings

__all__ = [
    "MAX_RECORDS_PER_WRITE",
    "STORE_LOCK",
    "ChromaTarget",
    "Store",
    "check_storable",
    "collection_name",
]

# Held under state_dir by the one process that has the embedded store open.
STORE_LOCK = "chroma.lock"
# Chroma Cloud's quotas, kept in every mode so the same data fits a Cloud deployment unchanged; 300 records per
# write also keeps every call far below the local 5461 batch limit.
MAX_RECORDS_PER_WRITE = 300
MAX_DOCUMENT_BYTES = 16 * 1024
MAX_ID_BYTES = 128


def check_storable(chunk_id: str, text: str) -> None:
    """Raise StoreError when a chunk exceeds Chroma Cloud's limits (id <= 128 bytes, document < 16 KB)."""
    if len(chunk_id.encode()) > MAX_ID_BYTES or len(text.encode()) >= MAX_DOCUMENT_BYTES:
        raise StoreError(f"chunk {chunk_id[:80]!r} exceeds Chroma Cloud's limits (id <= 128 bytes, document < 16 KB)")


# Records per metadata read. What Chroma frees after a read stays in the C heap until trimmed: reading 15,000
# records' metadata peaked at +70 MB in pages of 1000 without trimming, +28 MB trimmed, +16 MB in trimmed pages
# of 500, at 4% more time (measured).
_READ_PAGE = 500
_MODEL_KEY = "kbsync_model"


def collection_name(tenant: str, project: str) -> str:
    """`{tenant}__{project}`: both ids match ^[a-z0-9]+(-[a-z0-9]+)*$, so the name passes Chroma's validator."""
    return f"{tenant}__{project}"


@dataclass(frozen=True, slots=True)
class ChromaTarget:
    """Where collections live: the embedded store under state_dir, or one Chroma server and database."""

    mode: str
    host: str = ""
    port: int = 0
    ssl: bool = False
    database: str = "default_database"
    token: SecretStr | None = field(default=None, compare=True, repr=False)

    @classmethod
    def of(cls, settings: Settings, tenant: TenantSettings | None) -> ChromaTarget:
        """The target of `[chroma]`, or of a tenant's `[tenants.chroma]` (keys not given come from `[chroma]`)."""
        base = settings.chroma
        own = tenant.chroma if tenant is not None else None
        if tenant is None or own is None:
            if base.mode == "embedded":
                return cls("embedded")
            return cls("http", base.host, base.port, base.ssl, base.database, settings.chroma_token)
        pick = lambda name: getattr(own, name) if getattr(own, name) is not None else getattr(base, name)  # noqa: E731
        return cls("http", pick("host"), pick("port"), pick("ssl"), pick("database"), tenant.chroma_token)

    def describe(self) -> str:
        if self.mode == "embedded":
            return "embedded"
        return f"{'https' if self.ssl else 'http'}://{self.host}:{self.port} database {self.database}"


@contextmanager
def _chroma_errors(action: str, collection: str) -> Iterator[None]:
    try:
        yield
    except StoreError:
        raise
    except Exception as exc:  # chromadb raises many unrelated types (ValueError, InternalError, Rust errors)
        raise StoreError(f"Chroma failed to {action} in collection {collection!r}: {exc}") from exc


def _lock_store(state_dir: Path) -> FileLock:
    lock = FileLock(state_dir / STORE_LOCK)
    if not lock.acquire():
        raise StoreLocked(
            f"the embedded store at {state_dir / 'chroma'} is open in another kbsync process "
            f"(pid {lock_holder(lock.path)}); Chroma is not process-safe. Stop that process, or let the running "
            "daemon do the work"
        )
    return lock


class Store:
    """Chroma collections of every project, in one client (embedded) or on one server (http)."""

    # `client` is a chromadb ClientAPI and collections are chromadb Collections, typed Any on purpose: chromadb's
    # annotations are stricter than what it returns and accepts (Optional result fields, embedding-function
    # protocols), so typing them would take a cast at every call without catching anything.
    def __init__(self, client: Any, *, description: str, lock: FileLock | None = None) -> None:
        self._client = client
        self._lock = lock
        self._collections: dict[str, Any] = {}
        self.description = description
        self._closed = False

    @classmethod
    def open(cls, target: ChromaTarget, *, state_dir: Path) -> Store:
        """The embedded store under `state_dir`, or a client of the target's Chroma server."""
        if target.mode == "embedded":
            return cls.open_embedded(state_dir)
        return cls.open_http(target)

    @classmethod
    def open_http(cls, target: ChromaTarget, *, attempts: int = 5) -> Store:
        """A client of a Chroma server (`chroma run`, Docker): many processes may use it at once. The database is
        created when missing. Connection errors are retried with backoff, then raised as StoreError."""
        import chromadb
        import tenacity
        from chromadb.config import Settings as ChromaSettings

        headers = {"Authorization": f"Bearer {target.token.get_secret_value()}"} if target.token else None
        settings = ChromaSettings(anonymized_telemetry=False)

        @tenacity.retry(
            stop=tenacity.stop_after_attempt(attempts),
            wait=tenacity.wait_exponential(multiplier=0.5, max=8) + tenacity.wait_random(0, 0.5),
            reraise=True,
        )
        def connect() -> Any:
            admin = chromadb.AdminClient(
                ChromaSettings(
                    chroma_api_impl="chromadb.api.fastapi.FastAPI",
                    chroma_server_host=target.host,
                    chroma_server_http_port=target.port,
                    chroma_server_ssl_enabled=target.ssl,
                    chroma_server_headers=headers,
                    anonymized_telemetry=False,
                )
            )
            try:
                admin.get_database(target.database)
            except Exception as exc:
                if "not found" not in str(exc).lower():
                    raise
                admin.create_database(target.database)
            return chromadb.HttpClient(
                host=target.host,
                port=target.port,
                ssl=target.ssl,
                headers=headers,
                database=target.database,
                settings=settings,
            )

        try:
            client = connect()
        except Exception as exc:
            raise StoreError(f"cannot reach the Chroma server {target.describe()}: {exc}") from exc
        return cls(client, description=target.describe())

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def heartbeat(self) -> None:
        """Raise StoreError, naming the store, when it does not answer (readiness, `kbsync check`): with tenants
        spread over several servers the operator must see which one is away."""
        try:
            self._client.heartbeat()
        except Exception as exc:  # chromadb raises many unrelated types
            raise StoreError(f"the Chroma store {self.description} does not answer: {exc}") from exc

    @classmethod
    def open_embedded(cls, state_dir: Path) -> Store:
        """Lock `<state_dir>/chroma.lock`, then open the PersistentClient at `<state_dir>/chroma`."""
        lock = _lock_store(state_dir)
        try:
            import chromadb
            from chromadb.config import Settings as ChromaSettings

            path = state_dir / "chroma"
            client = chromadb.PersistentClient(path=str(path), settings=ChromaSettings(anonymized_telemetry=False))
        except Exception as exc:
            lock.release()
            raise StoreError(f"cannot open the embedded Chroma store at {state_dir / 'chroma'}: {exc}") from exc
        return cls(client, description=f"embedded:{path}", lock=lock)

    def close(self) -> None:
        """Release the store; idempotent. The embedded client is dropped from Chroma's per-path cache."""
        if self._closed:
            return
        self._closed = True
        self._collections.clear()
        try:
            from chromadb.api.shared_system_client import SharedSystemClient

            SharedSystemClient.clear_system_cache()
        finally:
            if self._lock is not None:
                self._lock.release()

    @contextmanager
    def _errors(self, action: str, name: str) -> Iterator[None]:
        """Chroma errors as StoreError; a failed call also drops the cached handle of `name`, so the next call
        opens it again by name (a collection rebuilt by another process has a new id under the same name)."""
        try:
            with _chroma_errors(action, name):
                yield
        except StoreError:
            self._collections.pop(name, None)
            raise

    def _collection(self, name: str, *, create: bool = True) -> Any:
        if self._closed:
            raise StoreError("the store is closed")
        if name in self._collections:
            return self._collections[name]
        from chromadb.errors import NotFoundError
        from chromadb.utils.embedding_functions import DefaultEmbeddingFunction

        # The default embedding function is recorded in the collection's configuration, so a bot with plain
        # chromadb can query_texts against our vectors (same model, identical vectors).
        try:
            if create:
                collection = self._client.get_or_create_collection(
                    name,
                    embedding_function=DefaultEmbeddingFunction(),
                    configuration={"hnsw": {"space": "cosine"}},
                    metadata={_MODEL_KEY: MODEL_NAME},
                )
            else:
                collection = self._client.get_collection(name, embedding_function=DefaultEmbeddingFunction())
        except NotFoundError:
            return None
        except ValueError as exc:
            if "conflict" in str(exc).lower():
                raise ModelMismatch(
                    f"collection {name!r} was created with another embedding function ({exc}); kbsync writes "
                    f"{MODEL_NAME} vectors. Delete the collection or point kbsync at another Chroma database"
                ) from exc
            raise StoreError(f"cannot open collection {name!r}: {exc}") from exc
        except Exception as exc:
            raise StoreError(f"cannot open collection {name!r}: {exc}") from exc
        model = (collection.metadata or {}).get(_MODEL_KEY, MODEL_NAME)
        if model != MODEL_NAME:
            raise ModelMismatch(f"collection {name!r} holds {model} vectors, kbsync embeds with {MODEL_NAME}")
        self._collections[name] = collection
        return collection

    def collections(self) -> list[str]:
        """Names of every collection in the store (kbsync's and any other)."""
        with self._errors("list collections", "*"):
            return sorted(c.name for c in self._client.list_collections())

    def index(self, name: str, *, doc_ids: Collection[str] | None = None) -> ProjectIndex:
        """Read back what a collection holds: every document, or only the chunks of `doc_ids`."""
        index = ProjectIndex()
        collection = self._collection(name, create=False)
        if collection is None:
            return index
        if doc_ids is None:
            self._read_into(index, collection, name, None)
            return index
        wanted = sorted(doc_ids)
        for start in range(0, len(wanted), 100):
            self._read_into(index, collection, name, {"doc_id": {"$in": wanted[start : start + 100]}})
        return index

    def _read_into(self, index: ProjectIndex, collection: Any, name: str, where: dict[str, Any] | None) -> None:
        with self._errors("read the index", name):
            offset = 0
            while True:
                page = collection.get(where=where, include=["metadatas"], limit=_READ_PAGE, offset=offset)
                for chunk_id, metadata in zip(page["ids"], page["metadatas"] or []):
                    index.add(chunk_id, metadata or {})
                count = len(page["ids"])
                del page  # before trimming: what Chroma returned is freed only with it
                release_free_memory()
                if count < _READ_PAGE:
                    return
                offset += _READ_PAGE

    def write(self, name: str, records: Sequence[ChunkRecord]) -> None:
        """Upsert new chunks (with embeddings) and refresh the metadata of kept ones, at most 300 per call.

        Every metadata key is always sent: Chroma's upsert merges metadata, so an omitted key would survive.
        Raises StoreError on any failure; the caller deletes stale chunks only after this returned.
        """
        for record in records:
            check_storable(record.id, record.text)
        collection = self._collection(name)
        new = [r for r in records if r.embedding is not None]
        kept = [r for r in records if r.embedding is None]
        with self._errors("write chunks", name):
            for start in range(0, len(new), MAX_RECORDS_PER_WRITE):
                batch = new[start : start + MAX_RECORDS_PER_WRITE]
                collection.upsert(
                    ids=[r.id for r in batch],
                    embeddings=np.stack([r.embedding for r in batch]),  # type: ignore[misc]
                    documents=[r.text for r in batch],
                    metadatas=[dict(r.metadata) for r in batch],
                )
            for start in range(0, len(kept), MAX_RECORDS_PER_WRITE):
                batch = kept[start : start + MAX_RECORDS_PER_WRITE]
                collection.update(ids=[r.id for r in batch], metadatas=[dict(r.metadata) for r in batch])

    def delete(self, name: str, ids: Sequence[str]) -> None:
        """Delete chunks by id, at most 300 per call."""
        if not ids:
            return
        collection = self._collection(name)
        ids = list(ids)
        with self._errors("delete chunks", name):
            for start in range(0, len(ids), MAX_RECORDS_PER_WRITE):
                collection.delete(ids=ids[start : start + MAX_RECORDS_PER_WRITE])

    def export(self, name: str, *, page: int = MAX_RECORDS_PER_WRITE) -> Iterator[dict[str, Any]]:
        """Every record of a collection with its vector, in pages (for `kbsync copy-store`)."""
        collection = self._collection(name, create=False)
        if collection is None:
            return
        offset = 0
        while True:
            with self._errors("read records", name):
                batch = collection.get(include=["embeddings", "documents", "metadatas"], limit=page, offset=offset)
            if not batch["ids"]:
                return
            yield batch
            if len(batch["ids"]) < page:
                return
            offset += page

    def import_records(self, name: str, batch: Mapping[str, Any]) -> None:
        """Upsert records exactly as exported: ids, vectors, documents and metadata unchanged."""
        collection = self._collection(name)
        with self._errors("write records", name):
            collection.upsert(
                ids=list(batch["ids"]),
                embeddings=np.asarray(batch["embeddings"], dtype=np.float32),
                documents=list(batch["documents"]),
                metadatas=[dict(m) for m in batch["metadatas"]],
            )

    def ids(self, name: str) -> set[str]:
        """Every chunk id of a collection."""
        collection = self._collection(name, create=False)
        if collection is None:
            return set()
        out: set[str] = set()
        offset = 0
        with self._errors("list ids", name):
            while True:
                page = collection.get(include=[], limit=_READ_PAGE, offset=offset)
                out.update(page["ids"])
                if len(page["ids"]) < _READ_PAGE:
                    return out
                offset += _READ_PAGE

    def count(self, name: str) -> int:
        collection = self._collection(name, create=False)
        if collection is None:
            return 0
        with self._errors("count chunks", name):
            return int(collection.count())

    def query(
        self, name: str, embedding: np.ndarray, *, k: int, where: Mapping[str, Any] | None = None
    ) -> list[QueryHit]:
        """Nearest chunks by cosine distance; `score` = 1 - distance."""
        collection = self._collection(name, create=False)
        if collection is None:
            return []
        with self._errors("query", name):
            result = collection.query(
                query_embeddings=[embedding],
                n_results=k,
                where=dict(where) if where else None,
                include=["documents", "metadatas", "distances"],
            )
        return [
            QueryHit(id=chunk_id, score=1.0 - float(distance), text=text or "", metadata=dict(metadata or {}))
            for chunk_id, distance, text, metadata in zip(
                result["ids"][0], result["distances"][0], result["documents"][0], result["metadatas"][0]
            )
        ]

    def nearest(
        self, name: str, embedding: np.ndarray, *, k: int, where: Mapping[str, Any] | None = None
    ) -> list[tuple[str, float]]:
        """Ids and scores (1 - cosine distance) of the nearest chunks, best first, without their texts or
        metadata: reading those is most of a query's cost (100 candidates: ~1.4 ms bare, ~12 ms with metadata)."""
        collection = self._collection(name, create=False)
        if collection is None:
            return []
        with _chroma_errors("query", name):
            result = collection.query(
                query_embeddings=[embedding], n_results=k, where=dict(where) if where else None, include=["distances"]
            )
        return [
            (chunk_id, 1.0 - float(distance)) for chunk_id, distance in zip(result["ids"][0], result["distances"][0])
        ]

    def get(self, name: str, ids: Sequence[str]) -> list[QueryHit]:
        """Chunks by id (score 0), in no particular order; ids the collection lacks are left out."""
        collection = self._collection(name, create=False)
        if collection is None or not ids:
            return []
        with self._errors("read chunks", name):
            result = collection.get(ids=list(ids), include=["documents", "metadatas"])
        return _hits(result["ids"], result["documents"], result["metadatas"])

    def chunks_at(self, name: str, around: Mapping[str, Collection[int]]) -> list[QueryHit]:
        """The chunks of each document (doc_id -> chunk indexes) in one read; missing indexes are left out."""
        clauses: list[dict[str, Any]] = [
            {"$and": [{"doc_id": doc_id}, {"chunk_index": {"$in": sorted(indexes)}}]}
            for doc_id, indexes in around.items()
            if indexes
        ]
        collection = self._collection(name, create=False)
        if collection is None or not clauses:
            return []
        where = clauses[0] if len(clauses) == 1 else {"$or": clauses}
        with self._errors("read neighbouring chunks", name):
            result = collection.get(where=where, include=["documents", "metadatas"])
        return _hits(result["ids"], result["documents"], result["metadatas"])

    # -- reachability (kbsync/reachability.py decides; these are the Chroma calls) -------------------------

    def knn(self, name: str, embeddings: np.ndarray, *, k: int) -> list[list[tuple[str, float]]]:
        """Ids and distances of the `k` nearest records of each embedding, unfiltered (as a bot queries), 300 per
        call."""
        collection = self._collection(name, create=False)
        if collection is None:
            return [[] for _ in range(len(embeddings))]
        out: list[list[tuple[str, float]]] = []
        with self._errors("query", name):
            for start in range(0, len(embeddings), MAX_RECORDS_PER_WRITE):
                batch = embeddings[start : start + MAX_RECORDS_PER_WRITE]
                result = collection.query(query_embeddings=batch, n_results=k, include=["distances"])
                for ids, distances in zip(result["ids"], result["distances"]):
                    out.append(list(zip(ids, map(float, distances))))
        return out

    def records(self, name: str, ids: Sequence[str]) -> dict[str, list[Any]]:
        """`ids`' records exactly as stored: ids, embeddings, documents and metadatas (300 per read)."""
        out: dict[str, list[Any]] = {"ids": [], "embeddings": [], "documents": [], "metadatas": []}
        collection = self._collection(name, create=False)
        if collection is None:
            return out
        with self._errors("read records", name):
            for start in range(0, len(ids), MAX_RECORDS_PER_WRITE):
                page = collection.get(
                    ids=list(ids[start : start + MAX_RECORDS_PER_WRITE]),
                    include=["embeddings", "documents", "metadatas"],
                )
                out["ids"].extend(page["ids"])
                out["embeddings"].extend(np.asarray(e, dtype=np.float32) for e in page["embeddings"])
                out["documents"].extend(page["documents"])
                out["metadatas"].extend(page["metadatas"])
        return out

    def rewrite(self, name: str, batch: Mapping[str, Sequence[Any]]) -> None:
        """Delete records and add them again unchanged (same id, vector, document, metadata): Chroma indexes them
        anew. Records are absent between the two calls; the caller holds the project's lease."""
        collection = self._collection(name)
        with self._errors("rewrite records", name):
            for start in range(0, len(batch["ids"]), MAX_RECORDS_PER_WRITE):
                end = start + MAX_RECORDS_PER_WRITE
                ids = list(batch["ids"][start:end])
                collection.delete(ids=ids)
                collection.add(
                    ids=ids,
                    embeddings=np.asarray(batch["embeddings"][start:end], dtype=np.float32),
                    documents=list(batch["documents"][start:end]),
                    metadatas=[dict(m) for m in batch["metadatas"][start:end]],
                )

    def clone(self, name: str, to: str, *, first: Sequence[str] = (), denser: bool = False) -> int:
        """Create collection `to` with `name`'s configuration and metadata and copy every record into it,
        vectors included (no re-embedding), the records of `first` before the others. `denser`: the HNSW graph
        gets at least 32 links per node (`max_neighbors`, Chroma's default 16) and a build effort
        (`ef_construction`) of at least 200 (default 100); space and search settings stay. Returns the records
        copied; `to` must not exist."""
        source = self._collection(name, create=False)
        if source is None:
            raise StoreError(f"collection {name!r} does not exist")
        from chromadb.utils.embedding_functions import DefaultEmbeddingFunction

        configuration = dict(source.configuration or {})
        if denser:
            hnsw = dict(configuration.get("hnsw") or {})
            hnsw["max_neighbors"] = max(32, int(hnsw.get("max_neighbors") or 16))
            hnsw["ef_construction"] = max(200, int(hnsw.get("ef_construction") or 100))
            configuration["hnsw"] = hnsw
        with self._errors("create a collection", to):
            target = self._client.create_collection(
                to,
                configuration=configuration,
                metadata=dict(source.metadata or {}),
                embedding_function=DefaultEmbeddingFunction(),
            )
        copied = 0
        early = set(first)
        for batch in [self.records(name, list(first))] if first else []:
            copied += self._copy_into(target, to, batch, skip=set())
        for batch in self.export(name):
            copied += self._copy_into(target, to, batch, skip=early)
            del batch
            release_free_memory()
        return copied

    def _copy_into(self, target: Any, name: str, batch: Mapping[str, Any], *, skip: set[str]) -> int:
        keep = [i for i, chunk_id in enumerate(batch["ids"]) if chunk_id not in skip]
        if not keep:
            return 0
        with self._errors("copy records", name):
            for start in range(0, len(keep), MAX_RECORDS_PER_WRITE):
                rows = keep[start : start + MAX_RECORDS_PER_WRITE]
                target.add(
                    ids=[batch["ids"][i] for i in rows],
                    embeddings=np.asarray([batch["embeddings"][i] for i in rows], dtype=np.float32),
                    documents=[batch["documents"][i] for i in rows],
                    metadatas=[dict(batch["metadatas"][i]) for i in rows],
                )
        return len(keep)

    def swap(self, name: str, replacement: str) -> None:
        """Put collection `replacement` in place of `name` under `name`, then drop the old one. Two renames
        (Chroma's `modify(name=...)`): `name` is missing for the moment between them. If the second fails,
        the old collection gets its name back."""
        old = self._collection(name, create=False)
        new = self._collection(replacement, create=False)
        if old is None or new is None:
            raise StoreError(f"cannot swap {replacement!r} in for {name!r}: one of them does not exist")
        retired = f"{name}.retired-{int(time.time())}"
        with self._errors("rename the collection away", name):
            old.modify(name=retired)
        try:
            with self._errors("rename the rebuilt collection in", replacement):
                new.modify(name=name)
        except StoreError:
            with self._errors("rename the old collection back", name):
                old.modify(name=name)
            raise
        self._collections.pop(replacement, None)
        self._collections[name] = new
        with self._errors("drop the retired collection", retired):
            self._client.delete_collection(retired)

    def drop(self, name: str) -> None:
        """Delete a collection (a failed rebuild's copy); nothing when it does not exist."""
        from chromadb.errors import NotFoundError

        self._collections.pop(name, None)
        try:
            with self._errors("delete the collection", name):
                self._client.delete_collection(name)
        except StoreError as exc:
            if not isinstance(exc.__cause__, NotFoundError):
                raise


def _hits(ids: Sequence[str], documents: Sequence[Any] | None, metadatas: Sequence[Any] | None) -> list[QueryHit]:
    documents = documents or [None] * len(ids)
    metadatas = metadatas or [None] * len(ids)
    return [
        QueryHit(id=chunk_id, score=0.0, text=text or "", metadata=dict(metadata or {}))
        for chunk_id, text, metadata in zip(ids, documents, metadatas)
    ]


def download_default_model() -> None:
    """Let Chroma fetch its default model into its cache (`~/.cache/chroma/onnx_models/...`), as it does itself
    on first use. Needs the internet; raises EmbeddingError with what to do when offline."""
    from kbsync.errors import EmbeddingError

    try:
        from chromadb.utils.embedding_functions.onnx_mini_lm_l6_v2 import ONNXMiniLM_L6_V2

        ONNXMiniLM_L6_V2(preferred_providers=["CPUExecutionProvider"])._download_model_if_not_exists()
    except Exception as exc:  # network errors of every kind
        raise EmbeddingError(
            f"Chroma could not download its default model ({exc}). Offline: copy the six files of "
            f"all-MiniLM-L6-v2/onnx into ~/.cache/chroma/onnx_models/all-MiniLM-L6-v2/onnx, or set "
            f"embedding.model_dir (KBSYNC_EMBEDDING__MODEL_DIR) to a folder holding them"
        ) from exc
