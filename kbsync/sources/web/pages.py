"""Reading a fetched page: its format (HTML or markdown), charset, `<head>` (lang, canonical, titles), main content
as markdown, and the dates and titles a Document takes from it."""

from __future__ import annotations

import re
import time
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from typing import Literal
from urllib.parse import unquote, urlsplit

import httpx

from kbsync.errors import SourceRejected
from kbsync.markdown import html_to_markdown
from kbsync.sources.web.cache import PageValidators
from kbsync.sources.web.urls import host_key

__all__ = [
    "conditional_headers",
    "decode_body",
    "extract",
    "page_format",
    "parse_head",
    "title_from_url",
    "to_locale",
    "updated_at",
]

_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_MARKDOWN_TYPES = frozenset({"text/markdown", "text/x-markdown"})
MARKDOWN_SUFFIXES = (".md", ".markdown")


def _content_type(headers: httpx.Headers) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


def page_format(url: str, headers: httpx.Headers) -> Literal["html", "markdown"] | None:
    content_type = _content_type(headers)
    is_md_path = urlsplit(url).path.lower().endswith(MARKDOWN_SUFFIXES)
    if content_type in _HTML_TYPES:
        return "html"
    if content_type in _MARKDOWN_TYPES or (content_type == "text/plain" and is_md_path):
        return "markdown"
    if not content_type:
        return "markdown" if is_md_path else "html"
    return None


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


def parse_head(html: str) -> _HeadParser:
    parser = _HeadParser()
    try:
        parser.feed(html[:500_000])
        parser.close()
    except Exception:
        pass
    return parser


def to_locale(tag: str) -> str:
    """A language tag as Chatwoot writes locales: `en`, `pt_BR` (`en-us` -> `en_US`, `zh-Hans-CN` -> `zh_CN`)."""
    parts = [p for p in re.split(r"[-_]", tag.strip()) if p]
    if not parts or not re.fullmatch(r"[A-Za-z]{2,3}", parts[0]):
        return ""
    region = next((p for p in parts[1:] if re.fullmatch(r"[A-Za-z]{2}|\d{3}", p)), "")
    return parts[0].lower() + (f"_{region.upper()}" if region else "")


def decode_body(body: bytes, headers: httpx.Headers) -> str:
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


def extract(html: str, source_id: str, url: str) -> tuple[str, str]:
    """`html_to_markdown`, its failures (trafilatura and lxml on hostile markup) translated into our tree."""
    try:
        return html_to_markdown(html)
    except Exception as exc:
        message = f"content extraction failed: {type(exc).__name__}: {exc}"
        raise SourceRejected(message, source=source_id, url=url) from exc


def _http_date(value: str) -> int:
    try:
        return max(0, int(parsedate_to_datetime(value).timestamp())) if value else 0
    except (TypeError, ValueError, IndexError):
        return 0


def conditional_headers(cached: PageValidators | None) -> dict[str, str]:
    if cached is None:
        return {}
    headers = {}
    if cached.etag:
        headers["If-None-Match"] = cached.etag
    if cached.last_modified:
        headers["If-Modified-Since"] = cached.last_modified
    return headers


def updated_at(last_modified: str, lastmod: int) -> int:
    """`Last-Modified`, else the sitemap's `<lastmod>`, else 0; never in the future."""
    value = _http_date(last_modified) or lastmod
    return min(value, int(time.time())) if value else 0


def title_from_url(url: str) -> str:
    segment = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    for suffix in (*MARKDOWN_SUFFIXES, ".html", ".htm"):
        segment = segment.removesuffix(suffix)
    return segment.replace("-", " ").replace("_", " ").strip() or host_key(url)
