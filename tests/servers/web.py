"""A small docs website for tests and benchmarks of the `web` source, served on 127.0.0.1.

Built from ``shared/corpus/chatwoot-docs.json``: each article is rendered to an HTML page with site chrome around
it (header and navigation, a cookie banner, a sidebar, breadcrumbs, a "Was this helpful?" block, related
articles, a footer). The site has:

* ``/robots.txt``: ``/private/`` disallowed for everyone, ``/drafts/`` for the ``kbsync`` agent only;
* ``/sitemap.xml``: a sitemap index of ``/sitemaps/pages.xml`` (plain, with URL variants: tracking parameters, a
  fragment, a trailing slash, an old URL that redirects), ``/sitemaps/articles.xml.gz`` (a gzip file, with
  ``<lastmod>``) and ``/sitemaps/extra.xml`` (sent with ``Content-Encoding: gzip``);
* ``/docs/<slug>`` article pages with ``ETag`` / ``Last-Modified`` and 304 answers to conditional requests;
* ``/old/getting-started`` (301 to the first article), ``/moved-away`` (302 to the same site under the host name
  ``localhost``, which the default include rules do not cover), ``/faq.md`` (markdown), ``/fr/docs/introduction``
  (``lang="fr-FR"``, a canonical link on another host), ``/assets/guide.pdf`` (not a page);
* controls: :meth:`DocsSite.remove` (404/410), :meth:`DocsSite.edit`, :meth:`DocsSite.fail` (N times or for
  good), :meth:`DocsSite.delay`, :meth:`DocsSite.unlist` (drop from the sitemaps), :meth:`DocsSite.add_broken_page`
  (a listed page that always answers 500), :meth:`DocsSite.reset`; and a request log.

Pure test-support code: it never imports ``kbsync``.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import html
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import Response
from markdown_it import MarkdownIt

from tests.servers.threaded import ThreadedServer

__all__ = ["DEFAULT_SLUGS", "DocsSite", "DocsSiteServer", "RequestRecord", "SitePage"]

# Twenty articles with headings, tables, code blocks and lists.
DEFAULT_SLUGS = (
    "product",
    "keyboard-shortcuts",
    "live-chat-dark-mode",
    "sdk-setup",
    "identity-validation",
    "custom-attributes",
    "canned-responses",
    "template-variables",
    "webhooks",
    "docusaurus",
    "nextjs",
    "vue",
    "gatsby",
    "supported-features",
    "rate-limiting",
    "android",
    "ios",
    "upgrade",
    "backup",
    "whatsapp-cloud",
)
FIRST_ARTICLE_REDIRECT = "/old/getting-started"
MOVED_AWAY = "/moved-away"
FAQ = "/faq.md"
FRENCH = "/fr/docs/introduction"
PRIVATE = "/private/internal-notes"
DRAFT = "/drafts/wip"
PDF = "/assets/guide.pdf"
BROKEN = "/docs/server-error"

ROBOTS = """User-agent: *
Disallow: /private/

User-agent: kbsync
Disallow: /private/
Disallow: /drafts/

Sitemap: {base}/sitemap.xml
"""

FAQ_MARKDOWN = """# Frequently asked questions

## Can I self-host?

Yes. See the self-hosted guides for Docker, Kubernetes and Linux VMs.

## Which browsers are supported?

| Browser | Minimum version |
| --- | --- |
| Firefox | 52 |
| Chrome | 57 |

```bash
docker compose run --rm rails bundle exec rails db:chatwoot_prepare
```
"""

FRENCH_MARKDOWN = """Chatwoot est une suite open source d'engagement client, une alternative à Intercom et Zendesk.

## Canaux

Vous pouvez connecter le chat en direct de votre site web, l'e-mail, Facebook, WhatsApp et d'autres canaux,
puis répondre à toutes les conversations depuis un seul tableau de bord.
"""

_MARKDOWN = MarkdownIt("commonmark").enable("table")
_INTERNAL_LINK = re.compile(r"/hc/chatwoot-docs/articles/([A-Za-z0-9_-]+)")


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def corpus_file() -> Path:
    return (repo_root() / ".." / "shared" / "corpus" / "chatwoot-docs.json").resolve()


@dataclass
class SitePage:
    """One page of the site. ``canonical``: None = its own absolute URL, "" = none, else a path or URL."""

    path: str
    title: str
    markdown: str
    updated: int
    kind: Literal["html", "markdown", "pdf"] = "html"
    lang: str = "en-US"
    canonical: str | None = None
    sitemap: Literal["pages", "articles", "extra"] = "extra"
    listed: bool = True
    category: str = ""


@dataclass
class RequestRecord:
    """One served request."""

    method: str
    path: str
    query: str
    host: str
    status: int = 0
    body_bytes: int = 0
    if_none_match: str = ""
    if_modified_since: str = ""
    user_agent: str = ""
    authorization: str = ""
    cookie: str = ""


@dataclass
class _Controls:
    removed: dict[str, int] = field(default_factory=dict)
    failures: dict[str, list[int | None]] = field(default_factory=dict)  # path -> [remaining or None, status]
    delays: dict[str, float] = field(default_factory=dict)


class DocsSite:
    """The site's content and controls; thread-safe (uvicorn serves requests from a thread pool)."""

    def __init__(self, slugs: tuple[str, ...] | None = DEFAULT_SLUGS, corpus: Path | None = None) -> None:
        articles = json.loads((corpus or corpus_file()).read_text(encoding="utf-8"))["articles"]
        by_slug = {a["slug"]: a for a in articles}
        chosen = [by_slug[s] for s in slugs] if slugs is not None else articles
        self.base_url = "http://127.0.0.1"
        self.alt_base_url = "http://localhost"
        self._lock = threading.Lock()
        self._pages: dict[str, SitePage] = {}
        half = (len(chosen) + 1) // 2
        for index, article in enumerate(chosen):
            path = f"/docs/{article['slug']}"
            self._pages[path] = SitePage(
                path=path,
                title=article["title"],
                markdown=_INTERNAL_LINK.sub(r"/docs/\1", article["content"]),
                updated=_epoch(article["updated_at"]),
                sitemap="pages" if index < half else "articles",
                category=(article.get("category") or {}).get("name", "") or "",
            )
        self.article_paths = [f"/docs/{a['slug']}" for a in chosen]
        self.first_article = self.article_paths[0]
        base_time = _epoch("2024-03-01T00:00:00+00:00")
        extras = [
            SitePage(FAQ, "Frequently asked questions", FAQ_MARKDOWN, base_time, kind="markdown"),
            SitePage(
                FRENCH,
                "Introduction à Chatwoot",
                FRENCH_MARKDOWN,
                base_time,
                lang="fr-FR",
                canonical="https://docs.other.example/fr/intro",
            ),
            SitePage(PRIVATE, "Internal notes", "Internal only: the staging password rotation schedule.", base_time),
            SitePage(DRAFT, "Work in progress", "A draft that is not ready for readers.", base_time),
            SitePage(PDF, "Guide", "%PDF-1.4 not a page", base_time, kind="pdf"),
        ]
        for page in extras:
            self._pages[page.path] = page
        self._redirects = {
            FIRST_ARTICLE_REDIRECT: (301, self.first_article),
            MOVED_AWAY: (302, "alt:" + self.article_paths[-1]),
        }
        self._controls = _Controls()
        self._requests: list[RequestRecord] = []
        self._baseline = copy.deepcopy(self._pages)
        # Rendered pages by version, as a static site would hold them (ETags computed once per version).
        self._rendered: dict[tuple[str, str, int, str], tuple[bytes, str]] = {}

    # -- what tests compare with

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def sitemap_url(self) -> str:
        return self.url("/sitemap.xml")

    def page(self, path: str) -> SitePage:
        with self._lock:
            return copy.deepcopy(self._pages[path])

    def expected_pages(self) -> list[str]:
        """Paths a correct crawler of the whole site turns into documents (articles, FAQ, French page)."""
        with self._lock:
            return [p for p in self.article_paths if p not in self._controls.removed and self._pages[p].listed] + [
                p for p in (FAQ, FRENCH) if p not in self._controls.removed and self._pages[p].listed
            ]

    # -- controls

    def reset(self) -> None:
        """Back to the initial content, no faults, an empty request log."""
        with self._lock:
            self._pages = copy.deepcopy(self._baseline)
            self._controls = _Controls()
            self._requests = []

    def remove(self, path: str, status: int = 404) -> None:
        """The page answers `status` (404 or 410) from now on; it stays in the sitemap."""
        with self._lock:
            self._controls.removed[path] = status

    def restore(self, path: str) -> None:
        with self._lock:
            self._controls.removed.pop(path, None)

    def unlist(self, path: str) -> None:
        """Drop the page from the sitemaps (it still answers 200)."""
        with self._lock:
            self._pages[path].listed = False

    def edit(self, path: str, paragraph: str = "This paragraph was added by an edit.") -> None:
        """Append a paragraph; the page gets a new ETag and a later Last-Modified."""
        with self._lock:
            page = self._pages[path]
            page.markdown = page.markdown.rstrip() + f"\n\n{paragraph}\n"
            page.updated = max(page.updated + 1, int(time.time()))

    def fail(self, path: str, times: int | None = None, status: int = 500) -> None:
        """Answer `status` to the next `times` requests of `path` (None: until reset)."""
        with self._lock:
            self._controls.failures[path] = [times, status]

    def delay(self, path: str, seconds: float) -> None:
        """Wait `seconds` before answering `path` (a timeout, for a client with a shorter one)."""
        with self._lock:
            self._controls.delays[path] = seconds

    def add_broken_page(self) -> str:
        """A page in the sitemap that always answers 500."""
        with self._lock:
            self._pages[BROKEN] = SitePage(BROKEN, "Server error", "never served", int(time.time()))
            self._controls.failures[BROKEN] = [None, 500]
        return BROKEN

    # -- request log

    def requests(self, path: str | None = None) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self._requests if path is None or r.path == path]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests = []

    # -- serving

    def handle(self, method: str, path: str, query: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """Answer one request (called by the ASGI app; usable directly)."""
        record = RequestRecord(
            method=method,
            path=path,
            query=query,
            host=headers.get("host", ""),
            if_none_match=headers.get("if-none-match", ""),
            if_modified_since=headers.get("if-modified-since", ""),
            user_agent=headers.get("user-agent", ""),
            authorization=headers.get("authorization", ""),
            cookie=headers.get("cookie", ""),
        )
        with self._lock:
            self._requests.append(record)
            delay = self._controls.delays.get(path, 0.0)
        if delay:
            time.sleep(delay)
        status, response_headers, body = self._answer(path, headers)
        record.status = status
        record.body_bytes = len(body) if method == "GET" else 0
        return status, response_headers, body if method == "GET" else b""

    def _answer(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            failure = self._controls.failures.get(path)
            if failure is not None:
                remaining, status = failure
                if remaining is None or remaining > 0:
                    if remaining is not None:
                        failure[0] = remaining - 1
                    return int(status or 500), {"content-type": "text/plain"}, b"server error"
            if path in self._controls.removed:
                return self._controls.removed[path], {"content-type": "text/html"}, b"<h1>Not found</h1>"
            if path in self._redirects:
                status, target = self._redirects[path]
                location = self.alt_base_url + target[4:] if target.startswith("alt:") else target
                return status, {"location": location}, b""
            if path == "/robots.txt":
                return 200, {"content-type": "text/plain"}, ROBOTS.format(base=self.base_url).encode()
            if path == "/sitemap.xml":
                return 200, {"content-type": "application/xml"}, self._sitemap_index()
            if path == "/sitemaps/pages.xml":
                return 200, {"content-type": "application/xml"}, self._sitemap("pages", variants=True)
            if path == "/sitemaps/articles.xml.gz":
                return 200, {"content-type": "application/x-gzip"}, gzip.compress(self._sitemap("articles"), mtime=0)
            if path == "/sitemaps/extra.xml":
                body = gzip.compress(self._sitemap("extra"), mtime=0)
                return 200, {"content-type": "application/xml", "content-encoding": "gzip"}, body
            page = self._pages.get(path)
            if page is None:
                return 404, {"content-type": "text/html"}, b"<h1>Not found</h1>"
            body, content_type = self._render(page)
        etag = '"' + hashlib.sha1(body).hexdigest()[:20] + '"'
        last_modified = formatdate(page.updated, usegmt=True)
        validators = {"etag": etag, "last-modified": last_modified}
        if _not_modified(headers, etag, page.updated):
            return 304, validators, b""
        return 200, {"content-type": content_type, **validators}, body

    def _sitemap_index(self) -> bytes:
        items = "".join(
            f"<sitemap><loc>{self.base_url}{p}</loc></sitemap>"
            for p in ("/sitemaps/pages.xml", "/sitemaps/articles.xml.gz", "/sitemaps/extra.xml")
        )
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f'<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{items}</sitemapindex>'
        ).encode()

    def _sitemap(self, name: str, variants: bool = False) -> bytes:
        locs: list[tuple[str, str]] = []
        for page in self._pages.values():
            if page.sitemap != name or not page.listed:
                continue
            lastmod = _iso(page.updated) if name == "articles" else ""
            locs.append((self.base_url + page.path, lastmod))
        if name == "extra":
            locs += [(self.base_url + MOVED_AWAY, "")]
        if variants and self._pages[self.first_article].listed:
            first = self.base_url + self.first_article
            locs += [
                (first + "?utm_source=newsletter&utm_medium=email&gclid=abc", ""),
                (first + "/#channels", ""),
                (self.base_url + FIRST_ARTICLE_REDIRECT, ""),
            ]
        items = "".join(
            f"<url><loc>{html.escape(loc)}</loc>{f'<lastmod>{lastmod}</lastmod>' if lastmod else ''}</url>"
            for loc, lastmod in locs
        )
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{items}</urlset>'
        ).encode()

    def _render(self, page: SitePage) -> tuple[bytes, str]:
        key = (page.path, page.markdown, page.updated, self.base_url)
        if key not in self._rendered:
            self._rendered[key] = self._render_page(page)
        return self._rendered[key]

    def _render_page(self, page: SitePage) -> tuple[bytes, str]:
        if page.kind == "markdown":
            return page.markdown.encode(), "text/markdown; charset=utf-8"
        if page.kind == "pdf":
            return page.markdown.encode(), "application/pdf"
        canonical = self.base_url + page.path if page.canonical is None else page.canonical
        if canonical.startswith("/"):
            canonical = self.base_url + canonical
        return self._chrome(page, canonical).encode(), "text/html; charset=utf-8"

    def _chrome(self, page: SitePage, canonical: str) -> str:
        title = html.escape(page.title)
        sidebar = "".join(
            f'<li><a href="{p}">{html.escape(self._pages[p].title)}</a></li>' for p in self.article_paths[:20]
        )
        related = "".join(
            f'<li><a href="{p}">{html.escape(self._pages[p].title)}</a></li>' for p in self.article_paths[1:4]
        )
        link = f'<link rel="canonical" href="{html.escape(canonical)}">' if canonical else ""
        return f"""<!DOCTYPE html>
<html lang="{page.lang}">
<head>
<meta charset="utf-8">
<title>{title} | Acme Docs</title>
<meta property="og:title" content="{title}">
<meta name="viewport" content="width=device-width, initial-scale=1">
{link}
</head>
<body>
<a class="skip-link" href="#content">Skip to content</a>
<header class="site-header">
  <a class="logo" href="/">Acme Docs</a>
  <nav class="top-nav"><ul><li><a href="/docs/product">Guides</a></li><li><a href="/docs/webhooks">API</a></li>
  <li><a href="/pricing">Pricing</a></li><li><a href="/login">Sign in</a></li></ul></nav>
</header>
<div id="cookie-banner" class="cookie-consent" role="dialog">
  <p>We use cookies to analyse traffic and personalise content. By continuing you accept our cookie policy.</p>
  <button>Accept all cookies</button><button>Manage preferences</button>
</div>
<div class="layout">
  <aside class="sidebar"><nav aria-label="Documentation"><ul>{sidebar}</ul></nav></aside>
  <main id="content">
    <nav class="breadcrumbs" aria-label="Breadcrumb"><a href="/">Home</a> / <a href="/docs">Docs</a> / {title}</nav>
    <article class="doc">
      <h1>{title}</h1>
      {_MARKDOWN.render(page.markdown)}
    </article>
    <div class="article-feedback">
      <p>Was this helpful?</p>
      <button>Yes</button><button>No</button>
      <p>Thanks for your feedback! Tell us how we can improve this page.</p>
    </div>
    <section class="related-articles"><h3>Related articles</h3><ul>{related}</ul></section>
  </main>
</div>
<footer class="site-footer">
  <p>© 2024 Acme Inc. All rights reserved.</p>
  <ul><li><a href="/privacy">Privacy policy</a></li><li><a href="/terms">Terms of service</a></li></ul>
</footer>
</body>
</html>
"""


def _epoch(value: str) -> int:
    from datetime import datetime

    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def _iso(epoch: int) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(epoch, tz=UTC).isoformat().replace("+00:00", "Z")


def _not_modified(headers: dict[str, str], etag: str, updated: int) -> bool:
    """RFC 9110: If-None-Match wins; If-Modified-Since only when there is none."""
    if_none_match = headers.get("if-none-match", "")
    if if_none_match:
        tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
        return "*" in tags or etag in tags
    since = headers.get("if-modified-since", "")
    if since:
        try:
            return updated <= int(parsedate_to_datetime(since).timestamp())
        except (TypeError, ValueError):
            return False
    return False


def create_app(site: DocsSite) -> FastAPI:
    """The ASGI app: every GET/HEAD goes to :meth:`DocsSite.handle`."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.api_route("/{path:path}", methods=["GET", "HEAD"])
    def serve(path: str, request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        status, response_headers, body = site.handle(request.method, "/" + path, request.url.query, headers)
        return Response(content=body, status_code=status, headers=response_headers)

    return app


class DocsSiteServer(ThreadedServer):
    """Serve a :class:`DocsSite` with uvicorn on 127.0.0.1 in a background thread.

    Usage::

        with DocsSiteServer(DocsSite()) as server:
            httpx.get(server.site.sitemap_url)
    """

    def __init__(self, site: DocsSite | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port, name="docs-site")
        self.site = site if site is not None else DocsSite()

    def start(self, timeout: float = 10.0) -> DocsSiteServer:
        """Start serving; the site's absolute URLs then use this port (and `localhost` as the other host)."""
        if self.running:
            return self
        sock = self.bind()
        self.site.base_url = self.base_url
        self.site.alt_base_url = f"http://localhost:{self.port}"
        self.serve(create_app(self.site), sock, timeout)
        return self

    def __enter__(self) -> DocsSiteServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
