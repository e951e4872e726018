"""Typed records of the cache's decisions: hits, lookups, the verifier's verdicts, per-request controls.

What is stored (keys, entries, vectors) is the storage's vocabulary: `semproxy.storage.records`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from semproxy.storage.records import CacheEntry, Vector

Tier = Literal["exact", "semantic"]
# The kinds of reason the verifier and its rules give, longest first. A rule's reason quotes the prompts ("name
# Anna instead of cached Berta"); where that would show one person's prompt to another, or keep it in the request
# log, only its kind is given.
REASON_KINDS = ("proved wrong", "learned",
                "negation on one side", "direction reversed", "no rule objects", "roles exchanged", "answer shape",
                "same words", "written in", "opposites", "not read", "numbers", "names", "name", "read", "score")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Verdict:
    """The verifier's decision on one candidate, with the reason (for logs and `X-Semproxy-Verdict`)."""

    accepted: bool
    score: float  # the model's estimate that the stored answer fits; 0 when a rule rejected it
    reason: str
    by_rule: bool = False  # decided by a rule, before the model

    def header(self, *, quote_prompts: bool = True) -> str:
        """The compact form sent in `X-Semproxy-Verdict`; without `quote_prompts`, the reason's kind only."""
        reason = self.reason if quote_prompts else self.reason_kind()
        return f"{'accept' if self.accepted else 'reject'}; score={self.score:.3f}; {reason}"

    def reason_kind(self) -> str:
        """The reason without the words of any prompt."""
        return next((kind for kind in REASON_KINDS if self.reason.startswith(kind)), "other")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CacheHit:
    """A lookup that found an answer."""

    entry: CacheEntry
    tier: Tier
    similarity: float | None = None
    verdict: Verdict | None = None  # the hit verifier's reasons for a semantic hit


@dataclasses.dataclass(frozen=True)
class Embedding:
    """A prompt's vector and the space it belongs to (semproxy.cache.spaces)."""

    space: str
    vector: Vector


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditPlan:
    """A candidate whose answer is to be compared with the fresh one (semproxy.cache.learning)."""

    entry: CacheEntry
    score: float  # the verifier's score of the pair (the similarity when the verifier is off)
    similarity: float
    probability: float  # of the draw that chose an audit; 0 for a refused candidate (compared for free)

    @property
    def audit(self) -> bool:
        """A would-be hit forwarded to be checked (it costs an upstream call); else a refused candidate."""
        return self.probability > 0

    @property
    def weight(self) -> float:
        """How many served hits this audit stands for in the served wrong-hit rate: (1 - p) / p."""
        return (1 - self.probability) / self.probability if self.audit else 0.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Lookup:
    """The outcome of a lookup: a hit, or a miss that carries the embedding so storing needn't redo it."""

    hit: CacheHit | None
    embedding: Embedding | None = None
    rejected: Verdict | None = None  # why the nearest semantic candidate was not served, if one was found
    compare: AuditPlan | None = None  # an answer to compare with the fresh one, once it comes


@dataclasses.dataclass(frozen=True, kw_only=True)
class Controls:
    """Per-request cache controls, read from headers (never from the body)."""

    lookup: bool = True
    store: bool = True
    threshold: float | None = None
    ttl_seconds: int | None = None
