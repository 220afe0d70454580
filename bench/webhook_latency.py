"""Webhook to queryable (target: p50 <= 0.5 s, p99 <= 1.5 s) against a real `kbsync run` subprocess.

A portal of corpus articles on the Chatwoot-compatible test server (tests/servers/chatwoot.py) is synced by the
daemon's start-up reconcile. Then, one after the other, an article gets a new "Revision" section at its end (a
paragraph made of two kanboard-docs paragraphs, replaced at each edit of that article: the other chunks keep their
ids and embeddings, so an edit embeds one or two chunks) and a signed `article_updated` webhook is POSTed. Measured per
edit, on the client side:
- webhook answer: POST sent -> 202 received (design: well under 100 ms);
- webhook to queryable: POST sent -> the first /v1/query (the new paragraph, k=50, polled every `--poll-ms`) whose
  results hold the new section (its heading carries a unique marker). k=50, the maximum, because the 20 revision
  paragraphs come from one corpus and look alike: the new one is found, but not always in the top 5.
The daemon polls nothing on its own during the run (poll_interval_seconds = 3600): only the webhooks move the index.
The client's polling queries embed their text on the same cores as the daemon's refresh, so the daemon's own
receipt -> applied time (from its log) is reported next to it.

    python bench/webhook_latency.py [--edits 300] [--articles 20] [--poll-ms 10]
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import corpus_articles
from bench._daemon import BenchDaemon, free_port, percentile, settings_head
from kbsync.http import sign
from tests.servers.chatwoot import ChatwootServer, FakeChatwoot

PORTAL = "bench-help"


def settings(state_dir: Path, port: int, chatwoot_url: str) -> str:
    return settings_head(state_dir, port, log_level="info") + textwrap.dedent(
        f"""\
        [[tenants]]
        id = "bench"
        chatwoot_url = "{chatwoot_url}"
        account_id = 1
        api_token_env = "BENCH_CHATWOOT_TOKEN"
        webhook_secret_env = "BENCH_WEBHOOK_SECRET"
        query_token_env = "BENCH_QUERY_TOKEN"

        [[tenants.projects]]
        id = "docs"

        [[tenants.projects.sources]]
        kind = "chatwoot"
        portal = "{PORTAL}"
        """
    )


def bench_portal(count: int) -> tuple[dict[str, str], dict[str, str], FakeChatwoot, dict[int, str]]:
    """Fresh tokens, the environment that hands them to the daemon, and a Chatwoot portal of `count` short English
    corpus articles published an hour ago (article id -> content)."""
    tokens = {name: f"{name.lower()}-{secrets.token_hex(8)}" for name in ("API", "WEBHOOK", "QUERY", "ADMIN")}
    env = {
        "BENCH_CHATWOOT_TOKEN": tokens["API"],
        "BENCH_WEBHOOK_SECRET": tokens["WEBHOOK"],
        "BENCH_QUERY_TOKEN": tokens["QUERY"],
        "KBSYNC_ADMIN_TOKEN": tokens["ADMIN"],
    }
    fake = FakeChatwoot(with_default_tokens=False, tie_order="stable")
    fake.add_token(1, tokens["API"], role="agent")
    fake.add_portal(1, PORTAL)
    english = [a for a in corpus_articles("chatwoot-docs") if a["locale"] == "en" and len(a["content"]) < 4000]
    start = fake.now() - 3600
    contents = {
        fake.add_article(PORTAL, title=a["title"], content=a["content"], status="published", updated_at=start + n): a[
            "content"
        ]
        for n, a in enumerate(english[:count])
    }
    return tokens, env, fake, contents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=int, default=300, help="measured edits (after --warmup unmeasured ones)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--articles", type=int, default=20, help="articles in the portal (edited round-robin)")
    parser.add_argument("--poll-ms", type=float, default=10.0, help="pause between two /v1/query polls")
    parser.add_argument("--timeout", type=float, default=10.0, help="an edit not queryable after this is a miss")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    tokens, env, fake, base = bench_portal(args.articles)
    ids = list(base)
    blocks = [
        " ".join(block.split())
        for article in corpus_articles("kanboard-docs")
        if article["locale"] == "en"
        for block in article["content"].split("\n\n")
        if 150 <= len(block.strip()) <= 700 and block.strip()[:1].isalpha()  # prose, not lists, code or tables
    ]
    # Two blocks per note: a paragraph of ~70-250 word pieces, so the chunk that holds it is mostly this paragraph
    # (packed with a short section before it, or on its own) and the query for it finds it.
    notes = [f"{blocks[i]} {blocks[i + 1]}" for i in range(0, len(blocks) - 1, 2)]

    with tempfile.TemporaryDirectory(prefix="kbsync-webhook-bench-") as tmp, ChatwootServer(fake) as chatwoot:
        folder = Path(tmp)
        port = free_port()
        config = folder / "settings.toml"
        config.write_text(settings(folder / "state", port, chatwoot.base_url), encoding="utf-8")
        started = time.perf_counter()
        with BenchDaemon(config, port, env, tokens["ADMIN"]) as daemon:
            startup = time.perf_counter() - started
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
            query_headers = {"Authorization": f"Bearer {tokens['QUERY']}"}
            answers: list[float] = []
            visible: list[float] = []
            polls: list[int] = []
            misses = 0
            embeddings_before = _metric(daemon.metrics(), "kbsync_embeddings_total")
            for n in range(args.warmup + args.edits):
                article_id = ids[n % len(ids)]
                # The marker rides in the section heading, which every chunk of the section repeats (a short section
                # is packed into the chunk before it); the query is the paragraph, a real one from another corpus.
                marker = f"rev{n}x{uuid.uuid4().hex[:8]}"
                paragraph = notes[n % len(notes)]
                fake.edit_article(
                    PORTAL, article_id, content=f"{base[article_id]}\n\n## Revision {marker}\n\n{paragraph}"
                )
                body = json.dumps(
                    {
                        "event": "article_updated",
                        "account": {"id": 1},
                        "portal": {"slug": PORTAL},
                        "article": {"id": article_id},
                    }
                ).encode()
                ts = str(int(time.time()))
                headers = {
                    "Content-Type": "application/json",
                    "X-Chatwoot-Timestamp": ts,
                    "X-Chatwoot-Signature": sign(tokens["WEBHOOK"], ts, body),
                    "X-Chatwoot-Delivery": str(uuid.uuid4()),
                }
                sent = time.perf_counter()
                response = client.post("/webhooks/bench", content=body, headers=headers)
                answered = time.perf_counter() - sent
                if response.status_code != 202:
                    raise SystemExit(f"webhook answered {response.status_code}: {response.text}")
                query = {"tenant": "bench", "project": "docs", "query": paragraph, "k": 50}
                tries = 0
                while True:
                    tries += 1
                    results = client.post("/v1/query", json=query, headers=query_headers).json()["results"]
                    if any(marker in r["text"] for r in results):
                        seen = time.perf_counter() - sent
                        break
                    if time.perf_counter() - sent > args.timeout:
                        seen = None
                        break
                    time.sleep(args.poll_ms / 1000)
                if n < args.warmup:
                    continue
                answers.append(answered)
                polls.append(tries)
                if seen is None:
                    misses += 1
                else:
                    visible.append(seen)
            embedded = _metric(daemon.metrics(), "kbsync_embeddings_total") - embeddings_before
            client.close()
        # The daemon's own view: `queue.item_applied` logs the time from receipt to the item marked done (written).
        applied = [
            float(entry["latency_s"])
            for entry in map(json.loads, daemon.log_path.read_text(encoding="utf-8").splitlines())
            if entry.get("event") == "queue.item_applied"
        ][-args.edits :]

    figures = {
        "edits": args.edits,
        "articles": len(ids),
        "startup_seconds": round(startup, 1),
        "queryable_p50_s": round(percentile(visible, 50), 3) if visible else None,
        "queryable_p99_s": round(percentile(visible, 99), 3) if visible else None,
        "queryable_max_s": round(max(visible), 3) if visible else None,
        "misses": misses,
        "daemon_applied_p50_s": round(percentile(applied, 50), 3) if applied else None,
        "daemon_applied_p99_s": round(percentile(applied, 99), 3) if applied else None,
        "answer_p50_ms": round(percentile(answers, 50) * 1000, 2),
        "answer_p99_ms": round(percentile(answers, 99) * 1000, 2),
        "answer_max_ms": round(max(answers) * 1000, 2),
        "query_polls_p50": percentile([float(p) for p in polls], 50),
        "chunks_embedded_per_edit": round(embedded / (args.warmup + args.edits), 2),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(
        f"kbsync webhook latency: {args.edits} edits of {len(ids)} articles (after {args.warmup} warm-up edits), "
        f"daemon ready and synced in {figures['startup_seconds']} s"
    )
    print(
        f"  webhook -> queryable  p50 {figures['queryable_p50_s']} s   p99 {figures['queryable_p99_s']} s   "
        f"max {figures['queryable_max_s']} s   misses {misses}   (target p50 <= 0.5 s, p99 <= 1.5 s; "
        f"polled every {args.poll_ms:g} ms)"
    )
    print(
        f"  received -> applied  p50 {figures['daemon_applied_p50_s']} s   p99 {figures['daemon_applied_p99_s']} s   "
        f"(the daemon's queue.item_applied log lines)"
    )
    print(
        f"  webhook answer (202)  p50 {figures['answer_p50_ms']} ms   p99 {figures['answer_p99_ms']} ms   "
        f"max {figures['answer_max_ms']} ms   (target: well under 100 ms)"
    )
    print(f"  chunks embedded per edit: {figures['chunks_embedded_per_edit']}")


def _metric(text: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


if __name__ == "__main__":
    main()
