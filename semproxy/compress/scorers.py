"""Scorers: how much each unit of a prompt is worth keeping, according to an LLMLingua model.

semproxy asks llmlingua's PromptCompressor for its judgement and makes the cut itself, so that protected
spans are kept by construction rather than by hoping the model keeps them:
- LLMLingua (the original method): a small causal LM's surprisal of each token (`get_ppl`); a word the model
  finds predictable carries little information and is dropped first.
- LLMLingua-2: a token-classification model's keep/drop label for each word (`compress_prompt_llmlingua2`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from semproxy.compress.spans import Unit

log = logging.getLogger("semproxy.compress")

WINDOW_TOKENS = 1024  # one forward pass scores this many tokens; longer prompts go window by window


class Scorer(Protocol):
    """Scores units: higher means more worth keeping."""

    def score(self, text: str, units: Sequence[Unit], *, rate: float) -> list[float]:
        """One score per unit."""
        ...


def load_prompt_compressor(model: str, *, llmlingua2: bool) -> Any:
    """llmlingua's PromptCompressor on the CPU (tiktoken's encodings must be installed first)."""
    from llmlingua import PromptCompressor

    return PromptCompressor(model_name=model, device_map="cpu", use_llmlingua2=llmlingua2)


class PerplexityScorer:
    """LLMLingua: mean surprisal (negative log-likelihood) of a unit's tokens under a small causal LM."""

    def __init__(self, compressor: Any) -> None:
        self._compressor = compressor
        self._tokenizer = compressor.tokenizer

    def score(self, text: str, units: Sequence[Unit], *, rate: float) -> list[float]:
        encoded = self._tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        ids: list[int] = encoded["input_ids"]
        offsets: list[tuple[int, int]] = encoded["offset_mapping"]
        losses: list[float] = []
        for start in range(0, len(ids), WINDOW_TOKENS):
            losses += self._window_losses(ids[start:start + WINDOW_TOKENS])
        return mean_by_unit(units, offsets, losses)

    def _window_losses(self, ids: list[int]) -> list[float]:
        """Surprisal of every token of the window; the first is scored after a BOS token, if the model has one."""
        import torch

        bos = self._tokenizer.bos_token_id
        prefix = [bos] if bos is not None else []
        input_ids = torch.tensor([prefix + ids])
        loss = self._compressor.get_ppl("", granularity="token", input_ids=input_ids,
                                        attention_mask=torch.ones_like(input_ids))
        values = [float(x) for x in loss]
        return values if prefix else [max(values, default=0.0), *values]  # no BOS: the first token is kept


def mean_by_unit(units: Sequence[Unit], offsets: Sequence[tuple[int, int]], losses: Sequence[float]) -> list[float]:
    """Average the scores of the tokens that overlap each unit (both lists are in text order)."""
    totals = [0.0] * len(units)
    counts = [0] * len(units)
    first = 0
    for (start, end), loss in zip(offsets, losses, strict=False):
        while first < len(units) and units[first].end <= start:
            first += 1
        index = first
        while index < len(units) and units[index].start < end:
            totals[index] += loss
            counts[index] += 1
            index += 1
    return [total / count if count else float("inf") for total, count in zip(totals, counts, strict=True)]


class TokenClassifierScorer:
    """LLMLingua-2: the share of a unit's words the classifier labels "keep" at the requested rate."""

    def __init__(self, compressor: Any) -> None:
        self._compressor = compressor

    def score(self, text: str, units: Sequence[Unit], *, rate: float) -> list[float]:
        result = self._compressor.compress_prompt_llmlingua2(
            [text], rate=rate, return_word_label=True, word_sep="\0\0", label_sep="\0")
        labelled = [item.rsplit("\0", 1) for item in result["fn_labeled_original_prompt"].split("\0\0") if item]
        ranges, labels = _align(text, [(word, float(label)) for word, label in labelled])
        return mean_by_unit(units, ranges, labels)


def _align(text: str, words: Sequence[tuple[str, float]]) -> tuple[list[tuple[int, int]], list[float]]:
    """Find each labelled word in the text, in order; a word the model's tokenizer altered is skipped."""
    ranges: list[tuple[int, int]] = []
    labels: list[float] = []
    cursor = 0
    for word, label in words:
        found = text.find(word, cursor, cursor + len(word) + 200)
        if found < 0:
            continue
        ranges.append((found, found + len(word)))
        labels.append(label)
        cursor = found + len(word)
    return ranges, labels
