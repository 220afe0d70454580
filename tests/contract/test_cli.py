"""The CLI contract (README "CLI"): commands, exit codes, JSON output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kbsync.cli import app

runner = CliRunner()


def invoke(config: Path, *args: str):
    return runner.invoke(app, ["--config", str(config), *args], catch_exceptions=False)


def test_help_lists_the_commands_of_the_contract() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("resync", "query", "status", "check"):
        assert command in result.stdout


def test_help_works_without_any_settings_file(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kbsync", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "resync" in result.stdout


def test_bad_config_exits_2_naming_the_key(write_settings) -> None:
    config = write_settings("[chunking]\nmax_tokens = 9000\n")
    for command in (["resync"], ["status"], ["check"], ["query", "a", "b", "c"]):
        result = invoke(config, *command)
        assert result.exit_code == 2, command
        assert "chunking.max_tokens" in result.stderr


def test_missing_config_exits_2(tmp_path: Path) -> None:
    result = invoke(tmp_path / "absent.toml", "resync")
    assert result.exit_code == 2 and "not found" in result.stderr


def test_resync_json_then_query_and_status(files_settings: Path, docs_dir: Path) -> None:
    (docs_dir / "refunds.md").write_text("# Refunds\n\nRefunds are paid back within five business days.\n")
    result = invoke(files_settings, "resync", "--json")
    assert result.exit_code == 0, result.stderr
    (report,) = json.loads(result.stdout)
    assert report["tenant"] == "acme" and report["project"] == "alpha" and report["outcome"] == "ok"
    assert report["docs_added"] == 1 and report["chunks_embedded"] == 1 and report["errors"] == []

    result = invoke(files_settings, "query", "acme", "alpha", "when do I get my money back", "-k", "1", "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    (hit,) = payload["results"]
    # The documented keys; new keys may only be added (issue 13: dense_score, lexical_score, chunk_index).
    assert set(hit) >= {"id", "score", "text", "title", "heading", "url", "locale", "doc_id", "source", "updated_at"}
    assert hit["doc_id"] == "files:refunds.md" and hit["title"] == "Refunds" and "took_ms" in payload

    result = invoke(files_settings, "status", "--json")
    assert result.exit_code == 0, result.stderr
    (project,) = json.loads(result.stdout)["projects"]
    assert project["docs"] == 1 and project["chunks"] == 1
    assert project["last_runs"]["reconcile"]["outcome"] == "ok"


def test_resync_exits_1_when_a_source_fails(files_settings: Path, docs_dir: Path) -> None:
    docs_dir.rmdir()
    result = invoke(files_settings, "resync", "--json")
    assert result.exit_code == 1
    (report,) = json.loads(result.stdout)
    assert report["outcome"] == "failed" and "does not exist" in report["errors"][0]


def test_resync_and_query_of_an_unknown_project_exit_1(files_settings: Path) -> None:
    assert invoke(files_settings, "resync", "--tenant", "nobody").exit_code == 1
    result = invoke(files_settings, "query", "acme", "nope", "hello")
    assert result.exit_code == 1 and "acme/nope" in result.stderr


def test_resync_table_output(files_settings: Path, docs_dir: Path) -> None:
    (docs_dir / "a.md").write_text("# A\n\nAlpha.\n")
    result = invoke(files_settings, "resync")
    assert result.exit_code == 0
    assert "acme/alpha" in result.stdout


def test_check_reports_each_item(files_settings: Path, monkeypatch) -> None:
    result = invoke(files_settings, "check")
    assert "store" in result.stdout and "model" in result.stdout and "files:docs" in result.stdout
    # The admin token variable is named by default but not set: reported, exit 1.
    assert result.exit_code == 1 and "KBSYNC_ADMIN_TOKEN is not set" in result.stdout
    monkeypatch.setenv("KBSYNC_ADMIN_TOKEN", "t")
    assert invoke(files_settings, "check").exit_code == 0


@pytest.mark.parametrize("command", [["status"], ["resync"]])
def test_commands_fail_cleanly_while_another_process_owns_the_store(files_settings: Path, command) -> None:
    from kbsync.settings import load_settings
    from kbsync.store import Store

    store = Store.open_embedded(load_settings(files_settings).state_dir)
    try:
        result = invoke(files_settings, *command)
    finally:
        store.close()
    if command == ["resync"]:
        assert result.exit_code == 1 and "another kbsync process" in result.stderr
    else:
        assert result.exit_code == 0 and "another kbsync process" in result.stdout


def test_config_json_and_log_level_work_before_or_after_the_subcommand(files_settings: Path, docs_dir: Path) -> None:
    """As a new user types them: `kbsync resync --config x.toml` and `kbsync --config x.toml resync`."""
    (docs_dir / "refunds.md").write_text("# Refunds\n\nRefunds are paid back within five business days.\n")
    after = runner.invoke(app, ["resync", "--config", str(files_settings), "--json"], catch_exceptions=False)
    assert after.exit_code == 0, after.stderr
    assert json.loads(after.stdout)[0]["docs_added"] == 1
    before = runner.invoke(app, ["--config", str(files_settings), "--json", "resync"], catch_exceptions=False)
    assert before.exit_code == 0, before.stderr
    assert json.loads(before.stdout)[0]["docs_unchanged"] == 1
    for args in (["-c", str(files_settings), "status", "--json"], ["status", "--json", "-c", str(files_settings)]):
        result = runner.invoke(app, args, catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["projects"][0]["docs"] == 1
    # The settings say log_level = "warning": run.finished (info) shows only when --log-level says so.
    quiet = runner.invoke(app, ["resync", "-c", str(files_settings)], catch_exceptions=False)
    assert quiet.exit_code == 0 and "run.finished" not in quiet.stderr
    for args in (
        ["resync", "-c", str(files_settings), "--log-level", "info"],
        ["--log-level", "info", "resync", "-c", str(files_settings)],
    ):
        loud = runner.invoke(app, args, catch_exceptions=False)
        assert loud.exit_code == 0 and "run.finished" in loud.stderr, args


def test_check_and_copy_store_print_json(files_settings: Path) -> None:
    result = runner.invoke(app, ["check", "--json", "--config", str(files_settings)], catch_exceptions=False)
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    # $KBSYNC_ADMIN_TOKEN is named by default but not set: that check fails, so the command exits 1.
    assert result.exit_code == 1 and checks["admin token"]["ok"] is False
    assert checks["model"]["ok"] and checks["store"]["ok"] and checks["acme/alpha files:docs"]["ok"]
    # No server listens on port 9 (discard): --json before the subcommand is taken, and the copy fails cleanly.
    result = runner.invoke(
        app, ["--json", "copy-store", "--to-http", "--port", "9", "-c", str(files_settings)], catch_exceptions=False
    )
    assert result.exit_code == 1
    assert "error" in result.stderr


def test_options_that_do_not_apply_are_refused(files_settings: Path) -> None:
    result = runner.invoke(app, ["--json", "run", "-c", str(files_settings)], catch_exceptions=False)
    assert result.exit_code == 2 and "--json does not apply" in result.stderr
    result = runner.invoke(app, ["status", "--log-level", "loud", "-c", str(files_settings)], catch_exceptions=False)
    assert result.exit_code == 2 and "loud" in result.stderr


def test_check_reports_a_lexical_index_that_disagrees_with_the_store(
    files_settings: Path, docs_dir, monkeypatch
) -> None:
    from kbsync.lexical import LexicalIndex
    from kbsync.settings import load_settings
    from kbsync.state import State

    monkeypatch.setenv("KBSYNC_ADMIN_TOKEN", "t")
    (docs_dir / "refunds.md").write_text("# Refunds\n\nRefunds are paid back within five business days.\n")
    assert invoke(files_settings, "resync").exit_code == 0
    result = invoke(files_settings, "check")
    assert result.exit_code == 0 and "acme/alpha lexical index: 1 rows for 1 chunks" in result.stdout
    state = State.open(load_settings(files_settings))
    try:
        lexical = LexicalIndex(state)
        lexical.delete("acme", "alpha", sorted(lexical.ids("acme", "alpha")))
    finally:
        state.close()
    result = invoke(files_settings, "check")
    assert result.exit_code == 1 and "0 rows for 1 chunks: run `kbsync resync`" in result.stdout
    assert invoke(files_settings, "resync").exit_code == 0
    assert invoke(files_settings, "check").exit_code == 0


def test_content_is_printed_as_it_is_never_as_rich_markup_or_emoji(files_settings: Path, docs_dir: Path) -> None:
    """Titles, text and names are content, not rich markup: `[/]` in a title crashed `kbsync query` with a
    MarkupError, `[bold]` vanished, and `files:a:b` became `files🅰b`."""
    (docs_dir / "tags.md").write_text(
        "# Closing tags [/] and [bold] in templates\n\nType :smile: or files:a:b in the template box.\n"
    )
    assert invoke(files_settings, "resync").exit_code == 0
    result = invoke(files_settings, "query", "acme", "alpha", "templates")
    assert result.exit_code == 0, result.stderr
    assert "Closing tags [/] and [bold] in templates" in result.stdout
    assert ":smile: or files:a:b" in result.stdout
    result = invoke(files_settings, "query", "acme", "[/nope]", "templates")
    assert result.exit_code == 1 and "acme/[/nope]" in result.stderr


def test_a_question_that_cannot_be_asked_exits_2_naming_why(files_settings: Path) -> None:
    """Bytes that are not UTF-8 reach argv as lone surrogates: `kbsync query demo docs $'caf\\xff'` printed a
    UnicodeEncodeError traceback (daemon or not); a blank question gave arbitrary results."""
    result = invoke(files_settings, "query", "acme", "alpha", "caf\udcff")
    assert result.exit_code == 2 and "not valid UTF-8" in result.stderr
    result = invoke(files_settings, "query", "acme", "alpha", "  \t ")
    assert result.exit_code == 2 and "the question is empty" in result.stderr
