"""The compressor: cut a prompt into units, let a scorer rank them, keep the best within a token budget."""

from __future__ import annotations

import dataclasses
import logging
from typing import Protocol

from semproxy.compress.scorers import Scorer
from semproxy.compress.spans import Unit, assemble, units
from semproxy.compress.tokens import ENCODINGS, count_tokens

log = logging.getLogger("semproxy.compress")

ALGORITHM_VERSION = "1"  # part of every stored result's key: a new cut never reuses an old one


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompressionResult:
    """A prompt before and after, with token counts per tiktoken encoding."""

    original: str
    compressed: str
    tokens: dict[str, tuple[int, int]]  # encoding -> (original, compressed)

    def saved(self, encoding: str) -> int:
        """Tokens the compression removes, counted with `encoding`."""
        original, compressed = self.tokens[encoding]
        return original - compressed


class Compressor(Protocol):
    """Shortens a prompt to about `rate` of its compressible tokens."""

    def compress(self, text: str, *, rate: float) -> CompressionResult:
        """The compressed prompt; protected spans survive byte for byte."""
        ...


class SpanSafeCompressor:
    """Protected spans are never offered to the scorer's judgement; the rest is cut to the budget."""

    def __init__(self, scorer: Scorer, *, keep_markers: tuple[str, str] | None = None) -> None:
        self._scorer = scorer
        self._keep_markers = keep_markers

    def compress(self, text: str, *, rate: float) -> CompressionResult:
        pieces = units(text, keep_markers=self._keep_markers)
        scores = self._scorer.score(text, pieces, rate=rate)
        compressed = assemble(text, pieces, select(text, pieces, scores, rate=rate))
        if not compressed.strip() or not protected_spans_intact(text, pieces, compressed):
            log.warning("compression lost a protected span; keeping the prompt as it was")
            compressed = text
        return result_for(text, compressed)


def select(text: str, pieces: list[Unit], scores: list[float], *, rate: float) -> list[bool]:
    """Keep every protected unit, then the best-scored others until `rate` of their tokens is reached."""
    keep = [unit.protected for unit in pieces]
    sizes = [0 if unit.protected else count_tokens(" " + text[unit.start:unit.end]) for unit in pieces]
    budget = rate * sum(sizes)
    kept = 0
    for index in sorted(range(len(pieces)), key=lambda i: -scores[i]):
        if kept >= budget:
            break
        if not keep[index]:
            keep[index] = True
            kept += sizes[index]
    return keep


def protected_spans_intact(text: str, pieces: list[Unit], compressed: str) -> bool:
    """Every protected unit appears in the output, in order, byte for byte."""
    cursor = 0
    for unit in pieces:
        if unit.protected:
            found = compressed.find(text[unit.start:unit.end], cursor)
            if found < 0:
                return False
            cursor = found + unit.end - unit.start
    return True


def result_for(original: str, compressed: str) -> CompressionResult:
    """Count both texts with every encoding semproxy reports in."""
    tokens = {name: (count_tokens(original, _model_for(name)), count_tokens(compressed, _model_for(name)))
              for name in ENCODINGS}
    return CompressionResult(original=original, compressed=compressed, tokens=tokens)


def _model_for(encoding: str) -> str:
    return "gpt-4o" if encoding == "o200k_base" else "gpt-4"
