"""`kind = "files"`: markdown and HTML files under a folder (docs-as-code, and the embedded demo).

Markdown files may start with YAML front matter (`title`, `locale`, `category`, `updated_at`); otherwise the title
is the first H1 and `updated_at` the file's modification time. HTML files are reduced to their main content.

Only what really lies under the folder is read: a symlink whose target resolves outside it, a symlinked directory
leading outside it, anything that is not a regular file (a fifo, a device, a socket) and a file over
`max_file_bytes` are skipped, logged and reported as run warnings. The check is repeated on the open file
descriptor (`O_NOFOLLOW`, `fstat`), so a file swapped for a link between listing and reading is refused too.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import structlog
import yaml

from kbsync.errors import SourceUnavailable
from kbsync.markdown import first_h1, html_to_markdown
from kbsync.settings import FilesSourceSettings
from kbsync.sources import DocError, Document, Listing, make_doc_id

__all__ = ["FilesSource", "Skipped"]

log = structlog.get_logger(__name__)

MARKDOWN_SUFFIXES = (".md", ".markdown")
HTML_SUFFIXES = (".html", ".htm")
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.S)


class FilesSource:
    """Lists the markdown and HTML files under `path`, recursively, in a stable order."""

    kind = "files"

    def __init__(self, settings: FilesSourceSettings) -> None:
        self.settings = settings
        self.root = settings.path
        self.source_id = settings.source_id

    def _paths(self) -> tuple[list[Path], list[Skipped]]:
        """The files to read, and those refused (relative to the root, with the reason)."""
        if not self.root.is_dir():
            raise SourceUnavailable(
                "folder does not exist or is not a directory", source=self.source_id, url=str(self.root)
            )
        root = self.root.resolve()
        paths: list[Path] = []
        skipped: list[Skipped] = []
        # os.walk never descends into a symlinked directory (followlinks=False); rglob's behaviour varies by version.
        for folder, dirnames, filenames in os.walk(self.root, followlinks=False):
            base = Path(folder)
            for name in dirnames:
                if (base / name).is_symlink() and not _inside(base / name, root):
                    skipped.append(Skipped(self._relative(base / name), "a symlinked folder leading outside it"))
            for name in filenames:
                path = base / name
                if path.suffix.lower() not in MARKDOWN_SUFFIXES + HTML_SUFFIXES or name.startswith("."):
                    continue
                reason = _refusal(path, root, self.settings.max_file_bytes)
                if reason:
                    skipped.append(Skipped(self._relative(path), reason))
                else:
                    paths.append(path)
        return sorted(paths), sorted(skipped)

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def doc_id(self, path: Path) -> str:
        return make_doc_id(self.kind, path.relative_to(self.root).as_posix())

    def list(self, *, rebuild: bool = False) -> Listing:
        """Read every file; an unreadable file is reported and makes the listing incomplete (no deletes). Refused
        files are no documents of this source: they are reported as warnings, and deleted if indexed before."""
        documents: list[Document] = []
        errors: list[DocError] = []
        paths, skipped = self._paths()
        for path in paths:
            try:
                documents.append(self.read(path))
            except _Refused as exc:
                skipped.append(Skipped(self._relative(path), str(exc)))
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                errors.append(DocError(self.doc_id(path), f"cannot read {path}: {exc}"))
        for item in skipped:
            log.warning("files.skipped", source=self.source_id, path=item.path, reason=item.reason)
        warnings = _warnings(self.source_id, skipped)
        return Listing(documents=documents, complete=not errors, errors=errors, warnings=warnings)

    def read(self, path: Path) -> Document:
        """One file as a Document. Raises _Refused for a file that is no longer safe to read."""
        raw = _read_text(path, self.root.resolve(), self.settings.max_file_bytes)
        relative = self._relative(path)
        meta: dict[str, Any] = {}
        if path.suffix.lower() in HTML_SUFFIXES:
            text, title = html_to_markdown(raw)
        else:
            text, meta = _split_front_matter(raw, path)
            title = str(meta.get("title") or "")
            title = title or first_h1(text)
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
        present = {self.doc_id(p) for p in self._paths()[0]}
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
        return int(datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp())
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value:
        try:
            return int(datetime.fromisoformat(value).timestamp())
        except ValueError:
            raise ValueError(f"updated_at {value!r} in {path.name} is not an ISO date") from None
    return int(path.stat().st_mtime)


@dataclass(frozen=True, slots=True, order=True)
class Skipped:
    """A file or folder the source refused to read, relative to its root."""

    path: str
    reason: str


class _Refused(Exception):
    """A file that is not safe to read (found on the open descriptor)."""


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root)


def _refusal(path: Path, root: Path, max_bytes: int) -> str:
    """Why `path` must not be read ("" when it may): a link out of the root, not a regular file, too large."""
    try:
        if path.is_symlink() and not _inside(path, root):
            return "a symlink to outside the source folder"
        info = path.stat()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        return f"cannot be resolved: {exc}"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (fifo, device or socket)"
    if info.st_size > max_bytes:
        return f"larger than max_file_bytes ({info.st_size} > {max_bytes} bytes)"
    return ""


def _read_text(path: Path, root: Path, max_bytes: int) -> str:
    """The file's text, read through a descriptor that is checked again: still under `root`, a regular file and
    within `max_bytes` (files such as /proc entries report size 0, so the read itself is bounded)."""
    real = path.resolve(strict=True)
    if not real.is_relative_to(root):
        raise _Refused("a symlink to outside the source folder")
    # O_NONBLOCK: a fifo put in the file's place must not hang the run before fstat refuses it.
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise _Refused("not a regular file (fifo, device or socket)")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _Refused(f"larger than max_file_bytes ({max_bytes} bytes)")
    return data.decode("utf-8")


def _warnings(source_id: str, skipped: list[Skipped]) -> list[str]:
    if not skipped:
        return []
    shown = "; ".join(f"{item.path} ({item.reason})" for item in skipped[:10])
    more = f"; and {len(skipped) - 10} more" if len(skipped) > 10 else ""
    return [f"{source_id}: skipped {len(skipped)} file(s) that are not safe to read: {shown}{more}"]
