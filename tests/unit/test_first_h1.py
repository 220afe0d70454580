"""The first H1 of a markdown document (kbsync.markdown.first_h1), shared by the files and web sources. The old
pattern `^#\\s+(.+?)\\s*#*\\s*$` was cubic on "# a", many spaces, "b" (issue 17, finding 8): 2.4 KB took 24 s, and
the 100 KB input below would run far past the suite's 300 s timeout. These inputs finish at once now."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbsync.markdown import first_h1
from kbsync.settings import FilesSourceSettings, WebSourceSettings
from kbsync.sources.files import FilesSource
from kbsync.sources.web import FetchOptions, MemoryPageCache, WebSource
from tests.servers.hostile_web import HostileServer, Reply


def pathological(size: int) -> str:
    return "# a" + " " * (size - 4) + "b"


@pytest.mark.parametrize(
    ("markdown", "title"),
    [
        ("# Billing FAQ\n\nText", "Billing FAQ"),
        ("# Billing FAQ ##\n", "Billing FAQ"),
        ("# Learn C#\n", "Learn C#"),
        ("   # Indented three\n", "Indented three"),
        ("    # four spaces is code\n", ""),
        ("#NoSpace\n", ""),
        ("#\n\n# Real title\n", "Real title"),
        ("# ###\n# Second\n", "Second"),
        ("## Sub\n\n# Main\n", "Main"),
        ("#\tTabbed\n", "Tabbed"),
        ("no heading at all", ""),
    ],
)
def test_first_h1(markdown: str, title: str) -> None:
    assert first_h1(markdown) == title


@pytest.mark.parametrize("size", [2_400, 100_000])
def test_pathological_heading_in_a_file(tmp_path: Path, size: int) -> None:
    (tmp_path / "trap.md").write_text(pathological(size) + "\n\nBody text.\n")
    [doc] = FilesSource(FilesSourceSettings(kind="files", path=tmp_path)).list().documents
    assert doc.title == "a" + " " * (size - 4) + "b"


@pytest.mark.parametrize("size", [2_400, 100_000])
def test_pathological_heading_in_a_markdown_page(size: int) -> None:
    with HostileServer() as server:
        body = (pathological(size) + "\n\nBody text of the page.\n").encode()
        server.replies["/trap.md"] = Reply(200, {"content-type": "text/markdown"}, body)
        settings = WebSourceSettings(kind="web", urls=[server.url("/trap.md")], allow_private_hosts=True)
        listing = WebSource(settings, cache=MemoryPageCache(), options=FetchOptions(attempts=1)).list()
    [doc] = listing.documents
    assert doc.title == "a" + " " * (size - 4) + "b"
