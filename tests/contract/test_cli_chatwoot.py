"""The CLI contract (README "CLI") over Chatwoot sources: `resync` exit codes when a source fails, the run records
that `status --json` shows, and `check` verifying each portal. Against the Chatwoot-compatible server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kbsync.cli import app
from tests.chatwoot_fixtures import (  # noqa: F401  (fixtures)
    MULTI,
    TINY,
    chatwoot,
    fake,
    settings_factory,
    source,
    tenant,
)
from tests.servers.chatwoot import AGENT_TOKEN, FakeChatwoot

runner = CliRunner()
BAD_TOKEN = "bad-token-0d3e7a"


@pytest.fixture()
def admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """`check` fails when the admin token variable is unset; these tests are about the Chatwoot lines."""
    monkeypatch.setenv("KBSYNC_ADMIN_TOKEN", "admin-token-for-check")


def invoke(config: Path, *args: str):
    return runner.invoke(app, ["--config", str(config), *args], catch_exceptions=False)


def status(config: Path) -> dict[tuple[str, str], dict]:
    result = invoke(config, "status", "--json")
    assert result.exit_code == 0, result.output
    return {(p["tenant"], p["project"]): p for p in json.loads(result.stdout)["projects"]}


def test_resync_exits_1_when_one_source_fails_and_still_syncs_the_other_project(
    settings_factory, fake: FakeChatwoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Design §4: 1 = some source failed, the others were still synced; 0 once every source syncs."""
    config = settings_factory(
        tenant("acme", token=BAD_TOKEN, projects={"alpha": [TINY]}),
        tenant("globex", projects={"beta": [TINY]}),
    )
    result = invoke(config, "resync", "--json")
    assert result.exit_code == 1, result.output
    reports = {(r["tenant"], r["project"]): r for r in json.loads(result.stdout)}
    assert reports["acme", "alpha"]["outcome"] == "failed" and "token rejected" in reports["acme", "alpha"]["errors"][0]
    assert reports["globex", "beta"]["outcome"] == "ok" and reports["globex", "beta"]["docs_added"] == 3

    projects = status(config)
    failed = projects["acme", "alpha"]["last_runs"]["reconcile"]
    assert failed["outcome"] == "failed" and "token rejected" in failed["error"]
    assert failed["started_at"] <= failed["finished_at"]
    assert projects["acme", "alpha"]["docs"] == 0 and "token rejected" in projects["acme", "alpha"]["last_error"]
    synced = projects["globex", "beta"]["last_runs"]["reconcile"]
    assert synced["outcome"] == "ok" and synced["error"] is None
    assert synced["counts"]["docs_added"] == 3 and synced["counts"]["chunks_embedded"] >= 3
    assert projects["globex", "beta"]["docs"] == 3 and projects["globex", "beta"]["last_error"] is None

    monkeypatch.setenv("ACME_CHATWOOT_TOKEN", AGENT_TOKEN)  # the operator fixes the token
    result = invoke(config, "resync")
    assert result.exit_code == 0, result.output
    projects = status(config)
    assert projects["acme", "alpha"]["last_runs"]["reconcile"]["outcome"] == "ok"
    assert projects["acme", "alpha"]["docs"] == 3
    assert projects["globex", "beta"]["last_runs"]["reconcile"]["counts"]["chunks_embedded"] == 0


def test_check_verifies_each_chatwoot_portal(settings_factory, fake: FakeChatwoot, admin_token: None) -> None:
    config = settings_factory(tenant(projects={"alpha": [TINY], "french": [source(MULTI, locales=["fr"])]}))
    result = invoke(config, "check")
    assert result.exit_code == 0, result.output
    assert "acme chatwoot: token accepted by http://127.0.0.1" in result.stdout
    assert f"acme/alpha chatwoot:{TINY}: portal found, 3 articles (3 published)" in result.stdout
    fr = len(fake.published_ids(MULTI, "fr"))
    assert f"acme/french chatwoot:{MULTI}: portal found" in result.stdout and f"fr: {fr}" in result.stdout


def test_check_fails_on_a_rejected_token_without_printing_it(
    settings_factory, fake: FakeChatwoot, admin_token: None
) -> None:
    config = settings_factory(tenant(token=BAD_TOKEN, projects={"alpha": [TINY]}))
    result = invoke(config, "check")
    assert result.exit_code == 1
    line = next(line for line in result.stdout.splitlines() if "acme chatwoot" in line)
    assert line.startswith("FAIL") and "token rejected (HTTP 401: Invalid Access Token)" in line
    assert BAD_TOKEN not in result.output


def test_check_fails_on_an_unknown_portal_and_an_unknown_locale(
    settings_factory, fake: FakeChatwoot, admin_token: None
) -> None:
    config = settings_factory(tenant(projects={"alpha": ["no-such-portal"], "beta": [source(MULTI, locales=["de"])]}))
    result = invoke(config, "check")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    missing = next(line for line in lines if "chatwoot:no-such-portal" in line)
    assert missing.startswith("FAIL") and "portal 'no-such-portal' not found in account 1" in missing
    locale = next(line for line in lines if f"chatwoot:{MULTI}" in line)
    assert locale.startswith("FAIL") and "no locale 'de'" in locale
    assert next(line for line in lines if "acme chatwoot:" in line).startswith("ok")
    assert AGENT_TOKEN not in result.output


def test_check_fails_on_an_archived_portal(settings_factory, fake: FakeChatwoot, admin_token: None) -> None:
    config = settings_factory(tenant(projects={"alpha": [TINY]}))
    fake.update_portal(TINY, archived=True)
    result = invoke(config, "check")
    assert result.exit_code == 1
    assert "is archived" in next(line for line in result.stdout.splitlines() if f"chatwoot:{TINY}" in line)


def test_resync_rides_out_a_throttle_window_of_429s_without_retry_after(settings_factory, fake: FakeChatwoot) -> None:
    """Chatwoot's Rack::Attack answers 429 without Retry-After for a whole throttle window: the per-request time
    budget, not an attempt count, bounds the retries (issue 14). The backoff is shrunk so the test is quick; seven
    429s in a row still exceed the five attempts the client used to stop at. If broken: exit 1, 'gave up'."""
    fast = {"chatwoot_max_backoff_seconds": 0.05}
    config = settings_factory(tenant("acme", projects={"alpha": [TINY]}, extra=fast))
    fake.fail(path_contains="/articles", status=429, times=7)
    result = invoke(config, "resync", "--json")
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.stdout)
    assert report["outcome"] == "ok" and report["docs_added"] == 3
    assert [r.status for r in fake.requests].count(429) == 7


def test_resync_gives_up_on_429s_once_the_retry_budget_is_spent(settings_factory, fake: FakeChatwoot) -> None:
    """A throttle that never lifts ends in a failed run (exit 1) once `chatwoot_retry_seconds` is spent, with a
    message saying how long it tried; it does not retry for ever."""
    budget = {"chatwoot_retry_seconds": 1, "chatwoot_max_backoff_seconds": 0.05}
    config = settings_factory(tenant("acme", projects={"alpha": [TINY]}, extra=budget))
    fake.fail(path_contains="/articles", status=429, times=None)
    result = invoke(config, "resync", "--json")
    assert result.exit_code == 1, result.output
    (report,) = json.loads(result.stdout)
    assert report["outcome"] == "failed" and "HTTP 429 (gave up after" in report["errors"][0]
    assert [r.status for r in fake.requests].count(429) > 5  # more than the old attempt cap, within 1 s
