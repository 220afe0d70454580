"""Chatwoot-compatible Help Center API server for tests and benchmarks.

Mimics the account-scoped (token-authenticated) Help Center API of upstream Chatwoot
as described in ``docs/chatwoot.md`` (§1-§4):

* ``GET /api/v1/accounts/{account_id}/portals``
* ``GET /api/v1/accounts/{account_id}/portals/{slug}``
* ``GET /api/v1/accounts/{account_id}/portals/{slug}/articles``  (Kaminari, 25/page)
* ``GET /api/v1/accounts/{account_id}/portals/{slug}/articles/{id}``  (administrator only)
* ``GET /api/v1/accounts/{account_id}/portals/{slug}/categories``

The in-memory model (:class:`FakeChatwoot`) is loaded from the shared test corpus and can be
mutated from Python (edits, status changes, hard deletes, category deletes) and instrumented
with fault injection (status codes, delays, truncated or non-JSON bodies, edits between pages).
:class:`ChatwootServer` serves it with uvicorn on 127.0.0.1 in a background thread.

Pure test-support code: it must never import ``kbsync``.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import random
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from tests.servers.threaded import ThreadedServer

__all__ = [
    "ADMIN_TOKEN",
    "AGENT_TOKEN",
    "PER_PAGE",
    "Agent",
    "ApiError",
    "Article",
    "Category",
    "ChatwootServer",
    "FakeChatwoot",
    "Portal",
    "RequestRecord",
    "corpus_dir",
    "corpus_path",
    "create_app",
    "repo_root",
]

PER_PAGE = 25  # Kaminari default; the articles endpoint has no per_page override (§2.1)
DEFAULT_ACCOUNT_ID = 1
ADMIN_TOKEN = "test-admin-token"
AGENT_TOKEN = "test-agent-token"
STATUSES = ("draft", "published", "archived")

ERR_INVALID_TOKEN = "Invalid Access Token"
ERR_UNAUTHORIZED = "You are not authorized to do this action"
ERR_NOT_FOUND = "Resource could not be found"

TieOrder = Literal["stable", "shuffle"]
PageHook = Callable[["FakeChatwoot", str, int], None]

_ARTICLES_LIST_RE = re.compile(r"^/api/v1/accounts/[^/]+/portals/([^/]+)/articles$")


# --------------------------------------------------------------------------- paths & helpers


def repo_root() -> Path:
    """Return the repository root (the folder holding pyproject.toml, two levels above this file)."""
    return Path(__file__).resolve().parents[2]


def corpus_dir() -> Path:
    """Return ``<repo root>/../shared/corpus`` (where the shared test corpus lives)."""
    return (repo_root() / ".." / "shared" / "corpus").resolve()


def corpus_path(path_or_name: str | Path) -> Path:
    """Resolve a corpus file: an existing path, or a name like ``"kanboard-docs"`` / ``"kanboard-docs.json"``."""
    candidate = Path(path_or_name)
    if candidate.is_file():
        return candidate
    name = candidate.name if candidate.suffix == ".json" else f"{candidate.name}.json"
    resolved = corpus_dir() / name
    if not resolved.is_file():
        raise FileNotFoundError(f"corpus file not found: {path_or_name!r} (looked in {corpus_dir()})")
    return resolved


def iso_to_epoch(value: str) -> int:
    """Convert an ISO-8601 timestamp with offset to integer Unix seconds (Rails ``updated_at.to_i``)."""
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp())


def ruby_to_i(value: str | None) -> int:
    """Ruby ``String#to_i``: leading optional sign and digits, else 0 (``"2abc"`` -> 2, ``"x"`` -> 0)."""
    match = re.match(r"\s*([+-]?\d+)", value or "")
    return int(match.group(1)) if match else 0


def effective_page(query: dict[str, str]) -> int:
    """Page Kaminari actually serves for ``?page=``: ``to_i``, anything below 1 means page 1."""
    return max(1, ruby_to_i(query.get("page")))


def parameterize(text: str) -> str:
    """Approximate Rails ``parameterize('-')`` used for generated article slugs."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-") or "article"


def rails_json(payload: Any) -> bytes:
    """Encode like ActiveSupport: UTF-8, compact, with ``< > &`` and U+2028/9 escaped as ``\\uXXXX``."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    # These characters can only occur inside JSON strings, so a plain replace is safe.
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text.encode("utf-8")


# --------------------------------------------------------------------------- data model


@dataclass
class Agent:
    """An account member (user) as rendered by ``api/v1/models/_agent.json.jbuilder``."""

    id: int
    name: str
    email: str
    role: str = "administrator"  # "administrator" | "agent"

    def render(self, account_id: int) -> dict[str, Any]:
        """Return the agent JSON object."""
        return {
            "id": self.id,
            "account_id": account_id,
            "availability_status": "offline",
            "auto_offline": True,
            "confirmed": True,
            "active": True,
            "email": self.email,
            "provider": "email",
            "available_name": self.name.split(" ")[0],
            "name": self.name,
            "role": self.role,
            "thumbnail": "",
        }


@dataclass
class Category:
    """A Help Center category; ``(slug, locale)`` is unique within a portal."""

    id: int
    name: str
    slug: str
    locale: str
    description: str | None = None
    position: int | None = None
    icon: str = ""
    icon_color: str = ""


@dataclass
class Article:
    """An article row (``articles`` table columns that matter for the API)."""

    id: int
    slug: str
    title: str
    content: str | None
    description: str | None
    status: str  # "draft" | "published" | "archived"
    locale: str  # own column: not rendered by the account partial, used by the locale filter
    category_id: int | None
    position: int | None
    updated_at: int
    created_at: int
    author_id: int | None
    associated_article_id: int | None = None
    views: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    draft_title: str | None = None
    draft_content: str | None = None


@dataclass
class Portal:
    """A Help Center portal with its categories and articles (keyed by id)."""

    id: int
    slug: str
    name: str
    account_id: int
    locales: list[str]
    default_locale: str = "en"
    draft_locales: list[str] = field(default_factory=list)
    color: str = "#1f93ff"
    custom_domain: str | None = None
    header_text: str | None = "How can we help?"
    homepage_link: str | None = None
    page_title: str | None = None
    archived: bool = False
    categories: dict[int, Category] = field(default_factory=dict)
    articles: dict[int, Article] = field(default_factory=dict)


@dataclass
class Account:
    """An account: members (agents/admins) and portals keyed by slug."""

    id: int
    name: str
    users: dict[int, Agent] = field(default_factory=dict)
    portals: dict[str, Portal] = field(default_factory=dict)


@dataclass
class _State:
    """Everything :meth:`FakeChatwoot.reset` restores; deep-copied as the baseline."""

    accounts: dict[int, Account] = field(default_factory=dict)
    tokens: dict[str, tuple[int, int]] = field(default_factory=dict)  # token -> (account_id, user_id)
    next_user_id: int = 1
    next_portal_id: int = 1


@dataclass
class RequestRecord:
    """One served request; unpacks as ``(method, path, query, status)``.

    ``status`` is ``None`` while the request is still in flight (e.g. delayed).
    """

    method: str
    path: str
    query: dict[str, str]
    status: int | None = None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.method, self.path, self.query, self.status))


class ApiError(Exception):
    """An API error rendered as ``{"error": message}`` with the given HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------- faults


_HTML_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
_HTML_ERROR_PAGE = (
    "<!DOCTYPE html>\n<html>\n<head>\n  <title>We're sorry, but something went wrong (500)</title>\n</head>\n"
    '<body>\n  <div class="dialog">\n    <h1>We\'re sorry, but something went wrong.</h1>\n  </div>\n'
    "</body>\n</html>\n"
)
_HTML_404 = (
    "<!DOCTYPE html>\n<html>\n<head>\n  <title>The page you were looking for doesn't exist (404)</title>\n"
    "</head>\n<body>\n  <h1>The page you were looking for doesn't exist.</h1>\n  <p>{path}</p>\n</body>\n</html>\n"
)


def _default_fault_body(status: int) -> tuple[bytes, str]:
    """Realistic default body and content type for a status fault."""
    if status == 429:  # Rack::Attack default throttled response, no Retry-After (§4.3)
        return b"Retry later\n", "text/plain"
    if status in (502, 503, 504):  # reverse proxy in front of Rails
        return _HTML_502.replace("502 Bad Gateway", f"{status} Gateway Error").encode(), "text/html"
    messages = {401: ERR_INVALID_TOKEN, 403: "API access is not enabled for this account", 404: ERR_NOT_FOUND}
    if status in messages:
        return rails_json({"error": messages[status]}), "application/json; charset=utf-8"
    return rails_json({"status": status, "error": "Internal Server Error"}), "application/json; charset=utf-8"


def _encode_body(body: Any) -> tuple[bytes, str]:
    """Encode a user-given fault body: bytes/str as-is (HTML if it looks like markup), else JSON."""
    if isinstance(body, bytes):
        return body, "application/octet-stream"
    if isinstance(body, str):
        kind = "text/html" if body.lstrip().startswith("<") else "text/plain"
        return body.encode("utf-8"), f"{kind}; charset=utf-8"
    return rails_json(body), "application/json; charset=utf-8"


@dataclass
class _Fault:
    """A pending fault; ``times=None`` means it never runs out."""

    kind: Literal["status", "delay", "truncate", "non_json"]
    path_contains: str | None
    page: int | None
    times: int | None
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    seconds: float = 0.0
    keep: float = 0.5

    def matches(self, path: str, page: int, is_list: bool) -> bool:
        """``page`` only ever matches the articles list endpoint (other routes are not paged)."""
        if self.path_contains is not None and self.path_contains not in path:
            return False
        return self.page is None or (is_list and self.page == page)


@dataclass
class _PageHookEntry:
    callback: PageHook
    portal: str | None
    page: int | None
    times: int | None


# --------------------------------------------------------------------------- the fake


class FakeChatwoot:
    """In-memory Chatwoot: accounts -> portals -> categories/articles, tokens, faults, request log.

    Thread-safe: the server thread and the test thread share it behind one re-entrant lock.
    Default setup: account 1 with an administrator (token :data:`ADMIN_TOKEN`, user id 1,
    author of loaded articles) and an agent (token :data:`AGENT_TOKEN`, user id 2).
    """

    def __init__(
        self,
        account_id: int = DEFAULT_ACCOUNT_ID,
        *,
        tie_order: TieOrder = "shuffle",
        seed: int = 0,
        with_default_tokens: bool = True,
    ) -> None:
        """Create the fake; ``tie_order`` controls how ``updated_at`` ties are ordered per request."""
        self._lock = threading.RLock()
        self._state = _State()
        self.tie_order: TieOrder = tie_order
        self._initial_tie_order: TieOrder = tie_order
        self._seed = seed
        self._request_serial = 0
        self._frozen_now: int | None = None
        self._clock_offset = 0
        self._faults: list[_Fault] = []
        self._page_hooks: list[_PageHookEntry] = []
        self._requests: list[RequestRecord] = []
        if with_default_tokens:
            self.add_token(account_id, ADMIN_TOKEN, role="administrator", name="Jane Doe")
            self.add_token(account_id, AGENT_TOKEN, role="agent", name="Sam Agent")
        self._baseline = copy.deepcopy(self._state)

    @classmethod
    def with_corpora(cls, *names: str, account_id: int = DEFAULT_ACCOUNT_ID, **kwargs: Any) -> FakeChatwoot:
        """Build a fake with the given corpora (default: chatwoot-docs and kanboard-docs) loaded."""
        fake = cls(account_id, **kwargs)
        for name in names or ("chatwoot-docs", "kanboard-docs"):
            fake.load_corpus(account_id, name)
        return fake

    # ----------------------------------------------------------------- clock

    def now(self) -> int:
        """Current fake time in epoch seconds (real time unless frozen with :meth:`set_time`)."""
        with self._lock:
            if self._frozen_now is not None:
                return self._frozen_now
            return int(time.time()) + self._clock_offset

    def set_time(self, epoch: int | None) -> None:
        """Freeze the clock at ``epoch`` (``None`` returns to real time)."""
        with self._lock:
            self._frozen_now = None if epoch is None else int(epoch)
            self._clock_offset = 0

    def advance(self, seconds: int) -> int:
        """Move the clock forward (frozen or not) and return the new ``now()``."""
        with self._lock:
            if self._frozen_now is not None:
                self._frozen_now += int(seconds)
            else:
                self._clock_offset += int(seconds)
            return self.now()

    # ----------------------------------------------------------------- setup (part of the baseline)

    def add_account(self, account_id: int, name: str | None = None) -> None:
        """Create an (empty) account if it does not exist."""
        with self._lock:
            self._ensure_account(account_id, name)
            self.snapshot()

    def _ensure_account(self, account_id: int, name: str | None = None) -> Account:
        return self._state.accounts.setdefault(account_id, Account(account_id, name or f"Account {account_id}"))

    def add_token(self, account_id: int, token: str, role: str = "administrator", name: str | None = None) -> int:
        """Add a user with ``role`` ("administrator"|"agent") to the account and return its user id."""
        with self._lock:
            self._ensure_account(account_id)
            user_id = self._state.next_user_id
            self._state.next_user_id += 1
            name = name or f"User {user_id}"
            email = f"{parameterize(name).replace('-', '.')}@example.com"
            self._state.accounts[account_id].users[user_id] = Agent(user_id, name, email, role)
            self._state.tokens[token] = (account_id, user_id)
            self.snapshot()
            return user_id

    def add_portal(
        self, account_id: int, slug: str, *, name: str | None = None, locales: list[str] | None = None, **fields_: Any
    ) -> Portal:
        """Create an empty portal (slug must be unique across the installation)."""
        with self._lock:
            portal = self._create_portal(account_id, slug, name=name, locales=locales, **fields_)
            self.snapshot()
            return portal

    def _create_portal(
        self, account_id: int, slug: str, *, name: str | None = None, locales: list[str] | None = None, **fields_: Any
    ) -> Portal:
        with self._lock:
            self._ensure_account(account_id)
            if self._find_portal(slug) is not None:
                raise ValueError(f"portal slug already exists: {slug}")
            locales = list(locales or ["en"])
            portal = Portal(
                id=self._state.next_portal_id,
                slug=slug,
                name=name or slug,
                account_id=account_id,
                locales=locales,
                default_locale="en" if "en" in locales else locales[0],
                page_title=name or slug,
            )
            for key, value in fields_.items():
                setattr(portal, key, value)
            self._state.next_portal_id += 1
            self._state.accounts[account_id].portals[slug] = portal
            return portal

    def load_corpus(self, account_id: int, path_or_name: str | Path, portal_slug: str | None = None) -> str:
        """Load a corpus JSON file into a new portal and return the portal slug.

        The portal slug defaults to the file stem (``chatwoot-docs``, ``kanboard-docs``); the
        file's own ``portal.slug`` is ignored so the slug is predictable from the file name.
        """
        path = corpus_path(path_or_name)
        data = json.loads(path.read_text(encoding="utf-8"))
        slug = portal_slug or path.stem
        with self._lock:
            portal = self._create_portal(
                account_id, slug, name=data["portal"]["name"], locales=list(data["portal"]["locales"])
            )
            author_id = self._first_admin_id(account_id)
            category_ids = self._load_categories(portal, data["articles"])
            for record in data["articles"]:
                self._insert_corpus_article(portal, record, category_ids, author_id)
            self.snapshot()
        return slug

    def _load_categories(self, portal: Portal, records: list[dict[str, Any]]) -> dict[int, int]:
        """Create the corpus categories; returns corpus id -> fake id.

        Corpus ids are kept unless another portal already uses them (ids are global in Chatwoot).
        """
        used = {cid for p in self._iter_portals() for cid in p.categories}
        mapping: dict[int, int] = {}
        for record in records:
            cat = record.get("category")
            if not cat or cat["id"] in mapping:
                continue
            new_id = cat["id"] if cat["id"] not in used else max(used | {0}) + 1
            used.add(new_id)
            mapping[cat["id"]] = new_id
            position = 10 * (len(mapping))
            portal.categories[new_id] = Category(new_id, cat["name"], cat["slug"], cat["locale"], position=position)
        return mapping

    def _insert_corpus_article(
        self, portal: Portal, record: dict[str, Any], category_ids: dict[int, int], author_id: int | None
    ) -> None:
        """Convert one corpus record into an :class:`Article` row."""
        article_id = int(record["id"])
        if self._find_article_anywhere(article_id) is not None:
            raise ValueError(f"article id {article_id} already loaded")
        updated_at = iso_to_epoch(record["updated_at"])
        category = record.get("category")
        portal.articles[article_id] = Article(
            id=article_id,
            slug=record["slug"],
            title=record["title"],
            content=record["content"],
            description=record.get("description"),
            status=record.get("status", "published"),
            locale=record.get("locale") or portal.default_locale,
            category_id=category_ids[category["id"]] if category else None,
            position=record.get("position"),
            updated_at=updated_at,
            created_at=updated_at,
            author_id=author_id,
            associated_article_id=record.get("associated_article_id"),
            # Deterministic, varied views; some null like never-viewed articles.
            views=None if article_id % 3 == 0 else (article_id * 7919) % 1000,
        )

    def snapshot(self) -> None:
        """Make the current state the baseline that :meth:`reset` restores (setup methods call this)."""
        with self._lock:
            self._baseline = copy.deepcopy(self._state)

    def reset(self) -> None:
        """Restore the baseline (loaded corpora), ``tie_order`` and real time; clear faults, hooks and log."""
        with self._lock:
            self._state = copy.deepcopy(self._baseline)
            self.tie_order = self._initial_tie_order
            self._frozen_now = None
            self._clock_offset = 0
            self._request_serial = 0
            self.reset_faults()
            self.clear_requests()

    # ----------------------------------------------------------------- lookups

    def _iter_portals(self) -> Iterator[Portal]:
        for account in self._state.accounts.values():
            yield from account.portals.values()

    def _find_portal(self, slug: str) -> Portal | None:
        return next((p for p in self._iter_portals() if p.slug == slug), None)

    def portal(self, slug: str) -> Portal:
        """Return the live :class:`Portal` (mutating it directly bypasses the lock; prefer the methods)."""
        with self._lock:
            portal = self._find_portal(slug)
            if portal is None:
                raise KeyError(f"unknown portal: {slug}")
            return portal

    def _find_article_anywhere(self, article_id: int) -> Article | None:
        return next((p.articles[article_id] for p in self._iter_portals() if article_id in p.articles), None)

    def _article(self, portal_slug: str, article_id: int) -> Article:
        portal = self.portal(portal_slug)
        if article_id not in portal.articles:
            raise KeyError(f"unknown article {article_id} in portal {portal_slug}")
        return portal.articles[article_id]

    def _first_admin_id(self, account_id: int) -> int | None:
        users = self._state.accounts[account_id].users.values()
        return next((u.id for u in users if u.role == "administrator"), None)

    def _next_article_id(self) -> int:
        return max((a for p in self._iter_portals() for a in p.articles), default=0) + 1

    # ----------------------------------------------------------------- mutations for tests

    def add_article(self, portal: str, **fields_: Any) -> int:
        """Create an article (defaults like Chatwoot: draft, position max+10, generated slug) and return its id.

        Accepts any :class:`Article` field; ``updated_at`` defaults to ``now()``.
        """
        with self._lock:
            target = self.portal(portal)
            now = int(fields_.pop("updated_at", self.now()))
            title = fields_.pop("title", "Untitled article")
            category_id = fields_.pop("category_id", None)
            row = Article(
                id=int(fields_.pop("id", self._next_article_id())),
                slug=fields_.pop("slug", f"{now}-{parameterize(title)}"),
                title=title,
                content=fields_.pop("content", ""),
                description=fields_.pop("description", None),
                status=fields_.pop("status", "draft"),
                locale=fields_.pop("locale", target.default_locale),
                category_id=category_id,
                position=fields_.pop("position", self._next_position(target, category_id)),
                updated_at=now,
                created_at=now,
                author_id=fields_.pop("author_id", self._first_admin_id(target.account_id)),
            )
            self._apply_fields(target, row, fields_)
            target.articles[row.id] = row
            return row.id

    def edit_article(self, portal: str, article_id: int, *, updated_at: int | None = None, **fields_: Any) -> None:
        """Update article fields like a normal save: ``updated_at`` becomes ``updated_at`` or ``now()``."""
        with self._lock:
            target = self.portal(portal)
            row = self._article(portal, article_id)
            self._apply_fields(target, row, fields_)
            row.updated_at = int(updated_at if updated_at is not None else self.now())

    def set_status(self, portal: str, article_id: int, status: str, *, updated_at: int | None = None) -> None:
        """Change the status (a normal save, so ``updated_at`` is bumped)."""
        self.edit_article(portal, article_id, status=status, updated_at=updated_at)

    def delete_article(self, portal: str, article_id: int) -> None:
        """Hard delete (no tombstone); translations pointing at it lose the link (``dependent: :nullify``)."""
        with self._lock:
            target = self.portal(portal)
            self._article(portal, article_id)
            del target.articles[article_id]
            for row in target.articles.values():
                if row.associated_article_id == article_id:
                    row.associated_article_id = None  # SQL UPDATE: no updated_at bump

    def delete_category(self, portal: str, category_id: int) -> None:
        """Delete a category; its articles become uncategorized WITHOUT an ``updated_at`` bump (§3)."""
        with self._lock:
            target = self.portal(portal)
            if category_id not in target.categories:
                raise KeyError(f"unknown category {category_id} in portal {portal}")
            del target.categories[category_id]
            for row in target.articles.values():
                if row.category_id == category_id:
                    row.category_id = None  # locale column is kept, as in Chatwoot

    def edit_category(self, portal: str, category_id: int, **fields_: Any) -> None:
        """Rename/edit a category; articles are not touched (no ``updated_at`` bump), as in Chatwoot."""
        with self._lock:
            category = self.portal(portal).categories[category_id]
            for key, value in fields_.items():
                if not hasattr(category, key):
                    raise AttributeError(f"unknown category field: {key}")
                setattr(category, key, value)

    def update_portal(self, portal: str, **fields_: Any) -> None:
        """Change portal attributes (e.g. ``archived=True``, ``custom_domain="help.example.com"``)."""
        with self._lock:
            target = self.portal(portal)
            for key, value in fields_.items():
                if not hasattr(target, key) or key in ("articles", "categories"):
                    raise AttributeError(f"unknown portal field: {key}")
                setattr(target, key, value)

    def _apply_fields(self, portal: Portal, row: Article, values: dict[str, Any]) -> None:
        """Set article attributes, enforcing Chatwoot's rules (valid status, locale follows category)."""
        names = {f.name for f in fields(Article)} - {"id", "updated_at"}
        for key, value in values.items():
            if key not in names:
                raise AttributeError(f"unknown article field: {key}")
            if key == "status" and value not in STATUSES:
                raise ValueError(f"invalid status: {value}")
            if key == "category_id" and value is not None and value not in portal.categories:
                raise KeyError(f"unknown category {value}")
            setattr(row, key, value)
        if row.category_id is not None:
            # before_validation :ensure_locale_in_article forces the category's locale.
            row.locale = portal.categories[row.category_id].locale

    @staticmethod
    def _next_position(portal: Portal, category_id: int | None) -> int:
        positions = [a.position or 0 for a in portal.articles.values() if a.category_id == category_id]
        return max(positions, default=0) + 10

    # ----------------------------------------------------------------- inspection for tests

    def published_ids(self, portal: str, locale: str | None = None) -> set[int]:
        """Ids of published articles (optionally of one locale): what a correct sync should hold."""
        with self._lock:
            return {
                a.id
                for a in self.portal(portal).articles.values()
                if a.status == "published" and (locale is None or a.locale == locale)
            }

    def all_articles(self, portal: str) -> list[dict[str, Any]]:
        """Internal rows (incl. ``locale``, ``category_id``, ``author_id``) as dicts, sorted by id."""
        with self._lock:
            rows = sorted(self.portal(portal).articles.values(), key=lambda a: a.id)
            return [copy.deepcopy(vars(a)) for a in rows]

    def get_article(self, portal: str, article_id: int) -> dict[str, Any]:
        """The article exactly as the account API renders it (§2.2)."""
        with self._lock:
            target = self.portal(portal)
            return self._render_article(target, self._article(portal, article_id), self._render_portal(target))

    # ----------------------------------------------------------------- faults and hooks

    def _add_fault(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def fail(
        self,
        path_contains: str | None = None,
        page: int | None = None,
        status: int = 500,
        times: int | None = 1,
        body: Any = None,
    ) -> None:
        """Answer matching requests with ``status`` instead of serving them.

        Default bodies are realistic: 429 ``Retry later`` (text, no ``Retry-After``), 401/403/404
        Chatwoot JSON errors, 500 Rails JSON, 502-504 nginx HTML. ``page`` only matches the
        articles list. ``times=None`` fails forever.
        """
        raw, content_type = _encode_body(body) if body is not None else _default_fault_body(status)
        self._add_fault(
            _Fault("status", path_contains, page, times, status=status, body=raw, content_type=content_type)
        )

    def delay(
        self, seconds: float, path_contains: str | None = None, page: int | None = None, times: int | None = 1
    ) -> None:
        """Sleep ``seconds`` before serving matching requests (to trigger client timeouts)."""
        self._add_fault(_Fault("delay", path_contains, page, times, seconds=seconds))

    def truncate(
        self, page: int | None = None, times: int | None = 1, path_contains: str | None = None, keep: float = 0.5
    ) -> None:
        """Serve matching requests with status 200 but only the first ``keep`` fraction of the JSON body."""
        self._add_fault(_Fault("truncate", path_contains, page, times, keep=keep))

    def non_json(
        self,
        status: int = 200,
        page: int | None = None,
        times: int | None = 1,
        path_contains: str | None = None,
        body: str | None = None,
    ) -> None:
        """Answer matching requests with an HTML page (e.g. a proxy error page) and ``status``."""
        html = body if body is not None else (_HTML_502 if status == 502 else _HTML_ERROR_PAGE)
        self._add_fault(
            _Fault(
                "non_json",
                path_contains,
                page,
                times,
                status=status,
                body=html.encode("utf-8"),
                content_type="text/html; charset=utf-8",
            )
        )

    def on_page_read(
        self, callback: PageHook, portal: str | None = None, page: int | None = None, times: int | None = None
    ) -> None:
        """Call ``callback(fake, portal_slug, page)`` after an articles list page is rendered.

        It runs before the response bytes leave the server, so the client cannot observe a
        state older than the callback's effect on its next request.
        """
        with self._lock:
            self._page_hooks.append(_PageHookEntry(callback, portal, page, times))

    def edit_between_pages(self, portal: str, article_id: int, after_page: int = 1, **fields_: Any) -> None:
        """Once page ``after_page`` of ``portal`` was served, edit the article (bumping ``updated_at``).

        The article moves to the top of page 1, so the list shifts under a client that is paging.
        """

        def _edit(fake: FakeChatwoot, _portal: str, _page: int) -> None:
            fake.edit_article(portal, article_id, **fields_)

        self.on_page_read(_edit, portal=portal, page=after_page, times=1)

    def reset_faults(self) -> None:
        """Drop all pending faults and page hooks."""
        with self._lock:
            self._faults.clear()
            self._page_hooks.clear()

    def pending_faults(self) -> int:
        """Number of faults and page hooks not yet consumed."""
        with self._lock:
            return len(self._faults) + len(self._page_hooks)

    def _take_fault(self, kinds: tuple[str, ...], path: str, page: int, is_list: bool) -> _Fault | None:
        """Pop (consume one use of) the first matching fault of the given kinds."""
        with self._lock:
            for fault in self._faults:
                if fault.kind in kinds and fault.matches(path, page, is_list):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self._faults.remove(fault)
                    return fault
            return None

    def _fire_page_hooks(self, portal: str, page: int) -> None:
        with self._lock:
            due = [
                h
                for h in self._page_hooks
                if (h.portal is None or h.portal == portal) and (h.page is None or h.page == page)
            ]
            for hook in due:
                if hook.times is not None:
                    hook.times -= 1
                    if hook.times <= 0:
                        self._page_hooks.remove(hook)
        # Call back after the bookkeeping so a callback may itself add or reset hooks.
        for hook in due:
            hook.callback(self, portal, page)

    # ----------------------------------------------------------------- request log

    @property
    def requests(self) -> list[RequestRecord]:
        """Copy of the request log (in arrival order)."""
        with self._lock:
            return list(self._requests)

    def request_count(self, path_contains: str | None = None) -> int:
        """Number of requests received whose path contains ``path_contains`` (all if ``None``)."""
        with self._lock:
            return sum(1 for r in self._requests if path_contains is None or path_contains in r.path)

    def clear_requests(self) -> None:
        """Empty the request log."""
        with self._lock:
            self._requests.clear()

    def _log_request(self, method: str, path: str, query: dict[str, str]) -> RequestRecord:
        record = RequestRecord(method, path, query)
        with self._lock:
            self._requests.append(record)
        return record

    # ----------------------------------------------------------------- rendering

    def _render_portal(
        self, portal: Portal, articles: list[Article] | None = None, user_id: int | None = None
    ) -> dict[str, Any]:
        """Portal partial (§2.3). ``articles=None`` mimics ``articles: []`` (index / nested use)."""
        allowed = []
        for code in portal.locales:
            allowed.append(
                {
                    "code": code,
                    "articles_count": sum(1 for a in portal.articles.values() if a.locale == code),
                    "categories_count": sum(1 for c in portal.categories.values() if c.locale == code),
                    "draft": code in portal.draft_locales,
                }
            )
        rows = articles or []
        meta: dict[str, Any] = {"all_articles_count": len(rows)}
        if articles is None:
            # [].try(:archived) is nil in Ruby, and mine_articles_count is skipped when empty.
            meta.update(archived_articles_count=None, published_count=None, draft_articles_count=None)
        else:
            meta.update(self._status_counts(rows, key_published="published_count"))
            if rows and user_id is not None:
                meta["mine_articles_count"] = sum(1 for a in rows if a.author_id == user_id)
        meta["categories_count"] = len(portal.categories)
        meta["default_locale"] = portal.default_locale
        return {
            "id": portal.id,
            "color": portal.color,
            "custom_domain": portal.custom_domain,
            "header_text": portal.header_text,
            "homepage_link": portal.homepage_link,
            "name": portal.name,
            "page_title": portal.page_title,
            "slug": portal.slug,
            "archived": portal.archived,
            "account_id": portal.account_id,
            "config": {
                "allowed_locales": allowed,
                "default_locale": portal.default_locale,
                "layout": "classic",
                "social_profiles": {},
                "locale_translations": {},
                "popular_content": {},
                "analytics": {},
            },
            "meta": meta,
        }

    @staticmethod
    def _status_counts(rows: list[Article], key_published: str) -> dict[str, int]:
        return {
            "archived_articles_count": sum(1 for a in rows if a.status == "archived"),
            key_published: sum(1 for a in rows if a.status == "published"),
            "draft_articles_count": sum(1 for a in rows if a.status == "draft"),
        }

    def _render_author(self, portal: Portal, author_id: int | None) -> dict[str, Any] | None:
        """Agent object, or ``None`` when the author is no longer a member (the key is then omitted)."""
        users = self._state.accounts[portal.account_id].users
        return users[author_id].render(portal.account_id) if author_id in users else None

    def _render_category(self, portal: Portal, category_id: int | None) -> dict[str, Any]:
        category = portal.categories.get(category_id) if category_id is not None else None
        if category is None:
            return {"id": None, "name": None, "slug": None, "locale": None, "icon": None, "icon_color": None}
        return {
            "id": category.id,
            "name": category.name,
            "slug": category.slug,
            "locale": category.locale,
            "icon": category.icon,
            "icon_color": category.icon_color,
        }

    def _render_associated(self, portal: Portal, row: Article, portal_json: dict[str, Any]) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": row.id,
            "category_id": row.category_id,
            "title": row.title,
            "content": row.content,
            "description": row.description,
            "status": row.status,
            "account_id": portal.account_id,
            "portal": portal_json,
            "views": row.views,
        }
        author = self._render_author(portal, row.author_id)
        if author is not None:
            item["author"] = author
        return item

    def _render_article(self, portal: Portal, row: Article, portal_json: dict[str, Any]) -> dict[str, Any]:
        """Account-API article partial (§2.2), keys in upstream order."""
        item: dict[str, Any] = {
            "id": row.id,
            "slug": row.slug,
            "title": row.title,
            "content": row.content,
            "description": row.description,
            "status": row.status,
            "draft_title": row.draft_title,
            "draft_content": row.draft_content,
            "position": row.position,
            "account_id": portal.account_id,
            "updated_at": row.updated_at,
            "meta": copy.deepcopy(row.meta),
            "category": self._render_category(portal, row.category_id),
            "views": row.views,
        }
        author = self._render_author(portal, row.author_id)
        if author is not None:
            item["author"] = author
        translations = sorted(
            (a for a in portal.articles.values() if a.associated_article_id == row.id), key=lambda a: a.id
        )
        item["associated_articles"] = [self._render_associated(portal, a, portal_json) for a in translations]
        return item

    def _render_category_full(self, portal: Portal, category: Category) -> dict[str, Any]:
        """Category partial of the categories index (§2.4)."""
        return {
            "id": category.id,
            "name": category.name,
            "slug": category.slug,
            "locale": category.locale,
            "description": category.description,
            "position": category.position,
            "account_id": portal.account_id,
            "icon": category.icon,
            "icon_color": category.icon_color,
            "related_categories": [],
            "meta": {"articles_count": sum(1 for a in portal.articles.values() if a.category_id == category.id)},
        }

    # ----------------------------------------------------------------- HTTP-level operations

    def authenticate(self, token: str | None, account_id: str, admin: bool = False) -> tuple[Account, Agent]:
        """Resolve the ``api_access_token`` for ``account_id`` or raise :class:`ApiError` like Chatwoot."""
        with self._lock:
            if not token or token not in self._state.tokens:
                raise ApiError(401, ERR_INVALID_TOKEN)
            token_account, user_id = self._state.tokens[token]
            account = self._state.accounts.get(ruby_to_i(account_id)) if account_id.isdigit() else None
            if account is None:
                raise ApiError(404, ERR_NOT_FOUND)
            if token_account != account.id or user_id not in account.users:
                raise ApiError(401, ERR_UNAUTHORIZED)
            user = account.users[user_id]
            if admin and user.role != "administrator":
                raise ApiError(401, ERR_UNAUTHORIZED)  # Pundit denial renders 401 in Chatwoot (§2.1)
            return account, user

    @staticmethod
    def _portal_of(account: Account, slug: str) -> Portal:
        if slug not in account.portals:
            raise ApiError(404, ERR_NOT_FOUND)
        return account.portals[slug]

    def api_portals(self, token: str | None, account_id: str, query: dict[str, str]) -> dict[str, Any]:
        """``GET …/portals``: all portals of the account, article counts left empty as upstream."""
        with self._lock:
            account, _user = self.authenticate(token, account_id)
            portals = sorted(account.portals.values(), key=lambda p: p.id)
            return {
                "payload": [self._render_portal(p) for p in portals],
                "meta": {"current_page": query.get("page", 1), "portals_count": len(portals)},
            }

    def api_portal(self, token: str | None, account_id: str, slug: str, query: dict[str, str]) -> dict[str, Any]:
        """``GET …/portals/{slug}``: bare portal object with real counts (``?locale=`` narrows them)."""
        with self._lock:
            account, user = self.authenticate(token, account_id)
            portal = self._portal_of(account, slug)
            rows = list(portal.articles.values())
            if query.get("locale"):
                rows = [a for a in rows if a.locale == query["locale"]]
            return self._render_portal(portal, rows, user.id)

    def api_categories(self, token: str | None, account_id: str, slug: str, query: dict[str, str]) -> dict[str, Any]:
        """``GET …/portals/{slug}/categories[?locale=]`` (one page of up to 1000)."""
        with self._lock:
            account, _user = self.authenticate(token, account_id)
            portal = self._portal_of(account, slug)
            locale = query.get("locale")
            rows = [c for c in portal.categories.values() if not locale or c.locale == locale]
            rows.sort(key=lambda c: (c.position is None, c.position or 0, c.id))
            return {
                "payload": [self._render_category_full(portal, c) for c in rows],
                "meta": {"current_page": query.get("page", 1), "categories_count": len(rows)},
            }

    def api_article(self, token: str | None, account_id: str, slug: str, article_id: str) -> dict[str, Any]:
        """``GET …/articles/{id}``: administrator only; authorization is checked before the lookup."""
        with self._lock:
            account, _user = self.authenticate(token, account_id)
            portal = self._portal_of(account, slug)
            self.authenticate(token, account_id, admin=True)
            row = portal.articles.get(ruby_to_i(article_id)) if article_id.isdigit() else None
            if row is None:
                raise ApiError(404, ERR_NOT_FOUND)
            return {"payload": self._render_article(portal, row, self._render_portal(portal))}

    def api_articles(self, token: str | None, account_id: str, slug: str, query: dict[str, str]) -> dict[str, Any]:
        """``GET …/portals/{slug}/articles``: filtered, ordered, Kaminari-paged list with split meta counts."""
        with self._lock:
            account, user = self.authenticate(token, account_id)
            portal = self._portal_of(account, slug)
            base = self._base_filter(portal, query)  # locale, category_slug, query (not status/author)
            rows = self._narrow(base, query)
            rows = self._order(rows, by_position=bool(query.get("category_slug")))
            page = effective_page(query)
            page_rows = rows[(page - 1) * PER_PAGE : page * PER_PAGE]
            portal_json = self._render_portal(portal)
            meta = {
                "all_articles_count": len(portal.articles),
                **self._status_counts(base, key_published="published_count"),
                "articles_count": len(base),
                # Upstream echoes params[:page] verbatim (a string), else the integer 1.
                "current_page": query.get("page", 1),
                "mine_articles_count": sum(1 for a in base if a.author_id == user.id),
            }
            return {
                "payload": [self._render_article(portal, a, portal_json) for a in page_rows],
                "meta": dict(sorted(meta.items())),
            }

    def _base_filter(self, portal: Portal, query: dict[str, str]) -> list[Article]:
        rows = list(portal.articles.values())
        if query.get("locale"):
            rows = [a for a in rows if a.locale == query["locale"]]
        if query.get("category_slug"):
            wanted = query["category_slug"]
            rows = [
                a
                for a in rows
                if a.category_id in portal.categories and portal.categories[a.category_id].slug == wanted
            ]
        if query.get("query"):
            # Stand-in for pg_search: every term must occur in title, description or content.
            terms = query["query"].lower().split()
            rows = [
                a
                for a in rows
                if all(t in f"{a.title}\n{a.description or ''}\n{a.content or ''}".lower() for t in terms)
            ]
        return rows

    @staticmethod
    def _narrow(rows: list[Article], query: dict[str, str]) -> list[Article]:
        if query.get("status"):
            rows = [a for a in rows if a.status == query["status"]]  # unknown label -> no rows
        if query.get("author_id"):
            wanted = query["author_id"]
            rows = [a for a in rows if a.author_id is not None and str(a.author_id) == wanted.strip()]
        return rows

    def _order(self, rows: list[Article], by_position: bool) -> list[Article]:
        """Sort like Postgres with no tie-breaker: ties shuffled per request unless ``tie_order="stable"``."""
        rows = sorted(rows, key=lambda a: a.id)
        if self.tie_order == "shuffle":
            self._request_serial += 1
            random.Random(f"{self._seed}:{self._request_serial}").shuffle(rows)
        if by_position:
            # Postgres sorts NULL last in ASC order.
            return sorted(rows, key=lambda a: (a.position is None, a.position or 0))
        return sorted(rows, key=lambda a: -a.updated_at)


# --------------------------------------------------------------------------- HTTP app


class RailsJSONResponse(JSONResponse):
    """JSON response encoded the way Rails does (see :func:`rails_json`)."""

    media_type = "application/json; charset=utf-8"

    def render(self, content: Any) -> bytes:
        return rails_json(content)


def _token(request: Request) -> str | None:
    return request.headers.get("api_access_token")


def _query(request: Request) -> dict[str, str]:
    return dict(request.query_params)


def create_app(fake: FakeChatwoot) -> FastAPI:
    """Build the FastAPI app serving ``fake`` (without the fault/logging layer)."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    base = "/api/v1/accounts/{account_id}/portals"

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> Response:
        return RailsJSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Unknown routes get Rails' static HTML page, as a real deployment would serve.
        if exc.status_code == 404:
            return Response(_HTML_404.replace("{path}", request.url.path), 404, media_type="text/html")
        return Response(str(exc.detail), exc.status_code, media_type="text/plain")

    @app.get(base)
    async def portals(account_id: str, request: Request) -> Response:
        return RailsJSONResponse(fake.api_portals(_token(request), account_id, _query(request)))

    @app.get(base + "/{slug}")
    async def portal(account_id: str, slug: str, request: Request) -> Response:
        return RailsJSONResponse(fake.api_portal(_token(request), account_id, slug, _query(request)))

    @app.get(base + "/{slug}/articles")
    async def articles(account_id: str, slug: str, request: Request) -> Response:
        return RailsJSONResponse(fake.api_articles(_token(request), account_id, slug, _query(request)))

    @app.get(base + "/{slug}/articles/{article_id}")
    async def article(account_id: str, slug: str, article_id: str, request: Request) -> Response:
        return RailsJSONResponse(fake.api_article(_token(request), account_id, slug, article_id))

    @app.get(base + "/{slug}/categories")
    async def categories(account_id: str, slug: str, request: Request) -> Response:
        return RailsJSONResponse(fake.api_categories(_token(request), account_id, slug, _query(request)))

    return app


_Headers = list[tuple[bytes, bytes]]


class _FaultLayer:
    """ASGI wrapper: request log, ``.json`` suffix, fault injection and page hooks around the app."""

    def __init__(self, app: Any, fake: FakeChatwoot, stopping: threading.Event) -> None:
        self.app = app
        self.fake = fake
        self.stopping = stopping

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path.endswith(".json"):  # routes default to format json and accept the suffix
            path = path[: -len(".json")]
            scope = {**scope, "path": path, "raw_path": path.encode()}
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        record = self.fake._log_request(scope["method"], path, query)
        list_match = _ARTICLES_LIST_RE.match(path)
        page = effective_page(query)

        delay = self.fake._take_fault(("delay",), path, page, list_match is not None)
        if delay is not None:
            await self._sleep(delay.seconds)
        fault = self.fake._take_fault(("status", "non_json", "truncate"), path, page, list_match is not None)
        if fault is not None and fault.kind != "truncate":
            record.status = fault.status
            await _send(send, fault.status, [(b"content-type", fault.content_type.encode())], fault.body)
            return

        try:
            status, headers, body = await self._run_buffered(scope, receive)
        except Exception:
            record.status = 500  # uvicorn answers 500 itself and logs the traceback
            raise
        if fault is not None and status == 200:
            body = body[: max(1, min(len(body) - 1, int(len(body) * fault.keep)))]
        if list_match is not None and status == 200:
            # Before the bytes leave: the client's next request must see the mutation.
            self.fake._fire_page_hooks(list_match.group(1), page)
        record.status = status
        await _send(send, status, headers, body)

    async def _sleep(self, seconds: float) -> None:
        """Sleep in slices so a server shutdown is not held up by a long injected delay."""
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    async def _run_buffered(self, scope: dict[str, Any], receive: Any) -> tuple[int, _Headers, bytes]:
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        return start.get("status", 500), list(start.get("headers", [])), b"".join(chunks)


async def _send(send: Any, status: int, headers: _Headers, body: bytes) -> None:
    """Send a complete response, with a content-length matching ``body``."""
    headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


# --------------------------------------------------------------------------- server


class ChatwootServer(ThreadedServer):
    """Serve a :class:`FakeChatwoot` over HTTP on 127.0.0.1 in a background thread.

    Usage::

        with ChatwootServer(FakeChatwoot.with_corpora("chatwoot-docs")) as server:
            httpx.get(server.base_url + "/api/v1/accounts/1/portals", headers={"api_access_token": ADMIN_TOKEN})
    """

    def __init__(self, fake: FakeChatwoot | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        """Prepare the server; ``port=0`` picks a free port when started."""
        super().__init__(host, port, name="chatwoot-fake")
        self.fake = fake if fake is not None else FakeChatwoot()
        self._stopping = threading.Event()

    def url(self, path: str) -> str:
        """Absolute URL for ``path`` (e.g. ``/api/v1/accounts/1/portals``)."""
        return self.base_url + path

    def start(self, timeout: float = 10.0) -> ChatwootServer:
        """Start serving and return once the server accepts connections."""
        if self.running:
            return self
        sock = self.bind()
        self._stopping.clear()
        self.serve(_FaultLayer(create_app(self.fake), self.fake, self._stopping), sock, timeout)
        return self

    def stop(self) -> None:
        """Stop the server and join its thread (in-flight injected delays are cut short)."""
        self._stopping.set()
        super().stop()

    def __enter__(self) -> ChatwootServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
