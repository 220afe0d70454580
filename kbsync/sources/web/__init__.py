"""`kind = "web"`: pages of a docs site, found through its sitemaps and a list of URLs (README "Configuration").

Discovery
    `sitemap` (an index is followed to `FetchOptions.sitemap_depth`; `.xml.gz` files and `Content-Encoding: gzip`
    are read; `<lastmod>` is kept) and `urls`. A page is in scope when it matches an `include` regex (default: the
    hosts of `sitemap` and `urls`, either scheme); `urls` are always in scope. robots.txt is honoured for the user
    agent "kbsync" (RFC 9309: a robots.txt that answers 4xx allows everything; one that cannot be read makes the
    whole listing fail). URLs are cleaned (fragment, userinfo and tracking parameters dropped, host lowercased,
    default port dropped) and keyed by `normalize_url` (also: trailing slash, dot segments, escapes, query order),
    so one page is one document; the first `max_pages` distinct pages in discovery order (`urls`, then the
    sitemaps) are crawled.

Fetching
    httpx, a few worker threads with a per-host limit and an optional per-host interval (robots `Crawl-delay`);
    timeouts, retries with backoff on timeouts, connection errors, 5xx and 429 (`Retry-After` honoured, capped);
    conditional requests from a `PageCache` so an unchanged page is a 304 (`Listing.unchanged`: no body, no
    embedding); body size and content-type limits; redirects followed by hand, each hop checked against the scope,
    robots.txt and the SSRF guard. No credentials ever: no auth, no cookies, no `Authorization` header.

SSRF guard
    Unless `allow_private_hosts`, every hop's host is resolved and refused when any address is not globally
    routable (private, loopback, link-local, multicast, reserved, shared, unspecified), and the address the socket
    actually connected to is checked again before the body is read (DNS rebinding). A refused sitemap or `urls`
    entry fails the listing with SourceRejected; a page or redirect hop that is refused is skipped.

Documents
    HTML through `kbsync.markdown.html_to_markdown` (trafilatura: the main content, as markdown), markdown as it
    is. `doc_id = make_doc_id("web", normalize_url(url))` where `url` is the page's `<link rel=canonical>` when
    that is on the same host and in scope, else the URL the page was served from. `locale` comes from `<html
    lang>`. `updated_at` is `Last-Modified`, else the sitemap's `<lastmod>`, else 0 (the content hash decides),
    never later than now.

Deletes
    A listing is complete when every sitemap was read and every page answered 200, 304, 404 or 410 (or was
    skipped for a permanent reason: out of scope, robots, content type, size, address). A page that 404s/410s or
    left the sitemap is missing from the listing; `confirm_gone` looks again (a re-read sitemap and a fresh fetch)
    and confirms only pages that are really gone. A timeout, 5xx, 429 or DNS failure is a `DocError`: the listing
    is incomplete and nothing is deleted.

Validators are staged by `list()` and written to the cache only by `commit()`, which the caller runs once the
documents are stored: a 304 must never stand for a page the index does not hold (`forget()` drops validators of
documents the index turns out to lack). The cache is only touched from the calling thread.

Modules: `urls` (cleaning, normalisation), `scope` (include rules), `ssrf` (address rules), `politeness` (per-host
limits), `crawl` (fetching: guard, robots.txt, retries, redirects, limits), `sitemaps`, `pages` (format, head,
extraction), `discovery` (what a listing crawls), `cache` (validators), `source` (the WebSource).
"""

from kbsync.sources.web.cache import MemoryPageCache, PageCache, PageValidators
from kbsync.sources.web.options import CrawlStats, FetchOptions
from kbsync.sources.web.source import WebSource
from kbsync.sources.web.urls import clean_url, normalize_url

__all__ = [
    "CrawlStats",
    "FetchOptions",
    "MemoryPageCache",
    "PageCache",
    "PageValidators",
    "WebSource",
    "clean_url",
    "normalize_url",
]
