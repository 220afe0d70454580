"""Sitemaps: XML `<urlset>` and `<sitemapindex>` (optionally gzipped) and plain-text URL lists."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from xml.etree import ElementTree

__all__ = ["Sitemap", "SitemapEntry", "parse_sitemap"]


@dataclass(frozen=True, slots=True)
class SitemapEntry:
    loc: str
    lastmod: int = 0


@dataclass(frozen=True, slots=True)
class Sitemap:
    is_index: bool
    entries: list[SitemapEntry]


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


def parse_sitemap(data: bytes, limit: int) -> Sitemap:
    """A sitemap or sitemap index (XML, optionally gzipped) or a plain-text list of URLs. Raises ValueError."""
    if data[:2] == b"\x1f\x8b":
        data = _gunzip(data, limit)
    text = data.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not text.startswith(b"<"):
        lines = [line.strip() for line in text.decode("utf-8", errors="replace").splitlines()]
        return Sitemap(False, [SitemapEntry(line) for line in lines if line.startswith(("http://", "https://"))])
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
            entries.append(SitemapEntry(fields["loc"], _parse_lastmod(fields.get("lastmod", ""))))
    return Sitemap(name == "sitemapindex", entries)


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
        parsed = parsed.replace(tzinfo=UTC)
    return max(0, int(parsed.timestamp()))
