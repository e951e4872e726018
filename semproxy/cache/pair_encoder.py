"""The hit verifier's pair encoder: a small cross-encoder that reads the asked and the stored prompt together.

An embedding places each prompt alone, so "the employer's duties to the employee" and "the employee's duties
to the employer" land side by side, and "Canada's population?" can land further from "What is the population of
Canada?" than a different question does. Reading both prompts at once, word against word, tells them apart.

No such model with bundled weights exists on PyPI, so this one is trained here (``bench/train_pair_encoder.py``:
four layers of all-MiniLM-L6-v2 fine-tuned on public paraphrase data plus generated rewordings and swaps,
exported to int8 ONNX) and ships in ``semproxy/cache/data/pair_encoder.onnx``. English only: it was trained on
English, so the verifier never asks it about another language.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from semproxy.cache.embedder import minilm_folder
from semproxy.errors import ConfigError
from semproxy.onnx_session import cpu_session

MODEL_FILE = "pair_encoder.onnx"
MAX_TOKENS = 96  # as trained: a pair longer than this is cut, stored side first from the end of each text


class PairEncoder:
    """Scores (stored, asked) prompt pairs: the probability that one answer serves both."""

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ConfigError("the pair encoder needs onnxruntime and tokenizers") from exc
        tokenizer = Tokenizer.from_file(str(minilm_folder() / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer: Any = tokenizer
        self._session: Any = cpu_session(path, threads=threads)

    @classmethod
    def packaged(cls, *, threads: int = 1) -> PairEncoder:
        """The encoder that ships with semproxy."""
        with resources.as_file(resources.files("semproxy.cache").joinpath("data", MODEL_FILE)) as path:
            if not path.exists():
                raise ConfigError(f"the pair encoder file {MODEL_FILE} is missing from the package")
            return cls(path, threads=threads)

    def score(self, pairs: Sequence[tuple[str, str]]) -> NDArray[np.float32]:
        """One probability in [0, 1] per (stored, asked) pair, in order."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        encodings = self._tokenizer.encode_batch(list(pairs))
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        types, mask = np.zeros_like(ids), np.zeros_like(ids)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            ids[row, :n], types[row, :n], mask[row, :n] = encoding.ids, encoding.type_ids, 1
        logits = self._session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
        probabilities: NDArray[np.float32] = (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
        return probabilities
