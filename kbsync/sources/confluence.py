"""`kind = "confluence"`: the current pages of one Confluence Cloud space (REST v2), as markdown Documents.

- Listing: the space id from `GET /wiki/api/v2/spaces?keys=`, then `GET /wiki/api/v2/spaces/{id}/pages` with
  `status=current&body-format=storage`, 250 a page, following `_links.next`; drafts, archived and trashed pages
  are never asked for. With `labels`, each page's labels come from `GET /wiki/api/v2/pages/{id}/labels`.
- Change gate: `version.number`. A page whose version the index already holds (this process read it) is not
  converted again; a poll fetches bodies only of pages whose version moved.
- Poll: CQL `space = K and type = page and lastmodified >= "<day>"` on `/wiki/rest/api/search` (CQL dates have
  no seconds and use the user's time zone, so the window starts a day before the watermark; versions decide),
  plus one count of the space's current pages (a drop makes the engine reconcile: trashing leaves no other trace
  in a poll). Where CQL is not allowed (a 400/403/404/501 from search), the poll lists every page without bodies
  and compares version numbers instead.
"""

from __future__ import annotations

import base64
import builtins
import datetime as dt
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog

from kbsync.errors import IncompleteListing, SourceError, SourceRejected, SourceUnavailable
from kbsync.settings import ConfluenceSourceSettings
from kbsync.sources import Changes, DocError, Document, Listing, make_doc_id
from kbsync.sources._http import HttpClient, HttpOptions, RejectedStatus
from kbsync.sources._json import json_object
from kbsync.sources._poll import GatedSource, Versions, iso_to_epoch
from kbsync.sources.confluence_storage import StorageFormatError, storage_to_markdown

__all__ = ["ConfluenceSource", "SpaceInfo", "open_client"]

log = structlog.get_logger(__name__)

PAGE_LIMIT = 250
SEARCH_LIMIT = 100
_CQL_REFUSED = {400, 403, 404, 501}
_WINDOW_SLACK = 86_400  # CQL dates: minutes at best, in the user's time zone


def open_client(
    settings: ConfluenceSourceSettings,
    options: HttpOptions | None = None,
    *,
    transport: httpx.BaseTransport | None = None,
) -> HttpClient:
    """The source's pooled client: Basic (email + API token) when `email_env` is set, else Bearer (a PAT)."""
    token = settings.token.get_secret_value() if settings.token else ""
    email = settings.email.get_secret_value() if settings.email else ""
    if email:
        header = "Basic " + base64.b64encode(f"{email}:{token}".encode()).decode()
    else:
        header = f"Bearer {token}"
    root = urlsplit(settings.base_url)
    return HttpClient(
        f"{root.scheme}://{root.netloc}",
        source=settings.source_id,
        headers={"authorization": header},
        secrets=[token],
        options=options or HttpOptions(requests_per_second=settings.requests_per_second),
        hints={
            401: f"the token was refused: check {settings.token_env}" + (f" and {settings.email_env}" if email else ""),
            403: f"the token's user may not read space {settings.space!r}: grant it view permission",
        },
        transport=transport,
        log_event="confluence.retry",
    )


@dataclass(frozen=True, slots=True)
class SpaceInfo:
    id: str
    key: str
    name: str


class ConfluenceSource(GatedSource):
    """The current pages of one space (`Source` protocol, plus `changes_since` and `applied`)."""

    kind = "confluence"

    def __init__(self, settings: ConfluenceSourceSettings, client: HttpClient) -> None:
        self.settings = settings
        self.client = client
        self.source_id = settings.source_id
        self._path = urlsplit(settings.base_url).path.rstrip("/")  # "/wiki"
        self._labels = set(settings.labels)
        self._versions = Versions()
        self._space: SpaceInfo | None = None

    # -- Source protocol ------------------------------------------------------------------------------

    def list(self, *, rebuild: bool = False) -> Listing:
        """Every current page of the space (within `labels`). A page of the listing that fails after retries
        raises IncompleteListing (nothing may be deleted); a single page whose labels or body cannot be read is
        a DocError (it keeps what the index holds)."""
        space = self.space()
        documents: list[Document] = []
        unchanged: set[str] = set()
        errors: list[DocError] = []
        newest = 0
        path = f"{self._path}/api/v2/spaces/{space.id}/pages"
        params: dict[str, str] | None = {"status": "current", "body-format": "storage", "limit": str(PAGE_LIMIT)}
        listed = 0
        for page in self._paged(path, params, "listing"):
            listed += 1
            doc_id = self.doc_id(page["id"])
            newest = max(newest, _version_time(page))
            try:
                if self._labels and not self._labels & self.labels(page["id"]):
                    continue
            except SourceError as exc:
                errors.append(DocError(doc_id, str(exc)))
                continue
            if not rebuild and self._versions.unchanged(doc_id, _version(page)):
                unchanged.add(doc_id)
                continue
            try:
                documents.append(self._document(page))
            except StorageFormatError as exc:
                errors.append(DocError(doc_id, f"{self.source_id} page {page['id']}: {exc}"))
        return Listing(
            documents=documents,
            complete=True,
            errors=errors,
            unchanged=unchanged,
            watermark=newest,
            total=self._total(space, listed),
        )

    def _total(self, space: SpaceInfo, listed: int) -> int:
        """The count polls compare with: CQL's, or what the listing counted where CQL is not allowed."""
        try:
            return self._count_current(space)
        except RejectedStatus as exc:
            if exc.status not in _CQL_REFUSED:
                raise
            return listed

    def confirm_gone(self, doc_ids: Collection[str]) -> set[str]:
        """Each candidate read on its own: gone when 404, not current, moved to another space, or without the
        labels. Any failure confirms nothing for that page."""
        return self._confirm_each(doc_ids, self._page_gone)

    def _page_gone(self, page_id: str) -> bool:
        page = self._read_page(page_id, body=False)
        if page is None or page.get("status") != "current":
            return True
        if self._space is not None and str(page.get("spaceId")) != self._space.id:
            return True
        return bool(self._labels) and not self._labels & self.labels(page_id)

    # -- poll -----------------------------------------------------------------------------------------

    def changes_since(self, watermark: int) -> Changes:
        """Pages saved since about `watermark`: bodies only of those whose version moved. Two requests when
        nothing changed (the CQL window and the count). Raises IncompleteListing when a page of results fails."""
        space = self.space()
        before = self.client.requests
        try:
            candidates = list(self._cql_window(space, watermark))
            total = self._count_current(space)
        except RejectedStatus as exc:
            if exc.status not in _CQL_REFUSED:
                raise
            log.info("confluence.cql_refused", source=self.source_id, status=exc.status)
            candidates, total = self._version_scan(space)
        published: list[Document] = []
        gone: set[str] = set()
        newest = watermark
        for page_id, version, when in candidates:
            doc_id = self.doc_id(page_id)
            newest = max(newest, when)
            if self._versions.unchanged(doc_id, version):
                continue
            page = self._read_page(page_id)
            if page is None or page.get("status") != "current":
                gone.add(doc_id)
                continue
            if self._labels and not self._labels & self.labels(page_id):
                gone.add(doc_id)
                continue
            try:
                published.append(self._document(page))
            except StorageFormatError as exc:
                log.warning("confluence.bad_body", source=self.source_id, page=page_id, error=str(exc))
        return Changes(
            published=published,
            gone=gone,
            newest=newest,
            all_articles_count=total,
            requests=self.client.requests - before,
            complete=True,
        )

    # -- reads ----------------------------------------------------------------------------------------

    def space(self) -> SpaceInfo:
        """The configured space (cached): 404 or an empty answer mean no such space, or no permission on it."""
        if self._space is not None:
            return self._space
        path = f"{self._path}/api/v2/spaces"
        body = self.client.get_json(path, {"keys": self.settings.space})
        url = self.client.url(path, {"keys": self.settings.space})
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list):
            raise SourceRejected("unexpected response: no `results` list of spaces", source=self.source_id, url=url)
        match = next((s for s in results if isinstance(s, dict) and s.get("key") == self.settings.space), None)
        if match is None or not isinstance(match.get("id"), (str, int)):
            raise RejectedStatus(
                f"space {self.settings.space!r} not found (or the token's user may not view it)",
                status=404,
                source=self.source_id,
                url=url,
            )
        self._space = SpaceInfo(str(match["id"]), self.settings.space, str(match.get("name") or ""))
        return self._space

    def labels(self, page_id: str) -> set[str]:
        """The page's label names (every prefix), following `_links.next`."""
        names: set[str] = set()
        for label in self._paged(
            f"{self._path}/api/v2/pages/{page_id}/labels", {"limit": "250"}, "labels", incomplete=False, check=False
        ):
            if isinstance(label, dict) and isinstance(label.get("name"), str):
                names.add(label["name"])
        return names

    def count_pages(self) -> int:
        """How many current pages the space holds (for `kbsync check`): CQL when allowed, else a listing."""
        space = self.space()
        try:
            return self._count_current(space)
        except RejectedStatus as exc:
            if exc.status not in _CQL_REFUSED:
                raise
        return len(self._version_scan(space)[0])

    def doc_id(self, page_id: str) -> str:
        return make_doc_id(self.kind, f"{self.settings.space}:{page_id}")

    def _paged(
        self, path: str, params: dict[str, str] | None, what: str, *, incomplete: bool = True, check: bool = True
    ) -> Iterator[dict[str, Any]]:
        """Every result of a collection (v2 lists, v1 search), following `_links.next`. A page that fails after
        retries ends it as an IncompleteListing (unless `incomplete` is False: then SourceUnavailable)."""
        number = 0
        while True:
            number += 1
            try:
                body = self.client.get_json(path, params)
            except SourceUnavailable as exc:
                if not incomplete:
                    raise
                raise IncompleteListing(
                    f"{what} stopped at page {number}, nothing may be deleted: {exc}",
                    source=self.source_id,
                    url=exc.url,
                ) from exc
            url = self.client.url(path, params)
            results = body.get("results") if isinstance(body, dict) else None
            if not isinstance(results, list):
                raise SourceRejected(f"unexpected response: no `results` list ({what})", source=self.source_id, url=url)
            for item in results:
                if check:
                    _check_page(item, url, self.source_id)
                yield item
            next_link = (body.get("_links") or {}).get("next") if isinstance(body.get("_links"), dict) else None
            if not next_link or not results:
                return
            path, params = self._follow(str(next_link), body), None

    def _follow(self, link: str, body: dict[str, Any]) -> str:
        """`_links.next` is site-relative (`/wiki/api/v2/...`) in v2 and context-relative (`/rest/api/...`) in v1."""
        if link.startswith(("http://", "https://")):
            parts = urlsplit(link)
            return parts.path + (f"?{parts.query}" if parts.query else "")
        if link.startswith(self._path + "/") or not self._path:
            return link
        links = json_object(body, "_links")
        context = str(links.get("context") or self._path)
        return context.rstrip("/") + link

    def _cql_window(self, space: SpaceInfo, watermark: int) -> Iterator[tuple[str, str, int]]:
        """(page id, version, version time) of the pages CQL says changed since a day before `watermark`."""
        day = dt.datetime.fromtimestamp(max(0, watermark - _WINDOW_SLACK), dt.UTC).strftime("%Y-%m-%d")
        cql = f'space = "{space.key}" and type = page and lastmodified >= "{day}"'
        path = f"{self._path}/rest/api/search"
        params = {"cql": cql, "limit": str(SEARCH_LIMIT), "expand": "content.version"}
        for item in self._paged(path, params, "poll", check=False):
            content = item.get("content") if isinstance(item, dict) else None
            version = content.get("version") if isinstance(content, dict) else None
            if not isinstance(content, dict) or not isinstance(version, dict) or "number" not in version:
                raise SourceRejected(
                    "unexpected search result: no content.version",
                    source=self.source_id,
                    url=self.client.url(path, params),
                )
            yield str(content["id"]), str(version["number"]), iso_to_epoch(str(version.get("when")))

    def _count_current(self, space: SpaceInfo) -> int:
        """The space's current pages, counted by CQL (`totalSize` of a one-result search)."""
        cql = f'space = "{space.key}" and type = page'
        path = f"{self._path}/rest/api/search"
        body = self.client.get_json(path, {"cql": cql, "limit": "1"})
        total = body.get("totalSize") if isinstance(body, dict) else None
        if not isinstance(total, int):
            raise SourceRejected(
                "unexpected search response: no `totalSize`",
                source=self.source_id,
                url=self.client.url(path, {"cql": cql}),
            )
        return total

    def _version_scan(self, space: SpaceInfo) -> tuple[builtins.list[tuple[str, str, int]], int]:
        """Every current page's version without bodies (the poll where CQL is not allowed)."""
        path = f"{self._path}/api/v2/spaces/{space.id}/pages"
        pages = list(self._paged(path, {"status": "current", "limit": str(PAGE_LIMIT)}, "poll"))
        return [(str(p["id"]), _version(p), _version_time(p)) for p in pages], len(pages)

    def _read_page(self, page_id: str, *, body: bool = True) -> dict[str, Any] | None:
        """One page (with its storage body), or None when it is 404."""
        path = f"{self._path}/api/v2/pages/{page_id}"
        try:
            page = self.client.get_json(path, {"body-format": "storage"} if body else None)
        except RejectedStatus as exc:
            if exc.status == 404:
                return None
            raise
        _check_page(page, self.client.url(path), self.source_id)
        return page

    def _document(self, page: dict[str, Any]) -> Document:
        body = ((page.get("body") or {}).get("storage") or {}).get("value") or ""
        doc_id = self.doc_id(page["id"])
        document = Document(
            doc_id=doc_id,
            source=self.source_id,
            kind=self.kind,
            title=page["title"],
            text=storage_to_markdown(body),
            url=self.settings.base_url + str((page.get("_links") or {}).get("webui") or f"/pages/{page['id']}"),
            locale=self.settings.locale,
            updated_at=_version_time(page),
        )
        self._versions.read(doc_id, _version(page), time.time())
        return document


def _version(page: dict[str, Any]) -> str:
    return str(page["version"]["number"])


def _version_time(page: dict[str, Any]) -> int:
    return iso_to_epoch(str(page["version"].get("createdAt") or page.get("createdAt")))


def _check_page(page: Any, url: str, source: str) -> None:
    """A v2 page object with what a sync reads: string id and title, a version with number and createdAt."""
    problem = ""
    if not isinstance(page, dict):
        problem = "not an object"
    elif not isinstance(page.get("id"), str) or not isinstance(page.get("title"), str):
        problem = "no string `id` and `title`"
    elif not isinstance(page.get("version"), dict) or not isinstance(page["version"].get("number"), int):
        problem = f"page {page['id']}: no `version.number`"
    else:
        try:
            _version_time(page)
        except (TypeError, ValueError):
            problem = f"page {page['id']}: no ISO `version.createdAt`"
    if problem:
        raise SourceRejected(f"unexpected page object: {problem}", source=source, url=url)
