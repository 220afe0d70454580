"""`kind = "chatwoot"`: the articles of one Chatwoot Help Center portal (docs/chatwoot.md §1-§3).

Two layers:
- `ChatwootClient` speaks the Help Center API for one tenant: a shared `_http.HttpClient` (one pool, the
  `api_access_token` header, the tenant's pace and retry budget): it words what Chatwoot's refusals mean and
  checks each payload's shape. Errors are `SourceUnavailable` (a retry may help) or `SourceRejected` (it will
  not); messages name the URL, never the token.
- `ChatwootSource` turns a portal into Documents: a complete listing for reconcile (`list`), the second look
  (`confirm_gone`) and the cheap newest-first scan for polls (`changes_since`).

The article list is sorted by `updated_at` desc with no tie-breaker, 25 per page, and shifts while it is read.
A listing is only called complete when what it read provably covers the list (see `_Scan`).
"""

from __future__ import annotations

import builtins
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import structlog

from kbsync.errors import ConfigError, IncompleteListing, SourceError, SourceRejected, SourceUnavailable
from kbsync.settings import ChatwootSourceSettings, TenantSettings
from kbsync.sources import Changes, Document, Listing
from kbsync.sources._http import Hint, HttpClient, HttpOptions
from kbsync.sources._json import json_list, json_object
from kbsync.webhooks import chatwoot_doc_id, chatwoot_source_id

__all__ = ["PER_PAGE", "Changes", "ChatwootClient", "ChatwootClientOptions", "ChatwootSource", "tenant_options"]

log = structlog.get_logger(__name__)

PER_PAGE = 25  # Kaminari's default; the account articles endpoint has no per_page override (docs/chatwoot.md §2)
_BACKOFF_INITIAL = 0.5  # seconds before the first retry of a request


# ---------------------------------------------------------------------------------------------- the client

# The options of `ChatwootClient` are the shared HTTP layer's; the name stays for the callers that tune them.
ChatwootClientOptions = HttpOptions


def tenant_options(tenant: TenantSettings) -> HttpOptions:
    """The HTTP options a tenant's settings ask for (pace, retry budget, longest backoff)."""
    return HttpOptions(
        requests_per_second=tenant.chatwoot_requests_per_second,
        retry_budget_seconds=tenant.chatwoot_retry_seconds,
        backoff_initial=min(_BACKOFF_INITIAL, tenant.chatwoot_max_backoff_seconds),
        backoff_max=tenant.chatwoot_max_backoff_seconds,
    )


class ChatwootClient(HttpClient):
    """The Help Center part of the Chatwoot account API, for one tenant: an `HttpClient` (one pool, the tenant's
    pace and retry budget) with the endpoints a sync reads.

    Opened once per tenant and shared by that tenant's sources; whoever opened it closes it. Every method raises
    `SourceRejected` (bad token, unknown portal, a payload of the wrong shape) or `SourceUnavailable` (still
    failing after the retries) and nothing from httpx. The token goes into the client's default headers and
    nowhere else: not into URLs, logs or errors.
    """

    def __init__(
        self,
        tenant: TenantSettings,
        options: HttpOptions | None = None,
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
        super().__init__(
            tenant.chatwoot_url,
            source="chatwoot",
            headers={"api_access_token": token.get_secret_value()},
            options=options or tenant_options(tenant),
            hints={
                401: lambda detail: f"token rejected (HTTP 401: {detail}); check the tenant's api_token_env",
                403: lambda detail: f"access denied (HTTP 403: {detail})",
            },
            transport=transport,
            log_event="chatwoot.retry",
            redirect_hint="set chatwoot_url to the final address",
        )

    # -- endpoints ------------------------------------------------------------------------------------

    def portals(self) -> list[dict[str, Any]]:
        """Every portal of the account (`GET …/portals`, not paginated)."""
        path = f"/api/v1/accounts/{self.account_id}/portals"
        body = self._read(path, None, source="chatwoot", not_found=f"account {self.account_id} not found")
        payload = body.get("payload") if isinstance(body, dict) else None
        if not isinstance(payload, list) or not all(isinstance(p, dict) and "slug" in p for p in payload):
            raise SourceRejected("unexpected response: no list of portals in `payload`", url=self.url(path))
        return payload

    def portal(self, slug: str) -> dict[str, Any]:
        """One portal by slug (`GET …/portals/<slug>`): custom_domain, archived, default locale, counts."""
        path = f"/api/v1/accounts/{self.account_id}/portals/{quote(slug, safe='')}"
        body = self._read(path, None, source=_source_id(slug), not_found=self._portal_not_found(slug))
        if not isinstance(body, dict) or body.get("slug") != slug:
            raise SourceRejected(
                "unexpected response: not a portal object with this slug",
                source=_source_id(slug),
                url=self.url(path),
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
        body = self._read(path, params, source=source, not_found=self._portal_not_found(slug))
        url = self.url(path, params)
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

    def _read(self, path: str, params: dict[str, str] | None, *, source: str, not_found: str) -> Any:
        """GET and decode JSON with the shared retries; a 404 says what was not found."""
        hints: dict[int, Hint] = {404: lambda _detail: f"{not_found} (HTTP 404)"}
        return self.get_json(path, params, hints=hints, source=source)


def _source_id(slug: str) -> str:
    return chatwoot_source_id(slug)


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
        meta, config = json_object(raw, "meta"), json_object(raw, "config")
        allowed = json_list(config, "allowed_locales")
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
