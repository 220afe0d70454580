"""Retrieval check for the chunk budget: hit@5 and MRR of hand-written questions, per `max_tokens`.

Every article of ../shared/corpus is chunked at each budget and embedded with kbsync's embedder; each question of
bench/retrieval_questions.json is embedded and matched (exact cosine search, filtered to the question's locale, as
the bot does with `locale`) against the chunks. A hit is a chunk of the article that answers the question.

    python bench/retrieval.py [--budgets 128,192,230,256]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import CORPORA, corpus_documents, model_dir  # noqa: E402
from kbsync.chunking import Chunker  # noqa: E402
from kbsync.embedding import Embedder, TokenCounter  # noqa: E402
from kbsync.sources import make_doc_id  # noqa: E402

QUESTIONS = Path(__file__).with_name("retrieval_questions.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", default="128,192,230,256")
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]

    embedder = Embedder(model_dir())
    counter = TokenCounter(model_dir())
    documents = corpus_documents(CORPORA)
    locale_of = {d.doc_id: d.locale for d in documents}
    questions = json.loads(QUESTIONS.read_text(encoding="utf-8"))
    q_vectors = embedder.embed([q["q"] for q in questions])
    targets = [make_doc_id("bench", f"{q['corpus']}:{q['article_id']}") for q in questions]

    print(f"{len(questions)} questions, {len(documents)} articles, k={args.k}")
    print(f"{'max_tokens':>10} {'chunks':>7} {'mean tok':>8} {'hit@1':>6} {f'hit@{args.k}':>6} {'MRR':>6} {'embed s':>8}")
    for budget in budgets:
        chunker = Chunker(counter, budget)
        chunks = [(d.doc_id, c) for d in documents for c in chunker.split(d.doc_id, d.title, d.text)]
        started = time.perf_counter()
        vectors = embedder.embed([c.text for _, c in chunks])
        seconds = time.perf_counter() - started
        doc_ids = np.array([doc_id for doc_id, _ in chunks])
        locales = np.array([locale_of[doc_id] for doc_id in doc_ids])
        hits1 = hitsk = 0
        reciprocal = 0.0
        for q_vector, target in zip(q_vectors, targets):
            mask = locales == locale_of[target]
            scores = vectors[mask] @ q_vector
            ranked = doc_ids[mask][np.argsort(-scores)]
            # Rank of the first chunk of the target article among the top chunks.
            positions = np.nonzero(ranked == target)[0]
            rank = int(positions[0]) + 1 if len(positions) else None
            hits1 += rank == 1
            hitsk += rank is not None and rank <= args.k
            reciprocal += 1.0 / rank if rank and rank <= 10 else 0.0
        n = len(questions)
        mean_tokens = np.mean([c.tokens for _, c in chunks])
        print(
            f"{budget:>10} {len(chunks):>7} {mean_tokens:>8.1f} {hits1 / n:>6.3f} {hitsk / n:>6.3f} "
            f"{reciprocal / n:>6.3f} {seconds:>8.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
