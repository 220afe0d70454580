"""`WebSource`: the Source protocol over a crawl (listing, the second look, validators staged and committed)."""

from __future__ import annotations

import builtins
import contextlib
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import replace
from urllib.parse import urljoin

import httpx
import structlog

from kbsync.errors import SourceError, SourceRejected
from kbsync.markdown import first_h1
from kbsync.settings import WebSourceSettings
from kbsync.sources import DocError, Document, Listing
from kbsync.sources.web.cache import MemoryPageCache, PageCache, PageValidators
from kbsync.sources.web.crawl import Crawl, Response
from kbsync.sources.web.discovery import Discovery, Target, discover
from kbsync.sources.web.options import CrawlStats, FetchOptions
from kbsync.sources.web.pages import (
    conditional_headers,
    decode_body,
    extract,
    page_format,
    parse_head,
    title_from_url,
    to_locale,
    updated_at,
)
from kbsync.sources.web.scope import OutOfScope, Refused, Scope
from kbsync.sources.web.ssrf import AddressGuard, PinnedTransport
from kbsync.sources.web.urls import clean_url, host_key, normalize_url, page_doc_id
from kbsync.sources.web.visits import Visit, unshare_canonicals, without_shared_canonicals

__all__ = ["WebSource"]

log = structlog.get_logger("kbsync.sources.web")


class WebSource:
    """Pages of a docs site as Documents (see the module docstring for the rules)."""

    kind = "web"

    def __init__(
        self,
        settings: WebSourceSettings,
        client: httpx.Client | None = None,
        cache: PageCache | None = None,
        *,
        options: FetchOptions | None = None,
    ) -> None:
        self.settings = settings
        self.source_id = settings.source_id
        self.cache: PageCache = cache if cache is not None else MemoryPageCache()
        self.options = options or FetchOptions()
        self.stats = CrawlStats()  # of the last list()
        self._client = client
        self._scope = Scope(settings)
        self._staged: dict[str, PageValidators] = {}
        self._seen: dict[str, str] = {}  # doc_id -> URL, from the last list(): the second look's addresses
        self._lock = threading.Lock()

    # -- the Source protocol

    def list(self, *, rebuild: bool = False) -> Listing:
        """Every page now. `rebuild` downloads every page again; otherwise a stored page costs a conditional
        request (a 304), or none with the setting `trust_lastmod` when its sitemap `<lastmod>` is unchanged.

        Raises SourceRejected (a refused, missing or malformed root sitemap or `urls` entry) or SourceUnavailable
        (the root sitemap or robots.txt could not be read): nothing trustworthy was listed.
        """
        conditional = not rebuild
        trust_lastmod = self.settings.trust_lastmod and not rebuild
        started = time.monotonic()
        with self._crawl() as crawl:
            discovery = discover(crawl, self.settings)
            cached = {t.key: self.cache.get(t.key) for t in discovery.targets}
            visits = crawl.map(
                lambda t: self._visit(crawl, t, cached[t.key], conditional=conditional, trust_lastmod=trust_lastmod),
                discovery.targets,
            )
        for visit in visits:
            if visit.drop_validators and cached[visit.target.key] is not None:
                self.cache.delete(visit.target.key)
        self.stats = crawl.stats
        self.stats.pages = len(discovery.targets)
        self._count(self.stats, visits)
        self.stats.seconds = round(time.monotonic() - started, 3)
        listing = self._assemble(visits, discovery)
        log.info(
            "web.listed",
            pages=self.stats.pages,
            documents=self.stats.documents,
            not_modified=self.stats.not_modified,
            gone=self.stats.gone,
            skipped=self.stats.skipped,
            failed=self.stats.failed,
            complete=listing.complete,
            seconds=self.stats.seconds,
        )
        return listing

    def confirm_gone(self, doc_ids: Collection[str]) -> set[str]:
        """The second look. Of `doc_ids`, those whose page answers 404/410 now, is now out of scope, now serves
        another document, or is no longer in the (completely re-read) sitemaps. A failure confirms nothing."""
        if not doc_ids:
            return set()
        gone: set[str] = set()
        with self._crawl() as crawl:
            try:
                discovery = discover(crawl, self.settings)
            except SourceError as exc:
                log.warning("web.confirm_without_sitemap", error=str(exc))
                discovery = Discovery([], complete=False)
            known = discovery.targets + discovery.disallowed
            listed = {t.key for t in known}
            listed_ids = {page_doc_id(t.key) for t in known}
            verdicts = {}
            for doc_id in doc_ids:
                url = self._url_of(doc_id)
                verdicts[doc_id] = (url, self._confirm_one(crawl, doc_id, url, discovery.complete, listed, listed_ids))
            for doc_id, (url, verdict) in without_shared_canonicals(verdicts).items():
                if verdict:
                    gone.add(doc_id)
                    if url is not None:
                        self.cache.delete(normalize_url(url))
        log.info("web.confirmed_gone", candidates=len(doc_ids), gone=len(gone))
        return gone

    # -- validators

    def applied(self, listing: Listing, indexed: Collection[str]) -> None:
        """The engine stored `listing`: keep the validators of what the index holds, forget the others (a 304
        must only ever stand for a page the index really has)."""
        held = set(indexed)
        self.commit(held)
        self.forget(listing.unchanged - held)

    def commit(self, doc_ids: Collection[str] | None = None) -> int:
        """Write the validators staged by the last `list()` to the cache (only those of `doc_ids` when given).
        Call it once the listed documents are stored: a later 304 then stands for a page the index holds."""
        with self._lock:
            staged = {k: v for k, v in self._staged.items() if doc_ids is None or v.doc_id in doc_ids}
            for key in staged:
                del self._staged[key]
        for key, validators in staged.items():
            self.cache.put(key, validators)
        return len(staged)

    def forget(self, doc_ids: Collection[str]) -> None:
        """Drop the validators of `doc_ids` (the index lacks them): their pages are downloaded again next time."""
        for doc_id in doc_ids:
            url = self._url_of(doc_id)
            if url is not None:
                self.cache.delete(normalize_url(url))
            for _ in range(1000):  # every URL whose validators stand for this doc_id
                other = self.cache.url_for(doc_id)
                if other is None:
                    break
                self.cache.delete(other)

    # -- discovery

    @contextlib.contextmanager
    def _crawl(self) -> Iterator[Crawl]:
        addresses = AddressGuard(allow_private=self.settings.allow_private_hosts, source_id=self.source_id)
        if self._client is not None:
            yield Crawl(self._client, self.options, self._scope, addresses=addresses, source_id=self.source_id)
            return
        timeout = httpx.Timeout(self.options.read_timeout, connect=self.options.connect_timeout)
        limits = httpx.Limits(max_connections=max(4, self.options.workers * 2))
        transport = PinnedTransport(addresses, limits=limits)
        with httpx.Client(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False) as client:
            yield Crawl(client, self.options, self._scope, addresses=addresses, source_id=self.source_id)

    def _visit(
        self, crawl: Crawl, target: Target, cached: PageValidators | None, *, conditional: bool, trust_lastmod: bool
    ) -> Visit:
        """One page (on a worker thread: the cache is read and written by the caller, never here)."""
        if trust_lastmod and cached is not None and target.lastmod and cached.lastmod == target.lastmod:
            return Visit(target, unchanged=cached.doc_id, lastmod_skip=True)
        fallback_id = cached.doc_id if cached is not None else page_doc_id(target.key)
        try:
            response = crawl.fetch(target.url, kind="page", headers=conditional_headers(cached) if conditional else {})
            if response.status in (404, 410):
                return Visit(target, gone=fallback_id, drop_validators=True)
            if response.status == 304:
                return self._not_modified(target, cached, response)
            document = self._document(target, response)
        except OutOfScope as exc:
            log.info("web.page_skipped", url=target.url, reason=exc.reason)
            return Visit(target, drop_validators=True)
        except SourceError as exc:
            return Visit(target, error=DocError(fallback_id, str(exc)))
        validators = PageValidators(
            doc_id=document.doc_id,
            etag=response.headers.get("etag", ""),
            last_modified=response.headers.get("last-modified", ""),
            lastmod=target.lastmod,
            title=document.title,
        )
        return Visit(target, document=document, validators=validators, served_from=response.url)

    def _not_modified(self, target: Target, cached: PageValidators | None, response: Response) -> Visit:
        if cached is None:
            raise SourceRejected("HTTP 304 to an unconditional request", source=self.source_id, url=target.url)
        fresh = replace(
            cached,
            etag=response.headers.get("etag", "") or cached.etag,
            last_modified=response.headers.get("last-modified", "") or cached.last_modified,
            lastmod=target.lastmod or cached.lastmod,
        )
        return Visit(target, unchanged=cached.doc_id, validators=fresh if fresh != cached else None)

    @staticmethod
    def _count(stats: CrawlStats, visits: Sequence[Visit]) -> None:
        for visit in visits:
            if visit.document is not None:
                stats.documents += 1
            elif visit.lastmod_skip:
                stats.lastmod_skips += 1
            elif visit.unchanged:
                stats.not_modified += 1
            elif visit.gone:
                stats.gone += 1
            elif visit.error is not None:
                stats.failed += 1
            else:
                stats.skipped += 1

    def _document(self, target: Target, response: Response) -> Document:
        fmt = page_format(response.url, response.headers)
        text = decode_body(response.body, response.headers)
        if fmt == "markdown":
            markdown = text.lstrip("\ufeff")
            title, url, locale = first_h1(markdown), response.url, ""
        else:
            markdown, title = extract(text, self.source_id, response.url)
            head = parse_head(text)
            title = title or head.h1 or head.og_title or head.title
            url = self._canonical(head.canonical, response.url)
            locale = to_locale(head.lang or head.content_language or response.headers.get("content-language", ""))
        if not markdown.strip():
            raise OutOfScope("no main content", source=self.source_id, url=response.url)
        return Document(
            doc_id=page_doc_id(url),
            source=self.source_id,
            kind=self.kind,
            title=title or title_from_url(url),
            text=markdown.strip(),
            url=url,
            locale=locale,
            updated_at=updated_at(response.headers.get("last-modified", ""), target.lastmod),
            versioned=False,  # Last-Modified is no version order: the content hash decides
        )

    def _canonical(self, href: str, served_from: str) -> str:
        """`<link rel=canonical>` when it is an http(s) URL on the same host and in scope, else `served_from`."""
        if not href:
            return served_from
        try:
            canonical = clean_url(urljoin(served_from, href))
        except ValueError:
            return served_from
        if host_key(canonical) != host_key(served_from) or not self._scope.allows(canonical):
            return served_from
        return canonical

    def _assemble(self, visits: builtins.list[Visit], discovery: Discovery) -> Listing:
        """One document per doc_id: the page served from its own canonical URL wins, else the first one."""
        visits, warnings = unshare_canonicals(visits, self.source_id)
        documents: dict[str, Document] = {}
        canonical_hit: set[str] = set()
        unchanged: set[str] = set()
        errors = list(discovery.errors)
        staged: dict[str, PageValidators] = {}
        seen: dict[str, str] = {}
        for visit in visits:
            doc = visit.document
            if doc is not None:
                own = normalize_url(doc.url) == visit.target.key
                if doc.doc_id not in documents or (own and doc.doc_id not in canonical_hit):
                    documents[doc.doc_id] = doc
                if own:
                    canonical_hit.add(doc.doc_id)
            if visit.unchanged:
                unchanged.add(visit.unchanged)
            if visit.error is not None:
                errors.append(visit.error)
            if visit.validators is not None:
                staged[visit.target.key] = visit.validators
            error_id = visit.error.doc_id if visit.error is not None else ""
            for doc_id in (doc.doc_id if doc is not None else "", visit.unchanged, visit.gone, error_id):
                if doc_id:
                    seen.setdefault(doc_id, visit.target.url)
        with self._lock:
            self._staged = staged
            self._seen = seen
        return Listing(
            documents=list(documents.values()),
            complete=discovery.complete and not errors,
            errors=errors,
            unchanged=unchanged - set(documents),
            warnings=discovery.warnings + warnings + self._kept_disallowed(discovery),
        )

    def _kept_disallowed(self, discovery: Discovery) -> builtins.list[str]:
        """A warning when robots.txt now disallows pages the index holds (they have validators): kept, not gone."""
        held = [t for t in discovery.disallowed if self.cache.get(t.key) is not None]
        if not held:
            return []
        log.warning("web.robots_disallows_indexed", pages=len(held), example=held[0].url)
        return [
            f"{self.source_id}: robots.txt now disallows {len(held)} indexed page(s) (e.g. {held[0].url}); they are "
            "not fetched and stay indexed (robots.txt says do not fetch, not gone)"
        ]

    # -- the second look

    def _url_of(self, doc_id: str) -> str | None:
        with self._lock:
            url = self._seen.get(doc_id)
        if url is None:
            url = self.cache.url_for(doc_id)
        if url is None and doc_id.startswith("web:") and not doc_id.startswith("web:sha256:"):
            url = doc_id[len("web:") :]
        return url

    def _confirm_one(
        self,
        crawl: Crawl,
        doc_id: str,
        url: str | None,
        sitemap_complete: bool,
        listed: set[str],
        listed_ids: set[str],
    ) -> bool | str:
        """404/410 now, or (only while the sitemaps were re-read in full) no longer listed, out of scope, or
        serving another document (then that document's id). A transient failure, an SSRF refusal or a robots.txt
        rule proves nothing."""
        if url is None:
            # No address for a hashed id: gone only when the site answered in full and nothing lists it.
            return sitemap_complete and doc_id not in listed_ids
        key = normalize_url(url)
        if sitemap_complete and key not in listed and doc_id not in listed_ids:
            return True  # dropped from a complete sitemap (and not among `urls`)
        try:
            if not self._scope.allows(url):
                return sitemap_complete  # no longer ours to fetch
            if not crawl.robots_allows(url):
                log.info("web.kept_disallowed", doc_id=doc_id, url=url)
                return False  # robots.txt says "do not fetch", not "gone"
            response = crawl.fetch(clean_url(url), kind="page")
            if response.status in (404, 410):
                return True
            if not sitemap_complete:
                return False
            document = self._document(Target(clean_url(url), key), response)
        except Refused as exc:
            log.warning("web.not_confirmed", doc_id=doc_id, error=exc.reason)
            return False
        except OutOfScope:
            return sitemap_complete
        except SourceError as exc:
            log.info("web.not_confirmed", doc_id=doc_id, error=str(exc))
            return False
        return document.doc_id if document.doc_id != doc_id else False  # the page now stands for another document
