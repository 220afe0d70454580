"""The embedder gives Chroma's own vectors (target: max abs difference <= 1e-5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kbsync.embedding import Embedder
from kbsync.errors import EmbeddingError


@pytest.fixture(scope="module")
def chroma_ef(model_dir: Path):
    from chromadb.utils.embedding_functions.onnx_mini_lm_l6_v2 import ONNXMiniLM_L6_V2

    ef = ONNXMiniLM_L6_V2(preferred_providers=["CPUExecutionProvider"])
    ef.DOWNLOAD_PATH = model_dir.parent  # Chroma's own loader, pointed at the same six files
    return ef


def test_vectors_equal_chromas_default_embedding_function(model_dir: Path, chroma_ef) -> None:
    texts = [
        "hi",
        "How do I reset my password?",
        "Comment réinitialiser mon mot de passe ? Ouvrez les paramètres du compte.",
        "Как сбросить пароль? Откройте настройки учётной записи.",
        "这是一个测试句子。",
        # Longer than 256 word pieces: both must truncate at exactly 256.
        " ".join(f"word{i}" for i in range(400)),
        "Inbox settings > Business hours\n\n" + "Set the hours your team is available. " * 12,
    ]
    ours = Embedder(model_dir, batch_size=3).embed(texts)
    theirs = np.array(chroma_ef(texts))
    assert ours.shape == (len(texts), 384) and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() <= 1e-5
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_output_order_follows_input_order(model_dir: Path) -> None:
    embedder = Embedder(model_dir, batch_size=2)
    texts = ["a much longer sentence about billing and invoices", "short", "medium length text here"]
    together = embedder.embed(texts)
    one_by_one = np.stack([embedder.embed([t])[0] for t in texts])
    assert np.abs(together - one_by_one).max() <= 1e-5
    assert embedder.embed([]).shape == (0, 384)


def test_missing_model_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingError, match=r"model\.onnx"):
        Embedder(tmp_path)
