"""Churn on the corpus: rounds of edits, deletes and restores through `resync`, then how many live chunks no query
returns (chroma-core/chroma#7758), with and without kbsync's verify-after-write, and what the check costs.

Two embedded stores get the same rounds side by side in one process: `checked` syncs with `verify_writes = true`
(the default), `unchecked` with it off. Each round edits a share of the articles (a sentence added to one
paragraph: that chunk gets a new id), deletes some and restores ones deleted before (their chunk ids come back: a
delete, then an upsert of the same id). `checked` embeds for real; `unchecked` takes the same vectors from a cache
(the model is deterministic), since only its collection is measured. Reported: unreachable chunks per store after
the rounds (an audit without repair), after `audit --repair` of `unchecked`, and the check's share of `checked`'s
sync time (its initial sync and every round).

    python bench/reachability.py [--corpus chatwoot-docs] [--rounds 15] [--edit 0.1] [--delete 0.03] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import corpus_articles, model_dir
from kbsync.engine import Engine
from kbsync.runs import ProjectKey, RunReport
from kbsync.settings import load_settings
from kbsync.wiring import open_engine

KEY = ProjectKey("bench", "churn")


class CachedEmbedder:
    """Vectors of texts already embedded by the other store (a measurement aid: same model, same vectors)."""

    def __init__(self, embedder, cache: dict) -> None:  # type: ignore[no-untyped-def]
        self._embedder, self._cache = embedder, cache

    def embed(self, texts):  # type: ignore[no-untyped-def]
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            self._cache.update(zip(missing, self._embedder.embed(missing)))
        import numpy as np

        return np.stack([self._cache[t] for t in texts])


class RecordingEmbedder(CachedEmbedder):
    """Embeds every text for real (the measured store) and keeps the vectors for the other store."""

    def embed(self, texts):  # type: ignore[no-untyped-def]
        vectors = self._embedder.embed(texts)
        self._cache.update(zip(texts, vectors))
        return vectors


def article_file(folder: Path, article: dict, extra: str = "") -> Path:
    front = {"title": article["title"], "locale": article["locale"], "category": article["category"]["name"]}
    head = "".join(f"{k}: {json.dumps(v, ensure_ascii=False)}\n" for k, v in front.items())
    path = folder / f"{article['id']}-{article['slug']}.md"
    path.write_text(f"---\n{head}---\n\n{article['content']}{extra}", encoding="utf-8")
    return path


def edited(content: str, rng: random.Random, round_number: int) -> str:
    paragraphs = content.split("\n\n")
    plain = [i for i, p in enumerate(paragraphs) if p.strip() and not p.lstrip().startswith(("#", "```", "|", "-"))]
    if not plain:
        return content + f"\n\nRevised in round {round_number}."
    i = rng.choice(plain)
    paragraphs[i] += f" Revised in round {round_number}: this step was checked again."
    return "\n\n".join(paragraphs)


def settings(root: Path, name: str, verify: bool) -> Path:
    config = root / f"{name}.toml"
    config.write_text(
        f'state_dir = "{name}"\nlog_level = "error"\nlog_format = "json"\n'
        f'[embedding]\nmodel_dir = "{model_dir()}"\n[reachability]\nverify_writes = {str(verify).lower()}\n'
        f"audit_interval_hours = 0\n"
        f'[[tenants]]\nid = "{KEY.tenant}"\n[[tenants.projects]]\nid = "{KEY.project}"\n'
        f'[[tenants.projects.sources]]\nkind = "files"\npath = "docs"\n'
    )
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="chatwoot-docs")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--edit", type=float, default=0.1, help="share of the live articles edited per round")
    parser.add_argument("--delete", type=float, default=0.03, help="share deleted per round (as many restored)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N articles")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    articles = corpus_articles(args.corpus)[: args.limit]
    with tempfile.TemporaryDirectory(prefix="kbsync-bench-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        docs = root / "docs"
        docs.mkdir()
        content = {a["id"]: a["content"] for a in articles}
        for article in articles:
            article_file(docs, article)
        cache: dict = {}
        checked: Engine = stack.enter_context(open_engine(load_settings(settings(root, "checked", True))))
        unchecked: Engine = stack.enter_context(open_engine(load_settings(settings(root, "unchecked", False))))
        checked.embedder = RecordingEmbedder(checked.embedder, cache)  # type: ignore[assignment]
        unchecked.embedder = CachedEmbedder(unchecked.embedder, cache)  # type: ignore[assignment]
        runs: list[RunReport] = []

        def sync() -> None:
            runs.append(checked.reconcile(KEY))
            unchecked.reconcile(KEY)

        sync()
        print(
            f"initial sync: {len(articles)} articles, {runs[0].chunks_total} chunks, {runs[0].seconds:.1f} s, "
            f"check {runs[0].check_seconds:.2f} s"
        )
        deleted: list[dict] = []
        for number in range(1, args.rounds + 1):
            live = [a for a in articles if a not in deleted]
            for article in rng.sample(live, max(1, int(len(live) * args.edit))):
                content[article["id"]] = edited(content[article["id"]], rng, number)
                article_file(docs, {**article, "content": content[article["id"]]})
            restore = deleted[: max(1, int(len(articles) * args.delete))] if deleted else []
            for article in restore:
                article_file(docs, {**article, "content": content[article["id"]]})
                deleted.remove(article)
            live = [a for a in articles if a not in deleted and a not in restore]
            for article in rng.sample(live, max(1, int(len(articles) * args.delete))):
                (docs / f"{article['id']}-{article['slug']}.md").unlink()
                deleted.append(article)
            sync()
        total = sum(r.seconds for r in runs)
        check = sum(r.check_seconds for r in runs)
        churn = runs[1:]
        churn_share = 100 * sum(r.check_seconds for r in churn) / max(sum(r.seconds for r in churn), 1e-9)
        print(
            f"{args.rounds} rounds: {sum(r.chunks_embedded for r in churn)} chunks embedded, "
            f"{sum(r.chunks_deleted for r in churn)} deleted; {sum(r.chunks_unreachable for r in runs)} unreachable "
            f"after a write, {sum(r.chunks_repaired for r in runs)} repaired, "
            f"{sum(r.collections_rebuilt for r in runs)} rebuilds"
        )
        print(
            f"verify after write: {check:.2f} s of {total:.1f} s sync = {100 * check / total:.2f}% "
            f"(initial sync {100 * runs[0].check_seconds / runs[0].seconds:.2f}%, rounds {churn_share:.2f}%)"
        )
        started = time.perf_counter()
        audit_checked = checked.audit(KEY)
        audit_seconds = time.perf_counter() - started
        audit_unchecked = unchecked.audit(KEY)
        print(
            f"unreachable after the rounds: with verify {audit_checked.chunks_unreachable} of "
            f"{audit_checked.chunks_checked}, without {audit_unchecked.chunks_unreachable} of "
            f"{audit_unchecked.chunks_checked} (audit {audit_seconds:.2f} s)"
        )
        reports = [*runs, audit_checked, audit_unchecked]
        if audit_unchecked.chunks_unreachable:
            repaired = unchecked.audit(KEY, repair=True)
            reports.append(repaired)  # a rebuild that fails says why only in its errors
            after = unchecked.audit(KEY)
            print(
                f"audit --repair without verify: {repaired.chunks_repaired} repaired, "
                f"{repaired.collections_rebuilt} rebuilt in {repaired.seconds:.1f} s; then "
                f"{after.chunks_unreachable} unreachable"
            )
        for report in reports:
            if report.errors:
                print("errors:", report.errors)


if __name__ == "__main__":
    main()
