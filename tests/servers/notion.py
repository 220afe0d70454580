"""Notion API-compatible server for tests and benchmarks (the parts kbsync reads, Notion-Version 2022-06-28).

* ``GET /v1/pages/{id}``, ``GET /v1/databases/{id}``, ``GET /v1/blocks/{id}``
* ``GET /v1/blocks/{id}/children``             ``page_size`` (<= 100), ``start_cursor``, ``has_more``/``next_cursor``
* ``POST /v1/databases/{id}/query``           rows (archived rows left out), cursor paging
* ``POST /v1/search``                         pages shared with the integration, sorted by ``last_edited_time``
Ids are dashed UUID strings, times ISO-8601 rounded down to the minute (as Notion does), text as rich_text
arrays, ``has_children`` on blocks. A missing ``Notion-Version`` is a 400, a bad token a 401, a page not shared
with the integration a 404 (``object_not_found``), like the real API. Content comes from the shared corpus
(markdown turned into blocks).

Pure test-support code: it must never import ``kbsync``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.servers._faults import Fault, FaultBook
from tests.servers.confluence import shorten
from tests.servers.threaded import ThreadedServer

__all__ = ["TOKEN", "FakeNotion", "Fault", "NotionServer", "blocks_from_markdown", "rich"]

TOKEN = "secret_notion_integration_token_abc"
NOTION_VERSION = "2022-06-28"
_MAX_PAGE = 100


def rich(
    text: str, *, bold: bool = False, italic: bool = False, code: bool = False, href: str | None = None
) -> dict[str, Any]:
    """One rich_text item, as the API renders it."""
    return {
        "type": "text",
        "text": {"content": text, "link": {"url": href} if href else None},
        "annotations": {
            "bold": bold,
            "italic": italic,
            "strikethrough": False,
            "underline": False,
            "code": code,
            "color": "default",
        },
        "plain_text": text,
        "href": href,
    }


def _inline(text: str) -> list[dict[str, Any]]:
    """Markdown inline marks (**bold**, `code`, [link](url)) as rich_text items."""
    parts: list[dict[str, Any]] = []
    pattern = re.compile(r"\*\*(.+?)\*\*|`([^`]+)`|\[([^\]]+)\]\(([^)]+)\)")
    position = 0
    for match in pattern.finditer(text):
        if match.start() > position:
            parts.append(rich(text[position : match.start()]))
        if match.group(1):
            parts.append(rich(match.group(1), bold=True))
        elif match.group(2):
            parts.append(rich(match.group(2), code=True))
        else:
            parts.append(rich(match.group(3), href=match.group(4)))
        position = match.end()
    if position < len(text):
        parts.append(rich(text[position:]))
    return parts


def blocks_from_markdown(markdown: str) -> list[dict[str, Any]]:
    """Block specs (`{"type", <type>: {...}, "children": [...]}`) for a markdown body: headings, paragraphs,
    bulleted/numbered items (one level of nesting), fenced code, quotes, dividers."""
    blocks: list[dict[str, Any]] = []
    lines = markdown.splitlines()
    index = 0
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            blocks.append(_spec("paragraph", " ".join(paragraph)))
            paragraph.clear()

    while index < len(lines):
        line = lines[index]
        stripped = line.strip()
        fence = re.match(r"^```(\w*)", stripped)
        heading = re.match(r"^(#{1,6})\s+(.*)", stripped)
        item = re.match(r"^(\s*)([-*+]|\d+[.)])\s+(.*)", line)
        if fence:
            flush()
            code: list[str] = []
            index += 1
            while index < len(lines) and not lines[index].strip().startswith("```"):
                code.append(lines[index])
                index += 1
            blocks.append(
                {
                    "type": "code",
                    "code": {
                        "rich_text": [rich("\n".join(code))],
                        "language": fence.group(1) or "plain text",
                        "caption": [],
                    },
                }
            )
        elif heading:
            flush()
            level = min(3, len(heading.group(1)))
            blocks.append(_spec(f"heading_{level}", heading.group(2), is_toggleable=False))
        elif item:
            flush()
            kind = "numbered_list_item" if item.group(2)[0].isdigit() else "bulleted_list_item"
            spec = _spec(kind, item.group(3))
            if item.group(1) and blocks and blocks[-1]["type"] in ("numbered_list_item", "bulleted_list_item"):
                blocks[-1].setdefault("children", []).append(spec)
            else:
                blocks.append(spec)
        elif stripped.startswith(">"):
            flush()
            blocks.append(_spec("quote", stripped.lstrip("> ")))
        elif stripped in ("---", "***"):
            flush()
            blocks.append({"type": "divider", "divider": {}})
        elif not stripped:
            flush()
        elif not stripped.startswith(("<", "![")):
            paragraph.append(stripped)
        index += 1
    flush()
    return blocks


def _spec(kind: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, kind: {"rich_text": _inline(text), "color": "default", **extra}}


def _iso(epoch: int) -> str:
    minute = epoch - epoch % 60  # Notion keeps minutes only
    return dt.datetime.fromtimestamp(minute, dt.UTC).strftime("%Y-%m-%dT%H:%M:00.000Z")


@dataclass
class Page:
    id: str
    parent: dict[str, Any]
    title: str
    edited: int
    archived: bool = False
    in_trash: bool = False
    shared: bool = True
    blocks: list[str] = field(default_factory=list)  # top-level block ids


@dataclass
class Database:
    id: str
    parent: dict[str, Any]
    title: str
    edited: int
    archived: bool = False


class FakeNotion:
    """A workspace of pages, databases and blocks, mutable from Python, with faults and a request log."""

    def __init__(self) -> None:
        self.pages: dict[str, Page] = {}
        self.databases: dict[str, Database] = {}
        self.blocks: dict[str, dict[str, Any]] = {}  # id -> block object without children
        self.children: dict[str, list[str]] = {}  # block or page id -> child block ids
        self.faults = FaultBook()
        self.clock = 1_700_000_000
        self._lock = threading.RLock()
        self._counter = 0

    def _new_id(self) -> str:
        self._counter += 1
        return str(uuid.UUID(int=(0xABCDEF << 100) + self._counter))

    # -- model ----------------------------------------------------------------------------------------

    def add_page(
        self,
        title: str,
        body: list[dict[str, Any]] | None = None,
        *,
        parent: str | None = None,
        database: str | None = None,
        edited: int | None = None,
        shared: bool = True,
    ) -> str:
        """A page under `parent` (a page id: a child_page block is appended there), a row of `database`, or
        at the workspace top level."""
        with self._lock:
            page_id = self._new_id()
            when = edited if edited is not None else self.clock
            if database is not None:
                ref = {"type": "database_id", "database_id": database}
            elif parent is not None:
                ref = {"type": "page_id", "page_id": parent}
            else:
                ref = {"type": "workspace", "workspace": True}
            self.pages[page_id] = Page(page_id, ref, title, when, shared=shared)
            self.children[page_id] = []
            for spec in body or []:
                self._add_block(page_id, spec, when)
            if parent is not None and database is None:
                self._add_block(parent, {"type": "child_page", "child_page": {"title": title}}, when, block_id=page_id)
                self.pages[parent].edited = max(self.pages[parent].edited, when)
            return page_id

    def add_database(self, title: str, *, parent: str) -> str:
        with self._lock:
            database_id = self._new_id()
            self.databases[database_id] = Database(
                database_id, {"type": "page_id", "page_id": parent}, title, self.clock
            )
            self._add_block(
                parent, {"type": "child_database", "child_database": {"title": title}}, self.clock, block_id=database_id
            )
            return database_id

    def _add_block(self, parent: str, spec: dict[str, Any], when: int, block_id: str | None = None) -> str:
        block_id = block_id or self._new_id()
        kids = spec.get("children") or []
        body = {k: v for k, v in spec.items() if k != "children"}
        parent_ref = (
            {"type": "page_id", "page_id": parent} if parent in self.pages else {"type": "block_id", "block_id": parent}
        )
        self.blocks[block_id] = {
            "object": "block",
            "id": block_id,
            "parent": parent_ref,
            "created_time": _iso(when),
            "last_edited_time": _iso(when),
            "created_by": {"object": "user", "id": "u1"},
            "last_edited_by": {"object": "user", "id": "u1"},
            "has_children": bool(kids) or body["type"] in ("child_page", "child_database"),
            "archived": False,
            "in_trash": False,
            **body,
        }
        self.children.setdefault(parent, []).append(block_id)
        self.children.setdefault(block_id, [])
        for kid in kids:
            self._add_block(block_id, kid, when)
        return block_id

    def edit_page(self, page_id: str, body: list[dict[str, Any]], *, advance: int = 120) -> None:
        """Replace a page's blocks (child page blocks kept) and bump its last_edited_time."""
        with self._lock:
            self.clock += advance
            keep = [b for b in self.children[page_id] if self.blocks[b]["type"] in ("child_page", "child_database")]
            self.children[page_id] = []
            for spec in body:
                self._add_block(page_id, spec, self.clock)
            self.children[page_id].extend(keep)
            self.pages[page_id].edited = self.clock

    def trash_page(self, page_id: str, *, advance: int = 120) -> None:
        with self._lock:
            self.clock += advance
            page = self.pages[page_id]
            page.in_trash = True
            page.edited = self.clock
            parent = page.parent.get("page_id")
            if parent and page_id in self.children.get(parent, []):
                self.children[parent].remove(page_id)  # the child_page block goes with it
                self.pages[parent].edited = self.clock

    def live_ids(self, root: str) -> set[str]:
        """Ids (dashless) of the live pages under `root` (a page or database), root included."""
        found: set[str] = set()
        stack = [root]
        while stack:
            node = stack.pop()
            if node in self.pages and not (self.pages[node].archived or self.pages[node].in_trash):
                found.add(node.replace("-", ""))
            if node in self.databases:
                stack.extend(p.id for p in self.pages.values() if p.parent.get("database_id") == node)
            stack.extend(self._descendant_refs(node))
        return found

    def _descendant_refs(self, node: str) -> list[str]:
        refs = []
        for child in self.children.get(node, []):
            block = self.blocks[child]
            if block["type"] in ("child_page", "child_database"):
                refs.append(child)
            else:
                refs.extend(self._descendant_refs(child))
        return refs

    # -- rendering ------------------------------------------------------------------------------------

    def render_page(self, page: Page) -> dict[str, Any]:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", page.title).strip("-")
        return {
            "object": "page",
            "id": page.id,
            "created_time": _iso(page.edited),
            "last_edited_time": _iso(page.edited),
            "created_by": {"object": "user", "id": "u1"},
            "last_edited_by": {"object": "user", "id": "u1"},
            "cover": None,
            "icon": None,
            "parent": page.parent,
            "archived": page.archived or page.in_trash,
            "in_trash": page.in_trash,
            "properties": {"title": {"id": "title", "type": "title", "title": [rich(page.title)]}},
            "url": f"https://www.notion.so/{slug}-{page.id.replace('-', '')}",
            "public_url": None,
        }

    def render_database(self, database: Database) -> dict[str, Any]:
        return {
            "object": "database",
            "id": database.id,
            "title": [rich(database.title)],
            "parent": database.parent,
            "archived": database.archived,
            "in_trash": False,
            "last_edited_time": _iso(database.edited),
            "properties": {"Name": {"id": "title", "name": "Name", "type": "title", "title": {}}},
            "url": f"https://www.notion.so/{database.id.replace('-', '')}",
            "is_inline": False,
        }


def _norm(value: str) -> str:
    """Accept ids with or without dashes."""
    compact = value.replace("-", "").lower()
    return str(uuid.UUID(compact)) if re.fullmatch(r"[0-9a-f]{32}", compact) else value


def _not_found(kind: str, value: str) -> JSONResponse:
    return JSONResponse(
        {
            "object": "error",
            "status": 404,
            "code": "object_not_found",
            "message": f"Could not find {kind} with ID: {value}. Make sure the relevant pages and "
            "databases are shared with your integration.",
        },
        404,
    )


def _listing(items: list[dict[str, Any]], cursor: str | None, size: int, kind: str) -> dict[str, Any]:
    size = max(1, min(size or _MAX_PAGE, _MAX_PAGE))
    start = 0
    if cursor:
        ids = [item["id"] for item in items]
        start = ids.index(cursor) if cursor in ids else len(items)
    chosen = items[start : start + size]
    more = start + size < len(items)
    return {
        "object": "list",
        "results": chosen,
        "next_cursor": items[start + size]["id"] if more else None,
        "has_more": more,
        "type": kind,
        kind: {},
    }


def create_app(fake: FakeNotion) -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        if request.headers.get("notion-version") != NOTION_VERSION:
            return JSONResponse(
                {
                    "object": "error",
                    "status": 400,
                    "code": "missing_version",
                    "message": "Notion-Version header failed validation",
                },
                400,
            )
        return await fake.faults.middleware(
            request,
            call_next,
            authorized=request.headers.get("authorization") == f"Bearer {TOKEN}",
            refuse=lambda: JSONResponse(
                {"object": "error", "status": 401, "code": "unauthorized", "message": "API token is invalid."}, 401
            ),
        )

    def visible_page(page_id: str) -> Page | None:
        page = fake.pages.get(_norm(page_id))
        return page if page is not None and page.shared else None

    @app.get("/v1/pages/{page_id}")
    def get_page(page_id: str) -> Any:
        with fake._lock:
            page = visible_page(page_id)
            return fake.render_page(page) if page is not None else _not_found("page", page_id)

    @app.get("/v1/databases/{database_id}")
    def get_database(database_id: str) -> Any:
        with fake._lock:
            database = fake.databases.get(_norm(database_id))
            return fake.render_database(database) if database else _not_found("database", database_id)

    @app.get("/v1/blocks/{block_id}")
    def get_block(block_id: str) -> Any:
        with fake._lock:
            block = fake.blocks.get(_norm(block_id))
            return block if block is not None else _not_found("block", block_id)

    @app.get("/v1/blocks/{block_id}/children")
    def children(block_id: str, page_size: int = _MAX_PAGE, start_cursor: str | None = None) -> Any:
        with fake._lock:
            key = _norm(block_id)
            if (key in fake.pages and not fake.pages[key].shared) or key not in fake.children:
                return _not_found("block", block_id)
            items = [dict(fake.blocks[b]) for b in fake.children[key]]
            return _listing(items, start_cursor, page_size, "block")

    @app.post("/v1/databases/{database_id}/query")
    async def query(database_id: str, request: Request) -> Any:
        body = json.loads(await request.body() or b"{}")
        with fake._lock:
            key = _norm(database_id)
            if key not in fake.databases:
                return _not_found("database", database_id)
            rows = sorted(
                (
                    p
                    for p in fake.pages.values()
                    if p.parent.get("database_id") == key and not (p.archived or p.in_trash)
                ),
                key=lambda p: p.id,
            )
            items = [fake.render_page(p) for p in rows]
            size = int(body.get("page_size") or _MAX_PAGE)
            return _listing(items, body.get("start_cursor"), size, "page_or_database")

    @app.post("/v1/search")
    async def search(request: Request) -> Any:
        body = json.loads(await request.body() or b"{}")
        with fake._lock:
            pages = sorted(
                (p for p in fake.pages.values() if p.shared and not p.in_trash),
                key=lambda p: (-(p.edited - p.edited % 60), p.id),
            )
            items = [fake.render_page(p) for p in pages]
            return _listing(
                items, body.get("start_cursor"), int(body.get("page_size") or _MAX_PAGE), "page_or_database"
            )

    return app


def build_tree(
    fake: FakeNotion,
    corpus: Path,
    *,
    pages: int,
    sections: int = 10,
    database_rows: int = 0,
    max_chars: int | None = None,
) -> str:
    """A root page with `sections` section pages holding the corpus articles (cycled to `pages` pages in all,
    the root and sections included), optionally a child database of `database_rows` rows under the root.
    Returns the root's id."""
    articles = [a for a in json.loads(corpus.read_text(encoding="utf-8"))["articles"] if a.get("status") == "published"]
    old = fake.clock - 86_400 * 60
    root = fake.add_page("Knowledge base", [_spec("paragraph", "Everything the support team knows.")], edited=old)
    section_ids = [
        fake.add_page(
            f"Section {i + 1}", [_spec("paragraph", f"Articles of section {i + 1}.")], parent=root, edited=old
        )
        for i in range(sections)
    ]
    database = fake.add_database("FAQ", parent=root) if database_rows else None
    remaining = pages - 1 - sections - database_rows
    for index in range(max(0, remaining) + database_rows):
        article = articles[index % len(articles)]
        title = article["title"] if index < len(articles) else f"{article['title']} ({index // len(articles) + 1})"
        body = blocks_from_markdown(shorten(article.get("content") or "", max_chars))
        when = old + index * 3600
        if database is not None and index >= remaining:
            fake.add_page(title, body, database=database, edited=when)
        else:
            fake.add_page(title, body, parent=section_ids[index % sections], edited=when)
    for page_id in [root, *section_ids]:
        fake.pages[page_id].edited = old  # adding children edits the parent; the tree was built long ago
    return root


class NotionServer(ThreadedServer):
    """Serve a `FakeNotion` on 127.0.0.1 (`base_url` is what the source's `base_url` setting points at)."""

    def __init__(self, fake: FakeNotion | None = None) -> None:
        super().__init__(name="notion-fake")
        self.fake = fake if fake is not None else FakeNotion()

    def start(self, timeout: float = 10.0) -> NotionServer:
        sock = self.bind()
        self.serve(create_app(self.fake), sock, timeout)
        return self

    def __enter__(self) -> NotionServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
