"""The default compressor's scorer: a small token classifier, LLMLingua-2's method, that ships with semproxy.

LLMLingua-2 labels each word of a prompt keep or drop with a bidirectional encoder, in one pass; the original
LLMLingua runs a causal LM over the prompt and drops the words it finds predictable. The encoder here is two
layers of all-MiniLM-L6-v2 with a keep/drop head, distilled from LLMLingua's own scoring (SmolLM2-135M's
surprisal per word) and shipped as int8 ONNX with its tokenizer (``semproxy/compress/data``; how it was made:
``bench/train_token_classifier.py`` and ``keep_classifier_card.json``). It reads about 16,000 tokens a second
on 2 cores, fast enough to compress a prompt before forwarding it.

llmlingua's own LLMLingua-2 path (`compress_prompt_llmlingua2`) runs a transformers model with torch and picks
its word-splitting rule from the model's hub name, so it cannot run this ONNX file; semproxy reads the model
itself, the way that path does: the prompt in windows of word-pieces, a word's score the mean of its pieces'
keep probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from semproxy.compress.scorers import mean_by_unit
from semproxy.compress.spans import Unit
from semproxy.errors import ConfigError
from semproxy.onnx_session import cpu_session

MODEL_FILE = "keep_classifier.onnx"
TOKENIZER_FILE = "keep_classifier_tokenizer.json"
WINDOW = 128  # word-pieces per window, [CLS] and [SEP] included: as trained
BATCH = 8  # windows per forward pass


class KeepClassifier:
    """Scores each unit of a prompt by the probability that LLMLingua would keep it."""

    def __init__(self, model: Path, tokenizer: Path, *, threads: int = 2) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ConfigError("the compression model needs onnxruntime and tokenizers") from exc
        found: Any = Tokenizer.from_file(str(tokenizer))
        found.no_padding()
        found.no_truncation()
        self._tokenizer: Any = found
        self._cls, self._sep = int(found.token_to_id("[CLS]")), int(found.token_to_id("[SEP]"))
        # Spinning threads would take the cores from the event loop and the embedder between prompts; the
        # arena is bounded here by BATCH windows of WINDOW tokens.
        self._session: Any = cpu_session(model, threads=threads, spin=False, arena=True)

    @classmethod
    def packaged(cls, *, threads: int = 2) -> KeepClassifier:
        """The classifier that ships with semproxy."""
        folder = resources.files("semproxy.compress").joinpath("data")
        with resources.as_file(folder.joinpath(MODEL_FILE)) as model, \
                resources.as_file(folder.joinpath(TOKENIZER_FILE)) as tokenizer:
            if not model.exists() or not tokenizer.exists():
                raise ConfigError(f"the compression model {MODEL_FILE} is missing from the package")
            return cls(model, tokenizer, threads=threads)

    def score(self, text: str, units: Sequence[Unit], *, rate: float) -> list[float]:
        """One keep probability per unit (the mean over its word-pieces); the rate does not change it."""
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        ranges = word_windows(encoding.word_ids, WINDOW - 2)
        probabilities = np.zeros(len(encoding.ids), dtype=np.float32)
        for first in range(0, len(ranges), BATCH):
            batch = ranges[first:first + BATCH]
            probabilities_of = self._run([encoding.ids[lo:hi] for lo, hi in batch])
            for (lo, hi), row in zip(batch, probabilities_of, strict=True):
                probabilities[lo:hi] = row[1:1 + hi - lo]
        return mean_by_unit(units, encoding.offsets, probabilities.tolist())

    def _run(self, windows: list[list[int]]) -> Any:
        width = max(len(w) for w in windows) + 2
        ids = np.zeros((len(windows), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, window in enumerate(windows):
            ids[row, :len(window) + 2] = [self._cls, *window, self._sep]
            mask[row, :len(window) + 2] = 1
        logits = self._session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        return 1.0 / (1.0 + np.exp(-logits))


def word_windows(word_ids: Sequence[int | None], size: int) -> list[tuple[int, int]]:
    """Consecutive ranges of at most `size` word-pieces that end on a word boundary where a word allows it
    (a word longer than half a window is cut)."""
    bounds, lo = [], 0
    while lo < len(word_ids):
        hi = min(len(word_ids), lo + size)
        if hi < len(word_ids):
            back = hi
            while back > lo + size // 2 and word_ids[back] is not None and word_ids[back] == word_ids[back - 1]:
                back -= 1
            hi = back
        bounds.append((lo, hi))
        lo = hi
    return bounds
