"""One crawl: the HTTP client, DNS answers and the SSRF guard, robots.txt rules, politeness, retries, redirects
followed by hand, body limits and statistics, shared by everything one `list()` or `confirm_gone()` does."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, TypeVar
from urllib.parse import urljoin, urlsplit
from urllib.robotparser import RobotFileParser

import httpx
import tenacity

from kbsync.errors import SourceRejected, SourceUnavailable
from kbsync.sources._body import ACCEPT_ENCODING, BodyTooLarge, UndecodableBody, read_bounded
from kbsync.sources._http import parse_retry_after, transport_failure
from kbsync.sources.web.deadline import deadline, passed
from kbsync.sources.web.options import USER_AGENT_TOKEN, CrawlStats, FetchOptions
from kbsync.sources.web.pages import page_format
from kbsync.sources.web.politeness import HostGate
from kbsync.sources.web.scope import OutOfScope, Scope
from kbsync.sources.web.ssrf import AddressGuard
from kbsync.sources.web.urls import clean_url, host_key

__all__ = ["Crawl", "Kind", "Response"]

_ACCEPT = "text/html,application/xhtml+xml;q=0.9,text/markdown;q=0.9,text/plain;q=0.5,*/*;q=0.1"
# Never sent, whatever the client passed in carries.
_CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "cookie", "api_access_token", "x-api-key")
_NO_AUTH = httpx.Auth()

T = TypeVar("T")
R = TypeVar("R")


class _Throttled(SourceUnavailable):
    """429 or 503, with the server's `Retry-After` in seconds (0 when none)."""

    def __init__(self, message: str, *, source: str, url: str, retry_after: float) -> None:
        super().__init__(message, source=source, url=url)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Response:
    """The last hop of a fetch: 200 (with its body), 304, 404 or 410."""

    url: str  # the URL that answered (after redirects)
    status: int
    headers: httpx.Headers
    body: bytes = b""


Kind = Literal["page", "sitemap", "robots"]


class Crawl:
    """Everything one `list()` or `confirm_gone()` shares: client, DNS answers, robots rules, politeness, stats."""

    def __init__(
        self,
        client: httpx.Client,
        options: FetchOptions,
        scope: Scope,
        *,
        addresses: AddressGuard,
        source_id: str,
    ) -> None:
        self.client = client
        self.options = options
        self.scope = scope
        self.addresses = addresses  # the client's transport connects to what this resolved (PinnedTransport)
        self.source_id = source_id
        self.stats = CrawlStats()
        self._gate = HostGate(options.per_host, options.min_interval)
        self._lock = threading.Lock()
        self._robots: dict[str, RobotFileParser | None] = {}
        self._robots_locks: dict[str, threading.Lock] = {}
        self._ends = time.monotonic() + options.crawl_deadline

    # -- guards

    def guard(self, url: str) -> None:
        """Refuse a host that resolves to a non-public address (unless private hosts are allowed)."""
        self.addresses.check(url)

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
        except OutOfScope:
            return None  # a robots.txt that redirects away or is too large: no rules (RFC 9309: unavailable)
        except SourceRejected:
            return None  # 401, 403 and other 4xx: RFC 9309 "unavailable", crawling is allowed
        if response.status != 200:
            return None  # 404 / 410: no rules
        rules = RobotFileParser()
        rules.parse(response.body.decode("utf-8", errors="replace").splitlines())
        return rules

    # -- fetching

    def fetch(self, url: str, *, kind: Kind, headers: dict[str, str] | None = None) -> Response:
        """GET `url`, following redirects by hand; each hop must be in scope (pages and sitemaps), allowed by
        robots.txt (pages) and pass the SSRF guard. Returns 200, 304, 404 or 410; raises OutOfScope (skip),
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
                    raise OutOfScope("redirected to a non-http(s) URL", source=self.source_id, url=url) from None
                continue
            if status in (200, 203, 304, 404, 410):
                return Response(current, 200 if status == 203 else status, response_headers, body)
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
            raise OutOfScope(f"redirected outside the include rules, to {hop}", source=self.source_id, url=url)
        if kind == "page" and not self.robots_allows(hop):
            raise OutOfScope(f"redirected to {hop}, disallowed by robots.txt", source=self.source_id, url=url)

    def _request(self, url: str, *, kind: Kind, headers: dict[str, str]) -> tuple[int, httpx.Headers, bytes]:
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max(1, self.options.attempts)),
            wait=self._wait,
            retry=tenacity.retry_if_exception(_retryable),
            reraise=True,
        )
        return retrying(self._request_once, url, kind, headers)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        options = self.options
        backoff = tenacity.wait_random_exponential(multiplier=options.backoff_initial, max=options.backoff_max)
        seconds = backoff(state)
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, _Throttled) and error.retry_after:
            seconds = max(seconds, min(error.retry_after, self.options.retry_after_max))
        return seconds

    def _request_once(self, url: str, kind: Kind, headers: dict[str, str]) -> tuple[int, httpx.Headers, bytes]:
        self._check_crawl_deadline(url)
        self.guard(url)
        request = self.client.build_request(
            "GET",
            url,
            headers={
                "User-Agent": self.options.user_agent,
                "Accept": _ACCEPT,
                "Accept-Encoding": ACCEPT_ENCODING,  # what read_bounded inflates, with a bound (a decompression bomb)
                **headers,
            },
        )
        for name in _CREDENTIAL_HEADERS:
            request.headers.pop(name, None)
        with self._gate.slot(host_key(url)), deadline(self._attempt_seconds()):
            try:
                response = self.client.send(request, stream=True, auth=_NO_AUTH, follow_redirects=False)
            except httpx.TransportError as exc:
                raise self._failed(url, exc) from exc
            try:
                return self._read(response, url, kind)
            except httpx.TransportError as exc:  # mid-body
                raise self._failed(url, exc) from exc
            finally:
                response.close()
                with self._lock:
                    self.stats.requests += 1
                    self.stats.bytes_downloaded += response.num_bytes_downloaded

    def _read(self, response: httpx.Response, url: str, kind: Kind) -> tuple[int, httpx.Headers, bytes]:
        self.addresses.check_peer(response, url)
        status = response.status_code
        if status == 429 or status == 503:
            retry_after = parse_retry_after(response.headers.get("retry-after")) or 0.0
            raise _Throttled(f"HTTP {status}", source=self.source_id, url=url, retry_after=retry_after)
        if status >= 500:
            raise SourceUnavailable(f"HTTP {status}", source=self.source_id, url=url)
        if status not in (200, 203):
            return status, response.headers, b""
        if kind == "page" and page_format(url, response.headers) is None:
            raise OutOfScope(
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
            raise OutOfScope(f"larger than {limit} bytes", source=self.source_id, url=url)
        try:
            raw = _until_deadline(response.iter_raw())  # each network read as it comes: checked per read
            body = read_bounded(response, limit=limit, chunks=raw)
        except BodyTooLarge as exc:
            raise OutOfScope(str(exc), source=self.source_id, url=url) from None
        except UndecodableBody as exc:
            raise SourceRejected(str(exc), source=self.source_id, url=url) from None
        return status, response.headers, body

    # -- deadlines

    def _attempt_seconds(self) -> float:
        return max(0.0, min(self.options.request_deadline, self._ends - time.monotonic()))

    def _check_crawl_deadline(self, url: str) -> None:
        if time.monotonic() >= self._ends:
            raise _Late(
                f"not fetched: the crawl ran past its {self.options.crawl_deadline:g} s deadline",
                source=self.source_id,
                url=url,
            )

    def _failed(self, url: str, exc: httpx.TransportError) -> SourceUnavailable:
        """A failed exchange worded as every source words it, unless a deadline of ours is what cut it off."""
        if not isinstance(exc, httpx.TimeoutException) or not passed():
            return SourceUnavailable(transport_failure(exc), source=self.source_id, url=url)
        if time.monotonic() >= self._ends:
            return _Late(
                f"the crawl ran past its {self.options.crawl_deadline:g} s deadline", source=self.source_id, url=url
            )
        return SourceUnavailable(
            f"no complete answer within {self.options.request_deadline:g} s (a trickling server?)",
            source=self.source_id,
            url=url,
        )

    # -- threads

    def map(self, function: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """`function` over `items` on the worker threads, in order; each task keeps the caller's log context."""
        workers = max(1, min(self.options.workers, len(items)))
        if workers == 1:
            return [function(item) for item in items]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kbsync-web") as pool:
            futures = [pool.submit(contextvars.copy_context().run, function, item) for item in items]
            return [future.result() for future in futures]


class _Late(SourceUnavailable):
    """The crawl's deadline passed: not retried (nothing would finish), and never proof that a page is gone."""


def _retryable(error: BaseException) -> bool:
    return isinstance(error, SourceUnavailable) and not isinstance(error, _Late)


def _until_deadline(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """`chunks`, stopping with httpx.ReadTimeout once the request's deadline passed (a client passed in from
    outside has no deadline on its sockets)."""
    for chunk in chunks:
        if passed():
            raise httpx.ReadTimeout("the request's total deadline passed")
        yield chunk
