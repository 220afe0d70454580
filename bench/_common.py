"""Shared helpers of the benchmarks: where the corpus and the model are, and corpus articles as Documents."""

from __future__ import annotations

import json
import os
from pathlib import Path

from kbsync.sources import Document, make_doc_id

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KBSYNC_SHARED", REPO.parent / "shared"))
CORPUS = SHARED / "corpus"
CORPORA = ("chatwoot-docs", "kanboard-docs")


def model_dir() -> Path:
    """`$KBSYNC_EMBEDDING__MODEL_DIR`, else the copy in ../shared/models."""
    configured = os.environ.get("KBSYNC_EMBEDDING__MODEL_DIR")
    return Path(configured) if configured else SHARED / "models" / "all-MiniLM-L6-v2" / "onnx"


def corpus_articles(name: str) -> list[dict]:
    return json.loads((CORPUS / f"{name}.json").read_text(encoding="utf-8"))["articles"]


def corpus_documents(names: tuple[str, ...] = CORPORA) -> list[Document]:
    """Every corpus article as a Document (doc_id `bench:<corpus>:<id>`)."""
    documents = []
    for name in names:
        for article in corpus_articles(name):
            documents.append(
                Document(
                    doc_id=make_doc_id("bench", f"{name}:{article['id']}"),
                    source=f"bench:{name}",
                    kind="bench",
                    title=article["title"],
                    text=article["content"],
                    locale=article["locale"],
                    category=article["category"]["name"] or "",
                )
            )
    return documents
