"""A `files` source reads only what really lies under its folder (issue 17, finding 1): a symlink to a secret
outside it, to /proc/self/environ, a fifo, a device and an oversized file are skipped and reported, never indexed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kbsync.runs import ProjectKey
from kbsync.settings import FilesSourceSettings
from kbsync.sources.files import FilesSource

KEY = ProjectKey("acme", "alpha")
SECRET = "kbsync-fake-admin-token-5f0c1d9e"


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    path = outside / "credentials.md"
    path.write_text(f"# Credentials\n\nThe admin token is {SECRET}.\n")
    return path


def source(docs_dir: Path, **extra: object) -> FilesSource:
    return FilesSource(FilesSourceSettings(kind="files", path=docs_dir, **extra))


def test_links_out_of_the_folder_and_special_files_are_skipped_and_reported(docs_dir: Path, secret_file: Path) -> None:
    (docs_dir / "guide.md").write_text("# Guide\n\nHow agents reply.\n")
    (docs_dir / "notes.md").symlink_to(secret_file)
    (docs_dir / "environment-notes.md").symlink_to("/proc/self/environ")
    (docs_dir / "linked").symlink_to(secret_file.parent, target_is_directory=True)
    os.mkfifo(docs_dir / "pipe.md")
    (docs_dir / "null.md").symlink_to("/dev/null")
    (docs_dir / "alias.md").symlink_to(docs_dir / "guide.md")  # inside the folder: allowed

    listing = source(docs_dir).list()

    assert sorted(d.doc_id for d in listing.documents) == ["files:alias.md", "files:guide.md"]
    assert listing.complete and not listing.errors
    assert all(SECRET not in d.text and "PATH=" not in d.text for d in listing.documents)
    [warning] = listing.warnings
    for name in ("notes.md", "environment-notes.md", "linked", "pipe.md", "null.md"):
        assert name in warning
    assert "skipped 5 file(s)" in warning and "symlink to outside the source folder" in warning
    assert "not a regular file" in warning


def test_a_file_over_max_file_bytes_is_skipped(docs_dir: Path) -> None:
    (docs_dir / "small.md").write_text("# Small\n\nfine\n")
    (docs_dir / "huge.md").write_text("# Huge\n\n" + "x" * 5000)

    listing = source(docs_dir, max_file_bytes=4096).list()

    assert [d.doc_id for d in listing.documents] == ["files:small.md"]
    assert "huge.md (larger than max_file_bytes" in listing.warnings[0]


def test_a_file_swapped_for_a_link_after_listing_is_refused_on_read(docs_dir: Path, secret_file: Path) -> None:
    files = source(docs_dir)
    path = docs_dir / "guide.md"
    path.write_text("# Guide\n")
    [listed] = files._paths()[0]
    path.unlink()
    path.symlink_to(secret_file)
    with pytest.raises(Exception, match="outside the source folder"):
        files.read(listed)


def test_a_secret_behind_a_link_never_reaches_the_index_and_the_run_warns(
    engine, docs_dir: Path, secret_file: Path
) -> None:
    (docs_dir / "guide.md").write_text("# Guide\n\nHow agents reply to conversations.\n")
    (docs_dir / "notes.md").symlink_to(secret_file)
    (docs_dir / "environment-notes.md").symlink_to("/proc/self/environ")

    report = engine.reconcile(KEY)

    assert report.outcome == "ok" and report.docs_added == 1
    assert any("notes.md" in w and "environment-notes.md" in w for w in report.warnings)
    assert set(engine.store.index(KEY.collection).docs) == {"files:guide.md"}
    hits = engine.query(KEY, "what is the admin token", k=5)
    assert all(SECRET not in hit.text for hit in hits)


def test_a_file_indexed_before_it_became_a_link_out_is_removed(engine, docs_dir: Path, secret_file: Path) -> None:
    (docs_dir / "guide.md").write_text("# Guide\n\nHow agents reply.\n")
    (docs_dir / "notes.md").write_text("# Notes\n\nHarmless notes.\n")
    engine.reconcile(KEY)
    (docs_dir / "notes.md").unlink()
    (docs_dir / "notes.md").symlink_to(secret_file)

    report = engine.reconcile(KEY)

    assert report.docs_deleted == 1
    assert set(engine.store.index(KEY.collection).docs) == {"files:guide.md"}
