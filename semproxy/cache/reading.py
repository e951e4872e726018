"""The verifier's last step for English prompts: read the two prompts together, then weigh what was read.

The pair encoder (`semproxy.cache.pair_encoder`) sees what the trees cannot (a question turned into an
instruction, a possessive for an "of" phrase, roles exchanged around a preposition), and the trees see what a
four-layer encoder may not (word rarity, the embeddings' geometry, PAWS-style word swaps). A logistic blend of
the two scores and the cosine similarity, fitted on the calibrate split, gives the final score; its calibration
curve (the share of calibration negatives served at each threshold) turns `max_false_hit_rate` into an
operating point, as the trees' curve does. `bench/calibrate_pair_encoder.py` writes `pair_encoder_blend.json`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from importlib import resources
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from semproxy.cache.pair_encoder import PairEncoder
from semproxy.cache.pair_model import operating_threshold

BLEND_FILE = "pair_encoder_blend.json"
_EPSILON = 1e-6


def logit(p: NDArray[np.float64] | float) -> NDArray[np.float64]:
    q = np.clip(np.asarray(p, dtype=np.float64), _EPSILON, 1 - _EPSILON)
    return np.asarray(np.log(q / (1 - q)))


@dataclasses.dataclass(frozen=True)
class Blend:
    """final = sigmoid(w_encoder * logit(encoder) + w_trees * logit(trees) + w_cosine * cosine + bias)."""

    weights: tuple[float, float, float]
    bias: float
    curve_scores: NDArray[np.float64]  # ascending thresholds ...
    curve_false_hit_rates: NDArray[np.float64]  # ... and the worst calibration set's negatives served at each

    def score(self, encoder: NDArray[np.float64], trees: NDArray[np.float64],
              cosine: NDArray[np.float64]) -> NDArray[np.float64]:
        w_encoder, w_trees, w_cosine = self.weights
        z = w_encoder * logit(encoder) + w_trees * logit(trees) + w_cosine * np.asarray(cosine) + self.bias
        return np.asarray(1.0 / (1.0 + np.exp(-z)))

    def threshold_for(self, max_false_hit_rate: float) -> float:
        return operating_threshold(self.curve_scores, self.curve_false_hit_rates, max_false_hit_rate)

    def to_json(self) -> str:
        return json.dumps({"weights": list(self.weights), "bias": self.bias,
                           "curve_scores": self.curve_scores.tolist(),
                           "curve_false_hit_rates": self.curve_false_hit_rates.tolist()})

    @classmethod
    def from_json(cls, text: str) -> Blend:
        data = json.loads(text)
        weights = tuple(float(w) for w in data["weights"])
        assert len(weights) == 3
        return cls((weights[0], weights[1], weights[2]), float(data["bias"]),
                   np.asarray(data["curve_scores"], dtype=np.float64),
                   np.asarray(data["curve_false_hit_rates"], dtype=np.float64))

    @classmethod
    def packaged(cls) -> Blend:
        return cls.from_json(resources.files("semproxy.cache").joinpath("data", BLEND_FILE).read_text())


class PairScorer(Protocol):
    """Reads (stored, asked) prompt pairs: one probability per pair that one answer serves both."""

    def score(self, pairs: Sequence[tuple[str, str]]) -> NDArray[np.float32]: ...


@dataclasses.dataclass(frozen=True)
class PairReader:
    """The pair encoder and the blend that weighs its score with the trees' score and the cosine."""

    encoder: PairScorer
    blend: Blend

    @classmethod
    def packaged(cls) -> PairReader:
        return cls(PairEncoder.packaged(), Blend.packaged())

    def scores(self, asked: str, stored: Sequence[str], trees: Sequence[float],
               cosines: Sequence[float]) -> NDArray[np.float64]:
        """The final score of each (stored prompt, trees' score, cosine) against the asked prompt."""
        read = self.encoder.score([(s, asked) for s in stored]).astype(np.float64)
        return self.blend.score(read, np.asarray(trees, dtype=np.float64), np.asarray(cosines, dtype=np.float64))
