"""The scale run (issue 8): a synthetic portal of N articles on the test Chatwoot server, synced by a real daemon.

Articles are cut from ../shared/corpus (two to four paragraphs each, with a unique opening sentence so no two are
alike), so every chunk is new and embedded. Reported per N:
- initial sync: wall time, chunks, chunks/s, and the daemon's peak RSS (VmHWM from /proc, the kernel's own count);
- a reconcile with nothing changed (POST /v1/resync): time and embeddings (0 expected);
- `/v1/query` p50/p99 at k=5, embedded, then the same store copied to a `chroma run` server (copy-store, no
  re-embedding) and queried in http mode.
With `--replicas` instead, the same N articles split over two projects are synced by 1 and then 2 replicas sharing
a PostgreSQL state and a Chroma server: chunks/s of each (on 2 cores the embedder is CPU-bound; see the README).

    python bench/scale.py --articles 1000 [--articles 5000 ...] [--queries 200]
    python bench/scale.py --articles 1000 --replicas
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import corpus_articles, model_dir
from bench._daemon import BenchDaemon, free_port, percentile
from tests.servers.chatwoot import AGENT_TOKEN, ChatwootServer, FakeChatwoot
from tests.servers.chroma import ChromaServer

ADMIN = "bench-admin-token"
QUESTIONS = [q["q"] for q in json.loads((REPO / "bench" / "retrieval_questions.json").read_text())]


def synthetic_portal(fake: FakeChatwoot, portal: str, count: int, seed: int) -> None:
    rng = random.Random(seed)
    paragraphs = [
        [p for p in a["content"].split("\n\n") if len(p) > 80 and not p.startswith(("```", "|", "!["))]
        for name in ("chatwoot-docs", "kanboard-docs")
        for a in corpus_articles(name)
        if a["locale"] == "en"
    ]
    paragraphs = [p for p in paragraphs if len(p) >= 2]
    fake.add_portal(1, portal, locales=["en"])
    for n in range(count):
        source = paragraphs[n % len(paragraphs)]
        take = rng.sample(source, min(len(source), rng.randint(2, 4)))
        body = f"Note {n}: this guide covers case number {n} for team {rng.randint(1, 999)}.\n\n" + "\n\n".join(take)
        fake.add_article(portal, title=f"Guide {n}", content=body, status="published", updated_at=1_700_000_000 + n)
    fake.snapshot()


def settings_text(base: str, portals: list[str], *, state_url: str = "", chroma: ChromaServer | None = None) -> str:
    chroma_text = f'mode = "http"\nhost = "{chroma.host}"\nport = {chroma.port}\n' if chroma else 'mode = "embedded"\n'
    projects = "".join(
        f'[[tenants.projects]]\nid = "p{n}"\n[[tenants.projects.sources]]\nkind = "chatwoot"\nportal = "{portal}"\n'
        for n, portal in enumerate(portals)
    )
    state = f'[state]\nurl = "{state_url}"\nlease_seconds = 30\n' if state_url else ""
    return (
        f'state_dir = "var"\nlog_format = "json"\nlog_level = "warning"\n[chroma]\n{chroma_text}{state}'
        f'[embedding]\nmodel_dir = "{model_dir()}"\n'
        f"[schedule]\npoll_interval_seconds = 3600\nreconcile_interval_minutes = 1440\njitter_seconds = 0\n"
        f'[[tenants]]\nid = "bench"\nchatwoot_url = "{base}"\naccount_id = 1\napi_token_env = "BENCH_TOKEN"\n'
        f"{projects}"
    )


class ScaleDaemon(BenchDaemon):
    """bench/_daemon.py's daemon, plus what this benchmark reads: peak RSS and query timings."""

    def __init__(self, config: Path) -> None:
        port = free_port()
        env = {"BENCH_TOKEN": AGENT_TOKEN, "KBSYNC_ADMIN_TOKEN": ADMIN, "KBSYNC_SERVER__PORT": str(port)}
        super().__init__(config, port, env, ADMIN)
        self.http.headers["Authorization"] = f"Bearer {ADMIN}"

    def peak_rss_mb(self) -> float:
        """VmHWM: the kernel's own count of the process's peak resident memory."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def query_times(self, count: int) -> list[float]:
        times = []
        for n in range(count):
            body = {"tenant": "bench", "project": "p0", "query": QUESTIONS[n % len(QUESTIONS)], "k": 5}
            started = time.perf_counter()
            self.http.post("/v1/query", json=body, timeout=60).raise_for_status()
            times.append(time.perf_counter() - started)
        return times


def run_size(articles: int, queries: int) -> None:
    with tempfile.TemporaryDirectory(prefix="kbsync-scale-") as tmp:
        folder = Path(tmp)
        fake = FakeChatwoot(tie_order="stable")
        synthetic_portal(fake, "scale", articles, seed=articles)
        with ChatwootServer(fake) as chatwoot:
            config = folder / "settings.toml"
            config.write_text(settings_text(chatwoot.base_url, ["scale"]))
            started = time.perf_counter()
            with ScaleDaemon(config) as daemon:  # returns once the start-up reconcile finished
                initial = time.perf_counter() - started
                chunks = daemon.status()["projects"][0]["chunks"]
                rss = daemon.peak_rss_mb()
                started = time.perf_counter()
                (report,) = daemon.http.post("/v1/resync", json={"wait": True}, timeout=3600).json()["reports"]
                no_change = time.perf_counter() - started
                embedded_q = daemon.query_times(queries)
                rss_end = daemon.peak_rss_mb()  # VmHWM never falls: the peak of the whole life
            print(
                f"N={articles}: initial sync {initial:.0f} s, {chunks} chunks, {chunks / initial:.1f} chunks/s, "
                f"peak RSS {rss:.0f} MB ({rss_end:.0f} MB after the reconcile and queries)",
                flush=True,
            )
            print(
                f"  no-change reconcile {no_change:.2f} s ({100 * no_change / initial:.2f}% of initial), "
                f"{report['chunks_embedded']} embeddings",
                flush=True,
            )
            with ChromaServer(folder / "chroma-server" / "data") as server:
                copy = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "kbsync",
                        "--config",
                        str(config),
                        "copy-store",
                        "--to-http",
                        "--host",
                        server.host,
                        "--port",
                        str(server.port),
                    ],
                    capture_output=True,
                    text=True,
                    env={**os.environ, "BENCH_TOKEN": AGENT_TOKEN},
                )
                if copy.returncode != 0:
                    raise RuntimeError(copy.stdout + copy.stderr)
                http_folder = folder / "http"
                http_folder.mkdir()
                http_config = http_folder / "settings.toml"
                http_config.write_text(settings_text(chatwoot.base_url, ["scale"], chroma=server))
                with ScaleDaemon(http_config) as daemon:
                    http_q = daemon.query_times(queries)
            for label, times in (("embedded", embedded_q), ("http", http_q)):
                print(
                    f"  /v1/query k=5 {label}: p50 {1000 * statistics.median(times):.1f} ms, "
                    f"p99 {1000 * percentile(times, 99):.1f} ms",
                    flush=True,
                )


def run_replicas(articles: int) -> None:
    from tests.servers.postgres import PostgresServer

    postgres = PostgresServer().start()
    try:
        for replicas in (1, 2):
            with tempfile.TemporaryDirectory(prefix="kbsync-replicas-") as tmp:
                folder = Path(tmp)
                fake = FakeChatwoot(tie_order="stable")
                synthetic_portal(fake, "half-a", articles // 2, seed=1)
                synthetic_portal(fake, "half-b", articles - articles // 2, seed=2)
                database = f"bench_{replicas}_{int(time.time())}"
                subprocess.run(
                    [
                        "runuser",
                        "-u",
                        "postgres",
                        "--",
                        "/usr/lib/postgresql/15/bin/createdb",
                        "-h",
                        "127.0.0.1",
                        "-p",
                        str(postgres.port),
                        "-U",
                        "kbsync",
                        database,
                    ]
                    if os.geteuid() == 0
                    else ["createdb", "-h", "127.0.0.1", "-p", str(postgres.port), "-U", "kbsync", database],
                    check=True,
                )
                url = f"postgresql://kbsync@127.0.0.1:{postgres.port}/{database}"
                with ChatwootServer(fake) as chatwoot, ChromaServer(folder / "chroma" / "data") as server:
                    with contextlib.ExitStack() as stack:
                        started = time.perf_counter()
                        daemons = []
                        for n in range(replicas):  # spawned together, they race for the projects' leases
                            sub = folder / f"r{n}"
                            sub.mkdir()
                            config = sub / "settings.toml"
                            config.write_text(
                                settings_text(chatwoot.base_url, ["half-a", "half-b"], state_url=url, chroma=server)
                            )
                            daemon = ScaleDaemon(config)
                            stack.callback(daemon.__exit__)
                            daemon.spawn()
                            daemons.append(daemon)
                        for daemon in daemons:
                            daemon.wait_ready()
                        daemons[0].wait_reconciled()
                        seconds = time.perf_counter() - started
                        projects = daemons[0].status()["projects"]
                        chunks = sum(p["chunks"] for p in projects)
                        owners = len({p["last_runs"]["reconcile"]["owner"] for p in projects})
                print(
                    f"{replicas} replica(s), {articles} articles in 2 projects: {chunks} chunks in {seconds:.0f} s "
                    f"= {chunks / seconds:.1f} chunks/s; the projects were synced by {owners} replica(s)",
                    flush=True,
                )
    finally:
        postgres.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--articles", type=int, action="append", help="N (repeatable); default 1000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--replicas", action="store_true", help="compare 1 and 2 replicas instead (needs PostgreSQL)")
    args = parser.parse_args()
    for articles in args.articles or [1000]:
        if args.replicas:
            run_replicas(articles)
        else:
            run_size(articles, args.queries)


if __name__ == "__main__":
    main()
