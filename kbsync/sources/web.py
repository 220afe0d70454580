"""`kind = "web"`: pages of a docs site, found through its sitemaps and a list of URLs (design.md §3).

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
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
import itertools
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlencode, urljoin, urlsplit, urlunsplit
from urllib.robotparser import RobotFileParser
from xml.etree import ElementTree

import httpx
import structlog
import tenacity

from kbsync.errors import SourceError, SourceRejected, SourceUnavailable
from kbsync.markdown import html_to_markdown
from kbsync.settings import WebSourceSettings
from kbsync.sources import DocError, Document, Listing, make_doc_id

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

log = structlog.get_logger(__name__)

USER_AGENT_TOKEN = "kbsync"
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_MARKDOWN_TYPES = frozenset({"text/markdown", "text/x-markdown"})
_MARKDOWN_SUFFIXES = (".md", ".markdown")
_ACCEPT = "text/html,application/xhtml+xml;q=0.9,text/markdown;q=0.9,text/plain;q=0.5,*/*;q=0.1"
# Never sent, whatever the client passed in carries.
_CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "cookie", "api_access_token", "x-api-key")
_NO_AUTH = httpx.Auth()

T = TypeVar("T")
R = TypeVar("R")


# -- cache of validators ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PageValidators:
    """What a page answered last time it was stored, keyed by its normalized URL; plain JSON values only."""

    doc_id: str
    etag: str = ""
    last_modified: str = ""  # the `Last-Modified` header as sent
    lastmod: int = 0  # the sitemap's <lastmod>, epoch seconds (0 = none)
    title: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PageValidators:
        return cls(
            doc_id=str(data["doc_id"]),
            etag=str(data.get("etag") or ""),
            last_modified=str(data.get("last_modified") or ""),
            lastmod=int(data.get("lastmod") or 0),
            title=str(data.get("title") or ""),
        )


class PageCache(Protocol):
    """Validators of stored pages, by normalized URL. Backed by the state database in production."""

    def get(self, url: str) -> PageValidators | None: ...

    def put(self, url: str, validators: PageValidators) -> None: ...

    def delete(self, url: str) -> None: ...

    def url_for(self, doc_id: str) -> str | None:
        """A URL whose validators carry `doc_id` (the second look needs the URL behind a hashed doc_id)."""
        ...


class MemoryPageCache:
    """An in-memory PageCache (tests, benchmarks)."""

    def __init__(self) -> None:
        self._entries: dict[str, PageValidators] = {}
        self._lock = threading.Lock()

    def get(self, url: str) -> PageValidators | None:
        with self._lock:
            return self._entries.get(url)

    def put(self, url: str, validators: PageValidators) -> None:
        with self._lock:
            self._entries[url] = validators

    def delete(self, url: str) -> None:
        with self._lock:
            self._entries.pop(url, None)

    def url_for(self, doc_id: str) -> str | None:
        with self._lock:
            return next((url for url, v in self._entries.items() if v.doc_id == doc_id), None)

    def copy(self) -> MemoryPageCache:
        other = MemoryPageCache()
        with self._lock:
            other._entries = dict(self._entries)
        return other

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


# -- options and statistics -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchOptions:
    """How the crawler behaves; the defaults suit a public docs site."""

    user_agent: str = f"{USER_AGENT_TOKEN}/0.1"
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
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


# -- URLs -------------------------------------------------------------------------------------------------------

_TRACKING_PARAMS = frozenset(
    {
        "gclid", "gclsrc", "dclid", "gbraid", "wbraid", "fbclid", "msclkid", "yclid", "twclid", "ttclid", "igshid",
        "mc_cid", "mc_eid", "_ga", "_gl", "_hsenc", "_hsmi", "mkt_tok", "oly_anon_id", "oly_enc_id", "vero_id",
        "rb_clickid", "s_cid", "ref_src",
    }
)
_TRACKING_PREFIXES = ("utm_", "pk_", "hsa_")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")


def _netloc(parts: Any) -> str:
    host = (parts.hostname or "").rstrip(".").lower()
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        pass
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    return host if port is None or port == _DEFAULT_PORTS.get(parts.scheme.lower()) else f"{host}:{port}"


def clean_url(url: str) -> str:
    """The URL to request: no fragment, userinfo or tracking parameters; scheme and host lowercased, no default
    port. Raises ValueError for anything but an absolute http(s) URL."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"not an absolute http(s) URL: {url!r}")
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if not _is_tracking(k)]
    # Nothing dropped: the query stays exactly as the site wrote it.
    query = parts.query if len(kept) == len(pairs) else urlencode(kept, quote_via=quote)
    return urlunsplit((scheme, _netloc(parts), parts.path or "/", query, ""))


def normalize_url(url: str) -> str:
    """The identity of a page: `clean_url`, plus dot segments resolved, escapes normalised, no trailing slash
    (except the root), query parameters sorted."""
    parts = urlsplit(clean_url(url))
    path = _normalize_escapes(_remove_dot_segments(parts.path))
    if len(path) > 1 and path.endswith("/"):
        path = path.rstrip("/") or "/"
    pairs = sorted(parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode(pairs, quote_via=quote), ""))


def _is_tracking(name: str) -> bool:
    lowered = name.lower()
    return lowered in _TRACKING_PARAMS or lowered.startswith(_TRACKING_PREFIXES)


def _remove_dot_segments(path: str) -> str:
    if "." not in path:
        return path
    out: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if len(out) > 1:
                out.pop()
        elif segment != ".":
            out.append(segment)
    if path.endswith(("/.", "/..")):
        out.append("")
    return "/".join(out) or "/"


def _normalize_escapes(path: str) -> str:
    def fix(match: re.Match[str]) -> str:
        char = chr(int(match.group(0)[1:], 16))
        return char if char in _UNRESERVED else match.group(0).upper()

    return _ESCAPE.sub(fix, path)


def host_key(url: str) -> str:
    """`host[:port]` of a URL, as `clean_url` writes it."""
    return _netloc(urlsplit(url))


def _doc_id(url: str) -> str:
    return make_doc_id("web", normalize_url(url))


# -- scope, robots, SSRF ----------------------------------------------------------------------------------------


class _OutOfScope(SourceRejected):
    """The page is not a document of this source (include rules, robots, content type, size, address)."""

    def __init__(self, reason: str, *, source: str = "", url: str = "") -> None:
        super().__init__(reason, source=source, url=url)
        self.reason = reason


class _Refused(_OutOfScope):
    """The SSRF guard refused an address: skipped, but never proof that a page is gone."""


class _Throttled(SourceUnavailable):
    """429 or 503, with the server's `Retry-After` in seconds (0 when none)."""

    def __init__(self, message: str, *, source: str, url: str, retry_after: float) -> None:
        super().__init__(message, source=source, url=url)
        self.retry_after = retry_after


class _Scope:
    """Which URLs belong to the source: `include` regexes, else the configured hosts; `urls` always."""

    def __init__(self, settings: WebSourceSettings) -> None:
        self._patterns = [re.compile(p) for p in settings.include]
        seeds = ([settings.sitemap] if settings.sitemap else []) + list(settings.urls)
        self._hosts = {host_key(clean_url(u)) for u in seeds}
        self._explicit = {normalize_url(u) for u in settings.urls}

    def allows(self, url: str) -> bool:
        if normalize_url(url) in self._explicit:
            return True
        if self._patterns:
            return any(p.search(url) for p in self._patterns)
        return host_key(url) in self._hosts

    def same_site(self, url: str) -> bool:
        """A sitemap may point to sitemaps on its own hosts (the protocol's rule) or in scope."""
        return host_key(url) in self._hosts or self.allows(url)


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _describe(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for name in ("loopback", "link_local", "private", "multicast", "unspecified", "reserved"):
        if getattr(address, f"is_{name}"):
            return name.replace("_", "-")
    return "non-public"


class _HostGate:
    """Per-host politeness: at most `per_host` requests in flight, request starts `interval` seconds apart."""

    def __init__(self, per_host: int, interval: float) -> None:
        self._per_host = max(1, per_host)
        self._default = max(0.0, interval)
        self._lock = threading.Lock()
        self._slots: dict[str, threading.Semaphore] = {}
        self._next: dict[str, float] = {}
        self._intervals: dict[str, float] = {}

    def set_interval(self, host: str, seconds: float) -> None:
        with self._lock:
            self._intervals[host] = max(self._default, seconds)

    @contextlib.contextmanager
    def slot(self, host: str) -> Iterator[None]:
        with self._lock:
            semaphore = self._slots.setdefault(host, threading.Semaphore(self._per_host))
        with semaphore:
            with self._lock:
                now = time.monotonic()
                start = max(now, self._next.get(host, now))
                self._next[host] = start + self._intervals.get(host, self._default)
            if start > now:
                time.sleep(start - now)
            yield


# -- one crawl --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Response:
    """The last hop of a fetch: 200 (with its body), 304, 404 or 410."""

    url: str  # the URL that answered (after redirects)
    status: int
    headers: httpx.Headers
    body: bytes = b""


Kind = Literal["page", "sitemap", "robots"]


class _Crawl:
    """Everything one `list()` or `confirm_gone()` shares: client, DNS answers, robots rules, politeness, stats."""

    def __init__(
        self,
        client: httpx.Client,
        options: FetchOptions,
        scope: _Scope,
        *,
        allow_private: bool,
        source_id: str,
    ) -> None:
        self.client = client
        self.options = options
        self.scope = scope
        self.allow_private = allow_private
        self.source_id = source_id
        self.stats = CrawlStats()
        self._gate = _HostGate(options.per_host, options.min_interval)
        self._lock = threading.Lock()
        self._dns: dict[tuple[str, int], list[ipaddress.IPv4Address | ipaddress.IPv6Address]] = {}
        self._robots: dict[str, RobotFileParser | None] = {}
        self._robots_locks: dict[str, threading.Lock] = {}

    # -- guards

    def guard(self, url: str) -> None:
        """Refuse a host that resolves to a non-public address (unless private hosts are allowed)."""
        if self.allow_private:
            return
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 80)
        for address in self._resolve(host, port, url):
            if not _is_public(address):
                raise _Refused(
                    f"refused: {host} resolves to {address}, a {_describe(address)} address "
                    "(set allow_private_hosts = true only for intranet docs)",
                    source=self.source_id,
                    url=url,
                )

    def _resolve(self, host: str, port: int, url: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        with self._lock:
            known = self._dns.get((host, port))
        if known is not None:
            return known
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise SourceUnavailable(f"cannot resolve {host}: {exc}", source=self.source_id, url=url) from exc
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        with self._lock:
            self._dns[(host, port)] = addresses
        return addresses

    def _check_peer(self, response: httpx.Response, url: str) -> None:
        """The address the socket really connected to (a DNS answer can change between check and connect)."""
        if self.allow_private:
            return
        stream = response.extensions.get("network_stream")
        peer = stream.get_extra_info("server_addr") if stream is not None else None
        if not peer:
            return
        address = ipaddress.ip_address(str(peer[0]).split("%")[0])
        if not _is_public(address):
            raise _Refused(
                f"refused: connected to {address}, a {_describe(address)} address", source=self.source_id, url=url
            )

    def robots_allows(self, url: str) -> bool:
        """robots.txt of the URL's host, for our user agent. Raises SourceUnavailable when it cannot be read."""
        rules = self._robots_for(url)
        return rules is None or rules.can_fetch(USER_AGENT_TOKEN, url)

    def _robots_for(self, url: str) -> RobotFileParser | None:
        parts = urlsplit(url)
        key = f"{parts.scheme}://{parts.netloc}"
        with self._lock:
            if key in self._robots:
                return self._robots[key]
            lock = self._robots_locks.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                if key in self._robots:
                    return self._robots[key]
            rules = self._read_robots(f"{key}/robots.txt")
            with self._lock:
                self._robots[key] = rules
            if rules is not None:
                delay = rules.crawl_delay(USER_AGENT_TOKEN)
                if delay:
                    self._gate.set_interval(host_key(url), min(float(delay), self.options.max_crawl_delay))
            return rules

    def _read_robots(self, url: str) -> RobotFileParser | None:
        try:
            response = self.fetch(url, kind="robots")
        except _OutOfScope:
            return None  # a robots.txt that redirects away or is too large: no rules (RFC 9309: unavailable)
        except SourceRejected:
            return None  # 401, 403 and other 4xx: RFC 9309 "unavailable", crawling is allowed
        if response.status != 200:
            return None  # 404 / 410: no rules
        rules = RobotFileParser()
        rules.parse(response.body.decode("utf-8", errors="replace").splitlines())
        return rules

    # -- fetching

    def fetch(self, url: str, *, kind: Kind, headers: dict[str, str] | None = None) -> _Response:
        """GET `url`, following redirects by hand; each hop must be in scope (pages and sitemaps), allowed by
        robots.txt (pages) and pass the SSRF guard. Returns 200, 304, 404 or 410; raises _OutOfScope (skip),
        SourceRejected (other 4xx, redirect loops) or SourceUnavailable (transient, after retries)."""
        current = url
        for hop in range(self.options.max_redirects + 1):
            if hop:
                self._check_hop(url, current, kind)
            status, response_headers, body = self._request(current, kind=kind, headers=headers or {})
            if status in (301, 302, 303, 307, 308) and response_headers.get("location"):
                try:
                    current = clean_url(urljoin(current, response_headers["location"]))
                except ValueError:
                    raise _OutOfScope("redirected to a non-http(s) URL", source=self.source_id, url=url) from None
                continue
            if status in (200, 203, 304, 404, 410):
                return _Response(current, 200 if status == 203 else status, response_headers, body)
            raise SourceRejected(f"HTTP {status}", source=self.source_id, url=current)
        raise SourceRejected(f"more than {self.options.max_redirects} redirects", source=self.source_id, url=url)

    def _check_hop(self, url: str, hop: str, kind: Kind) -> None:
        """A redirect target: pages stay in scope and within robots.txt, sitemaps on their site."""
        if kind == "page":
            in_scope = self.scope.allows(hop)
        elif kind == "sitemap":
            in_scope = self.scope.same_site(hop)
        else:
            in_scope = True  # robots.txt may redirect anywhere (RFC 9309), the SSRF guard still applies
        if not in_scope:
            raise _OutOfScope(f"redirected outside the include rules, to {hop}", source=self.source_id, url=url)
        if kind == "page" and not self.robots_allows(hop):
            raise _OutOfScope(f"redirected to {hop}, disallowed by robots.txt", source=self.source_id, url=url)

    def _request(self, url: str, *, kind: Kind, headers: dict[str, str]) -> tuple[int, httpx.Headers, bytes]:
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max(1, self.options.attempts)),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type(SourceUnavailable),
            reraise=True,
        )
        return retrying(self._request_once, url, kind, headers)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        backoff = tenacity.wait_random_exponential(multiplier=self.options.backoff_initial, max=self.options.backoff_max)
        seconds = backoff(state)
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, _Throttled) and error.retry_after:
            seconds = max(seconds, min(error.retry_after, self.options.retry_after_max))
        return seconds

    def _request_once(self, url: str, kind: Kind, headers: dict[str, str]) -> tuple[int, httpx.Headers, bytes]:
        self.guard(url)
        request = self.client.build_request(
            "GET", url, headers={"User-Agent": self.options.user_agent, "Accept": _ACCEPT, **headers}
        )
        for name in _CREDENTIAL_HEADERS:
            request.headers.pop(name, None)
        with self._gate.slot(host_key(url)):
            try:
                response = self.client.send(request, stream=True, auth=_NO_AUTH, follow_redirects=False)
            except httpx.TimeoutException as exc:
                raise SourceUnavailable(f"timed out ({type(exc).__name__})", source=self.source_id, url=url) from exc
            except httpx.TransportError as exc:
                raise SourceUnavailable(f"connection failed: {exc}", source=self.source_id, url=url) from exc
            try:
                return self._read(response, url, kind)
            except httpx.TimeoutException as exc:
                raise SourceUnavailable("timed out reading the body", source=self.source_id, url=url) from exc
            except httpx.TransportError as exc:
                raise SourceUnavailable(f"connection lost: {exc}", source=self.source_id, url=url) from exc
            finally:
                response.close()
                with self._lock:
                    self.stats.requests += 1
                    self.stats.bytes_downloaded += response.num_bytes_downloaded

    def _read(self, response: httpx.Response, url: str, kind: Kind) -> tuple[int, httpx.Headers, bytes]:
        self._check_peer(response, url)
        status = response.status_code
        if status == 429 or status == 503:
            raise _Throttled(
                f"HTTP {status}", source=self.source_id, url=url, retry_after=_retry_after(response.headers)
            )
        if status >= 500:
            raise SourceUnavailable(f"HTTP {status}", source=self.source_id, url=url)
        if status not in (200, 203):
            return status, response.headers, b""
        if kind == "page" and _page_format(url, response.headers) is None:
            raise _OutOfScope(
                f"content type {response.headers.get('content-type', '(none)')!r} is not a page",
                source=self.source_id,
                url=url,
            )
        limit = {
            "page": self.options.max_bytes,
            "sitemap": self.options.max_sitemap_bytes,
            "robots": self.options.max_robots_bytes,
        }[kind]
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit and "content-encoding" not in response.headers:
            raise _OutOfScope(f"larger than {limit} bytes", source=self.source_id, url=url)
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > limit:
                raise _OutOfScope(f"larger than {limit} bytes", source=self.source_id, url=url)
        return status, response.headers, bytes(body)

    # -- threads

    def map(self, function: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """`function` over `items` on the worker threads, in order; each task keeps the caller's log context."""
        workers = max(1, min(self.options.workers, len(items)))
        if workers == 1:
            return [function(item) for item in items]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kbsync-web") as pool:
            futures = [pool.submit(contextvars.copy_context().run, function, item) for item in items]
            return [future.result() for future in futures]


def _retry_after(headers: httpx.Headers) -> float:
    value = headers.get("retry-after", "").strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time()) if value else 0.0
    except (TypeError, ValueError):
        return 0.0


def _content_type(headers: httpx.Headers) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


def _page_format(url: str, headers: httpx.Headers) -> Literal["html", "markdown"] | None:
    content_type = _content_type(headers)
    is_md_path = urlsplit(url).path.lower().endswith(_MARKDOWN_SUFFIXES)
    if content_type in _HTML_TYPES:
        return "html"
    if content_type in _MARKDOWN_TYPES or (content_type == "text/plain" and is_md_path):
        return "markdown"
    if not content_type:
        return "markdown" if is_md_path else "html"
    return None


# -- sitemaps ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _SitemapEntry:
    loc: str
    lastmod: int = 0


@dataclass(frozen=True, slots=True)
class _Sitemap:
    is_index: bool
    entries: list[_SitemapEntry]


def _gunzip(data: bytes, limit: int) -> bytes:
    """Decompress a gzip file, refusing more than `limit` bytes of output (a gzip bomb) and a truncated file."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = decompressor.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ValueError(f"not valid gzip: {exc}") from None
    if len(out) > limit:
        raise ValueError(f"larger than {limit} bytes once decompressed")
    if not decompressor.eof:
        raise ValueError("truncated gzip file")
    return out


def _parse_sitemap(data: bytes, limit: int) -> _Sitemap:
    """A sitemap or sitemap index (XML, optionally gzipped) or a plain-text list of URLs. Raises ValueError."""
    if data[:2] == b"\x1f\x8b":
        data = _gunzip(data, limit)
    text = data.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not text.startswith(b"<"):
        lines = [line.strip() for line in text.decode("utf-8", errors="replace").splitlines()]
        return _Sitemap(False, [_SitemapEntry(line) for line in lines if line.startswith(("http://", "https://"))])
    if b"<!DOCTYPE" in text[:2048].upper() or b"<!ENTITY" in text[:4096].upper():
        raise ValueError("a sitemap must not declare a DTD or entities")
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise ValueError(f"not valid XML: {exc}") from None
    name = _local(root.tag)
    if name not in ("sitemapindex", "urlset"):
        raise ValueError(f"unexpected root element <{name}>")
    child = "sitemap" if name == "sitemapindex" else "url"
    entries = []
    for element in root:
        if _local(element.tag) != child:
            continue
        fields = {_local(sub.tag): (sub.text or "").strip() for sub in element}
        if fields.get("loc"):
            entries.append(_SitemapEntry(fields["loc"], _parse_lastmod(fields.get("lastmod", ""))))
    return _Sitemap(name == "sitemapindex", entries)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _parse_lastmod(value: str) -> int:
    """W3C datetime (YYYY, YYYY-MM, YYYY-MM-DD, or a full timestamp) to epoch seconds; 0 when unreadable."""
    if not value:
        return 0
    try:
        if re.fullmatch(r"\d{4}(-\d{2})?", value):
            value = value + ("-01-01" if len(value) == 4 else "-01")
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return 0
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return max(0, int(parsed.timestamp()))


# -- HTML head ----------------------------------------------------------------------------------------------------


class _HeadParser(HTMLParser):
    """`<html lang>`, `<link rel=canonical>`, `<title>`, `og:title` and the first `<h1>` of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lang = ""
        self.canonical = ""
        self.title = ""
        self.og_title = ""
        self.h1 = ""
        self.content_language = ""
        self._in: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k.lower(): (v or "") for k, v in attrs}
        if tag == "html" and not self.lang:
            self.lang = values.get("lang", "") or values.get("xml:lang", "")
        elif tag == "link" and "canonical" in values.get("rel", "").lower().split() and not self.canonical:
            self.canonical = values.get("href", "").strip()
        elif tag == "meta":
            if values.get("property", "").lower() == "og:title" and not self.og_title:
                self.og_title = values.get("content", "").strip()
            if values.get("http-equiv", "").lower() == "content-language" and not self.content_language:
                self.content_language = values.get("content", "").split(",")[0].strip()
        elif tag in ("title", "h1") and self._in is None and not getattr(self, tag):
            self._in, self._text = tag, []

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            setattr(self, tag, " ".join("".join(self._text).split()))
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in is not None:
            self._text.append(data)


def _head(html: str) -> _HeadParser:
    parser = _HeadParser()
    try:
        parser.feed(html[:500_000])
        parser.close()
    except Exception:  # noqa: BLE001 - html.parser raises assorted errors on broken markup; keep what was read
        pass
    return parser


def _locale(tag: str) -> str:
    """A language tag as Chatwoot writes locales: `en`, `pt_BR` (`en-us` -> `en_US`, `zh-Hans-CN` -> `zh_CN`)."""
    parts = [p for p in re.split(r"[-_]", tag.strip()) if p]
    if not parts or not re.fullmatch(r"[A-Za-z]{2,3}", parts[0]):
        return ""
    region = next((p for p in parts[1:] if re.fullmatch(r"[A-Za-z]{2}|\d{3}", p)), "")
    return parts[0].lower() + (f"_{region.upper()}" if region else "")


def _decode(body: bytes, headers: httpx.Headers) -> str:
    charset = ""
    match = re.search(r"charset=([\w.:-]+)", headers.get("content-type", ""), re.I)
    if match:
        charset = match.group(1)
    else:
        meta = re.search(rb"<meta[^>]+charset=[\"']?([\w.:-]+)", body[:4096], re.I)
        charset = meta.group(1).decode("ascii", errors="ignore") if meta else "utf-8"
    try:
        return body.decode(charset, errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


_MD_H1 = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.M)


def _extract(html: str, source_id: str, url: str) -> tuple[str, str]:
    """`html_to_markdown`, its failures (trafilatura and lxml on hostile markup) translated into our tree."""
    try:
        return html_to_markdown(html)
    except Exception as exc:  # noqa: BLE001 - the boundary where the extraction library enters
        raise SourceRejected(f"content extraction failed: {type(exc).__name__}: {exc}", source=source_id, url=url) from exc


def _http_date(value: str) -> int:
    try:
        return max(0, int(parsedate_to_datetime(value).timestamp())) if value else 0
    except (TypeError, ValueError, IndexError):
        return 0


# -- the source -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    url: str  # cleaned, what is requested
    key: str  # normalize_url(url): the cache key
    lastmod: int = 0


@dataclass(slots=True)
class _Discovery:
    targets: list[_Target]
    complete: bool
    errors: list[DocError] = field(default_factory=list)


@dataclass(slots=True)
class _Visit:
    """What one page came to; exactly one of the fields below `target` is set (none: skipped)."""

    target: _Target
    document: Document | None = None
    validators: PageValidators | None = None  # to stage (document, or a 304 with news)
    unchanged: str = ""  # doc_id of a 304 / unchanged <lastmod>
    gone: str = ""  # doc_id of a 404 / 410
    error: DocError | None = None
    lastmod_skip: bool = False  # unchanged without a request
    drop_validators: bool = False  # gone or out of scope: a later 304 must not stand for it


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
        self._scope = _Scope(settings)
        self._staged: dict[str, PageValidators] = {}
        self._seen: dict[str, str] = {}  # doc_id -> URL, from the last list(): the second look's addresses
        self._lock = threading.Lock()

    # -- the Source protocol

    def list(self, *, rebuild: bool = False, conditional: bool = True, trust_lastmod: bool = False) -> Listing:
        """Every page now. `rebuild` or `conditional=False` downloads every page again; `trust_lastmod=True`
        skips pages whose sitemap `<lastmod>` is unchanged since they were stored (the cheap poll).

        Raises SourceRejected (a refused, missing or malformed root sitemap or `urls` entry) or SourceUnavailable
        (the root sitemap or robots.txt could not be read): nothing trustworthy was listed.
        """
        conditional = conditional and not rebuild
        started = time.monotonic()
        with self._crawl() as crawl:
            discovery = self._discover(crawl)
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
                discovery = self._discover(crawl)
            except SourceError as exc:
                log.warning("web.confirm_without_sitemap", error=str(exc))
                discovery = _Discovery([], complete=False)
            listed = {t.key for t in discovery.targets}
            listed_ids = {_doc_id(t.key) for t in discovery.targets}
            for doc_id in doc_ids:
                url = self._url_of(doc_id)
                if self._confirm_one(crawl, doc_id, url, discovery.complete, listed, listed_ids):
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
    def _crawl(self) -> Iterator[_Crawl]:
        if self._client is not None:
            yield self._new_crawl(self._client)
            return
        timeout = httpx.Timeout(self.options.read_timeout, connect=self.options.connect_timeout)
        limits = httpx.Limits(max_connections=max(4, self.options.workers * 2))
        with httpx.Client(timeout=timeout, limits=limits, follow_redirects=False, trust_env=False) as client:
            yield self._new_crawl(client)

    def _new_crawl(self, client: httpx.Client) -> _Crawl:
        return _Crawl(
            client,
            self.options,
            self._scope,
            allow_private=self.settings.allow_private_hosts,
            source_id=self.source_id,
        )

    def _discover(self, crawl: _Crawl) -> _Discovery:
        """`urls`, then the sitemaps' pages: in scope, allowed by robots.txt, distinct, at most `max_pages`
        (sitemaps after the one that fills `max_pages` are not read)."""
        discovery = _Discovery([], complete=True)
        explicit = [_SitemapEntry(self._explicit(crawl, url)) for url in self.settings.urls]
        sitemap_pages = self._read_sitemaps(crawl, discovery) if self.settings.sitemap else iter(())
        seen: set[str] = set()
        for entry in itertools.chain(explicit, sitemap_pages):
            if len(discovery.targets) >= self.settings.max_pages:
                break
            try:
                url = clean_url(entry.loc)
            except ValueError:
                continue
            key = normalize_url(url)
            if key in seen or not self._scope.allows(url):
                continue
            seen.add(key)
            if not crawl.robots_allows(url):
                log.debug("web.robots_disallowed", url=url)
                continue
            discovery.targets.append(_Target(url, key, entry.lastmod))
        return discovery

    def _explicit(self, crawl: _Crawl, url: str) -> str:
        """A configured URL: a refused address fails the listing (SourceRejected), it is never skipped."""
        cleaned = clean_url(url)
        try:
            crawl.guard(cleaned)
        except _OutOfScope as exc:
            raise SourceRejected(exc.reason, source=self.source_id, url=cleaned) from None
        return cleaned

    def _read_sitemaps(self, crawl: _Crawl, discovery: _Discovery) -> Iterator[_SitemapEntry]:
        """The pages of the sitemap, an index followed breadth-first. The root failing raises; a child failing
        makes the listing incomplete (its pages may be missing, so nothing may be deleted)."""
        root = self._explicit(crawl, self.settings.sitemap)
        queue: list[tuple[str, int]] = [(root, 0)]
        visited: set[str] = set()
        while queue:
            url, depth = queue.pop(0)
            if url in visited:
                continue
            visited.add(url)
            if len(visited) > self.options.max_sitemaps:
                discovery.complete = False
                discovery.errors.append(DocError(_doc_id(url), f"{self.source_id} {url}: too many sitemaps"))
                return
            try:
                sitemap = self._read_sitemap(crawl, url)
            except SourceError as exc:
                if url == root:
                    raise
                discovery.complete = False
                discovery.errors.append(DocError(_doc_id(url), f"sitemap: {exc}"))
                continue
            if not sitemap.is_index:
                yield from sitemap.entries
                continue
            for entry in sitemap.entries:
                try:
                    child = clean_url(entry.loc)
                except ValueError:
                    continue
                if depth + 1 >= self.options.sitemap_depth:
                    discovery.complete = False
                    discovery.errors.append(DocError(_doc_id(child), f"sitemap {child}: nested too deep"))
                elif crawl.scope.same_site(child):
                    queue.append((child, depth + 1))
                else:
                    log.warning("web.sitemap_off_site", sitemap=child)

    def _read_sitemap(self, crawl: _Crawl, url: str) -> _Sitemap:
        response = crawl.fetch(url, kind="sitemap")
        crawl.stats.sitemaps += 1
        if response.status != 200:
            raise SourceRejected(f"sitemap answered HTTP {response.status}", source=self.source_id, url=url)
        try:
            return _parse_sitemap(response.body, self.options.max_sitemap_bytes)
        except ValueError as exc:
            raise SourceRejected(f"unreadable sitemap: {exc}", source=self.source_id, url=url) from None

    # -- pages

    def _visit(
        self, crawl: _Crawl, target: _Target, cached: PageValidators | None, *, conditional: bool, trust_lastmod: bool
    ) -> _Visit:
        """One page (on a worker thread: the cache is read and written by the caller, never here)."""
        if trust_lastmod and cached is not None and target.lastmod and cached.lastmod == target.lastmod:
            return _Visit(target, unchanged=cached.doc_id, lastmod_skip=True)
        fallback_id = cached.doc_id if cached is not None else _doc_id(target.key)
        try:
            response = crawl.fetch(target.url, kind="page", headers=_conditional_headers(cached) if conditional else {})
            if response.status in (404, 410):
                return _Visit(target, gone=fallback_id, drop_validators=True)
            if response.status == 304:
                return self._not_modified(target, cached, response)
            document = self._document(target, response)
        except _OutOfScope as exc:
            log.info("web.page_skipped", url=target.url, reason=exc.reason)
            return _Visit(target, drop_validators=True)
        except SourceError as exc:
            return _Visit(target, error=DocError(fallback_id, str(exc)))
        validators = PageValidators(
            doc_id=document.doc_id,
            etag=response.headers.get("etag", ""),
            last_modified=response.headers.get("last-modified", ""),
            lastmod=target.lastmod,
            title=document.title,
        )
        return _Visit(target, document=document, validators=validators)

    def _not_modified(self, target: _Target, cached: PageValidators | None, response: _Response) -> _Visit:
        if cached is None:
            raise SourceRejected("HTTP 304 to an unconditional request", source=self.source_id, url=target.url)
        fresh = replace(
            cached,
            etag=response.headers.get("etag", "") or cached.etag,
            last_modified=response.headers.get("last-modified", "") or cached.last_modified,
            lastmod=target.lastmod or cached.lastmod,
        )
        return _Visit(target, unchanged=cached.doc_id, validators=fresh if fresh != cached else None)

    @staticmethod
    def _count(stats: CrawlStats, visits: list[_Visit]) -> None:
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

    def _document(self, target: _Target, response: _Response) -> Document:
        page_format = _page_format(response.url, response.headers)
        text = _decode(response.body, response.headers)
        if page_format == "markdown":
            markdown = text.lstrip("\ufeff")
            heading = _MD_H1.search(markdown)
            title, url, locale = (heading.group(1).strip() if heading else ""), response.url, ""
        else:
            markdown, title = _extract(text, self.source_id, response.url)
            head = _head(text)
            title = title or head.h1 or head.og_title or head.title
            url = self._canonical(head.canonical, response.url)
            locale = _locale(head.lang or head.content_language or response.headers.get("content-language", ""))
        if not markdown.strip():
            raise _OutOfScope("no main content", source=self.source_id, url=response.url)
        return Document(
            doc_id=_doc_id(url),
            source=self.source_id,
            kind=self.kind,
            title=title or _title_from_url(url),
            text=markdown.strip(),
            url=url,
            locale=locale,
            updated_at=_updated_at(response.headers.get("last-modified", ""), target.lastmod),
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

    def _assemble(self, visits: list[_Visit], discovery: _Discovery) -> Listing:
        """One document per doc_id: the page served from its own canonical URL wins, else the first one."""
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
        )

    # -- the second look

    def _url_of(self, doc_id: str) -> str | None:
        with self._lock:
            url = self._seen.get(doc_id)
        if url is None:
            url = self.cache.url_for(doc_id)
        if url is None and doc_id.startswith("web:") and not doc_id.startswith("web:sha256:"):
            url = doc_id[len("web:"):]
        return url

    def _confirm_one(
        self,
        crawl: _Crawl,
        doc_id: str,
        url: str | None,
        sitemap_complete: bool,
        listed: set[str],
        listed_ids: set[str],
    ) -> bool:
        """404/410 now, or (only while the sitemaps were re-read in full) no longer listed, out of scope, or
        serving another document. A transient failure or an SSRF refusal proves nothing."""
        if url is None:
            # No address for a hashed id: gone only when the site answered in full and nothing lists it.
            return sitemap_complete and doc_id not in listed_ids
        key = normalize_url(url)
        if sitemap_complete and key not in listed and doc_id not in listed_ids:
            return True  # dropped from a complete sitemap (and not among `urls`)
        try:
            if not self._scope.allows(url) or not crawl.robots_allows(url):
                return sitemap_complete  # no longer ours to fetch
            response = crawl.fetch(clean_url(url), kind="page")
            if response.status in (404, 410):
                return True
            if not sitemap_complete:
                return False
            document = self._document(_Target(clean_url(url), key), response)
        except _Refused as exc:
            log.warning("web.not_confirmed", doc_id=doc_id, error=exc.reason)
            return False
        except _OutOfScope:
            return sitemap_complete
        except SourceError as exc:
            log.info("web.not_confirmed", doc_id=doc_id, error=str(exc))
            return False
        return document.doc_id != doc_id  # the page now stands for another document


def _conditional_headers(cached: PageValidators | None) -> dict[str, str]:
    if cached is None:
        return {}
    headers = {}
    if cached.etag:
        headers["If-None-Match"] = cached.etag
    if cached.last_modified:
        headers["If-Modified-Since"] = cached.last_modified
    return headers


def _updated_at(last_modified: str, lastmod: int) -> int:
    """`Last-Modified`, else the sitemap's `<lastmod>`, else 0; never in the future."""
    value = _http_date(last_modified) or lastmod
    return min(value, int(time.time())) if value else 0


def _title_from_url(url: str) -> str:
    segment = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    for suffix in _MARKDOWN_SUFFIXES + (".html", ".htm"):
        segment = segment.removesuffix(suffix)
    return segment.replace("-", " ").replace("_", " ").strip() or host_key(url)

