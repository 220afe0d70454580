"""Confluence Cloud-compatible REST server for tests and benchmarks (the parts kbsync reads).

* ``GET /wiki/api/v2/spaces?keys=K``                        spaces by key
* ``GET /wiki/api/v2/spaces/{id}/pages``                     cursor paging (``_links.next``), ``status``,
  ``body-format=storage``, ``limit`` (at most 250)
* ``GET /wiki/api/v2/pages/{id}`` and ``/pages/{id}/labels`` one page, its labels
* ``GET /wiki/rest/api/search?cql=``                         CQL (``space``, ``type``, ``lastmodified >=``),
  ``totalSize``, cursor paging; can be switched off (``cql_allowed``) to answer 403 like a site without search
Ids are strings, times ISO-8601 UTC, auth Basic (email:token) or Bearer (a PAT). Pages are built from the shared
corpus (markdown rendered to storage XHTML, fenced code as code macros, some info macros and images).

Pure test-support code: it must never import ``kbsync``.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from markdown_it import MarkdownIt

from tests.servers._faults import Fault, FaultBook
from tests.servers.threaded import ThreadedServer

__all__ = ["EMAIL", "TOKEN", "ConfluenceServer", "FakeConfluence", "Fault", "storage_from_markdown"]

EMAIL = "bot@example.com"
TOKEN = "conf-api-token-123"
PAT = "conf-pat-456"
_MAX_LIMIT = 250
_SEARCH_MAX = 100
_md = MarkdownIt("commonmark").enable("table")


def storage_from_markdown(markdown: str) -> str:
    """Storage XHTML for a markdown body: fenced code becomes the code macro, the rest plain XHTML."""
    rendered = _md.render(markdown)

    def code_macro(match: re.Match[str]) -> str:
        language = match.group(1) or ""
        code = html.unescape(match.group(2))
        param = f'<ac:parameter ac:name="language">{language}</ac:parameter>' if language else ""
        return (
            f'<ac:structured-macro ac:name="code" ac:schema-version="1">{param}'
            f"<ac:plain-text-body><![CDATA[{code}]]></ac:plain-text-body></ac:structured-macro>"
        )

    rendered = re.sub(
        r'<pre><code(?: class="language-([\w+-]+)")?>(.*?)</code></pre>', code_macro, rendered, flags=re.S
    )
    return re.sub(r"<(br|hr|img)([^>]*)>", r"<\1\2/>", rendered).replace("//>", "/>")


def shorten(markdown: str, max_chars: int | None) -> str:
    """The leading paragraphs of `markdown` within about `max_chars` (at least one paragraph)."""
    if max_chars is None or len(markdown) <= max_chars:
        return markdown
    kept: list[str] = []
    for paragraph in markdown.split("\n\n"):
        if kept and sum(len(p) + 2 for p in kept) + len(paragraph) > max_chars:
            break
        kept.append(paragraph)
    text = "\n\n".join(kept)
    return text if text.count("```") % 2 == 0 else text + "\n```"


def _iso(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass
class Page:
    id: str
    title: str
    body: str
    version: int = 1
    updated: int = 1_700_000_000
    status: str = "current"
    labels: list[str] = field(default_factory=list)
    parent_id: str | None = None


class FakeConfluence:
    """One site with spaces of pages, mutable from Python, with faults and a request log."""

    def __init__(self, *, base_path: str = "/wiki") -> None:
        self.base_path = base_path
        self.spaces: dict[str, str] = {}  # key -> id
        self.pages: dict[str, dict[str, Page]] = {}  # space key -> id -> page
        self.faults = FaultBook()
        self.cql_allowed = True
        self.clock = 1_700_000_000
        self.base_url = ""  # set by the server
        self._lock = threading.RLock()
        self._next_id = 100_000

    # -- model ----------------------------------------------------------------------------------------

    def add_space(self, key: str) -> str:
        with self._lock:
            space_id = str(9_000 + len(self.spaces))
            self.spaces[key] = space_id
            self.pages[key] = {}
            return space_id

    def add_page(
        self,
        space: str,
        title: str,
        body: str,
        *,
        labels: list[str] | None = None,
        status: str = "current",
        updated: int | None = None,
    ) -> str:
        with self._lock:
            self._next_id += 1
            page_id = str(self._next_id)
            self.pages[space][page_id] = Page(
                page_id, title, body, updated=updated or self.clock, status=status, labels=list(labels or [])
            )
            return page_id

    def load_corpus(
        self,
        space: str,
        path: Path,
        *,
        count: int | None = None,
        labels: list[str] | None = None,
        max_chars: int | None = None,
    ) -> list[str]:
        """Pages from a corpus file's articles (cycled to `count` pages with numbered titles; bodies cut to about
        `max_chars` at a paragraph break)."""
        articles = json.loads(path.read_text(encoding="utf-8"))["articles"]
        articles = [a for a in articles if a.get("status") == "published"] or articles
        total = count or len(articles)
        ids = []
        for index in range(total):
            article = articles[index % len(articles)]
            title = article["title"] if index < len(articles) else f"{article['title']} ({index // len(articles) + 1})"
            body = storage_from_markdown(shorten(article.get("content") or "", max_chars))
            if index % 7 == 0:
                body = (
                    '<ac:structured-macro ac:name="info"><ac:rich-text-body><p>Applies to every plan.</p>'
                    "</ac:rich-text-body></ac:structured-macro>"
                    '<p><ac:image><ri:attachment ri:filename="screen.png"/></ac:image></p>' + body
                )
            updated = self.clock - 86_400 * 60 + index * 3600  # an hour apart: a one-day poll window holds 24
            ids.append(self.add_page(space, title, body, labels=labels, updated=updated))
        return ids

    def edit(self, space: str, page_id: str, *, body: str | None = None, title: str | None = None) -> None:
        """A new version, saved now."""
        with self._lock:
            page = self.pages[space][page_id]
            page.version += 1
            self.clock += 1
            page.updated = self.clock
            if body is not None:
                page.body = body
            if title is not None:
                page.title = title

    def set_status(self, space: str, page_id: str, status: str) -> None:
        with self._lock:
            self.pages[space][page_id].status = status

    def set_labels(self, space: str, page_id: str, labels: list[str]) -> None:
        with self._lock:
            self.pages[space][page_id].labels = list(labels)

    def delete(self, space: str, page_id: str) -> None:
        with self._lock:
            del self.pages[space][page_id]

    def current_ids(self, space: str) -> set[str]:
        return {p.id for p in self.pages[space].values() if p.status == "current"}

    # -- rendering ------------------------------------------------------------------------------------

    def _space_key(self, space_id: str) -> str | None:
        return next((k for k, v in self.spaces.items() if v == space_id), None)

    def render_page(self, space: str, page: Page, *, body: bool) -> dict[str, Any]:
        slug = re.sub(r"[^A-Za-z0-9]+", "+", page.title).strip("+")
        return {
            "id": page.id,
            "status": page.status,
            "title": page.title,
            "spaceId": self.spaces[space],
            "parentId": page.parent_id,
            "parentType": "page" if page.parent_id else None,
            "position": 0,
            "authorId": "557058:abc",
            "ownerId": "557058:abc",
            "createdAt": _iso(page.updated - (page.version - 1) * 60),
            "version": {
                "createdAt": _iso(page.updated),
                "message": "",
                "number": page.version,
                "minorEdit": False,
                "authorId": "557058:abc",
            },
            "body": {"storage": {"value": page.body, "representation": "storage"}} if body else {},
            "_links": {
                "webui": f"/spaces/{space}/pages/{page.id}/{slug}",
                "editui": f"/pages/resumedraft.action?draftId={page.id}",
                "tinyui": f"/x/{page.id}",
            },
        }


def _cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def _uncursor(value: str) -> str:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()


def _authorized(request: Request) -> bool:
    header = request.headers.get("authorization", "")
    if header.startswith("Basic "):
        try:
            return base64.b64decode(header[6:]).decode() == f"{EMAIL}:{TOKEN}"
        except ValueError:
            return False
    return header == f"Bearer {PAT}"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"errors": [{"status": status, "code": "ERROR", "title": message, "detail": None}]}, status)


_CQL_SPACE = re.compile(r'space\s*=\s*"?([~\w-]+)"?', re.I)
_CQL_SINCE = re.compile(r'lastmodified\s*>=\s*"([0-9/-]+)(?: ([0-9:]+))?"', re.I)


def create_app(fake: FakeConfluence) -> FastAPI:
    app = FastAPI()
    base = fake.base_path

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        return await fake.faults.middleware(
            request,
            call_next,
            authorized=_authorized(request),
            refuse=lambda: JSONResponse({"code": 401, "message": "Unauthorized; scope does not match"}, 401),
        )

    @app.get(f"{base}/api/v2/spaces")
    def spaces(keys: str = "") -> Any:
        wanted = [k for k in keys.split(",") if k]
        with fake._lock:
            results = [
                {
                    "id": fake.spaces[k],
                    "key": k,
                    "name": f"Space {k}",
                    "type": "global",
                    "status": "current",
                    "homepageId": None,
                    "_links": {"webui": f"/spaces/{k}"},
                }
                for k in wanted
                if k in fake.spaces
            ]
        return {"results": results, "_links": {"base": fake.base_url + base}}

    @app.get(f"{base}/api/v2/spaces/{{space_id}}/pages")
    def space_pages(request: Request, space_id: str, limit: int = 25, cursor: str = "", status: str = "current") -> Any:
        body_format = request.query_params.get("body-format", "")
        with fake._lock:
            key = fake._space_key(space_id)
            if key is None:
                return _error(404, "No space with given ID found")
            limit = max(1, min(limit, _MAX_LIMIT))
            after = int(_uncursor(cursor)) if cursor else 0
            statuses = set(status.split(","))
            pages = sorted(
                (p for p in fake.pages[key].values() if p.status in statuses and int(p.id) > after),
                key=lambda p: int(p.id),
            )
            chosen = pages[:limit]
            results = [fake.render_page(key, p, body=body_format == "storage") for p in chosen]
        links: dict[str, str] = {"base": fake.base_url + base}
        if len(pages) > limit:
            query = {"cursor": _cursor(chosen[-1].id), "limit": str(limit), "status": status}
            if body_format:
                query["body-format"] = body_format
            links["next"] = f"{base}/api/v2/spaces/{space_id}/pages?{urlencode(query)}"
        return {"results": results, "_links": links}

    def find(page_id: str) -> tuple[str, Page] | None:
        for key, pages in fake.pages.items():
            if page_id in pages:
                return key, pages[page_id]
        return None

    @app.get(f"{base}/api/v2/pages/{{page_id}}")
    def page(request: Request, page_id: str) -> Any:
        with fake._lock:
            found = find(page_id)
            if found is None:
                return _error(404, "Page not found")
            return fake.render_page(found[0], found[1], body=request.query_params.get("body-format") == "storage")

    @app.get(f"{base}/api/v2/pages/{{page_id}}/labels")
    def labels(page_id: str) -> Any:
        with fake._lock:
            found = find(page_id)
            if found is None:
                return _error(404, "Page not found")
            results = [{"id": str(1000 + i), "name": n, "prefix": "global"} for i, n in enumerate(found[1].labels)]
        return {"results": results, "_links": {"base": fake.base_url + base}}

    @app.get(f"{base}/rest/api/search")
    def search(cql: str = "", limit: int = 25, cursor: str = "") -> Any:
        if not fake.cql_allowed:
            return JSONResponse({"statusCode": 403, "message": "search is not permitted for this app"}, 403)
        space_match = _CQL_SPACE.search(cql)
        if space_match is None or "type" not in cql.lower():
            return JSONResponse({"statusCode": 400, "message": f"Could not parse cql : {cql}"}, 400)
        since = None
        since_match = _CQL_SINCE.search(cql)
        if since_match:
            day = since_match.group(1).replace("/", "-")
            clock = since_match.group(2) or "00:00"
            since = int(dt.datetime.fromisoformat(f"{day}T{clock}").replace(tzinfo=dt.UTC).timestamp())
        key = space_match.group(1)
        limit = max(0, min(limit, _SEARCH_MAX))
        with fake._lock:
            pages = [
                p
                for p in fake.pages.get(key, {}).values()
                if p.status == "current" and (since is None or p.updated >= since)
            ]
            pages.sort(key=lambda p: (-p.updated, int(p.id)))
            start = int(_uncursor(cursor)) if cursor else 0
            chosen = pages[start : start + limit]
            results = []
            for p in chosen:
                rendered = fake.render_page(key, p, body=False)
                results.append(
                    {
                        "content": {
                            "id": p.id,
                            "type": "page",
                            "status": p.status,
                            "title": p.title,
                            "version": {"number": p.version, "when": _iso(p.updated)},
                            "_links": rendered["_links"],
                        },
                        "title": p.title,
                        "excerpt": "",
                        "url": rendered["_links"]["webui"],
                        "lastModified": _iso(p.updated),
                        "entityType": "content",
                    }
                )
        links = {"base": fake.base_url + base, "context": base}
        if start + limit < len(pages) and limit:
            query = urlencode({"cql": cql, "limit": limit, "cursor": _cursor(str(start + limit))})
            links["next"] = f"/rest/api/search?{query}"
        return {
            "results": results,
            "start": start,
            "limit": limit,
            "size": len(results),
            "totalSize": len(pages),
            "cqlQuery": cql,
            "_links": links,
        }

    return app


class ConfluenceServer(ThreadedServer):
    """Serve a `FakeConfluence` on 127.0.0.1; `site_url` is what `base_url` in settings points at."""

    def __init__(self, fake: FakeConfluence | None = None) -> None:
        super().__init__(name="confluence-fake")
        self.fake = fake if fake is not None else FakeConfluence()

    @property
    def site_url(self) -> str:
        return self.base_url + self.fake.base_path

    def start(self, timeout: float = 10.0) -> ConfluenceServer:
        sock = self.bind()
        self.fake.base_url = self.base_url
        self.serve(create_app(self.fake), sock, timeout)
        return self

    def __enter__(self) -> ConfluenceServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
