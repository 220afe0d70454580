"""Initial sync of ../shared/corpus through the `files` path, then a second run with nothing changed.

The corpus articles are written as markdown files (front matter: title, locale, category) into a temp folder; a
settings file points a files source at it; the engine reconciles twice. Reported: wall time, chunks, chunks/s and
the share of the time spent embedding (timed around the embedder, nothing else changed), then the no-change run
(0 embeddings expected) as a fraction of the first.

    python bench/sync.py [--limit N] [--max-tokens 192]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import CORPORA, corpus_articles, model_dir
from kbsync.runs import ProjectKey
from kbsync.settings import load_settings
from kbsync.wiring import open_engine


class TimedEmbedder:
    """Counts the seconds spent inside `embed` (the measurement, not a change of behaviour)."""

    def __init__(self, embedder) -> None:  # type: ignore[no-untyped-def]
        self._embedder = embedder
        self.seconds = 0.0

    def embed(self, texts):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            return self._embedder.embed(texts)
        finally:
            self.seconds += time.perf_counter() - started


def write_corpus(folder: Path, limit: int | None) -> int:
    count = 0
    for name in CORPORA:
        for article in corpus_articles(name):
            if limit is not None and count >= limit:
                return count
            front = {"title": article["title"], "locale": article["locale"], "category": article["category"]["name"]}
            head = "".join(f"{k}: {json.dumps(v, ensure_ascii=False)}\n" for k, v in front.items())
            path = folder / name / f"{article['id']}-{article['slug']}.md"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"---\n{head}---\n\n{article['content']}", encoding="utf-8")
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="only the first N articles")
    parser.add_argument("--max-tokens", type=int, default=192)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kbsync-bench-") as tmp:
        root = Path(tmp)
        articles = write_corpus(root / "corpus", args.limit)
        config = root / "settings.toml"
        config.write_text(
            f'state_dir = "var"\nlog_level = "warning"\nlog_format = "json"\n'
            f'[embedding]\nmodel_dir = "{model_dir()}"\n[chunking]\nmax_tokens = {args.max_tokens}\n'
            f'[[tenants]]\nid = "bench"\n[[tenants.projects]]\nid = "corpus"\n'
            f'[[tenants.projects.sources]]\nkind = "files"\npath = "corpus"\n'
        )
        key = ProjectKey("bench", "corpus")
        with open_engine(load_settings(config)) as engine:
            timer = TimedEmbedder(engine.embedder)
            engine.embedder = timer  # type: ignore[assignment]
            started = time.perf_counter()
            first = engine.reconcile(key)
            first_wall = time.perf_counter() - started
            embed_seconds = timer.seconds
            started = time.perf_counter()
            second = engine.reconcile(key)
            second_wall = time.perf_counter() - started
    print(f"initial sync: {articles} articles, {first.chunks_total} chunks in {first_wall:.1f} s")
    share = 100 * embed_seconds / first_wall
    print(f"  {first.chunks_embedded / first_wall:.1f} chunks/s, embedding {share:.1f}% of wall time")
    print(
        f"no-change run: {second.chunks_embedded} embeddings, {second_wall:.2f} s = "
        f"{100 * second_wall / first_wall:.2f}% of the initial sync"
    )
    if first.errors or second.errors:
        print("errors:", first.errors + second.errors)


if __name__ == "__main__":
    main()
