"""Webhook answer time under query load (issue 17 item 7; the target: a webhook is answered within 100 ms, because
Chatwoot waits 5 s and never retries) against a real `kbsync run` subprocess.

A portal of corpus articles on the Chatwoot-compatible test server is synced by the daemon's start-up reconcile.
Then signed `article_updated` webhooks are POSTed one after the other (every `--gap-ms`), first with the daemon
idle, then while `--clients` query clients (one asyncio process, each client one query after the other) keep
/v1/query busy. Measured on the client side: POST sent -> 202 received. Every webhook is applied by the workers
(a poll of the portal), so refreshes compete for the cores too.

With `--before REF` the same run is made first against the kbsync package of git commit REF (extracted with
`git archive`, nothing checked out), so both codes are measured side by side on the same machine in one run.
With `--chroma embedded,http` each code runs once per store mode, the second against a `chroma run` server
(tests/servers/chroma.py): embedded Chroma holds the GIL while it writes (chromadb frees it for reads only,
chroma-core/chroma#3873), so every refresh a webhook causes freezes the event loop for the length of its upsert.

    python bench/webhook_load.py [--clients 50] [--webhooks 60] [--articles 10] [--before ede6f66]
                                 [--chroma embedded,http]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import REPO
from bench._daemon import BenchDaemon, free_port, percentile
from bench.webhook_latency import PORTAL, bench_portal, settings
from kbsync.http import sign
from tests.servers.chatwoot import ChatwootServer
from tests.servers.chroma import ChromaServer

QUESTIONS = (
    "how do I add an agent",
    "set up a website inbox",
    "reset my password",
    "create a canned response",
    "connect a whatsapp channel",
    "export conversations",
    "assign a conversation to a team",
)


def _query_load(port: int, token: str, clients: int, stop: Any, counts: Any) -> None:
    """`clients` concurrent query loops until `stop` is set; counts[0] answered, counts[1] failed."""

    async def client(http: httpx.AsyncClient, n: int) -> None:
        i = n
        while not stop.is_set():
            body = {"tenant": "bench", "project": "docs", "query": QUESTIONS[i % len(QUESTIONS)], "k": 5}
            try:
                response = await http.post("/v1/query", json=body, headers={"Authorization": f"Bearer {token}"})
                index = 0 if response.status_code == 200 else 1
            except httpx.HTTPError:
                index = 1
            with counts.get_lock():
                counts[index] += 1
            i += 1

    async def run() -> None:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60, limits=limits) as http:
            await asyncio.gather(*(client(http, n) for n in range(clients)))

    asyncio.run(run())


def _webhooks(port: int, secret: str, ids: list[int], count: int, gap: float) -> list[float]:
    """Send `count` signed webhooks one after the other; their answer times in seconds."""
    answers = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for n in range(count):
            # `updated_at` differs per edit, as in Chatwoot's payloads: the same body signed in the same second is a
            # replay (deduplicated), not a new edit.
            article = {"id": ids[n % len(ids)], "updated_at": f"{time.time():.6f}"}
            body = json.dumps(
                {"event": "article_updated", "account": {"id": 1}, "portal": {"slug": PORTAL}, "article": article}
            ).encode()
            ts = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "X-Chatwoot-Timestamp": ts,
                "X-Chatwoot-Signature": sign(secret, ts, body),
                "X-Chatwoot-Delivery": str(uuid.uuid4()),
            }
            sent = time.perf_counter()
            try:
                response = client.post("/webhooks/bench", content=body, headers=headers)
                answered = time.perf_counter() - sent
                if response.status_code != 202:
                    raise SystemExit(f"webhook answered {response.status_code}: {response.text}")
            except httpx.TimeoutException:
                answered = 10.0  # Chatwoot gave up after 5 s: counted as a 10 s answer
            answers.append(answered)
            time.sleep(gap)
    return answers


class _Daemon(BenchDaemon):
    """BenchDaemon started from `cwd` (another commit's kbsync package) instead of this checkout."""

    def __init__(self, *args: Any, cwd: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cwd = cwd

    def spawn(self) -> None:
        self.started = time.time()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kbsync", "--config", str(self.config), "run"],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )


def _measure(
    label: str, code: Path, folder: Path, args: argparse.Namespace, chroma: ChromaServer | None = None
) -> dict[str, Any]:
    tokens, env, fake, contents = bench_portal(args.articles)
    ids = list(contents)
    gap = args.gap_ms / 1000
    with ChatwootServer(fake) as chatwoot:
        port = free_port()
        config = folder / label.replace(" ", "_").replace(",", "") / "settings.toml"
        config.parent.mkdir(parents=True)
        text = settings(config.parent / "state", port, chatwoot.base_url)
        if chroma is not None:
            text += f'\n[chroma]\nmode = "http"\nhost = "{chroma.host}"\nport = {chroma.port}\n'
        config.write_text(text, encoding="utf-8")
        with _Daemon(config, port, env, tokens["ADMIN"], cwd=code):
            idle = _webhooks(port, tokens["WEBHOOK"], ids, args.webhooks // 2, gap)
            stop, counts = multiprocessing.Event(), multiprocessing.Array("q", 2)
            load = multiprocessing.Process(target=_query_load, args=(port, tokens["QUERY"], args.clients, stop, counts))
            load.start()
            time.sleep(2.0)  # every client has its first query in flight
            began, answered_before = time.perf_counter(), counts[0]
            loaded = _webhooks(port, tokens["WEBHOOK"], ids, args.webhooks, gap)
            seconds, answered = time.perf_counter() - began, counts[0] - answered_before
            stop.set()
            load.join(timeout=120)
    return {
        "code": label,
        "idle_p50_ms": round(percentile(idle, 50) * 1000, 1),
        "idle_p99_ms": round(percentile(idle, 99) * 1000, 1),
        "loaded_p50_ms": round(percentile(loaded, 50) * 1000, 1),
        "loaded_p99_ms": round(percentile(loaded, 99) * 1000, 1),
        "loaded_max_ms": round(max(loaded) * 1000, 1),
        "queries_per_s": round(answered / seconds, 1),
        "query_failures": counts[1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50, help="parallel query clients")
    parser.add_argument("--webhooks", type=int, default=60, help="webhooks measured under load (half as many idle)")
    parser.add_argument("--articles", type=int, default=10)
    parser.add_argument("--gap-ms", type=float, default=50.0, help="pause between two webhooks")
    parser.add_argument("--before", help="a git commit whose kbsync is measured first, side by side")
    parser.add_argument("--chroma", default="embedded", help="store modes to run, comma-separated: embedded,http")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="kbsync-webhook-load-") as tmp:
        folder = Path(tmp)
        codes = [("this checkout", REPO)]
        if args.before:
            old = folder / "before-code"
            old.mkdir()
            archive = subprocess.run(
                ["git", "-C", str(REPO), "archive", args.before, "kbsync"], check=True, capture_output=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            codes.insert(0, (f"before ({args.before})", old))
        for mode in args.chroma.split(","):
            for n, (label, code) in enumerate(codes):
                name = f"{label}, {mode}"
                if mode == "http":
                    with ChromaServer(folder / f"chroma-{n}" / "data") as server:
                        rows.append(_measure(name, code, folder, args, server))
                else:
                    rows.append(_measure(name, code, folder, args))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        f"kbsync webhook answer (POST -> 202) under {args.clients} parallel query clients, {args.articles} articles, "
        f"{args.webhooks} webhooks loaded / {args.webhooks // 2} idle, one every {args.gap_ms:g} ms "
        "(target p99 <= 100 ms)"
    )
    print(
        f"  {'code, store':<32} {'idle p50':>9} {'idle p99':>9} {'load p50':>9} {'load p99':>9} {'load max':>9} "
        f"{'queries/s':>10}"
    )
    for r in rows:
        print(
            f"  {r['code']:<32} {r['idle_p50_ms']:>7} ms {r['idle_p99_ms']:>6} ms {r['loaded_p50_ms']:>6} ms "
            f"{r['loaded_p99_ms']:>6} ms {r['loaded_max_ms']:>6} ms {r['queries_per_s']:>10}"
            + (f"  ({r['query_failures']} failed queries)" if r["query_failures"] else "")
        )


if __name__ == "__main__":
    main()
