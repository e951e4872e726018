"""The hit verifier: does a stored answer really answer the new prompt?

Cosine similarity between two sentence embeddings misses exactly what makes two near-identical prompts
need different answers. So a semantic candidate passes two checks before it is served:

1. **Rules** that reject outright, each with a reason a person can read: different numbers, a negation on
   one side only, the same names in the opposite direction ("EUR to USD" / "USD to EUR"), another name
   in the same place, another programming or natural language named, a prompt written in another language.
2. **A small learned model** (gradient-boosted trees over the two embeddings and 18 pair features)
   that scores the pair; the candidate passes when the score reaches the operating point chosen for the
   configured error budget (`max_false_hit_rate`) on calibration data.

The model's weights, the word rarity table and the calibration curve ship with the package
(`semproxy/cache/data/`); `bench/calibrate_verifier.py` reproduces them from the evaluation data.
"""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import math
from collections.abc import Sequence
from importlib import resources
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from semproxy.cache.text import DIRECTION_WORDS, STOPWORDS, PromptFacts

FloatArray = NDArray[np.float32]
MODEL_FILE = "verifier_model.npz"
IDF_FILE = "verifier_idf.json.gz"
HAND_FEATURES = (
    "cosine", "content_jaccard", "bigram_jaccard", "shared_order", "word_lcs", "rare_overlap",
    "rare_only_max", "rare_only_min", "numbers_differ", "negations_differ", "entities_only_max",
    "entities_only_min", "named_languages_differ", "question_words_differ", "length_ratio", "log_length",
    "reversed_pairs", "languages_differ",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Verdict:
    """The verifier's decision on one candidate, with the reason (for logs and `X-Semproxy-Verdict`)."""

    accepted: bool
    score: float  # the model's estimate that the stored answer fits; 0 when a rule rejected it
    reason: str
    by_rule: bool = False  # decided by a rule, before the model

    def header(self) -> str:
        """The compact form sent in `X-Semproxy-Verdict`."""
        return f"{'accept' if self.accepted else 'reject'}; score={self.score:.3f}; {self.reason}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Candidate:
    """A stored prompt the index found near the asked one."""

    facts: PromptFacts
    vector: FloatArray
    similarity: float


class Verifier(Protocol):
    """Decides which semantic candidate, if any, may be served."""

    def choose(self, asked: PromptFacts, asked_vector: FloatArray,
               candidates: Sequence[Candidate]) -> tuple[int | None, list[Verdict]]: ...


# --------------------------------------------------------------------------------------------- rules


def rule_rejection(asked: PromptFacts, stored: PromptFacts) -> str | None:
    """Why the stored prompt's answer cannot fit the asked one, by rule; None if no rule applies."""
    if asked.language and stored.language and asked.language != stored.language:
        return f"written in {asked.language}, cached prompt in {stored.language}"
    new_languages = asked.named_languages - stored.named_languages - set(stored.words)
    old_languages = stored.named_languages - asked.named_languages - set(asked.words)
    if new_languages or old_languages:
        return f"names {_show(asked.named_languages)}, cached prompt {_show(stored.named_languages)}"
    if asked.numbers and stored.numbers and asked.numbers != stored.numbers:
        return f"numbers {_show(asked.numbers)} vs cached {_show(stored.numbers)}"
    if asked.negations != stored.negations:
        return f"negation on one side ({asked.negations} vs cached {stored.negations})"
    swapped = reversed_direction(asked.words, stored.words)
    if swapped is not None:
        return f"direction reversed: {swapped[0]} / {swapped[1]}"
    swap = substituted_name(asked, stored)
    if swap is not None:
        return f"name {swap[0]} instead of cached {swap[1]}"
    return None


def substituted_name(asked: PromptFacts, stored: PromptFacts) -> tuple[str, str] | None:
    """A name the stored prompt lacks, where the stored prompt has another name between the same words."""
    new_names = _names_missing(asked, stored)
    if not new_names:
        return None
    old_places = _neighbours(stored.words, stored.entities)
    for new, places in _neighbours(asked.words, new_names).items():
        for old, other_places in old_places.items():
            if old != new and places & other_places:
                return (new, old)
    return None


def _neighbours(words: Sequence[str], names: frozenset[str]) -> dict[str, set[tuple[str, str]]]:
    found: dict[str, set[tuple[str, str]]] = {}
    for i, word in enumerate(words):
        if word in names:
            before = words[i - 1] if i > 0 else "^"
            after = words[i + 1] if i + 1 < len(words) else "$"
            found.setdefault(word, set()).add((before, after))
    return found


def _names_missing(first: PromptFacts, second: PromptFacts) -> frozenset[str]:
    stems = {_stem(w) for w in second.words}
    return frozenset(name for name in first.entities if _stem(name) not in stems)


def _stem(word: str) -> str:
    """Enough stemming to match "William's", "Williams" and "William"."""
    word = word.removesuffix("'s")
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


def _show(items: frozenset[str]) -> str:
    return "{" + ",".join(sorted(items)) + "}" if items else "none"


def reversed_direction(first: Sequence[str], second: Sequence[str]) -> tuple[str, str] | None:
    """Two words on either side of a direction word that trade places ("India to Pakistan" / "Pakistan to
    India"), or two words that appear once on each side, a direction word between them, in opposite order."""
    arrows1, arrows2 = _arrows(first), _arrows(second)
    for x, word, y in arrows1:
        if (y, word, x) in arrows2 and (x, word, y) not in arrows2:
            return (x, y)
    pos1, pos2 = _single_positions(first), _single_positions(second)
    shared = [w for w in pos1 if w in pos2 and w not in DIRECTION_WORDS]
    for i, x in enumerate(shared):
        for y in shared[i + 1:]:
            if (pos1[x] < pos1[y]) == (pos2[x] < pos2[y]):
                continue
            if _direction_between(first, pos1[x], pos1[y]) and _direction_between(second, pos2[x], pos2[y]):
                return (x, y)
    return None


def _arrows(words: Sequence[str]) -> set[tuple[str, str, str]]:
    """(word before, direction word, word after) around each direction word, skipping little words."""
    found = set()
    for i, word in enumerate(words):
        if word in DIRECTION_WORDS:
            before = next((w for w in reversed(words[max(0, i - 3):i]) if w not in STOPWORDS), None)
            after = next((w for w in words[i + 1:i + 4] if w not in STOPWORDS), None)
            if before and after and before != after:
                found.add((before, word, after))
    return found


def _single_positions(words: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    return {w: i for i, w in enumerate(words) if counts[w] == 1 and (len(w) > 1 or w in ("c", "r"))}


def _direction_between(words: Sequence[str], i: int, j: int) -> bool:
    low, high = min(i, j), max(i, j)
    return high - low <= 4 and any(w in DIRECTION_WORDS for w in words[low + 1:high])


# --------------------------------------------------------------------------------------------- features


class WordRarity:
    """Inverse document frequency of words, from a table that ships with the package."""

    def __init__(self, idf: dict[str, float], unknown: float) -> None:
        self.idf, self.unknown = idf, unknown

    def __call__(self, word: str) -> float:
        return self.idf.get(word, self.unknown)

    @classmethod
    def packaged(cls) -> WordRarity:
        """The table fitted by bench/calibrate_verifier.py."""
        raw = resources.files("semproxy.cache").joinpath("data", IDF_FILE).read_bytes()
        table: dict[str, Any] = json.loads(gzip.decompress(raw))
        return cls(table["idf"], table["unknown"])


def hand_features(asked: PromptFacts, stored: PromptFacts, similarity: float, rarity: WordRarity) -> list[float]:
    """The pair features named in HAND_FEATURES, symmetric in the two prompts."""
    a, b = set(asked.content), set(stored.content)
    shared, union = a & b, a | b
    only_a, only_b = a - b, b - a
    bigrams_a, bigrams_b = _bigrams(asked.words), _bigrams(stored.words)
    rare_only = sorted([max((rarity(w) for w in only_a), default=0.0), max((rarity(w) for w in only_b), default=0.0)])
    names_only = sorted([len(_names_missing(asked, stored)), len(_names_missing(stored, asked))])
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
    pos1, pos2 = _single_positions(first), _single_positions(second)
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


# --------------------------------------------------------------------------------------------- model


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

    def threshold_for(self, max_false_hit_rate: float) -> float:
        """The lowest score threshold whose calibration false-hit rate is within the budget."""
        within = np.nonzero(self.curve_false_hit_rates <= max_false_hit_rate)[0]
        return float(self.curve_scores[within[0]]) if len(within) else 1.0

    def with_curve(self, scores: NDArray[np.float64], false_hit_rates: NDArray[np.float64]) -> PairModel:
        return dataclasses.replace(self, curve_scores=scores, curve_false_hit_rates=false_hit_rates)

    def save(self, path: Any) -> None:
        """Write the model (used by the calibration script)."""
        arrays: dict[str, Any] = {f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)}
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, source: Any) -> PairModel:
        with np.load(source) as data:
            values: dict[str, Any] = {f.name: data[f.name] for f in dataclasses.fields(cls)}
        values["baseline"], values["depth"] = float(values["baseline"]), int(values["depth"])
        return cls(**values)

    @classmethod
    def packaged(cls) -> PairModel:
        """The model fitted by bench/calibrate_verifier.py."""
        with resources.files("semproxy.cache").joinpath("data", MODEL_FILE).open("rb") as f:
            return cls.load(f)


class HitVerifier:
    """Rules first, then the model at the operating point of the error budget."""

    def __init__(self, model: PairModel, rarity: WordRarity, *, max_false_hit_rate: float) -> None:
        self.model, self.rarity = model, rarity
        self.max_false_hit_rate = max_false_hit_rate
        self.threshold = model.threshold_for(max_false_hit_rate)

    @classmethod
    def packaged(cls, *, max_false_hit_rate: float) -> HitVerifier:
        return cls(PairModel.packaged(), WordRarity.packaged(), max_false_hit_rate=max_false_hit_rate)

    def verify(self, asked: PromptFacts, asked_vector: FloatArray, stored: PromptFacts,
               stored_vector: FloatArray, similarity: float) -> Verdict:
        """The verdict on one candidate."""
        verdict = self._by_rule(asked, stored)
        if verdict is not None:
            return verdict
        return self._by_score(self.score(asked, asked_vector, stored, stored_vector, similarity))

    def choose(self, asked: PromptFacts, asked_vector: FloatArray,
               candidates: Sequence[Candidate]) -> tuple[int | None, list[Verdict]]:
        """The nearest candidate the verifier accepts (candidates come nearest first), and every verdict.

        The rules run first; the candidates they leave are scored by the model in one batch.
        """
        verdicts: list[Verdict | None] = [self._by_rule(asked, c.facts) for c in candidates]
        pending = [i for i, v in enumerate(verdicts) if v is None]
        if pending:
            rows = np.vstack([pair_vector(asked, asked_vector, candidates[i].facts, candidates[i].vector,
                                          candidates[i].similarity, self.rarity) for i in pending])
            for i, score in zip(pending, self.model.score(rows), strict=True):
                verdicts[i] = self._by_score(float(score))
        final = [v for v in verdicts if v is not None]
        chosen = next((i for i, v in enumerate(final) if v.accepted), None)
        return chosen, final

    def _by_rule(self, asked: PromptFacts, stored: PromptFacts) -> Verdict | None:
        if asked.words == stored.words:  # the same words: only case, spacing or punctuation differ
            return Verdict(accepted=True, score=1.0, reason="same words", by_rule=True)
        reason = rule_rejection(asked, stored)
        return None if reason is None else Verdict(accepted=False, score=0.0, reason=reason, by_rule=True)

    def _by_score(self, score: float) -> Verdict:
        if score >= self.threshold:
            return Verdict(accepted=True, score=score, reason=f"score >= {self.threshold:.3f}")
        return Verdict(accepted=False, score=score, reason=f"score < {self.threshold:.3f}")

    def score(self, asked: PromptFacts, asked_vector: FloatArray, stored: PromptFacts, stored_vector: FloatArray,
              similarity: float) -> float:
        """The model's score alone (no rules, no threshold)."""
        features = pair_vector(asked, asked_vector, stored, stored_vector, similarity, self.rarity)
        return float(self.model.score(features)[0])
