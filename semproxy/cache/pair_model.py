"""The hit verifier's learned part: pair features, word rarity, and gradient-boosted trees walked in numpy.

The fitted trees, the rarity table and the calibration curve ship in `semproxy/cache/data/`, one set per
embedding space (pairs embedded by another model need a model fitted on that model's vectors):
`bench/calibrate_verifier.py` reproduces the `minilm` files, `bench/calibrate_verifier_e5.py` the `e5` ones.
"""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import math
from collections.abc import Sequence
from importlib import resources
from typing import Any

import numpy as np
from numpy.typing import NDArray

from semproxy.cache.rules import names_missing, single_positions
from semproxy.cache.text import PromptFacts

FloatArray = NDArray[np.float32]
MODEL_FILE = "verifier_model.npz"
IDF_FILE = "verifier_idf.json.gz"
# Embedding space -> (model file, rarity file): all-MiniLM-L6-v2 (English) and multilingual-e5-small.
SPACE_FILES = {"minilm": (MODEL_FILE, IDF_FILE), "e5": ("verifier_model_e5.npz", "verifier_idf_e5.json.gz")}
HAND_FEATURES = (
    "cosine", "content_jaccard", "bigram_jaccard", "shared_order", "word_lcs", "rare_overlap",
    "rare_only_max", "rare_only_min", "numbers_differ", "negations_differ", "entities_only_max",
    "entities_only_min", "named_languages_differ", "question_words_differ", "length_ratio", "log_length",
    "reversed_pairs", "languages_differ",
)




class WordRarity:
    """Inverse document frequency of words, from a table that ships with the package."""

    def __init__(self, idf: dict[str, float], unknown: float) -> None:
        self.idf, self.unknown = idf, unknown

    def __call__(self, word: str) -> float:
        return self.idf.get(word, self.unknown)

    @classmethod
    def packaged(cls, *, space: str = "minilm") -> WordRarity:
        """The table that ships for the embedding space `space` (see SPACE_FILES)."""
        raw = resources.files("semproxy.cache").joinpath("data", space_files(space)[1]).read_bytes()
        table: dict[str, Any] = json.loads(gzip.decompress(raw))
        return cls(table["idf"], table["unknown"])


def space_files(space: str) -> tuple[str, str]:
    """The (model, rarity) file names of an embedding space; a ValueError names the known spaces."""
    if space not in SPACE_FILES:
        raise ValueError(f"no verifier for embedding space {space!r}; known: {', '.join(sorted(SPACE_FILES))}")
    return SPACE_FILES[space]


def hand_features(asked: PromptFacts, stored: PromptFacts, similarity: float, rarity: WordRarity) -> list[float]:
    """The pair features named in HAND_FEATURES, symmetric in the two prompts."""
    a, b = set(asked.content), set(stored.content)
    shared, union = a & b, a | b
    only_a, only_b = a - b, b - a
    bigrams_a, bigrams_b = _bigrams(asked.words), _bigrams(stored.words)
    rare_only = sorted([max((rarity(w) for w in only_a), default=0.0), max((rarity(w) for w in only_b), default=0.0)])
    names_only = sorted([len(names_missing(asked, stored)), len(names_missing(stored, asked))])
    union_weight = sum(rarity(w) for w in union)
    length_a, length_b = len(asked.words), len(stored.words)
    return [
        similarity,
        _ratio(len(shared), len(union)),
        _ratio(len(bigrams_a & bigrams_b), len(bigrams_a | bigrams_b)),
        _ratio(_lcs([w for w in asked.content if w in shared], [w for w in stored.content if w in shared]),
               len(shared)),
        _ratio(_lcs(asked.words, stored.words), max(length_a, length_b)),
        _ratio(sum(rarity(w) for w in shared), union_weight),
        rare_only[1] / 10.0,
        rare_only[0] / 10.0,
        float(asked.numbers != stored.numbers),
        float(asked.negations != stored.negations),
        min(names_only[1], 3) / 3.0,
        min(names_only[0], 3) / 3.0,
        float(asked.named_languages != stored.named_languages),
        float(bool(asked.question_words and stored.question_words and asked.question_words != stored.question_words)),
        _ratio(min(length_a, length_b), max(length_a, length_b)),
        math.log1p(max(length_a, length_b)) / 5.0,
        min(_reversed_pairs(asked.content, stored.content), 5) / 5.0,
        float(bool(asked.language and stored.language and asked.language != stored.language)),
    ]


def _bigrams(words: Sequence[str]) -> set[tuple[str, str]]:
    return set(itertools.pairwise(words))


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else 1.0


def _lcs(first: Sequence[str], second: Sequence[str]) -> int:
    """Length of the longest common subsequence (prompts are short: the quadratic table is fine)."""
    if not first or not second:
        return 0
    previous = [0] * (len(second) + 1)
    for x in first:
        current = [0]
        for j, y in enumerate(second):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def _reversed_pairs(first: Sequence[str], second: Sequence[str]) -> int:
    pos1, pos2 = single_positions(first), single_positions(second)
    shared = [w for w in pos1 if w in pos2]
    return sum(1 for i, x in enumerate(shared) for y in shared[i + 1:]
               if (pos1[x] < pos1[y]) != (pos2[x] < pos2[y]))


def pair_vector(asked: PromptFacts, asked_vector: FloatArray, stored: PromptFacts, stored_vector: FloatArray,
                similarity: float, rarity: WordRarity) -> FloatArray:
    """The model's whole input: pair features, then |u - v| and u * v of the normalized embeddings."""
    u, v = _unit(asked_vector), _unit(stored_vector)
    hand = np.asarray(hand_features(asked, stored, similarity, rarity), dtype=np.float32)
    return np.concatenate([hand, np.abs(u - v), u * v]).astype(np.float32)


def _unit(vector: FloatArray) -> FloatArray:
    flat = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(flat))
    return flat / norm if norm else flat


def operating_threshold(scores: NDArray[np.float64], false_hit_rates: NDArray[np.float64], budget: float) -> float:
    """The lowest score of a calibration curve (ascending scores) whose false-hit rate is within the budget;
    1.0 (nothing passes) when none is."""
    within = np.nonzero(false_hit_rates <= budget)[0]
    return float(scores[within[0]]) if len(within) else 1.0


@dataclasses.dataclass(frozen=True)
class PairModel:
    """Gradient-boosted trees over `pair_vector`, walked in numpy, with the calibration curve of their scores.

    Every tree is stored as flat node arrays padded to the same length; a leaf points to itself, so all
    trees are walked together, one level per step.
    """

    feature: NDArray[np.int32]  # (trees, nodes): the input each node splits on
    threshold: NDArray[np.float64]  # go left when input <= threshold
    left: NDArray[np.int32]
    right: NDArray[np.int32]
    value: NDArray[np.float64]  # a leaf's contribution to the logit
    baseline: float
    depth: int
    curve_scores: NDArray[np.float64]  # ascending score thresholds ...
    curve_false_hit_rates: NDArray[np.float64]  # ... and the share of calibration negatives served at each
    # Where calibration data exists per language (the multilingual model): each language's own curve, so a
    # budget holds in each language without the hardest one setting every language's threshold.
    curve_languages: NDArray[np.str_] = dataclasses.field(default_factory=lambda: np.zeros(0, dtype="<U8"))
    language_false_hit_rates: NDArray[np.float64] = dataclasses.field(
        default_factory=lambda: np.zeros((0, 0), dtype=np.float64))

    def score(self, features: FloatArray) -> NDArray[np.float64]:
        """Probability-like scores for a batch (or one row) of pair vectors."""
        x = np.atleast_2d(features).astype(np.float64)
        trees = np.arange(self.feature.shape[0])
        node = np.zeros((x.shape[0], len(trees)), dtype=np.int32)
        rows = np.arange(x.shape[0])[:, None]
        for _ in range(self.depth):
            goes_left = x[rows, self.feature[trees, node]] <= self.threshold[trees, node]
            node = np.where(goes_left, self.left[trees, node], self.right[trees, node])
        logits = self.baseline + self.value[trees, node].sum(axis=1)
        return np.asarray(1.0 / (1.0 + np.exp(-logits)), dtype=np.float64)

    def threshold_for(self, max_false_hit_rate: float, language: str | None = None) -> float:
        """The lowest score threshold whose calibration false-hit rate is within the budget: in `language`
        if the model has its own curve, else in every calibration set at once."""
        curve = self.curve_false_hit_rates
        if language is not None and language in self.curve_languages.tolist():
            curve = self.language_false_hit_rates[self.curve_languages.tolist().index(language)]
        return operating_threshold(self.curve_scores, curve, max_false_hit_rate)

    def with_curve(self, scores: NDArray[np.float64], false_hit_rates: NDArray[np.float64],
                   by_language: dict[str, NDArray[np.float64]] | None = None) -> PairModel:
        languages = sorted(by_language or {})
        rates = np.vstack([by_language[lang] for lang in languages]) if by_language else np.zeros((0, len(scores)))
        return dataclasses.replace(self, curve_scores=scores, curve_false_hit_rates=false_hit_rates,
                                   curve_languages=np.asarray(languages, dtype="<U8"),
                                   language_false_hit_rates=np.asarray(rates, dtype=np.float64))

    def save(self, path: Any) -> None:
        """Write the model (used by the calibration script)."""
        arrays: dict[str, Any] = {f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)}
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, source: Any) -> PairModel:
        with np.load(source) as data:  # a model without per-language curves lacks their two arrays
            values: dict[str, Any] = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        values["baseline"], values["depth"] = float(values["baseline"]), int(values["depth"])
        return cls(**values)

    @classmethod
    def packaged(cls, *, space: str = "minilm") -> PairModel:
        """The model that ships for the embedding space `space` (see SPACE_FILES)."""
        with resources.files("semproxy.cache").joinpath("data", space_files(space)[0]).open("rb") as f:
            return cls.load(f)
