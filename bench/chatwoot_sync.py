"""Chatwoot sync of the whole ../shared/corpus through the Chatwoot-compatible test server (tests/servers/chatwoot.py).

Both corpora are served as portals of account 1 (chatwoot-docs, kanboard-docs); one tenant has one project per
portal; the engine uses the product's default client settings (timeouts, retries, 10 requests/s per tenant).
Measured, in one process:

1. initial reconcile: wall time, chunks, chunks/s, share of the time spent embedding, requests;
2. a second reconcile with nothing changed: embeddings (0 expected), time as a fraction of the first, requests;
3. a poll with nothing changed: requests per portal (1 expected), from the run report and the server's log;
4. 1% of the articles edited (one paragraph appended to in each of the longest articles), then a poll: chunks
   embedded against the chunks those articles hold.

    python bench/chatwoot_sync.py [--max-tokens 192] [--edit-fraction 0.01]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import CORPORA, model_dir
from bench.sync import TimedEmbedder
from kbsync.logging import configure_logging
from kbsync.runs import ProjectKey, RunReport
from kbsync.settings import load_settings
from kbsync.wiring import open_engine
from tests.servers.chatwoot import AGENT_TOKEN, ChatwootServer, FakeChatwoot

PROJECTS = {"chatwoot": "chatwoot-docs", "kanboard": "kanboard-docs"}
TOKEN_ENV = "KBSYNC_BENCH_CHATWOOT_TOKEN"
EDIT = " Edited for the benchmark: this sentence changes one paragraph."


def settings_text(base_url: str, max_tokens: int) -> str:
    lines = [
        'state_dir = "var"',
        'log_level = "warning"',
        'log_format = "json"',
        "[embedding]",
        f'model_dir = "{model_dir()}"',
        "[chunking]",
        f"max_tokens = {max_tokens}",
        "[[tenants]]",
        'id = "bench"',
        f'chatwoot_url = "{base_url}"',
        "account_id = 1",
        f'api_token_env = "{TOKEN_ENV}"',
    ]
    for project, portal in PROJECTS.items():
        lines += [
            "[[tenants.projects]]",
            f'id = "{project}"',
            "[[tenants.projects.sources]]",
            'kind = "chatwoot"',
            f'portal = "{portal}"',
        ]
    return "\n".join(lines) + "\n"


def edit_one_paragraph(content: str) -> str | None:
    """`content` with a sentence appended to its middle prose paragraph, or None when it has none."""
    blocks = content.split("\n\n")
    prose = [
        i
        for i, block in enumerate(blocks)
        if len(block) > 80 and not re.match(r"^\s*([#!|`<>*+-]|\d+[.)])", block) and "\n" not in block.strip()
    ]
    if not prose:
        return None
    middle = prose[len(prose) // 2]
    blocks[middle] = blocks[middle].rstrip() + EDIT
    return "\n\n".join(blocks)


def run_all(engine, kind: str) -> tuple[list[RunReport], float]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    run = engine.reconcile if kind == "reconcile" else engine.poll
    reports = [run(ProjectKey("bench", project)) for project in PROJECTS]
    return reports, time.perf_counter() - started


def total(reports: list[RunReport], field: str) -> int:
    return sum(getattr(r, field) for r in reports)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--edit-fraction", type=float, default=0.01)
    args = parser.parse_args()
    configure_logging("console", "warning")
    fake = FakeChatwoot.with_corpora(*CORPORA)
    articles = sum(len(fake.all_articles(portal)) for portal in PROJECTS.values())
    os.environ[TOKEN_ENV] = AGENT_TOKEN
    with tempfile.TemporaryDirectory(prefix="kbsync-bench-") as tmp, ChatwootServer(fake) as server:
        config = Path(tmp) / "settings.toml"
        config.write_text(settings_text(server.base_url, args.max_tokens), encoding="utf-8")
        with open_engine(load_settings(config)) as engine:
            timer = TimedEmbedder(engine.embedder)
            engine.embedder = timer  # type: ignore[assignment]

            fake.clear_requests()
            first, first_wall = run_all(engine, "reconcile")
            first_requests, embed_seconds = fake.request_count(), timer.seconds
            chunks = total(first, "chunks_total")
            print(f"initial reconcile: {articles} articles in 2 portals, {chunks} chunks in {first_wall:.1f} s")
            print(
                f"  {total(first, 'chunks_embedded') / first_wall:.1f} chunks/s, embedding "
                f"{100 * embed_seconds / first_wall:.1f}% of wall time, {first_requests} HTTP requests"
            )

            fake.clear_requests()
            second, second_wall = run_all(engine, "reconcile")
            print(
                f"reconcile, nothing changed: {total(second, 'chunks_embedded')} embeddings, "
                f"{total(second, 'chunks_written')} chunks written, {second_wall:.2f} s = "
                f"{100 * second_wall / first_wall:.2f}% of the initial reconcile, {fake.request_count()} HTTP requests"
            )

            fake.clear_requests()
            polls, poll_wall = run_all(engine, "poll")
            per_portal = ", ".join(
                f"{portal}: {r.requests} (server saw {fake.request_count(f'/portals/{portal}/')})"
                for portal, r in zip(PROJECTS.values(), polls)
            )
            print(
                f"poll, nothing changed: requests per portal {per_portal}; "
                f"{total(polls, 'chunks_embedded')} embeddings, {poll_wall * 1000:.0f} ms"
            )

            edits = max(1, round(args.edit_fraction * articles))
            edited: list[tuple[str, str]] = []  # (project, doc_id)
            for n in range(edits):
                project = list(PROJECTS)[n % len(PROJECTS)]
                portal = PROJECTS[project]
                taken = {doc for _, doc in edited}
                for row in sorted(fake.all_articles(portal), key=lambda a: -len(a["content"] or "")):
                    doc = f"chatwoot:{portal}:{row['id']}"
                    content = edit_one_paragraph(row["content"] or "")
                    if doc not in taken and row["status"] == "published" and content is not None:
                        fake.edit_article(portal, row["id"], content=content)
                        edited.append((project, doc))
                        break
            held = 0
            for project, doc in edited:
                held += len(engine.store.index(ProjectKey("bench", project).collection).docs[doc].chunks)
            fake.clear_requests()
            after_edit, edit_wall = run_all(engine, "poll")
            print(
                f"{len(edited)} articles edited ({100 * len(edited) / articles:.1f}%), one paragraph each, then a "
                f"poll: {total(after_edit, 'chunks_embedded')} chunks embedded of {held} chunks in those articles, "
                f"{total(after_edit, 'docs_updated')} docs updated, {fake.request_count()} HTTP requests, "
                f"{edit_wall:.2f} s"
            )
            errors = [e for r in (*first, *second, *polls, *after_edit) for e in r.errors]
            if errors:
                print("errors:", errors)


if __name__ == "__main__":
    main()
