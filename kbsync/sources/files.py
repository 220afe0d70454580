"""`kind = "files"`: markdown and HTML files under a folder (docs-as-code, and the embedded demo).

Markdown files may start with YAML front matter (`title`, `locale`, `category`, `updated_at`); otherwise the title
is the first H1 and `updated_at` the file's modification time. HTML files are reduced to their main content.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from kbsync.errors import SourceUnavailable
from kbsync.markdown import html_to_markdown
from kbsync.settings import FilesSourceSettings
from kbsync.sources import DocError, Document, Listing, make_doc_id

__all__ = ["FilesSource"]

MARKDOWN_SUFFIXES = (".md", ".markdown")
HTML_SUFFIXES = (".html", ".htm")
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.S)
_H1 = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.M)


class FilesSource:
    """Lists the markdown and HTML files under `path`, recursively, in a stable order."""

    kind = "files"

    def __init__(self, settings: FilesSourceSettings) -> None:
        self.settings = settings
        self.root = settings.path
        self.source_id = settings.source_id

    def _paths(self) -> list[Path]:
        if not self.root.is_dir():
            raise SourceUnavailable("folder does not exist or is not a directory", source=self.source_id, url=str(self.root))
        return sorted(
            p
            for p in self.root.rglob("*")
            if p.is_file() and p.suffix.lower() in MARKDOWN_SUFFIXES + HTML_SUFFIXES and not p.name.startswith(".")
        )

    def doc_id(self, path: Path) -> str:
        return make_doc_id(self.kind, path.relative_to(self.root).as_posix())

    def list(self, *, rebuild: bool = False) -> Listing:
        """Read every file; an unreadable file is reported and makes the listing incomplete (no deletes)."""
        documents: list[Document] = []
        errors: list[DocError] = []
        for path in self._paths():
            try:
                documents.append(self.read(path))
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                errors.append(DocError(self.doc_id(path), f"cannot read {path}: {exc}"))
        return Listing(documents=documents, complete=not errors, errors=errors)

    def read(self, path: Path) -> Document:
        """One file as a Document."""
        raw = path.read_text(encoding="utf-8")
        relative = path.relative_to(self.root).as_posix()
        meta: dict[str, Any] = {}
        if path.suffix.lower() in HTML_SUFFIXES:
            text, title = html_to_markdown(raw)
        else:
            text, meta = _split_front_matter(raw, path)
            title = str(meta.get("title") or "")
            if not title:
                heading = _H1.search(text)
                title = heading.group(1).strip() if heading else ""
        return Document(
            doc_id=self.doc_id(path),
            source=self.source_id,
            kind=self.kind,
            title=title or path.stem.replace("-", " ").replace("_", " "),
            text=text,
            url=f"{self.settings.url_base}{relative}" if self.settings.url_base else "",
            locale=str(meta.get("locale") or ""),
            category=str(meta.get("category") or ""),
            updated_at=_updated_at(meta.get("updated_at"), path),
        )

    def confirm_gone(self, doc_ids: Collection[str]) -> set[str]:
        """A second look at the folder: the ids with no file behind them now."""
        if not self.root.is_dir():
            return set()
        present = {self.doc_id(p) for p in self._paths()}
        return set(doc_ids) - present


def _split_front_matter(raw: str, path: Path) -> tuple[str, dict[str, Any]]:
    match = _FRONT_MATTER.match(raw)
    if not match:
        return raw, {}
    try:
        meta = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"invalid front matter in {path.name}: {exc}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"front matter of {path.name} is not a mapping")
    return raw[match.end() :], meta


def _updated_at(value: Any, path: Path) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp())
    if isinstance(value, date):  # YAML reads an unquoted 2024-03-22 as a date
        return int(datetime(value.year, value.month, value.day, tzinfo=timezone.utc).timestamp())
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value:
        try:
            return int(datetime.fromisoformat(value).timestamp())
        except ValueError:
            raise ValueError(f"updated_at {value!r} in {path.name} is not an ISO date") from None
    return int(path.stat().st_mtime)
