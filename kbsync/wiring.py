"""The composition root: the one module that turns settings into opened parts (state, stores, model, sources).

The CLI, the daemon, `kbsync check` and the tests ask this module for what they need; no other module opens a
store or the state database from settings, builds sources, or knows which lock files mark a busy store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kbsync.chunking import Chunker
from kbsync.embedding import Embedder, TokenCounter, default_model_dir, missing_model_files
from kbsync.engine import Engine
from kbsync.errors import KbsyncError
from kbsync.lexical import LexicalIndex
from kbsync.locking import lock_holder
from kbsync.runs import ProjectKey
from kbsync.settings import (
    ChatwootSourceSettings,
    ConfluenceSourceSettings,
    FilesSourceSettings,
    NotionSourceSettings,
    Settings,
    TenantSettings,
)
from kbsync.sources import Source
from kbsync.state import STATE_LOCK, PageCacheTable, State
from kbsync.store import STORE_LOCK, ChromaTarget, Store

if TYPE_CHECKING:
    from kbsync.sources._http import HttpOptions
    from kbsync.sources.chatwoot import ChatwootClient
    from kbsync.sources.web import PageValidators

__all__ = [
    "StatusParts",
    "build_sources",
    "local_owner",
    "open_copy_stores",
    "open_engine",
    "open_for_status",
    "open_state",
    "open_stores",
    "resolve_model_dir",
    "store_targets",
]


def open_state(settings: Settings) -> State:
    """The state database of `settings` (PostgreSQL when `state.url` is set, else SQLite under `state_dir`)."""
    return State.open(settings)


def resolve_model_dir(settings: Settings) -> Path:
    """`embedding.model_dir`, else Chroma's cache, downloaded by Chroma when missing (needs the internet)."""
    if settings.embedding.model_dir is not None:
        return settings.embedding.model_dir
    model_dir = default_model_dir()
    if missing_model_files(model_dir):
        from kbsync.store import download_default_model

        download_default_model()
    return model_dir


def store_targets(settings: Settings) -> dict[ChromaTarget, list[str]]:
    """Each distinct Chroma store of `settings` with the tenants using it; the [chroma] store comes first.

    Tenants that share one server (same host, port, ssl, database, token) share one target."""
    targets: dict[ChromaTarget, list[str]] = {ChromaTarget.of(settings, None): []}
    for tenant in settings.tenants:
        targets.setdefault(ChromaTarget.of(settings, tenant), []).append(tenant.id)
    return targets


def open_stores(settings: Settings, stack: ExitStack) -> tuple[Store, dict[str, Store]]:
    """The [chroma] store, and the stores of tenants with a [tenants.chroma] server; closed by `stack`.

    Tenants that share one server share one client."""
    opened: dict[ChromaTarget, Store] = {}

    def open_target(target: ChromaTarget) -> Store:
        if target not in opened:
            opened[target] = stack.enter_context(Store.open(target, state_dir=settings.state_dir))
        return opened[target]

    default = open_target(ChromaTarget.of(settings, None))
    tenant_stores = {
        tenant.id: open_target(ChromaTarget.of(settings, tenant)) for tenant in settings.tenants if tenant.chroma
    }
    return default, tenant_stores


class _StatePageCache:
    """The web source's PageCache over the state database's `web_pages` table, which stores plain JSON."""

    def __init__(self, table: PageCacheTable) -> None:
        self._table = table

    def get(self, url: str) -> PageValidators | None:
        from kbsync.sources.web import PageValidators

        data = self._table.get(url)
        return PageValidators.from_json(data) if data is not None else None

    def put(self, url: str, validators: PageValidators) -> None:
        self._table.put(url, validators.doc_id, validators.to_json())

    def delete(self, url: str) -> None:
        self._table.delete(url)

    def url_for(self, doc_id: str) -> str | None:
        return self._table.url_for(doc_id)


def build_sources(
    settings: Settings,
    stack: ExitStack,
    state: State,
    *,
    chatwoot_options: HttpOptions | None = None,
    api_options: HttpOptions | None = None,
) -> dict[ProjectKey, list[Source]]:
    """The configured sources of every project; one pooled Chatwoot client per tenant and one pooled client per
    Confluence or Notion source, closed by `stack`.

    `chatwoot_options` and `api_options` (Confluence, Notion) tune timeouts and retries; tests shrink them."""
    sources: dict[ProjectKey, list[Source]] = {}
    for tenant in settings.tenants:
        clients: list[ChatwootClient] = []  # at most one, opened with the tenant's first Chatwoot source
        for project in tenant.projects:
            built: list[Source] = []
            for source in project.sources:
                if isinstance(source, FilesSourceSettings):
                    from kbsync.sources.files import FilesSource

                    built.append(FilesSource(source))
                elif isinstance(source, ChatwootSourceSettings):
                    from kbsync.sources.chatwoot import ChatwootSource

                    if not clients:
                        clients.append(_chatwoot_client(tenant, stack, chatwoot_options))
                    built.append(ChatwootSource(tenant, source, clients[0]))
                elif isinstance(source, ConfluenceSourceSettings | NotionSourceSettings):
                    from kbsync.sources.apis import open_api_source

                    built.append(open_api_source(source, stack, options=api_options))
                else:
                    from kbsync.sources.web import WebSource

                    cache = _StatePageCache(PageCacheTable(state, tenant.id, project.id, source.source_id))
                    built.append(WebSource(source, cache=cache))
            sources[ProjectKey(tenant.id, project.id)] = built
    return sources


def _chatwoot_client(tenant: TenantSettings, stack: ExitStack, options: HttpOptions | None) -> ChatwootClient:
    from kbsync.sources.chatwoot import ChatwootClient

    return stack.enter_context(ChatwootClient(tenant, options))


@contextmanager
def open_engine(
    settings: Settings,
    *,
    chatwoot_options: HttpOptions | None = None,
    api_options: HttpOptions | None = None,
) -> Iterator[Engine]:
    """Open state, stores, model and source clients in order; close them in reverse (also on error)."""
    with ExitStack() as stack:
        state = open_state(settings)
        stack.callback(state.close)
        store, tenant_stores = open_stores(settings, stack)
        model_dir = resolve_model_dir(settings)
        embedder = Embedder(model_dir, batch_size=settings.embedding.batch_size)
        chunker = Chunker(TokenCounter(model_dir), settings.chunking.max_tokens, settings.chunking.overlap)
        sources = build_sources(settings, stack, state, chatwoot_options=chatwoot_options, api_options=api_options)
        yield Engine(
            settings,
            store=store,
            tenant_stores=tenant_stores,
            embedder=embedder,
            chunker=chunker,
            state=state,
            sources=sources,
            lexical=LexicalIndex(state),
        )


@dataclass(frozen=True, slots=True)
class StatusParts:
    """What `kbsync status` reads without a daemon: the state, the stores when they opened, else why not."""

    state: State
    store_for: Callable[[str], Store] | None
    store_note: str = "ok"


@contextmanager
def open_for_status(settings: Settings) -> Iterator[StatusParts]:
    """The state database (its errors raise) and the stores (their errors become `store_note`), closed after."""
    with ExitStack() as stack:
        state = open_state(settings)
        stack.callback(state.close)
        try:
            default, tenant_stores = open_stores(settings, stack)
        except KbsyncError as exc:
            yield StatusParts(state, None, str(exc))
            return
        yield StatusParts(state, lambda tenant: tenant_stores.get(tenant, default))


def local_owner(settings: Settings) -> str | None:
    """The pid of another process holding what `settings` lets one process open at a time (the embedded store,
    SQLite state), or None; checked without opening either. With a Chroma server and PostgreSQL state any number
    of processes may work: project leases serialize them."""
    if settings.chroma.mode == "embedded":
        holder = lock_holder(settings.state_dir / STORE_LOCK)
        if holder is not None:
            return holder
    return None if settings.state.url else lock_holder(settings.state_dir / STATE_LOCK)


@contextmanager
def open_copy_stores(
    settings: Settings, *, host: str | None = None, port: int | None = None
) -> Iterator[tuple[Store, Store, ChromaTarget]]:
    """For `copy-store --to-http`: the embedded store under `state_dir`, and a client of the [chroma] server
    (or of `host`/`port` given instead), with that server's target; both closed after."""
    target = ChromaTarget(
        "http",
        host or settings.chroma.host,
        port or settings.chroma.port,
        settings.chroma.ssl,
        settings.chroma.database,
        settings.chroma_token,
    )
    with Store.open_embedded(settings.state_dir) as source, Store.open_http(target) as destination:
        yield source, destination, target
