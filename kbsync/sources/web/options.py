"""How the crawler behaves (`FetchOptions`) and what one listing did (`CrawlStats`)."""

from __future__ import annotations

from dataclasses import dataclass

from kbsync import __version__

__all__ = ["USER_AGENT_TOKEN", "CrawlStats", "FetchOptions"]

USER_AGENT_TOKEN = "kbsync"


@dataclass(frozen=True, slots=True)
class FetchOptions:
    """How the crawler behaves; the defaults suit a public docs site."""

    user_agent: str = f"{USER_AGENT_TOKEN}/{__version__}"
    connect_timeout: float = 5.0
    read_timeout: float = 15.0  # per socket read: a trickling server never trips it, hence the deadlines below
    request_deadline: float = 60.0  # one attempt, from sending the request to the body's last byte
    crawl_deadline: float = 3600.0  # one list() or confirm_gone(); pages not fetched by then are errors (no deletes)
    attempts: int = 3  # per request, the first one included
    backoff_initial: float = 0.5
    backoff_max: float = 8.0
    retry_after_max: float = 30.0
    max_bytes: int = 5 * 1024 * 1024  # a page's body, decoded
    max_sitemap_bytes: int = 50 * 1024 * 1024  # a sitemap, decompressed (the protocol's limit)
    max_robots_bytes: int = 512 * 1024
    max_redirects: int = 5
    workers: int = 4
    per_host: int = 2  # requests in flight per host
    min_interval: float = 0.0  # seconds between two requests to one host (robots Crawl-delay raises it)
    max_crawl_delay: float = 10.0
    sitemap_depth: int = 3  # an index of indexes of sitemaps
    max_sitemaps: int = 1000


@dataclass(slots=True)
class CrawlStats:
    """What one `list()` did; `bytes_downloaded` counts bytes on the wire (compressed)."""

    pages: int = 0  # distinct pages discovered and in scope (after max_pages)
    documents: int = 0  # fetched and extracted
    not_modified: int = 0  # answered 304
    lastmod_skips: int = 0  # not requested: the sitemap's <lastmod> was unchanged (trust_lastmod)
    gone: int = 0  # 404 / 410
    skipped: int = 0  # out of scope, robots, content type, size, address
    failed: int = 0  # transient or unexpected: DocError
    sitemaps: int = 0
    requests: int = 0
    bytes_downloaded: int = 0
    seconds: float = 0.0
