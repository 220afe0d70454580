"""Invariant 10 (docs/invariants.md): secrets never appear in logs, errors, run reports or status output.

The Chatwoot token travels in the `api_access_token` header of every request. Here the server also echoes it back
in its error bodies (as a debug error page may), and the token is looked for in every event kbsync logs
(structlog, captured raw, before redaction), every stdlib record (httpx, httpcore at DEBUG), the run reports, the
run records, and the output of `kbsync resync --json`, `kbsync status --json` and `kbsync check`.
"""

from __future__ import annotations

import json
import logging

import pytest
from structlog.testing import capture_logs
from typer.testing import CliRunner

from kbsync.cli import app
from tests.chatwoot_fixtures import TINY, Kb, tenant
from tests.servers.chatwoot import AGENT_TOKEN, FakeChatwoot

REVOKED = "revoked-token-5c2f9e81"
runner = CliRunner()


def echo_token_in_errors(fake: FakeChatwoot, token: str) -> None:
    """A server that rejects `token` and repeats it in its error bodies."""
    fake.fail(path_contains="/portals", status=401, body={"error": f"Invalid Access Token {token}"}, times=None)


def test_tokens_appear_in_no_log_report_or_run_record(
    kb_factory, fake: FakeChatwoot, other_chatwoot, other_fake: FakeChatwoot, caplog: pytest.LogCaptureFixture
) -> None:
    """A good token (syncs, polls, retries on a 500 that echoes it) and a rejected one (echoed in the 401 body).
    If broken, a token lands in a log aggregator or in the status page of every operator."""
    caplog.set_level(logging.DEBUG)
    kb: Kb = kb_factory(
        tenant("acme", projects={"alpha": [TINY]}),
        tenant("globex", server=other_chatwoot, token=REVOKED, projects={"beta": [TINY]}),
    )
    echo_token_in_errors(other_fake, REVOKED)
    with capture_logs() as logs:
        reports = [kb.reconcile("acme", "alpha"), kb.poll("acme", "alpha")]
        fake.fail(path_contains="/articles", status=500, body={"error": f"boom {AGENT_TOKEN}"}, times=None)
        reports.append(kb.poll("acme", "alpha"))
        reports.append(kb.reconcile("globex", "beta"))
    assert [r.outcome for r in reports] == ["ok", "ok", "failed", "failed"]
    assert "token rejected" in reports[-1].errors[0] and "[redacted]" in reports[-1].errors[0]
    assert any(e["event"] == "chatwoot.retry" for e in logs) and any(e["event"] == "source.failed" for e in logs)
    runs = [
        run.as_dict()
        for project in (("acme", "alpha"), ("globex", "beta"))
        for run in kb.engine.state.last_runs(*project).values()
    ]
    for token in (AGENT_TOKEN, REVOKED):
        assert token not in repr(logs)
        assert token not in caplog.text and not any(token in repr(r.args) for r in caplog.records)
        assert token not in json.dumps([r.as_dict() for r in reports])
        assert token not in json.dumps(runs)


def test_cli_output_shows_no_token(
    settings_factory, fake: FakeChatwoot, other_chatwoot, other_fake: FakeChatwoot
) -> None:
    """`resync --json`, `status --json` and `check` with a rejected token echoed back by the server."""
    config = settings_factory(
        tenant("acme", projects={"alpha": [TINY]}),
        tenant("globex", server=other_chatwoot, token=REVOKED, projects={"beta": [TINY]}),
    )
    echo_token_in_errors(other_fake, REVOKED)
    outputs = []
    # globex's token is rejected: resync and check fail (1); status reports the last error and succeeds (0).
    for command, code in ((["resync", "--json"], 1), (["status", "--json"], 0), (["check"], 1)):
        result = runner.invoke(app, ["--config", str(config), *command], catch_exceptions=False)
        assert result.exit_code == code, (command, result.output)
        outputs.append(result.stdout + result.stderr)
    resync, status, check = outputs
    assert "token rejected" in resync and "token rejected" in status and "token rejected" in check
    for token in (AGENT_TOKEN, REVOKED):
        assert all(token not in output for output in outputs)
