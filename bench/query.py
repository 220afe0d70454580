"""`/v1/query` latency at k=5 on a 50k-chunk collection, embedded store: the default path (grouped per article,
lexical leg, fusion; issue 13: p50 <= 20 ms, p99 <= 60 ms) and the raw dense chunk ranking (`group=chunk`, target:
p50 <= 15 ms, p99 <= 40 ms), alternating over the same questions in one run.

The collection is written straight through `kbsync.store.Store` with precomputed vectors, not by syncing 50k
chunks (that would take an hour of embedding on 2 cores): `--base` corpus paragraphs are embedded once, and each of
the `--chunks` records takes one of them plus gaussian noise (cosine ~0.9 to its base, renormalized), so the vectors
cluster like real help-center chunks instead of spreading like uniform random ones. Records carry the full chunk
metadata of README "Collections" (5 chunks per document), and their lexical rows are written to the SQLite state as the
engine's write path writes them. `--random` uses uniform random unit vectors instead (no embedding).
Then a real `kbsync run` subprocess opens that state dir and the bench times `--queries` POST /v1/query (k=5, the
retrieval questions of bench/retrieval_questions.json, cycled) one at a time over a kept-alive connection: the
round trip seen by the client and the `took_ms` the daemon reports (query embedding + Chroma search).

    python bench/query.py [--chunks 50000] [--queries 300] [--base 300] [--random]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import REPO, corpus_articles, model_dir
from bench._daemon import BenchDaemon, free_port, percentile, settings_head
from kbsync.lexical import LexicalIndex
from kbsync.records import ChunkRecord
from kbsync.state import State
from kbsync.store import MAX_RECORDS_PER_WRITE, Store, collection_name

TENANT, PROJECT = "bench", "query"
CHUNKS_PER_DOC = 5


def paragraphs(limit: int) -> list[tuple[str, str]]:
    """(title, paragraph) pairs from the corpus, long enough to be a chunk's body."""
    found: list[tuple[str, str]] = []
    for name in ("chatwoot-docs", "kanboard-docs"):
        for article in corpus_articles(name):
            for block in article["content"].split("\n\n"):
                block = block.strip()
                if 200 <= len(block) <= 1200 and not block.startswith(("```", "|", "!")):
                    found.append((article["title"], block))
    step = max(1, len(found) // limit)
    return found[::step][:limit]


def base_vectors(texts: list[str], random_vectors: bool, rng: np.random.Generator) -> np.ndarray:
    if random_vectors:
        vectors = rng.standard_normal((len(texts), 384)).astype(np.float32)
    else:
        from kbsync.embedding import Embedder

        vectors = Embedder(model_dir()).embed(texts)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def build_collection(state_dir: Path, chunks: int, base: int, random_vectors: bool) -> dict[str, float]:
    rng = np.random.default_rng(42)
    pairs = paragraphs(base)
    texts = [f"{title}\n\n{body}" for title, body in pairs]
    started = time.perf_counter()
    bases = base_vectors(texts, random_vectors, rng)
    embed_seconds = time.perf_counter() - started
    name = collection_name(TENANT, PROJECT)
    now = int(time.time())
    store = Store.open_embedded(state_dir)
    state = State.open_sqlite(state_dir)
    lexical = LexicalIndex(state)  # the lexical rows the engine's write path writes next to each chunk
    started = time.perf_counter()
    try:
        for start in range(0, chunks, MAX_RECORDS_PER_WRITE):
            ids = range(start, min(chunks, start + MAX_RECORDS_PER_WRITE))
            picks = [i % len(pairs) for i in ids]
            noise = rng.standard_normal((len(picks), bases.shape[1])).astype(np.float32) * (0.48 / np.sqrt(384))
            vectors = bases[picks] + noise
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            records = []
            for i, pick, vector in zip(ids, picks, vectors):
                doc = i // CHUNKS_PER_DOC
                doc_id = f"bench:doc-{doc}"
                text = f"{texts[pick]} ({i})"
                records.append(
                    ChunkRecord(
                        id=f"{doc_id}#{hashlib.sha256(text.encode()).hexdigest()[:16]}",
                        text=text,
                        metadata={
                            "tenant": TENANT,
                            "project": PROJECT,
                            "source": "bench:synthetic",
                            "source_kind": "bench",
                            "doc_id": doc_id,
                            "title": pairs[pick][0],
                            "url": f"https://docs.bench.example/{doc}",
                            "locale": "en",
                            "category": "",
                            "heading": "",
                            "chunk_index": i % CHUNKS_PER_DOC,
                            "chunk_count": CHUNKS_PER_DOC,
                            "doc_hash": hashlib.sha256(doc_id.encode()).hexdigest()[:32],
                            "doc_updated_at": now,
                            "indexed_at": now,
                        },
                        embedding=vector,
                    )
                )
            store.write(name, records)
            lexical.write(TENANT, PROJECT, [(r.id, r.text, r.metadata) for r in records])
        count = store.count(name)
        rows = lexical.count(TENANT, PROJECT)
    finally:
        store.close()
        state.close()
    if rows != chunks:
        raise SystemExit(f"the lexical index holds {rows} rows, expected {chunks}")
    if count != chunks:
        raise SystemExit(f"the collection holds {count} chunks, expected {chunks}")
    return {"embed_seconds": embed_seconds, "write_seconds": time.perf_counter() - started}


def settings(state_dir: Path, port: int) -> str:
    # The project has no source: the start-up reconcile reads the index and leaves the synthetic chunks alone.
    return settings_head(state_dir, port) + textwrap.dedent(
        f"""\
        [[tenants]]
        id = "{TENANT}"
        query_token_env = "BENCH_QUERY_TOKEN"

        [[tenants.projects]]
        id = "{PROJECT}"
        """
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--base", type=int, default=300, help="corpus paragraphs embedded as cluster centres")
    parser.add_argument("--random", action="store_true", help="uniform random unit vectors (no embedding)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    questions = [q["q"] for q in json.loads((REPO / "bench" / "retrieval_questions.json").read_text())]
    query_token, admin_token = secrets.token_hex(16), secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="kbsync-query-bench-") as tmp:
        folder = Path(tmp)
        state_dir = folder / "state"
        build = build_collection(state_dir, args.chunks, args.base, args.random)
        port = free_port()
        config = folder / "settings.toml"
        config.write_text(settings(state_dir, port), encoding="utf-8")
        env = {"BENCH_QUERY_TOKEN": query_token, "KBSYNC_ADMIN_TOKEN": admin_token}
        with BenchDaemon(config, port, env, admin_token) as daemon:
            held = daemon.status()["projects"][0]["chunks"]
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
            headers = {"Authorization": f"Bearer {query_token}"}
            # Both paths alternate over the same questions: "doc" (grouped per article, lexical leg, fusion: the
            # default) and "chunk" (the raw dense chunk ranking, the query path before issue 13).
            round_trips: dict[str, list[float]] = {"doc": [], "chunk": []}
            took: dict[str, list[float]] = {"doc": [], "chunk": []}
            for n in range(2 * (args.warmup + args.queries)):
                group = "doc" if n % 2 == 0 else "chunk"
                question = questions[(n // 2) % len(questions)]
                body = {"tenant": TENANT, "project": PROJECT, "query": question, "k": args.k, "group": group}
                sent = time.perf_counter()
                response = client.post("/v1/query", json=body, headers=headers)
                elapsed = time.perf_counter() - sent
                response.raise_for_status()
                answer = response.json()
                if len(answer["results"]) != args.k:
                    raise SystemExit(f"expected {args.k} results, got {len(answer['results'])}")
                if n // 2 >= args.warmup:
                    round_trips[group].append(elapsed * 1000)
                    took[group].append(float(answer["took_ms"]))
            client.close()

    # The share of took_ms that is the query's own embedding: the same questions through the same embedder, here.
    from kbsync.embedding import Embedder

    embedder = Embedder(model_dir())
    embed_ms: list[float] = []
    for n in range(args.warmup + args.queries):
        started = time.perf_counter()
        embedder.embed([questions[n % len(questions)]])
        if n >= args.warmup:
            embed_ms.append((time.perf_counter() - started) * 1000)

    figures = {
        "chunks": held,
        "queries": args.queries,
        "k": args.k,
        "vectors": "random" if args.random else f"{args.base} embedded corpus paragraphs + noise",
        "build_embed_s": round(build["embed_seconds"], 1),
        "build_write_s": round(build["write_seconds"], 1),
        **{
            f"{group}_{name}": value
            for group in ("doc", "chunk")
            for name, value in (
                ("round_trip_p50_ms", round(percentile(round_trips[group], 50), 2)),
                ("round_trip_p99_ms", round(percentile(round_trips[group], 99), 2)),
                ("round_trip_max_ms", round(max(round_trips[group]), 2)),
                ("took_p50_ms", round(percentile(took[group], 50), 2)),
                ("took_p99_ms", round(percentile(took[group], 99), 2)),
            )
        },
        "query_embedding_p50_ms": round(percentile(embed_ms, 50), 2),
        "query_embedding_p99_ms": round(percentile(embed_ms, 99), 2),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(
        f"kbsync /v1/query: {args.queries} queries at k={args.k} on {held} chunks (embedded store; vectors: "
        f"{figures['vectors']}; built in {figures['build_embed_s']} s embedding + {figures['build_write_s']} s "
        f"writing)"
    )
    for group, label, target in (
        ("doc", "grouped + lexical leg (default)", "p50 <= 20 ms, p99 <= 60 ms"),
        ("chunk", "raw dense chunks (group=chunk)", "p50 <= 15 ms, p99 <= 40 ms"),
    ):
        print(f"  {label}")
        print(
            f"    client round trip  p50 {figures[group + '_round_trip_p50_ms']} ms   "
            f"p99 {figures[group + '_round_trip_p99_ms']} ms   max {figures[group + '_round_trip_max_ms']} ms   "
            f"(target {target})"
        )
        took_p50, took_p99 = figures[group + "_took_p50_ms"], figures[group + "_took_p99_ms"]
        print(f"    daemon took_ms     p50 {took_p50} ms   p99 {took_p99} ms")
    ratio = figures["doc_round_trip_p50_ms"] / figures["chunk_round_trip_p50_ms"]
    print(f"  grouped/raw round-trip p50 ratio {ratio:.2f}")
    embed_p50, embed_p99 = figures["query_embedding_p50_ms"], figures["query_embedding_p99_ms"]
    print(
        f"  of which embedding p50 {embed_p50} ms   p99 {embed_p99} ms   "
        f"(the same questions through the same embedder, in the bench process)"
    )


if __name__ == "__main__":
    main()
