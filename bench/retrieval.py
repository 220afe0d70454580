"""Retrieval quality of the full query path against dense-only and a naive window baseline, in one run.

Every article of ../shared/corpus is synced through a real engine (files source, embedded Chroma, SQLite state with
its lexical index), then each question of bench/retrieval_questions.json is asked through `Engine.query` with the
question's locale, as a bot does over /v1/query:

  chunks      `group="chunk"`: the raw dense chunk ranking (kbsync before issue 13), rank of the first target chunk
  dense       grouped per article, lexical weight 0
  hybrid w    grouped per article, lexical weight w (for each --weights)
  windows     naive 1000-character windows with 200 overlap, same model, exact cosine, ranked per article

A hit is the article that answers the question; hit@1, hit@5 and MRR@10 per corpus/locale group and overall.
`--state DIR` keeps the synced state between runs (re-syncing costs nothing when the chunking is unchanged).
Query latency of the same path at 50k chunks, lexical leg included, is bench/query.py's (grouped and raw, one run).

    python bench/retrieval.py [--weights 0.3,0.4,0.5] [--max-tokens 192] [--overlap 0.2] [--state DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import CORPORA, corpus_articles, model_dir
from kbsync.engine import Engine
from kbsync.runs import ProjectKey
from kbsync.settings import load_settings
from kbsync.wiring import open_engine

QUESTIONS = Path(__file__).with_name("retrieval_questions.json")
KEY = ProjectKey("bench", "corpus")
WINDOW, WINDOW_OVERLAP = 1000, 200


def write_corpus(folder: Path) -> dict[tuple[str, int], tuple[str, str]]:
    """Articles as markdown files; (corpus, article id) -> (doc_id, locale)."""
    found = {}
    for name in CORPORA:
        for article in corpus_articles(name):
            front = {"title": article["title"], "locale": article["locale"], "category": article["category"]["name"]}
            head = "".join(f"{k}: {json.dumps(v, ensure_ascii=False)}\n" for k, v in front.items())
            relative = f"{name}/{article['id']}.md"
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            text = f"---\n{head}---\n\n{article['content']}"
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
            found[(name, article["id"])] = (f"files:{relative}", article["locale"])
    return found


def scores(ranks: list[int | None]) -> tuple[float, float, float]:
    n = len(ranks)
    return (
        sum(r == 1 for r in ranks) / n,
        sum(r is not None and r <= 5 for r in ranks) / n,
        sum(1.0 / r for r in ranks if r is not None and r <= 10) / n,
    )


def rank_of(target: str, doc_ids: list[str]) -> int | None:
    return doc_ids.index(target) + 1 if target in doc_ids else None


def window_ranker(engine: Engine, state: Path) -> Callable[[str, str, str], list[str]]:
    """The naive baseline: fixed windows of the raw article text, cosine, best window per article."""
    cache = state / f"windows-{WINDOW}-{WINDOW_OVERLAP}.npz"
    if cache.exists():
        data = np.load(cache, allow_pickle=False)
        vectors, doc_ids, locales = data["vectors"], data["doc_ids"], data["locales"]
    else:
        texts, ids, locs = [], [], []
        for name in CORPORA:
            for article in corpus_articles(name):
                body = article["content"]
                for start in range(0, max(len(body) - WINDOW_OVERLAP, 1), WINDOW - WINDOW_OVERLAP):
                    texts.append(body[start : start + WINDOW])
                    ids.append(f"files:{name}/{article['id']}.md")
                    locs.append(article["locale"])
        vectors = engine.embedder.embed(texts)
        doc_ids, locales = np.array(ids), np.array(locs)
        np.savez(cache, vectors=vectors, doc_ids=doc_ids, locales=locales)

    def ranked(question: str, locale: str, _target: str) -> list[str]:
        mask = locales == locale
        sims = vectors[mask] @ engine.embedder.embed([question])[0]
        order = doc_ids[mask][np.argsort(-sims)]
        return list(dict.fromkeys(order.tolist()))[:10]

    return ranked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="0.3,0.4,0.5")
    parser.add_argument("--max-tokens", type=int, default=None, help="default: the settings default")
    parser.add_argument("--overlap", type=float, default=None, help="chunking.overlap; default: the settings default")
    parser.add_argument("--candidates", type=int, default=None)
    parser.add_argument("--state", type=Path, default=None, help="keep the synced state here between runs")
    parser.add_argument("--no-windows", action="store_true")
    parser.add_argument("--max-postings", type=int, default=None, help="LexicalIndex.max_postings")
    parser.add_argument("--bm25", default=None, help="title,heading,body column weights of the lexical ranking")
    args = parser.parse_args()
    weights = [float(w) for w in args.weights.split(",") if w]

    with tempfile.TemporaryDirectory(prefix="kbsync-retrieval-") as tmp:
        root = args.state or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        targets = write_corpus(root / "corpus")
        chunking = "".join(
            f"{k} = {v}\n" for k, v in (("max_tokens", args.max_tokens), ("overlap", args.overlap)) if v is not None
        )
        retrieval = f"candidates = {args.candidates}\n" if args.candidates else ""
        config = root / "settings.toml"
        config.write_text(
            f'state_dir = "var"\nlog_level = "warning"\nlog_format = "json"\n'
            f'[embedding]\nmodel_dir = "{model_dir()}"\n[chunking]\n{chunking}[retrieval]\n{retrieval}'
            f'[[tenants]]\nid = "bench"\n[[tenants.projects]]\nid = "corpus"\n'
            f'[[tenants.projects.sources]]\nkind = "files"\npath = "corpus"\n'
        )
        questions = json.loads(QUESTIONS.read_text(encoding="utf-8"))
        with open_engine(load_settings(config)) as engine:
            if args.bm25 and engine.lexical is not None:
                engine.lexical.weights = tuple(float(w) for w in args.bm25.split(","))  # type: ignore[assignment]
            if args.max_postings and engine.lexical is not None:
                engine.lexical.max_postings = args.max_postings
            started = time.perf_counter()
            report = engine.reconcile(KEY)
            print(
                f"sync: {report.chunks_total} chunks ({report.chunks_embedded} embedded) in "
                f"{time.perf_counter() - started:.0f} s; chunking {engine.chunker.fingerprint}; "
                f"candidates {engine.settings.retrieval.candidates}; bm25 weights "
                f"{engine.lexical.weights if engine.lexical else None}; max postings "
                f"{engine.lexical.max_postings if engine.lexical else None}",
                flush=True,
            )
            systems: dict[str, Callable[[str, str, str], list[str]]] = {}

            def chunk_ranks(question: str, locale: str, target: str) -> list[str]:
                hits = engine.query(KEY, question, k=10, locale=locale, group="chunk")
                return [h.metadata["doc_id"] for h in hits]

            def grouped(weight: float) -> Callable[[str, str, str], list[str]]:
                def ranked(question: str, locale: str, _target: str) -> list[str]:
                    hits = engine.query(KEY, question, k=10, locale=locale, lexical_weight=weight)
                    return [h.metadata["doc_id"] for h in hits]

                return ranked

            systems["chunks (before)"] = chunk_ranks
            systems["dense grouped"] = grouped(0.0)
            for weight in weights:
                systems[f"hybrid w={weight:g}"] = grouped(weight)
            if not args.no_windows:
                systems["windows 1000/200"] = window_ranker(engine, root)
            results: dict[str, dict[str, list[int | None]]] = {}
            for name, ranker in systems.items():
                per_group: dict[str, list[int | None]] = defaultdict(list)
                for q in questions:
                    target, locale = targets[(q["corpus"], q["article_id"])]
                    ranked = ranker(q["q"], locale, target)
                    if name == "chunks (before)":
                        rank = rank_of(target, ranked)  # chunk ranks: position of the first target chunk
                    else:
                        rank = rank_of(target, list(dict.fromkeys(ranked)))
                    per_group[f"{q['corpus']} {locale}"].append(rank)
                    per_group["all"].append(rank)
                results[name] = per_group

    groups = ["all", *sorted(g for g in results["dense grouped"] if g != "all")]
    print(f"{len(questions)} questions; hit@1 / hit@5 / MRR@10 (k=10, filtered to the question's locale)")
    print(f"{'system':<18}" + "".join(f"{g + ' (' + str(len(results['dense grouped'][g])) + ')':>26}" for g in groups))
    for name, per_group in results.items():
        cells = "".join(f"{'{:.3f} / {:.3f} / {:.3f}'.format(*scores(per_group[g])):>26}" for g in groups)
        print(f"{name:<18}{cells}")


if __name__ == "__main__":
    main()
