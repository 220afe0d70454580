"""Discovery: which pages a listing crawls (`urls`, then the sitemaps' pages, in scope, allowed by robots.txt,
distinct, at most `max_pages`)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

import structlog

from kbsync.errors import SourceError, SourceRejected
from kbsync.settings import WebSourceSettings
from kbsync.sources import DocError
from kbsync.sources.web.crawl import Crawl
from kbsync.sources.web.scope import OutOfScope
from kbsync.sources.web.sitemaps import Sitemap, SitemapEntry, parse_sitemap
from kbsync.sources.web.urls import clean_url, normalize_url, page_doc_id

__all__ = ["Discovery", "Target", "discover", "explicit_url"]

log = structlog.get_logger("kbsync.sources.web")


@dataclass(frozen=True, slots=True)
class Target:
    url: str  # cleaned, what is requested
    key: str  # normalize_url(url): the cache key
    lastmod: int = 0


@dataclass(slots=True)
class Discovery:
    targets: list[Target]
    complete: bool
    errors: list[DocError] = field(default_factory=list)
    # Listed and in scope but disallowed by robots.txt: not fetched, and never taken for gone (robots.txt says
    # "do not fetch", not "this page was deleted").
    disallowed: list[Target] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def discover(crawl: Crawl, settings: WebSourceSettings) -> Discovery:
    """`urls`, then the sitemaps' pages: in scope, allowed by robots.txt, distinct, at most `max_pages`
    (sitemaps after the one that fills `max_pages` are not read)."""
    discovery = Discovery([], complete=True)
    explicit = [SitemapEntry(explicit_url(crawl, url)) for url in settings.urls]
    sitemap_pages: Iterator[SitemapEntry] = iter(())
    if settings.sitemap:
        sitemap_pages = _counted(_read_sitemaps(crawl, settings.sitemap, discovery), discovery, crawl.source_id)
    seen: set[str] = set()
    for entry in itertools.chain(explicit, sitemap_pages):
        if len(discovery.targets) >= settings.max_pages:
            break
        try:
            url = clean_url(entry.loc)
        except ValueError:
            continue
        key = normalize_url(url)
        if key in seen or not crawl.scope.allows(url):
            continue
        seen.add(key)
        if not crawl.robots_allows(url):
            log.debug("web.robots_disallowed", url=url)
            discovery.disallowed.append(Target(url, key, entry.lastmod))
            continue
        discovery.targets.append(Target(url, key, entry.lastmod))
    return discovery


def _counted(entries: Iterator[SitemapEntry], discovery: Discovery, source_id: str) -> Iterator[SitemapEntry]:
    """`entries`; a sitemap that lists no page at all makes the listing incomplete. A docs site does not lose
    every page at once: an empty `<urlset>` is a broken deploy or a maintenance answer, and must delete nothing."""
    count = 0
    for entry in entries:
        count += 1
        yield entry
    if count == 0 and discovery.complete:
        discovery.complete = False
        discovery.warnings.append(
            f"{source_id}: the sitemap lists no pages at all; taken for a broken answer, so nothing was deleted"
        )


def explicit_url(crawl: Crawl, url: str) -> str:
    """A configured URL: a refused address fails the listing (SourceRejected), it is never skipped."""
    cleaned = clean_url(url)
    try:
        crawl.guard(cleaned)
    except OutOfScope as exc:
        raise SourceRejected(exc.reason, source=crawl.source_id, url=cleaned) from None
    return cleaned


def _read_sitemaps(crawl: Crawl, sitemap: str, discovery: Discovery) -> Iterator[SitemapEntry]:
    """The pages of the sitemap, an index followed breadth-first. The root failing raises; a child failing
    makes the listing incomplete (its pages may be missing, so nothing may be deleted)."""
    root = explicit_url(crawl, sitemap)
    queue: list[tuple[str, int]] = [(root, 0)]
    visited: set[str] = set()
    while queue:
        url, depth = queue.pop(0)
        if url in visited:
            continue
        visited.add(url)
        if len(visited) > crawl.options.max_sitemaps:
            discovery.complete = False
            discovery.errors.append(DocError(page_doc_id(url), f"{crawl.source_id} {url}: too many sitemaps"))
            return
        try:
            read = _read_sitemap(crawl, url)
        except SourceError as exc:
            if url == root:
                raise
            discovery.complete = False
            discovery.errors.append(DocError(page_doc_id(url), f"sitemap: {exc}"))
            continue
        if not read.is_index:
            yield from read.entries
            continue
        for entry in read.entries:
            try:
                child = clean_url(entry.loc)
            except ValueError:
                continue
            if depth + 1 >= crawl.options.sitemap_depth:
                discovery.complete = False
                discovery.errors.append(DocError(page_doc_id(child), f"sitemap {child}: nested too deep"))
            elif crawl.scope.same_site(child):
                queue.append((child, depth + 1))
            else:
                log.warning("web.sitemap_off_site", sitemap=child)


def _read_sitemap(crawl: Crawl, url: str) -> Sitemap:
    response = crawl.fetch(url, kind="sitemap")
    crawl.stats.sitemaps += 1
    if response.status != 200:
        raise SourceRejected(f"sitemap answered HTTP {response.status}", source=crawl.source_id, url=url)
    try:
        return parse_sitemap(response.body, crawl.options.max_sitemap_bytes)
    except ValueError as exc:
        raise SourceRejected(f"unreadable sitemap: {exc}", source=crawl.source_id, url=url) from None


# -- pages
