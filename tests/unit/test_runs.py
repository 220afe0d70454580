"""RunReport survives the trip through the daemon's JSON answer (what `kbsync resync` prints while a daemon runs)."""

from __future__ import annotations

import json

from kbsync.runs import RunReport


def test_a_report_read_back_from_json_is_the_same_report() -> None:
    report = RunReport("acme", "alpha", "reconcile", docs_seen=3, docs_added=2, sources=2, failed_sources=1)
    report.errors.append("files:docs: gone")
    answer = json.loads(json.dumps({**report.as_dict(), "added_by_a_newer_daemon": 1}))
    again = RunReport.from_dict(answer)
    assert again == report and again.outcome == answer["outcome"] == "partial"
