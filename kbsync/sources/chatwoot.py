"""`kind = "chatwoot"`: the articles of one Chatwoot Help Center portal (docs/chatwoot.md §1-§3).

Two layers:
- `ChatwootClient` speaks HTTP for one tenant: one `httpx.Client`, the `api_access_token` header, timeouts, a
  request-rate limit, retries with backoff on 429/5xx/timeouts, and the translation of everything that goes wrong
  into `SourceUnavailable` (a retry may help) or `SourceRejected` (it will not). Messages name the URL, never the
  token.
- `ChatwootSource` turns a portal into Documents: a complete listing for reconcile (`list`), the second look
  (`confirm_gone`) and the cheap newest-first scan for polls (`changes_since`).

The article list is sorted by `updated_at` desc with no tie-breaker, 25 per page, and shifts while it is read.
A listing is only called complete when what it read provably covers the list (see `_Scan`).
"""

from __future__ import annotations

import builtins
import email.utils
import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import structlog
import tenacity

from kbsync import __version__
from kbsync.errors import ConfigError, IncompleteListing, SourceError, SourceRejected, SourceUnavailable
from kbsync.settings import ChatwootSourceSettings, TenantSettings
from kbsync.sources import Changes, Document, Listing
from kbsync.webhooks import chatwoot_doc_id, chatwoot_source_id

__all__ = ["PER_PAGE", "Changes", "ChatwootClient", "ChatwootClientOptions", "ChatwootSource"]

log = structlog.get_logger(__name__)

PER_PAGE = 25  # Kaminari's default; the account articles endpoint has no per_page override (docs/chatwoot.md §2)
_BACKOFF_INITIAL = 0.5  # seconds before the first retry of a request


# ---------------------------------------------------------------------------------------------- the client


@dataclass(frozen=True, slots=True)
class ChatwootClientOptions:
    """How a `ChatwootClient` waits, retries and paces itself; tests shrink these to stay fast."""

    connect_timeout: float = 5.0
    read_timeout: float = 20.0
    # Per request, the first one included; None: only the time budget bounds the retries. Chatwoot's throttle
    # (Rack::Attack) answers 429 without Retry-After for a whole window, so an attempt count gave up too early.
    attempts: int | None = None
    retry_budget_seconds: float = 60.0  # no new attempt starts after this much time spent on one request
    backoff_initial: float = _BACKOFF_INITIAL  # first wait; doubles per attempt, plus up to this much random jitter
    backoff_max: float = 10.0
    requests_per_second: float | None = 10.0  # per tenant, across threads; None: no limit (tenant setting by default)

    @classmethod
    def of_tenant(cls, tenant: TenantSettings) -> ChatwootClientOptions:
        """The options a tenant's settings ask for (pace, retry budget, longest backoff)."""
        return cls(
            requests_per_second=tenant.chatwoot_requests_per_second,
            retry_budget_seconds=tenant.chatwoot_retry_seconds,
            backoff_initial=min(_BACKOFF_INITIAL, tenant.chatwoot_max_backoff_seconds),
            backoff_max=tenant.chatwoot_max_backoff_seconds,
        )


class _Retryable(Exception):
    """One attempt failed in a way a later attempt may not (429, 5xx, timeout, cut-off body)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _RateLimiter:
    """At most one request per `interval` seconds, shared by every thread using the client."""

    def __init__(self, requests_per_second: float | None) -> None:
        self._interval = 1.0 / requests_per_second if requests_per_second else 0.0
        self._lock = threading.Lock()
        self._next = 0.0

    def wait(self) -> None:
        if not self._interval:
            return
        with self._lock:  # reserve a slot under the lock, sleep outside it
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self._interval
        if slot > now:
            time.sleep(slot - now)


class ChatwootClient:
    """The Help Center part of the Chatwoot account API, for one tenant.

    Opened once per tenant and shared by that tenant's sources; whoever opened it closes it. Every method raises
    `SourceRejected` (bad token, unknown portal, a payload of the wrong shape) or `SourceUnavailable` (still
    failing after the retries) and nothing from httpx.
    """

    def __init__(
        self,
        tenant: TenantSettings,
        options: ChatwootClientOptions | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        token = tenant.api_token
        if not tenant.chatwoot_url or tenant.account_id is None or token is None:
            raise ConfigError(
                f"tenant {tenant.id!r} needs chatwoot_url, account_id and a set api_token_env to read Chatwoot",
                key="api_token_env" if token is None else "chatwoot_url",
            )
        self.tenant_id = tenant.id
        self.account_id = tenant.account_id
        self.options = options or ChatwootClientOptions.of_tenant(tenant)
        self._limiter = _RateLimiter(self.options.requests_per_second)
        self._backoff = tenacity.wait_exponential(
            multiplier=self.options.backoff_initial, max=self.options.backoff_max
        ) + tenacity.wait_random(0, self.options.backoff_initial)
        self._http = httpx.Client(
            base_url=tenant.chatwoot_url,
            # The token goes into the client's default headers and nowhere else: not into URLs, logs or errors.
            headers={
                "api_access_token": token.get_secret_value(),
                "accept": "application/json",
                "user-agent": f"kbsync/{__version__}",
            },
            timeout=httpx.Timeout(self.options.read_timeout, connect=self.options.connect_timeout),
            # A redirect would carry api_access_token to wherever it points (httpx strips only Authorization).
            follow_redirects=False,
            transport=transport,
        )

    # -- lifecycle ------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool; idempotent. The client refuses requests afterwards."""
        self._http.close()

    @property
    def closed(self) -> bool:
        return self._http.is_closed

    def __enter__(self) -> ChatwootClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- endpoints ------------------------------------------------------------------------------------

    def portals(self) -> list[dict[str, Any]]:
        """Every portal of the account (`GET …/portals`, not paginated)."""
        path = f"/api/v1/accounts/{self.account_id}/portals"
        body = self._get_json(path, None, source="chatwoot", not_found=f"account {self.account_id} not found")
        payload = body.get("payload") if isinstance(body, dict) else None
        if not isinstance(payload, list) or not all(isinstance(p, dict) and "slug" in p for p in payload):
            raise SourceRejected("unexpected response: no list of portals in `payload`", url=self._url(path, None))
        return payload

    def portal(self, slug: str) -> dict[str, Any]:
        """One portal by slug (`GET …/portals/<slug>`): custom_domain, archived, default locale, counts."""
        path = f"/api/v1/accounts/{self.account_id}/portals/{quote(slug, safe='')}"
        body = self._get_json(path, None, source=_source_id(slug), not_found=self._portal_not_found(slug))
        if not isinstance(body, dict) or body.get("slug") != slug:
            raise SourceRejected(
                "unexpected response: not a portal object with this slug", source=_source_id(slug), url=self._url(path, None)
            )
        return body

    def list_page(self, slug: str, page: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """One page of the portal's articles, every status, newest `updated_at` first: `(articles, meta)`.

        No `status` filter (an unpublished article must be seen to be removed) and never `category_slug` (it
        switches the order to `position`). Each article is checked to carry what a sync needs.
        """
        path = f"/api/v1/accounts/{self.account_id}/portals/{quote(slug, safe='')}/articles"
        params = {"page": str(page)}
        source = _source_id(slug)
        body = self._get_json(path, params, source=source, not_found=self._portal_not_found(slug))
        url = self._url(path, params)
        if not isinstance(body, dict) or not isinstance(body.get("payload"), list):
            raise SourceRejected("unexpected response: no `payload` list of articles", source=source, url=url)
        if not isinstance(body.get("meta"), dict) or not _is_int(body["meta"].get("articles_count")):
            raise SourceRejected("unexpected response: no `meta` object with `articles_count`", source=source, url=url)
        articles: list[dict[str, Any]] = body["payload"]
        for index, article in enumerate(articles):
            problem = _article_problem(article)
            if problem:
                raise SourceRejected(f"unexpected article #{index} on the page: {problem}", source=source, url=url)
        return articles, body["meta"]

    # -- transport ------------------------------------------------------------------------------------

    def _portal_not_found(self, slug: str) -> str:
        return f"portal {slug!r} not found in account {self.account_id} (or the account does not exist)"

    def _url(self, path: str, params: dict[str, str] | None) -> str:
        return str(self._http.build_request("GET", path, params=params).url)

    def _get_json(self, path: str, params: dict[str, str] | None, *, source: str, not_found: str) -> Any:
        """GET and decode JSON, retrying transient failures; see the class docstring for what it raises."""
        url = self._url(path, params)
        started = time.monotonic()
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Retryable),
            stop=self._stop,
            wait=self._wait,
            before_sleep=lambda state: log.warning(
                "chatwoot.retry",
                url=url,
                attempt=state.attempt_number,
                reason=str(state.outcome.exception()) if state.outcome else "",
                wait_seconds=round(state.next_action.sleep, 3) if state.next_action else 0,
            ),
            reraise=True,
        )
        try:
            return retrying(self._attempt, path, params, url, source, not_found)
        except _Retryable as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            raise SourceUnavailable(
                f"{exc.reason} (gave up after {attempts} attempts in {time.monotonic() - started:.1f} s)",
                source=source,
                url=url,
            ) from exc

    def _attempt(self, path: str, params: dict[str, str] | None, url: str, source: str, not_found: str) -> Any:
        self._limiter.wait()
        try:
            response = self._http.get(path, params=params)
        except httpx.TimeoutException as exc:
            raise _Retryable(f"timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:  # refused, reset, DNS, a broken HTTP exchange
            raise _Retryable(f"connection failed ({type(exc).__name__}: {exc})") from exc
        status = response.status_code
        if status == 429 or status >= 500:
            # Chatwoot's throttle (Rack::Attack) sends no Retry-After; a proxy in front of it may.
            raise _Retryable(f"HTTP {status}", retry_after=_retry_after(response))
        if status == 401:
            raise SourceRejected(
                f"token rejected (HTTP 401: {self._scrub(_error_text(response))}); check the tenant's api_token_env",
                source=source,
                url=url,
            )
        if status == 403:
            raise SourceRejected(f"access denied (HTTP 403: {self._scrub(_error_text(response))})", source=source, url=url)
        if status == 404:
            raise SourceRejected(f"{not_found} (HTTP 404)", source=source, url=url)
        if 300 <= status < 400:
            location = response.headers.get("location", "")
            raise SourceRejected(
                f"redirected (HTTP {status}) to {location!r}: set chatwoot_url to the final address", source=source, url=url
            )
        if status != 200:
            raise SourceRejected(f"unexpected HTTP {status}: {self._scrub(_error_text(response))}", source=source, url=url)
        return self._decode(response, source=source, url=url)

    def _decode(self, response: httpx.Response, *, source: str, url: str) -> Any:
        """The JSON body. A JSON response that does not parse was cut off on the way (retried); a body that is
        not JSON at all is some other service answering (an HTML login or error page: permanent)."""
        try:
            return json.loads(response.content)
        except ValueError:
            content_type = response.headers.get("content-type", "")
            if "json" in content_type:
                raise _Retryable(f"truncated or invalid JSON body ({len(response.content)} bytes)") from None
            snippet = self._scrub(response.text[:60].strip())
            raise SourceRejected(
                f"expected JSON, got {content_type or 'no content type'} ({snippet!r}...)", source=source, url=url
            ) from None

    def _scrub(self, text: str) -> str:
        """Server text bound for a message, minus our token (a debug error page may echo request headers)."""
        token = self._http.headers.get("api_access_token", "")
        return text.replace(token, "[redacted]") if token else text

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """Exponential backoff with jitter; never shorter than a Retry-After, never past the retry budget."""
        backoff = self._backoff(state)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            backoff = max(backoff, exc.retry_after)
        remaining = self.options.retry_budget_seconds - state.seconds_since_start
        return max(0.0, min(backoff, remaining))

    @property
    def _stop(self) -> tenacity.stop.stop_base:
        """The time budget (and an attempt cap where the options set one), or a Retry-After past the budget."""
        stop = tenacity.stop_after_delay(self.options.retry_budget_seconds) | self._retry_after_exceeds_budget
        return stop | tenacity.stop_after_attempt(self.options.attempts) if self.options.attempts else stop

    def _retry_after_exceeds_budget(self, state: tenacity.RetryCallState) -> bool:
        """Stop at once when the server asks for a longer pause than the budget has left."""
        exc = state.outcome.exception() if state.outcome else None
        if not isinstance(exc, _Retryable) or exc.retry_after is None:
            return False
        return exc.retry_after > self.options.retry_budget_seconds - state.seconds_since_start


def _source_id(slug: str) -> str:
    return chatwoot_source_id(slug)


def _retry_after(response: httpx.Response) -> float | None:
    """`Retry-After` as seconds (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_text(response: httpx.Response) -> str:
    """Chatwoot's `{"error": ...}` message, else the start of the body; the caller scrubs it."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"][:200]
    return response.text[:120].strip() or "empty body"




def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _article_problem(article: Any) -> str:
    """Why an article object cannot be synced, or "" when it has every field the sync reads."""
    if not isinstance(article, dict):
        return "not an object"
    if not _is_int(article.get("id")):
        return "no integer `id`"
    for key in ("slug", "title", "status"):
        if not isinstance(article.get(key), str):
            return f"article {article['id']}: no string `{key}`"
    if not _is_int(article.get("updated_at")):
        return f"article {article['id']}: no integer `updated_at`"
    if article.get("content") is not None and not isinstance(article["content"], str):
        return f"article {article['id']}: `content` is not a string"
    if article.get("category") is not None and not isinstance(article["category"], dict):
        return f"article {article['id']}: `category` is not an object"
    return ""


# ---------------------------------------------------------------------------------------------- reading the list


@dataclass(frozen=True, slots=True)
class _Counts:
    """The list's `meta` counts; identical counts on two reads mean no article was added, deleted or changed
    status in between (edits leave them alone)."""

    all_articles: int
    articles: int
    published: int | None  # absent before Chatwoot 3.15
    drafts: int | None
    archived: int | None

    @classmethod
    def parse(cls, meta: dict[str, Any]) -> _Counts:
        """From a `meta` that `ChatwootClient.list_page` checked to hold an integer `articles_count`."""

        def count(key: str) -> int | None:
            value = meta.get(key)
            return value if _is_int(value) else None

        articles = count("articles_count") or 0
        return cls(
            all_articles=count("all_articles_count") or articles,
            articles=articles,
            published=count("published_count"),
            drafts=count("draft_articles_count"),
            archived=count("archived_articles_count"),
        )

    @property
    def last_page(self) -> int:
        """The last page that can hold an article, plus one: the empty page that ends a list of 25·n."""
        return max(self.articles, self.all_articles) // PER_PAGE + 1


@dataclass(slots=True)
class _Scan:
    """What reads of the article list have shown: the newest version of each article and, per page, the
    `updated_at` values its latest read held.

    Ties on `updated_at` are ordered differently on every request, so a group of equal timestamps that straddles
    a page boundary shows a different subset on each page each time. The positions a group occupies stay put,
    so its size is the number of its timestamps over the pages, and a group is complete once that many distinct
    articles with that timestamp are held. Re-reading the pages of incomplete groups collects the rest.
    """

    articles: dict[int, dict[str, Any]] = field(default_factory=dict)
    page_stamps: dict[int, list[int]] = field(default_factory=dict)
    counts: _Counts | None = None
    consistent: bool = True  # False once two reads disagreed on the counts
    settled: bool = False  # the read provably covers the list (set by ChatwootSource._settle)
    last_news: bool = False  # the latest read showed an article not held, or newer than held
    requests: int = 0

    def add(self, page: int, articles: list[dict[str, Any]], counts: _Counts) -> bool:
        """Merge one page read; True when it showed an article not held or newer than the held version."""
        self.requests += 1
        if self.counts is None:
            self.counts = counts
        elif counts != self.counts:
            self.consistent = False
        self.page_stamps[page] = [a["updated_at"] for a in articles]
        news = False
        for article in articles:
            held = self.articles.get(article["id"])
            if held is None or article["updated_at"] > held["updated_at"]:
                self.articles[article["id"]] = article
                news = True
        self.last_news = news
        return news

    def covers_counts(self) -> bool:
        """Whether every published article the counts announce is held (every article, before 3.15)."""
        assert self.counts is not None
        if self.counts.published is not None:
            published = sum(1 for a in self.articles.values() if a["status"] == "published")
            return published >= self.counts.published
        return len(self.articles) >= self.counts.articles

    def incomplete_tie_pages(self, *, newer_than: int | None = None) -> set[int]:
        """Pages holding a straddling tie group (of stamps >= `newer_than`) that is not fully held yet."""
        size: Counter[int] = Counter()
        pages_of: defaultdict[int, set[int]] = defaultdict(set)
        for page, stamps in self.page_stamps.items():
            for stamp in stamps:
                size[stamp] += 1
                pages_of[stamp].add(page)
        held = Counter(a["updated_at"] for a in self.articles.values())
        return {
            page
            for stamp, pages in pages_of.items()
            if len(pages) > 1 and held[stamp] < size[stamp] and (newer_than is None or stamp >= newer_than)
            for page in pages
        }


@dataclass(frozen=True, slots=True)
class _Portal:
    """What documents need from the portal object."""

    base_url: str  # citation URLs start here
    default_locale: str
    archived: bool


class ChatwootSource:
    """The published articles of one portal, as Documents (`Source` protocol, plus `changes_since`).

    `max_passes`: fresh full passes tried when articles are added, deleted or change status while the list is
    read. `max_rounds`: re-reads per pass to collect straddling `updated_at` ties and articles edited during the
    pass. `poll_overlap_seconds`: how far before the watermark a poll looks again (timestamps are whole seconds,
    and an article saved in the watermark's second may have been saved after the poll read it).
    """

    kind = "chatwoot"

    def __init__(
        self,
        tenant: TenantSettings,
        settings: ChatwootSourceSettings,
        client: ChatwootClient,
        *,
        max_passes: int = 3,
        max_rounds: int = 12,
        poll_overlap_seconds: int = 2,
    ) -> None:
        self.tenant = tenant
        self.settings = settings
        self.client = client
        self.source_id = settings.source_id
        self.portal_slug = settings.portal
        self._locales = set(settings.locales) if settings.locales is not None else None
        self._max_passes = max_passes
        self._max_rounds = max_rounds
        self._overlap = poll_overlap_seconds
        self._portal: _Portal | None = None  # refreshed by every listing, reused by polls

    # -- Source protocol ------------------------------------------------------------------------------

    def list(self, *, rebuild: bool = False) -> Listing:
        """Every published article of the portal (within the locale filter), from a complete read of the list.

        Raises `IncompleteListing` when a page fails after retries, `SourceUnavailable` when the portal cannot be
        read, `SourceRejected` for a bad token, an unknown portal or a malformed payload. A list that kept
        changing while it was read comes back with `complete=False` (its documents may be synced, not deleted).
        """
        portal = self._load_portal()
        if portal.archived:
            # An archived portal answers 404 publicly (docs/chatwoot.md §1), so none of its articles are published
            # content any more: an empty, complete listing lets the engine remove them (after confirm_gone).
            return Listing(documents=[], complete=True)
        scan = self._complete_scan()
        documents = [self._document(a, portal) for a in _by_id(scan.articles.values()) if self._keeps(a, portal)]
        if not scan.settled:
            return Listing(documents=documents, complete=False)
        assert scan.counts is not None
        # The poll starts from here: the newest save of any status, and the count a hard delete makes drop.
        newest = max((a["updated_at"] for a in scan.articles.values()), default=0)
        return Listing(documents=documents, complete=True, watermark=newest, total=scan.counts.all_articles)

    def confirm_gone(self, doc_ids: Collection[str]) -> set[str]:
        """The second look: a new complete listing; of `doc_ids`, those it does not show as published.

        Anything short of a complete listing (an error, a list that kept moving) confirms nothing.
        """
        if not doc_ids:
            return set()
        try:
            portal = self._load_portal()
            if portal.archived:
                return set(doc_ids)
            scan = self._complete_scan()
        except SourceError as exc:
            log.warning("chatwoot.confirm_failed", source=self.source_id, error=str(exc))
            return set()
        if not scan.settled:
            return set()
        present = {self._doc_id(a) for a in scan.articles.values() if self._keeps(a, portal)}
        return {doc_id for doc_id in doc_ids if doc_id not in present}

    # -- poll -----------------------------------------------------------------------------------------

    def changes_since(self, watermark: int) -> Changes:
        """Articles saved since `watermark` (epoch seconds), read newest-first until an older one shows.

        With nothing changed this is one request: page 1, already holding articles older than the watermark.
        Publishing, unpublishing, archiving and edits all bump `updated_at`; hard deletes leave no trace (compare
        `all_articles_count`). Raises `IncompleteListing` when a page fails after retries.
        """
        cutoff = watermark - self._overlap
        scan = _Scan()
        page = 1
        while True:
            articles = self._read_page(scan, page, "poll")
            if len(articles) < PER_PAGE or any(a["updated_at"] < cutoff for a in articles):
                break
            page += 1
        for _ in range(self._max_rounds):  # ties inside the window that straddle pages
            pages = scan.incomplete_tie_pages(newer_than=cutoff)
            if not pages:
                break
            for tie_page in sorted(pages):
                self._read_page(scan, tie_page, "poll")
        complete = not scan.incomplete_tie_pages(newer_than=cutoff)
        window = [a for a in _by_id(scan.articles.values()) if a["updated_at"] >= cutoff]
        requests = scan.requests
        published: list[Document] = []
        gone: set[str] = set()
        if window:
            if self._portal is None:
                requests += 1
            portal = self._cached_portal()
            for article in window:
                if self._keeps(article, portal):
                    published.append(self._document(article, portal))
                else:
                    gone.add(self._doc_id(article))
        newest = max([watermark, *(a["updated_at"] for a in scan.articles.values())]) if complete else watermark
        assert scan.counts is not None
        return Changes(
            published=published,
            gone=gone,
            newest=newest,
            all_articles_count=scan.counts.all_articles,
            requests=requests,
            complete=complete,
        )

    # -- reading --------------------------------------------------------------------------------------

    def _read_page(self, scan: _Scan, page: int, what: str) -> builtins.list[dict[str, Any]]:
        """Read one page into `scan`; a transient failure ends the whole read as an IncompleteListing."""
        try:
            articles, meta = self.client.list_page(self.portal_slug, page)
        except SourceUnavailable as exc:
            reason = str(exc).removeprefix(f"{exc.source} {exc.url}: ")
            raise IncompleteListing(
                f"{what} stopped at page {page}, nothing may be deleted: {reason}", source=self.source_id, url=exc.url
            ) from exc
        scan.add(page, articles, _Counts.parse(meta))
        return articles

    def _complete_scan(self) -> _Scan:
        """Read the whole list until what was read provably covers it, or the attempts run out.

        A pass reads pages 1..N. Counts that change between reads (an article added, deleted, published or
        unpublished) can shift the list by a place and skip an article unnoticed, so the pass starts over. An
        edit only moves its article to the top of page 1 (the pages after shift down: duplicates, no gaps), so
        re-reading page 1 recovers it. Then, until the published count is covered, re-read page 1 and the pages
        of incomplete tie groups. Last, page 1 once more: if it shows nothing new, nothing moved since.
        """
        scan = _Scan()
        for attempt in range(1, self._max_passes + 1):
            scan = _Scan()
            if self._full_pass(scan) and self._settle(scan):
                return scan
            log.info("chatwoot.list_moved", source=self.source_id, attempt=attempt, consistent=scan.consistent)
        log.warning(
            "chatwoot.listing_unsettled",
            source=self.source_id,
            passes=self._max_passes,
            held=len(scan.articles),
            counts=str(scan.counts),
        )
        return scan

    def _full_pass(self, scan: _Scan) -> bool:
        """Pages 1..N until a short page; False when the counts changed on the way."""
        page = 1
        while True:
            articles = self._read_page(scan, page, "listing")
            assert scan.counts is not None
            if not scan.consistent:
                return False
            if len(articles) < PER_PAGE:
                return True
            if page >= scan.counts.last_page:  # more full pages than the counts allow: the list moved
                scan.consistent = False
                return False
            page += 1

    def _settle(self, scan: _Scan) -> bool:
        """Re-read until `scan` covers the counts and page 1 shows nothing new; False if it does not settle."""
        for _ in range(self._max_rounds):
            if scan.covers_counts():
                self._read_page(scan, 1, "listing")
                if not scan.consistent:
                    return False
                if not scan.last_news and scan.covers_counts():
                    scan.settled = True
                    return True
                continue
            for page in sorted({1} | scan.incomplete_tie_pages()):
                self._read_page(scan, page, "listing")
                if not scan.consistent:
                    return False
        return False

    # -- portal and documents -------------------------------------------------------------------------

    def _load_portal(self) -> _Portal:
        """Fetch the portal and cache what documents need (a poll reuses it without a request)."""
        raw = self.client.portal(self.portal_slug)
        meta = raw.get("meta") if isinstance(raw.get("meta"), dict) else {}
        config = raw.get("config") if isinstance(raw.get("config"), dict) else {}
        allowed = config.get("allowed_locales") if isinstance(config.get("allowed_locales"), list) else []
        first_allowed = next((str(x["code"]) for x in allowed if isinstance(x, dict) and x.get("code")), "")
        # Chatwoot's own fallback chain (docs/chatwoot.md §3): default_locale, else the first allowed locale.
        default_locale = str(meta.get("default_locale") or config.get("default_locale") or first_allowed or "")
        self._portal = _Portal(
            base_url=self._base_url(raw.get("custom_domain")),
            default_locale=default_locale,
            archived=bool(raw.get("archived")),
        )
        return self._portal

    def _cached_portal(self) -> _Portal:
        return self._portal if self._portal is not None else self._load_portal()

    def _base_url(self, custom_domain: Any) -> str:
        """Citation URL base: `public_url`, else the portal's custom domain, else the Chatwoot URL (§3)."""
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        if isinstance(custom_domain, str) and custom_domain.strip():
            domain = custom_domain.strip().rstrip("/")
            return domain if "://" in domain else f"https://{domain}"
        return self.tenant.chatwoot_url.rstrip("/")

    def _doc_id(self, article: dict[str, Any]) -> str:
        return chatwoot_doc_id(self.portal_slug, article["id"])

    @staticmethod
    def _locale(article: dict[str, Any], portal: _Portal) -> str:
        # The account API does not render the article's own locale column; a categorized article's locale is
        # its category's (Chatwoot forces it), an uncategorized one falls back to the portal default.
        category = article.get("category") or {}
        return str(category.get("locale") or portal.default_locale)

    def _keeps(self, article: dict[str, Any], portal: _Portal) -> bool:
        """Published in a live portal, and within the locale filter when one is configured."""
        if article["status"] != "published" or portal.archived:
            return False
        return self._locales is None or self._locale(article, portal) in self._locales

    def _document(self, article: dict[str, Any], portal: _Portal) -> Document:
        """The live article; `draft_title`/`draft_content` are unpublished edits and are ignored (inv. 1)."""
        category = article.get("category") or {}
        return Document(
            doc_id=self._doc_id(article),
            source=self.source_id,
            kind=self.kind,
            title=article["title"],
            text=article.get("content") or "",
            url=f"{portal.base_url}/hc/{quote(self.portal_slug, safe='')}/articles/{quote(article['slug'], safe='')}",
            locale=self._locale(article, portal),
            category=str(category.get("name") or ""),
            updated_at=article["updated_at"],
        )


def _by_id(articles: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(articles, key=lambda a: a["id"])
