"""Shared fixtures: the model from ../shared/models, settings written to a temp folder, an open engine."""

from __future__ import annotations

import os
import socket
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KBSYNC_SHARED", REPO.parent / "shared"))
MODEL_DIR = Path(os.environ.get("KBSYNC_EMBEDDING__MODEL_DIR") or SHARED / "models" / "all-MiniLM-L6-v2" / "onnx")


@pytest.fixture(scope="session")
def model_dir() -> Path:
    if not (MODEL_DIR / "model.onnx").is_file():
        pytest.fail(f"the model is missing at {MODEL_DIR}: set KBSYNC_EMBEDDING__MODEL_DIR or KBSYNC_SHARED")
    return MODEL_DIR


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> None:
    """No KBSYNC_* variable of the caller leaks into a test, except the model location."""
    for name in list(os.environ):
        if name.startswith("KBSYNC_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KBSYNC_EMBEDDING__MODEL_DIR", str(model_dir))


@pytest.fixture
def write_settings(tmp_path: Path) -> Callable[[str], Path]:
    """Write a settings.toml (dedented) into tmp_path and return its path."""

    def write(text: str, name: str = "settings.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


@pytest.fixture
def docs_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    return folder


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def files_settings(write_settings: Callable[[str], Path], docs_dir: Path) -> Path:
    """A demo-like settings file: tenant acme, project alpha, a files source over `docs_dir`. Its server port is a
    free one: with the default 8700 a CLI command finding the store locked asked whatever daemon ran on this machine
    (a demo `kbsync run` made test_commands_fail_cleanly_while_another_process_owns_the_store fail)."""
    return write_settings(
        f"""
        state_dir = "var"
        log_format = "json"
        log_level = "warning"

        [server]
        port = {_free_port()}

        [chunking]
        max_tokens = 128

        [[tenants]]
        id = "acme"

        [[tenants.projects]]
        id = "alpha"

        [[tenants.projects.sources]]
        kind = "files"
        path = "{docs_dir.name}"
        url_base = "https://docs.acme.example/"
        """
    )


@pytest.fixture
def engine(files_settings: Path) -> Iterator[object]:
    from kbsync.settings import load_settings
    from kbsync.wiring import open_engine

    with open_engine(load_settings(files_settings)) as opened:
        yield opened
