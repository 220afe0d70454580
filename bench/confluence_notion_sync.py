"""Confluence and Notion sync through the compatible test servers (tests/servers/confluence.py, notion.py).

A 1,000-page Confluence space and a 1,000-page Notion tree (a root, 10 section pages, a child database of 100
rows, the rest child pages), built from ../shared/corpus/chatwoot-docs.json with bodies cut to about
`--max-chars` (so the run measures the sources more than the model). Each source is its own project. Measured,
in one process, per source:

1. initial reconcile: wall time, chunks embedded, HTTP requests;
2. a poll with nothing changed: requests, time as % of the initial sync (target <= 3%), bodies fetched (0);
3. one page edited (a sentence appended), then a poll: chunks embedded (target <= 3), bodies fetched.

Pacing is switched off (`requests_per_second = 1000`): Notion's 3 requests/s would make the initial walk take
requests / 3 seconds, printed alongside.

    python bench/confluence_notion_sync.py [--pages 1000] [--max-chars 500]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import CORPUS, model_dir
from kbsync.logging import configure_logging
from kbsync.runs import ProjectKey, RunReport
from kbsync.settings import load_settings
from kbsync.wiring import open_engine
from tests.servers.confluence import EMAIL, TOKEN, ConfluenceServer, FakeConfluence, storage_from_markdown
from tests.servers.notion import TOKEN as NOTION_TOKEN
from tests.servers.notion import FakeNotion, NotionServer, blocks_from_markdown, build_tree

CORPUS_FILE = CORPUS / "chatwoot-docs.json"
EDIT = "Edited for the benchmark: this sentence is new."


def settings_text(confluence_url: str, notion_url: str, root: str) -> str:
    return f"""
state_dir = "var"
log_level = "warning"
log_format = "json"
[embedding]
model_dir = "{model_dir()}"
[[tenants]]
id = "bench"
[[tenants.projects]]
id = "confluence"
[[tenants.projects.sources]]
kind = "confluence"
base_url = "{confluence_url}"
space = "DOCS"
email_env = "BENCH_CONF_EMAIL"
token_env = "BENCH_CONF_TOKEN"
requests_per_second = 1000
[[tenants.projects]]
id = "notion"
[[tenants.projects.sources]]
kind = "notion"
root = "{root}"
token_env = "BENCH_NOTION_TOKEN"
base_url = "{notion_url}"
requests_per_second = 1000
"""


def timed(run) -> tuple[RunReport, float]:
    started = time.perf_counter()
    report = run()
    return report, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--max-chars", type=int, default=500)
    args = parser.parse_args()
    configure_logging("console", "warning")

    confluence = FakeConfluence()
    confluence.add_space("DOCS")
    page_ids = confluence.load_corpus("DOCS", CORPUS_FILE, count=args.pages, max_chars=args.max_chars)
    notion = FakeNotion()
    root = build_tree(notion, CORPUS_FILE, pages=args.pages, database_rows=100, max_chars=args.max_chars)
    os.environ.update(BENCH_CONF_EMAIL=EMAIL, BENCH_CONF_TOKEN=TOKEN, BENCH_NOTION_TOKEN=NOTION_TOKEN)

    rows: list[tuple[str, str]] = []
    with (
        ConfluenceServer(confluence) as conf_server,
        NotionServer(notion) as notion_server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        config = Path(tmp) / "settings.toml"
        config.write_text(settings_text(conf_server.site_url, notion_server.base_url, root), encoding="utf-8")
        with open_engine(load_settings(config)) as engine:
            for name, faults, bodies, edit in (
                ("confluence", confluence.faults, "/api/v2/pages/", lambda: edit_confluence(confluence, page_ids)),
                ("notion", notion.faults, "/children", lambda: edit_notion(notion)),
            ):
                key = ProjectKey("bench", name)
                faults.clear_requests()
                initial, initial_s = timed(functools.partial(engine.reconcile, key))
                assert initial.outcome == "ok", initial.errors
                initial_requests = faults.count()
                faults.clear_requests()
                quiet, quiet_s = timed(functools.partial(engine.poll, key))
                quiet_requests, quiet_bodies = faults.count(), faults.count(bodies)
                edit()
                faults.clear_requests()
                edited, _ = timed(functools.partial(engine.poll, key))
                rows += [
                    (
                        f"{name}: initial sync",
                        f"{initial_s:.1f} s, {initial.docs_added} docs, "
                        f"{initial.chunks_embedded} chunks embedded, {initial_requests} requests"
                        + (f" (>= {initial_requests / 3:.0f} s at Notion's 3 requests/s)" if name == "notion" else ""),
                    ),
                    (
                        f"{name}: no-change poll",
                        f"{quiet_requests} requests, {quiet_s * 1000:.0f} ms = "
                        f"{quiet_s / initial_s:.2%} of initial, {quiet_bodies} bodies fetched, "
                        f"{quiet.chunks_embedded} chunks embedded",
                    ),
                    (
                        f"{name}: one page edited, poll",
                        f"{edited.docs_updated} doc updated, {edited.chunks_embedded} "
                        f"chunks embedded, {faults.count(bodies)} bodies fetched, {faults.count()} requests",
                    ),
                ]
    width = max(len(label) for label, _ in rows)
    print(f"{args.pages} pages per source, bodies cut to ~{args.max_chars} chars, pacing off")
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


def edit_confluence(fake: FakeConfluence, page_ids: list[str]) -> None:
    page = fake.pages["DOCS"][page_ids[len(page_ids) // 2]]
    fake.edit("DOCS", page.id, body=page.body + storage_from_markdown(EDIT))


def edit_notion(fake: FakeNotion) -> None:
    leaves = [p for p in fake.pages.values() if p.title.startswith(("Section", "Knowledge")) is False]
    page = leaves[len(leaves) // 2]
    body = [
        {k: v for k, v in fake.blocks[b].items()}
        for b in fake.children[page.id]
        if fake.blocks[b]["type"] not in ("child_page", "child_database") and not fake.blocks[b]["has_children"]
    ]
    fake.edit_page(
        page.id, [*({"type": b["type"], b["type"]: b[b["type"]]} for b in body), *blocks_from_markdown(EDIT)]
    )


if __name__ == "__main__":
    main()
