"""`kind = "notion"`: every page under a root page (child pages and rows of child databases, recursively), or
every row of a root database, as markdown Documents (Notion API, `Notion-Version` pinned).

- Listing: a walk from the root. A page's blocks come from `GET /v1/blocks/{id}/children` (100 a page,
  `has_more`/`next_cursor`), nested blocks fetched where `has_children`; `child_page` blocks lead to pages,
  `child_database` blocks to `POST /v1/databases/{id}/query`. Archived and in-trash pages are not indexed.
- Change gate: `last_edited_time`. A page whose stamp the index already holds (read by this process more than
  a minute after that stamp: Notion rounds it to the minute) costs one request (the page object, which every
  walk needs) and no body: its child pages are the ones remembered from the read (adding or removing a child
  page edits the parent). Child databases are always queried (a row edit does not edit the parent page).
- Poll: `POST /v1/search` sorted by `last_edited_time` descending, read until a page older than the watermark
  (minus a window for the minute rounding and the search index's lag): one request when nothing changed.
  Changed pages are kept when their parents lead to the root. Trashing leaves no trace in a poll (search no
  longer returns the page): reconciles find it (there is no count to compare).
- Pacing: Notion allows about 3 requests a second per integration (`requests_per_second`); 429 `Retry-After`
  is honoured by the HTTP layer.
"""

from __future__ import annotations

import builtins
import time
from collections import deque
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from kbsync.errors import IncompleteListing, SourceRejected, SourceUnavailable
from kbsync.settings import NotionSourceSettings
from kbsync.sources import Changes, Document, Listing, make_doc_id
from kbsync.sources._http import HttpClient, HttpOptions, RejectedStatus
from kbsync.sources._json import json_object
from kbsync.sources._poll import GatedSource, Versions, iso_to_epoch
from kbsync.sources.notion_blocks import blocks_to_markdown, plain_text

__all__ = ["NOTION_VERSION", "NotionSource", "RootInfo", "open_client"]

log = structlog.get_logger(__name__)

NOTION_VERSION = "2022-06-28"  # pinned: block and page shapes differ between versions
PAGE_SIZE = 100
_POLL_WINDOW = 600  # seconds before the watermark a poll looks again: minute stamps, search index lag
_SETTLE = 60.0  # last_edited_time is rounded down to the minute
_MAX_DEPTH = 64  # parent hops before an ancestry is called unknown
_CHILD_KINDS = ("child_page", "child_database")


def open_client(
    settings: NotionSourceSettings, options: HttpOptions | None = None, *, transport: httpx.BaseTransport | None = None
) -> HttpClient:
    """The source's pooled, paced client with the integration token and the pinned Notion-Version."""
    token = settings.token.get_secret_value() if settings.token else ""
    return HttpClient(
        settings.base_url,
        source=settings.source_id,
        headers={"authorization": f"Bearer {token}", "notion-version": NOTION_VERSION},
        secrets=[token],
        options=options or HttpOptions(requests_per_second=settings.requests_per_second),
        hints={
            401: f"the integration token was refused: check {settings.token_env} (an internal integration secret)",
            403: "the integration lacks the 'Read content' capability: enable it in the integration's settings",
            404: "not found, or not shared with the integration: in Notion open the page, ••• > Connections, and "
            "add the integration",
        },
        transport=transport,
        log_event="notion.retry",
    )


@dataclass(frozen=True, slots=True)
class RootInfo:
    kind: str  # "page" or "database"
    id: str
    title: str


@dataclass(slots=True)
class _Walk:
    documents: list[Document]
    unchanged: set[str]
    seen: set[str]


class NotionSource(GatedSource):
    """Pages under one Notion root (`Source` protocol, plus `changes_since`, `applied`, `applied_changes`)."""

    kind = "notion"

    def __init__(self, settings: NotionSourceSettings, client: HttpClient) -> None:
        self.settings = settings
        self.client = client
        self.source_id = settings.source_id
        self._versions = Versions(settle_seconds=_SETTLE)
        self._children: dict[str, list[tuple[str, str]]] = {}  # page id -> child pages and databases, as read
        self._tree: set[str] = set()  # page and database ids the last walk reached (ancestry shortcut)
        self._root: RootInfo | None = None

    # -- Source protocol ------------------------------------------------------------------------------

    def list(self, *, rebuild: bool = False) -> Listing:
        """Every live page under the root. A request that fails after retries raises IncompleteListing."""
        root = self.root()
        walk = _Walk(documents=[], unchanged=set(), seen=set())
        queue: deque[dict[str, Any]] = deque()
        try:
            if root.kind == "database":
                walk.seen.add(root.id)
                queue.extend(self._query_database(root.id))
            else:
                queue.append(self._get_page(root.id))
            while queue:
                page = queue.popleft()
                for kind, child_id in self._visit(page, walk, rebuild=rebuild):
                    if child_id in walk.seen:
                        continue
                    if kind == "child_database":
                        walk.seen.add(child_id)
                        queue.extend(self._query_database(child_id, skip_unreadable=True))
                    else:
                        child = self._find_page(child_id)
                        if child is not None:
                            queue.append(child)
        except SourceUnavailable as exc:
            raise IncompleteListing(
                f"walk stopped after {len(walk.seen)} pages, nothing may be deleted: {exc}",
                source=self.source_id,
                url=exc.url,
            ) from exc
        self._tree = walk.seen
        newest = max((d.updated_at for d in walk.documents), default=0)
        return Listing(documents=walk.documents, complete=True, unchanged=walk.unchanged, watermark=newest, total=0)

    def confirm_gone(self, doc_ids: Collection[str]) -> set[str]:
        """Each candidate read on its own: gone when 404, archived, in the trash, or no longer under the root."""
        return self._confirm_each(doc_ids, self._page_gone)

    def _page_gone(self, page_id: str) -> bool:
        page = self._find_page(page_id)
        return page is None or _dead(page) or self._under_root(page.get("parent")) is False

    # -- poll -----------------------------------------------------------------------------------------

    def changes_since(self, watermark: int) -> Changes:
        """Pages edited since about `watermark`, newest first from search; bodies only of changed pages under
        the root. Raises IncompleteListing when a request fails after retries."""
        before = self.client.requests
        cutoff = watermark - _POLL_WINDOW
        published: list[Document] = []
        gone: set[str] = set()
        newest = watermark
        walk = _Walk(documents=published, unchanged=set(), seen=set())
        try:
            for page in self._search_since(cutoff):
                edited = _edited(page)
                newest = max(newest, edited)
                doc_id = self.doc_id(page["id"])
                if _dead(page):
                    gone.add(doc_id)
                    continue
                if self._versions.unchanged(doc_id, page["last_edited_time"], edited):
                    continue
                if not self._under_root(page.get("parent")):
                    continue
                self._visit(page, walk, rebuild=False)
        except SourceUnavailable as exc:
            raise IncompleteListing(f"poll stopped: {exc}", source=self.source_id, url=exc.url) from exc
        return Changes(
            published=published,
            gone=gone,
            newest=newest,
            all_articles_count=0,
            requests=self.client.requests - before,
            complete=True,
        )

    # -- reads ----------------------------------------------------------------------------------------

    def root(self) -> RootInfo:
        """The root as a page, else as a database (cached). 404 names sharing with the integration."""
        if self._root is not None:
            return self._root
        try:
            page = self._get_page(self.settings.root)
            assert page is not None
            self._root = RootInfo("page", _dashless(page["id"]), _title(page))
        except RejectedStatus as exc:
            if exc.status not in (400, 404):
                raise
            database = self.client.get_json(f"/v1/databases/{self.settings.root}")
            if not isinstance(database, dict) or database.get("object") != "database":
                raise SourceRejected(
                    "unexpected response: not a database object",
                    source=self.source_id,
                    url=self.client.url(f"/v1/databases/{self.settings.root}"),
                ) from None
            self._root = RootInfo("database", _dashless(str(database["id"])), plain_text(database.get("title")))
        return self._root

    def top_level_children(self) -> int:
        """How many child pages and databases the root holds at its top level, or rows on a database's first
        page of results (for `kbsync check`)."""
        root = self.root()
        if root.kind == "database":
            path = f"/v1/databases/{root.id}/query"
            body = self.client.request_json("POST", path, json_body={"page_size": PAGE_SIZE})
            return len(body.get("results") or []) if isinstance(body, dict) else 0
        return sum(1 for b in self._block_list(root.id) if b.get("type") in _CHILD_KINDS)

    def doc_id(self, page_id: str) -> str:
        return make_doc_id(self.kind, _dashless(page_id))

    def _visit(self, page: dict[str, Any], walk: _Walk, *, rebuild: bool) -> builtins.list[tuple[str, str]]:
        """Add one page to `walk` (a Document, or unchanged) and return its child pages and databases."""
        page_id = _dashless(page["id"])
        walk.seen.add(page_id)
        if _dead(page):
            return []
        doc_id = self.doc_id(page_id)
        known = self._children.get(page_id)
        same = self._versions.unchanged(doc_id, page["last_edited_time"], _edited(page))
        if not rebuild and known is not None and same:
            walk.unchanged.add(doc_id)
            return known
        read_at = time.time()
        blocks = self._block_tree(page_id)
        children = [(kind, cid) for kind, cid in _child_refs(blocks)]
        self._children[page_id] = children
        walk.documents.append(
            Document(
                doc_id=doc_id,
                source=self.source_id,
                kind=self.kind,
                title=_title(page),
                text=blocks_to_markdown(blocks),
                url=str(page.get("url") or f"https://www.notion.so/{page_id}"),
                locale=self.settings.locale,
                updated_at=_edited(page),
            )
        )
        self._versions.read(doc_id, page["last_edited_time"], read_at)
        return children

    def _get_page(self, page_id: str) -> dict[str, Any]:
        path = f"/v1/pages/{page_id}"
        page = self.client.get_json(path)
        _check_page(page, self.client.url(path), self.source_id)
        return page

    def _find_page(self, page_id: str) -> dict[str, Any] | None:
        """The page, or None when the API answers 404 (deleted, or no longer shared with the integration)."""
        try:
            return self._get_page(page_id)
        except RejectedStatus as exc:
            if exc.status == 404:
                return None
            raise

    def _query_database(self, database_id: str, *, skip_unreadable: bool = False) -> Iterator[dict[str, Any]]:
        """The rows of a database. `skip_unreadable`: a child database the API will not query (404: not shared;
        400: a linked database, which the API cannot read) holds no rows for this walk."""
        path = f"/v1/databases/{database_id}/query"
        body: dict[str, Any] = {"page_size": PAGE_SIZE}
        while True:
            try:
                result = self.client.request_json("POST", path, json_body=body)
            except RejectedStatus as exc:
                if skip_unreadable and exc.status in (400, 404):
                    log.warning("notion.database_skipped", source=self.source_id, database=database_id, error=str(exc))
                    return
                raise
            for page in _results(result, self.client.url(path), self.source_id):
                _check_page(page, self.client.url(path), self.source_id)
                yield page
            if not result.get("has_more") or not result.get("next_cursor"):
                return
            body = {"page_size": PAGE_SIZE, "start_cursor": result["next_cursor"]}

    def _block_list(self, block_id: str) -> Iterator[dict[str, Any]]:
        path = f"/v1/blocks/{block_id}/children"
        params: dict[str, str] = {"page_size": str(PAGE_SIZE)}
        while True:
            result = self.client.get_json(path, params)
            for block in _results(result, self.client.url(path, params), self.source_id):
                if not isinstance(block.get("type"), str) or not isinstance(block.get("id"), str):
                    raise SourceRejected(
                        "unexpected block: no string `id` and `type`",
                        source=self.source_id,
                        url=self.client.url(path, params),
                    )
                yield block
            if not result.get("has_more") or not result.get("next_cursor"):
                return
            params = {"page_size": str(PAGE_SIZE), "start_cursor": str(result["next_cursor"])}

    def _block_tree(self, block_id: str, depth: int = 0) -> builtins.list[dict[str, Any]]:
        """A page's blocks with their children under `"children"` (child pages and databases not entered)."""
        blocks = []
        for block in self._block_list(block_id):
            if block.get("archived") or block.get("in_trash"):
                continue
            if block.get("has_children") and block["type"] not in _CHILD_KINDS and depth < _MAX_DEPTH:
                block = {**block, "children": self._block_tree(block["id"], depth + 1)}
            blocks.append(block)
        return blocks

    def _search_since(self, cutoff: int) -> Iterator[dict[str, Any]]:
        """Pages shared with the integration, last edited first, down to `cutoff`."""
        body: dict[str, Any] = {
            "filter": {"property": "object", "value": "page"},
            "sort": {"direction": "descending", "timestamp": "last_edited_time"},
            "page_size": PAGE_SIZE,
        }
        while True:
            result = self.client.request_json("POST", "/v1/search", json_body=body)
            older = False
            for page in _results(result, self.client.url("/v1/search"), self.source_id):
                if page.get("object") != "page":
                    continue
                _check_page(page, self.client.url("/v1/search"), self.source_id)
                if _edited(page) < cutoff:
                    older = True
                    break
                yield page
            if older or not result.get("has_more") or not result.get("next_cursor"):
                return
            body = {**body, "start_cursor": result["next_cursor"]}

    def _under_root(self, parent: Any) -> bool | None:
        """Whether a parent chain leads to the root: True, False (workspace, or through a dead page), or None
        when an ancestor could not be read."""
        root = self.root().id
        for _ in range(_MAX_DEPTH):
            if not isinstance(parent, dict):
                return None
            kind = parent.get("type")
            if kind == "workspace":
                return False
            ref = _dashless(str(parent.get(kind) or ""))
            if ref == root or ref in self._tree:
                return True
            try:
                if kind == "page_id":
                    node = self._find_page(ref)
                elif kind == "database_id":
                    node = self.client.get_json(f"/v1/databases/{ref}")
                elif kind == "block_id":
                    node = self.client.get_json(f"/v1/blocks/{ref}")
                else:
                    return None
            except RejectedStatus as exc:
                if exc.status == 404:
                    return False
                raise
            if node is None or not isinstance(node, dict) or _dead(node):
                return False
            parent = node.get("parent")
        return None


def _results(body: Any, url: str, source: str) -> list[dict[str, Any]]:
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise SourceRejected("unexpected response: no `results` list of objects", source=source, url=url)
    return results


def _check_page(page: Any, url: str, source: str) -> None:
    if not isinstance(page, dict) or not isinstance(page.get("id"), str):
        raise SourceRejected("unexpected page object: no string `id`", source=source, url=url)
    try:
        _edited(page)
    except (KeyError, TypeError, ValueError):
        problem = f"unexpected page {page['id']}: no ISO `last_edited_time`"
        raise SourceRejected(problem, source=source, url=url) from None


def _child_refs(blocks: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    for block in blocks:
        if block["type"] in _CHILD_KINDS:
            yield block["type"], _dashless(block["id"])
        yield from _child_refs(block.get("children") or [])


def _dead(node: dict[str, Any]) -> bool:
    return bool(node.get("archived") or node.get("in_trash"))


def _edited(page: dict[str, Any]) -> int:
    return iso_to_epoch(str(page["last_edited_time"]))


def _dashless(value: str) -> str:
    return value.replace("-", "").lower()


def _title(page: dict[str, Any]) -> str:
    """The page's title property (database rows name theirs freely), else "Untitled"."""
    properties = json_object(page, "properties")
    for prop in properties.values():
        if isinstance(prop, dict) and prop.get("type") == "title":
            return plain_text(prop.get("title")).strip() or "Untitled"
    return "Untitled"
