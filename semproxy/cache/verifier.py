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
(`semproxy/cache/data/`), one set per embedding space: `minilm` (English, all-MiniLM-L6-v2), reproduced by
`bench/calibrate_verifier.py`, and `e5` (the other languages, multilingual-e5-small), reproduced by
`bench/calibrate_verifier_e5.py`.
"""


from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from semproxy.cache.pair_model import FloatArray, PairModel, WordRarity, pair_vector
from semproxy.cache.reading import PairReader
from semproxy.cache.records import Verdict
from semproxy.cache.rules import rule_rejection
from semproxy.cache.text import PromptFacts

log = logging.getLogger("semproxy.cache")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Candidate:
    """A stored prompt the index found near the asked one."""

    facts: PromptFacts
    vector: FloatArray
    similarity: float


class Verifier(Protocol):
    """Decides which semantic candidate, if any, may be served."""

    problem: str | None  # a part that should have loaded and did not (reported by /healthz), else None

    def choose(self, asked: PromptFacts, asked_vector: FloatArray,
               candidates: Sequence[Candidate]) -> tuple[int | None, list[Verdict]]: ...

    def verify(self, asked: PromptFacts, asked_vector: FloatArray, stored: PromptFacts,
               stored_vector: FloatArray, similarity: float) -> Verdict: ...

    def threshold_at(self, max_false_hit_rate: float, language: str | None = None) -> float:
        """The score a candidate needs at another error budget (for `semproxy eval`'s sweep)."""
        ...


class HitVerifier:
    """Rules first, then the model at the operating point of the error budget; with a pair reader (English),
    the trees' score is weighed with what the pair encoder reads and the blend's operating point decides."""

    def __init__(self, model: PairModel, rarity: WordRarity, *, max_false_hit_rate: float,
                 reader: PairReader | None = None) -> None:
        self.model, self.rarity, self.reader = model, rarity, reader
        self.max_false_hit_rate = max_false_hit_rate
        self.threshold = model.threshold_for(max_false_hit_rate)
        self.thresholds = {str(language): model.threshold_for(max_false_hit_rate, str(language))
                           for language in model.curve_languages}  # languages with their own curve
        self.read_threshold = reader.blend.threshold_for(max_false_hit_rate) if reader is not None else 1.0
        self.problem: str | None = None  # a part that should have loaded and did not (for /healthz)

    @classmethod
    def packaged(cls, *, max_false_hit_rate: float, space: str = "minilm") -> HitVerifier:
        """The verifier that ships for pairs embedded in `space` ("minilm" or "e5"); the English one reads
        pairs with the pair encoder, or, if that cannot load, decides by its trees alone."""
        reader = _packaged_reader() if space == "minilm" else None
        verifier = cls(PairModel.packaged(space=space), WordRarity.packaged(space=space),
                       max_false_hit_rate=max_false_hit_rate, reader=reader)
        if space == "minilm" and reader is None:
            verifier.problem = "the pair encoder could not load; the trees decide alone"
        return verifier

    def verify(self, asked: PromptFacts, asked_vector: FloatArray, stored: PromptFacts,
               stored_vector: FloatArray, similarity: float) -> Verdict:
        """The verdict on one candidate."""
        return self.choose(asked, asked_vector, [Candidate(facts=stored, vector=stored_vector,
                                                           similarity=similarity)])[1][0]

    def choose(self, asked: PromptFacts, asked_vector: FloatArray,
               candidates: Sequence[Candidate]) -> tuple[int | None, list[Verdict]]:
        """The nearest candidate the verifier accepts (candidates come nearest first), and every verdict.

        The rules run first; the candidates they leave are scored by the trees in one batch. A pair reader
        then reads the nearest of them alone (usually the one served) and the rest together only if needed.
        """
        verdicts: list[Verdict | None] = [self._by_rule(asked, c.facts) for c in candidates]
        pending = [i for i, v in enumerate(verdicts) if v is None]
        if pending:
            rows = np.vstack([pair_vector(asked, asked_vector, candidates[i].facts, candidates[i].vector,
                                          candidates[i].similarity, self.rarity) for i in pending])
            trees = dict(zip(pending, (float(s) for s in self.model.score(rows)), strict=True))
            if self.reader is None:
                for i in pending:
                    verdicts[i] = self._by_score(trees[i], asked.language)
            else:
                self._read(self.reader, asked, candidates, trees, verdicts)
        final = [v for v in verdicts if v is not None]
        chosen = next((i for i, v in enumerate(final) if v.accepted), None)
        return chosen, final

    def _read(self, reader: PairReader, asked: PromptFacts, candidates: Sequence[Candidate],
              trees: dict[int, float], verdicts: list[Verdict | None]) -> None:
        pending = sorted(trees)
        for group in (pending[:1], pending[1:]):
            if not group:
                continue
            scores = reader.scores(asked.text, [candidates[i].facts.text for i in group], [trees[i] for i in group],
                                   [candidates[i].similarity for i in group])
            for i, score in zip(group, scores, strict=True):
                verdicts[i] = self._by_reading(float(score))
            if any(verdicts[i].accepted for i in group):  # type: ignore[union-attr]
                for i in pending:
                    if verdicts[i] is None:
                        verdicts[i] = Verdict(accepted=False, score=0.0, reason="not read: a nearer candidate fits")
                return

    def threshold_at(self, max_false_hit_rate: float, language: str | None = None) -> float:
        if self.reader is not None:
            return self.reader.blend.threshold_for(max_false_hit_rate)
        return self.model.threshold_for(max_false_hit_rate, language)

    def _by_rule(self, asked: PromptFacts, stored: PromptFacts) -> Verdict | None:
        return rule_verdict(asked, stored)

    def _by_reading(self, score: float) -> Verdict:
        if score >= self.read_threshold:
            return Verdict(accepted=True, score=score, reason=f"read: score >= {self.read_threshold:.3f}")
        return Verdict(accepted=False, score=score, reason=f"read: score < {self.read_threshold:.3f}")

    def _by_score(self, score: float, language: str | None) -> Verdict:
        threshold = self.thresholds.get(language or "", self.threshold)
        if score >= threshold:
            return Verdict(accepted=True, score=score, reason=f"score >= {threshold:.3f}")
        return Verdict(accepted=False, score=score, reason=f"score < {threshold:.3f}")

    def score(self, asked: PromptFacts, asked_vector: FloatArray, stored: PromptFacts, stored_vector: FloatArray,
              similarity: float) -> float:
        """The model's score alone (no rules, no threshold)."""
        features = pair_vector(asked, asked_vector, stored, stored_vector, similarity, self.rarity)
        return float(self.model.score(features)[0])


def _packaged_reader() -> PairReader | None:
    try:
        return PairReader.packaged()
    except Exception:  # a missing or broken model file must not take the cache down: the trees decide alone
        log.warning("the pair encoder could not load; English candidates are decided by the trees alone",
                    exc_info=True)
        return None


class RuleVerifier:
    """The rules alone, for an embedder no model was fitted for (a sentence-transformers model of the
    user's choice): the nearest candidate no rule rejects is served, so `similarity_threshold` does the rest."""

    problem: str | None = None  # nothing to load

    def choose(self, asked: PromptFacts, asked_vector: FloatArray,
               candidates: Sequence[Candidate]) -> tuple[int | None, list[Verdict]]:
        verdicts = [self.verify(asked, asked_vector, c.facts, c.vector, c.similarity) for c in candidates]
        return next((i for i, v in enumerate(verdicts) if v.accepted), None), verdicts

    def verify(self, asked: PromptFacts, asked_vector: FloatArray, stored: PromptFacts,
               stored_vector: FloatArray, similarity: float) -> Verdict:
        return rule_verdict(asked, stored) or Verdict(accepted=True, score=similarity, reason="no rule objects")

    def threshold_at(self, max_false_hit_rate: float, language: str | None = None) -> float:
        return 0.0  # no budget to trade: whatever the rules let through is served


def rule_verdict(asked: PromptFacts, stored: PromptFacts) -> Verdict | None:
    """Accept the same words, reject what a rule rejects; None: the rules cannot decide."""
    if asked.words == stored.words:  # the same words: only case, spacing or punctuation differ
        return Verdict(accepted=True, score=1.0, reason="same words", by_rule=True)
    reason = rule_rejection(asked, stored)
    return None if reason is None else Verdict(accepted=False, score=0.0, reason=reason, by_rule=True)
