"""kbsync's embedder vs Chroma's DefaultEmbeddingFunction, side by side in one run, on the same texts.

1. Chunks of ../shared/corpus (a seeded sample, chunked with `--max-tokens`): throughput ratio, mean word pieces
   per text (Chroma pads every text to 256, so the gain is bounded by about 256 / mean), max abs difference.
2. Single short queries (the questions of bench/retrieval_questions.json, one call each): p50 latency ratio.

    python bench/embed.py [--sample 384] [--queries 40] [--max-tokens 192]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import corpus_documents, model_dir
from kbsync.chunking import Chunker
from kbsync.embedding import Embedder, TokenCounter


def chroma_function(folder: Path):  # type: ignore[no-untyped-def]
    from chromadb.utils.embedding_functions.onnx_mini_lm_l6_v2 import ONNXMiniLM_L6_V2

    function = ONNXMiniLM_L6_V2(preferred_providers=["CPUExecutionProvider"])
    function.DOWNLOAD_PATH = folder.parent  # Chroma's loader, pointed at the same six files
    return function


def timed(fn, texts):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    out = np.asarray(fn(texts), dtype=np.float32)
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", type=int, default=384, help="corpus chunks compared (0 = all)")
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=192)
    args = parser.parse_args()

    folder = model_dir()
    ours = Embedder(folder)
    theirs = chroma_function(folder)
    counter = TokenCounter(folder)
    chunker = Chunker(counter, args.max_tokens)
    texts = [c.text for d in corpus_documents() for c in chunker.split(d.doc_id, d.title, d.text)]
    total = len(texts)
    if args.sample and args.sample < total:
        texts = random.Random(7).sample(texts, args.sample)
    ours.embed(texts[:8]), theirs(texts[:8])  # warm both sessions

    # Two rounds, alternating who goes first, so drift on a noisy machine hits both sides alike.
    our_seconds = their_seconds = 0.0
    for round_ in range(2):
        if round_ == 0:
            a, t_ours = timed(ours.embed, texts)
            b, t_theirs = timed(theirs, texts)
        else:
            b, t_theirs = timed(theirs, texts)
            a, t_ours = timed(ours.embed, texts)
        our_seconds += t_ours
        their_seconds += t_theirs
    diff = float(np.abs(a - b).max())
    mean_pieces = statistics.mean(counter.count(t) for t in texts)
    print(f"corpus chunks: {len(texts)} of {total} (max_tokens {args.max_tokens}), mean {mean_pieces:.1f} word pieces")
    print(f"  kbsync  {2 * len(texts) / our_seconds:7.1f} chunks/s")
    print(f"  chroma  {2 * len(texts) / their_seconds:7.1f} chunks/s")
    print(f"  ratio   {their_seconds / our_seconds:7.2f}x  (padding bound 256/mean = {256 / mean_pieces:.2f}x)")
    print(f"  max abs difference {diff:.2e}")

    import json

    written = [q["q"] for q in json.loads(Path(__file__).with_name("retrieval_questions.json").read_text())]
    # As written (5-31 words), and short as bots often send them: the first 8 words of each.
    for label, questions in (
        ("single short queries (first 8 words)", [" ".join(q.split()[:8]) for q in written[: args.queries]]),
        ("single questions as written", written[: args.queries]),
    ):
        our_times, their_times, diffs = [], [], []
        for question in questions:
            a, t_ours = timed(ours.embed, [question])
            b, t_theirs = timed(theirs, [question])
            our_times.append(t_ours)
            their_times.append(t_theirs)
            diffs.append(float(np.abs(a - b).max()))
        ours_p50, theirs_p50 = statistics.median(our_times), statistics.median(their_times)
        mean_query = statistics.mean(counter.count(q) for q in questions)
        print(f"{label}: {len(questions)}, mean {mean_query:.1f} word pieces")
        print(f"  kbsync p50 {ours_p50 * 1000:6.1f} ms   chroma p50 {theirs_p50 * 1000:6.1f} ms")
        print(f"  ratio   {theirs_p50 / ours_p50:7.2f}x")
        print(f"  max abs difference {max(diffs):.2e}")


if __name__ == "__main__":
    main()
