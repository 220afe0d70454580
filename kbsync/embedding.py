"""The embedder: Chroma's default model (ONNX all-MiniLM-L6-v2), without Chroma's fixed padding.

Chroma's `DefaultEmbeddingFunction` pads every text to 256 word pieces, so a 9-token query costs as much as a
256-token chunk. This embedder runs the same ONNX graph on length-sorted batches padded only to the longest text of
each batch, with the same truncation (256), mean pooling and L2 normalisation, so its vectors equal Chroma's
(max abs difference far below 1e-5; `tests/unit/test_embedding.py` checks it against Chroma's own function).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kbsync.errors import EmbeddingError

__all__ = ["MODEL_FILES", "MODEL_MAX_TOKENS", "MODEL_NAME", "Embedder", "TokenCounter", "default_model_dir"]

MODEL_NAME = "all-MiniLM-L6-v2"
MODEL_MAX_TOKENS = 256
MODEL_FILES = (
    "config.json",
    "model.onnx",
    "special_tokens_map.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "vocab.txt",
)


def default_model_dir() -> Path:
    """Where Chroma keeps (and downloads) its default model: `~/.cache/chroma/onnx_models/all-MiniLM-L6-v2/onnx`."""
    return Path.home() / ".cache" / "chroma" / "onnx_models" / MODEL_NAME / "onnx"


def missing_model_files(model_dir: Path) -> list[str]:
    """The model files absent from `model_dir` (empty when the folder is usable)."""
    return [name for name in MODEL_FILES if not (model_dir / name).is_file()]


def _load_tokenizer(model_dir: Path):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer

    path = model_dir / "tokenizer.json"
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for unreadable files
        raise EmbeddingError(f"cannot load tokenizer {path}: {exc}") from exc


class TokenCounter:
    """Counts word pieces exactly as the model sees them, special tokens included, never truncated.

    The shipped `tokenizer.json` pads and truncates to 128; both are switched off here, so a long text counts
    its real length instead of 128 (or Chroma's 256).
    """

    def __init__(self, model_dir: Path) -> None:
        self._tokenizer = _load_tokenizer(model_dir)
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()

    def count(self, text: str) -> int:
        """Word pieces of `text`, [CLS] and [SEP] included."""
        return len(self._tokenizer.encode(text).ids)

    def count_many(self, texts: Sequence[str]) -> list[int]:
        """Word pieces of each text (without [CLS]/[SEP]: these counts add up over whitespace-joined texts)."""
        if not texts:
            return []
        return [len(e.ids) for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def split_at_tokens(self, text: str, max_tokens: int) -> list[str]:
        """Cut `text` into pieces of at most `max_tokens` word pieces each, on word boundaries where possible."""
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        pieces: list[str] = []
        start_token = 0
        while start_token < len(encoding.ids):
            end_token = min(start_token + max_tokens, len(encoding.ids))
            # Back up to the start of a word so no word is cut in two (word_ids mark word-piece continuations).
            if end_token < len(encoding.ids):
                word = encoding.word_ids[end_token]
                back = end_token
                while back > start_token and encoding.word_ids[back - 1] == word and word is not None:
                    back -= 1
                if back > start_token:
                    end_token = back
            char_start = encoding.offsets[start_token][0]
            char_end = encoding.offsets[end_token - 1][1]
            pieces.append(text[char_start:char_end].strip())
            start_token = end_token
        return [p for p in pieces if p]


class Embedder:
    """One ONNX session for the process; `embed` is thread-safe (onnxruntime sessions are)."""

    name = MODEL_NAME
    dimension = 384

    def __init__(
        self, model_dir: Path, *, batch_size: int = 32, max_batch_tokens: int = 512, threads: int | None = None
    ) -> None:
        missing = missing_model_files(model_dir)
        if missing:
            raise EmbeddingError(
                f"model folder {model_dir} lacks {', '.join(missing)}; set embedding.model_dir to a folder with "
                f"the six files of Chroma's all-MiniLM-L6-v2 ONNX model, or let Chroma download it to "
                f"{default_model_dir()}"
            )
        import onnxruntime as ort

        self.model_dir = model_dir
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self._tokenizer = _load_tokenizer(model_dir)
        self._tokenizer.enable_truncation(max_length=MODEL_MAX_TOKENS)
        self._tokenizer.no_padding()
        # Tokenizer objects are not safe to reconfigure across threads; we only encode, guarded anyway.
        self._lock = threading.Lock()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning intra-op threads burn the cores they wait on: with the daemon's other threads (and other
        # processes) about, a single short query ran 2-3x slower with spinning on (measured on 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(
                str(model_dir / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise EmbeddingError(f"cannot load {model_dir / 'model.onnx'}: {exc}") from exc

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed `texts`, returning a float32 array of shape (len(texts), 384) in input order."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            encodings = self._tokenizer.encode_batch(list(texts))
        lengths = np.array([len(e.ids) for e in encodings])
        # Sorting by length makes each batch's padding small; the output is put back in input order.
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for batch in self._batches(order, lengths):
            out[batch] = self._forward([encodings[i].ids for i in batch])
        return out

    def _batches(self, order: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
        """At most `batch_size` texts and `max_batch_tokens` padded word pieces per batch.

        onnxruntime's arena keeps the peak of its working memory, which grows with batch x width: 32 texts of 256
        word pieces took the process to ~1 GB. Small batches are no slower on 2 cores: 640 corpus chunks embedded
        at 18.9 chunks/s with a peak of 225 MB at 512 padded word pieces, 17.8/s and 325 MB at 2048 (measured).
        Short texts (queries) still go 32 at a time."""
        batches: list[list[int]] = []
        current: list[int] = []
        for index in order:  # ascending length: the newest text sets the padded width
            width = int(lengths[index])
            if current and (len(current) >= self.batch_size or (len(current) + 1) * width > self.max_batch_tokens):
                batches.append(current)
                current = []
            current.append(int(index))
        if current:
            batches.append(current)
        return batches

    def _forward(self, ids: list[list[int]]) -> np.ndarray:
        width = max(len(row) for row in ids)
        input_ids = np.zeros((len(ids), width), dtype=np.int64)
        attention_mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, token_ids in enumerate(ids):
            input_ids[row, : len(token_ids)] = token_ids
            attention_mask[row, : len(token_ids)] = 1
        (last_hidden_state,) = self._session.run(
            ["last_hidden_state"],
            {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "token_type_ids": np.zeros_like(input_ids),
            },
        )
        # Same arithmetic as Chroma's ONNXMiniLM_L6_V2._forward (float64 pooling, then float32).
        mask = np.broadcast_to(np.expand_dims(attention_mask, -1), last_hidden_state.shape)
        pooled = np.sum(last_hidden_state * mask, 1) / np.clip(mask.sum(1), a_min=1e-9, a_max=None)
        norm = np.linalg.norm(pooled, axis=1)
        norm[norm == 0] = 1e-12
        return (pooled / norm[:, np.newaxis]).astype(np.float32)
