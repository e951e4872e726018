"""What the stores keep: typed records that cross the storage boundary."""

from __future__ import annotations

import dataclasses

import numpy as np
from numpy.typing import NDArray

from semproxy.openai import Kind

Vector = NDArray[np.float32]
Removed = list[tuple[int, str, str | None]]  # (entry id, scope, space) of deleted entries, so an index can follow


@dataclasses.dataclass(frozen=True, kw_only=True)
class CacheKey:
    """Where a request belongs in the cache.

    `exact` identifies the whole normalized request; `scope` everything except the prompt text, so the
    semantic tier only compares prompts whose answers could be interchangeable. Both include the tenant.
    """

    kind: Kind
    tenant: str
    scope: str
    exact: str
    model: str
    prompt: str | None  # the text the semantic tier embeds; None means exact tier only


@dataclasses.dataclass(frozen=True, kw_only=True)
class NewEntry:
    """An upstream answer about to be stored."""

    key: CacheKey
    response: bytes  # the non-stream JSON form, whatever form the client asked for
    vector: Vector | None
    ttl_seconds: int  # 0 = never expires
    # The vector's space (semproxy.cache.spaces); "" = none (exact hits only); None = not embedded yet
    space: str | None = None
    # When its request arrived (wall clock): if its tenant was erased since, the entry is not stored
    asked_at: float | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class CacheEntry:
    """A stored answer as read back from a store."""

    id: int
    kind: Kind
    tenant: str
    scope: str
    model: str
    prompt: str | None
    response: bytes
    created_at: float
    expires_at: float | None
    space: str | None = None  # the vector's space: model and language (semproxy.cache.spaces)
    vector: Vector | None = dataclasses.field(default=None, repr=False, compare=False)
    # The highest verifier score at which serving this entry for another prompt proved wrong (an audit or a
    # comparison found another answer): it is not served again for prompts that score no higher.
    wrong_above: float | None = None

    def expired(self, now: float) -> bool:
        """Whether the entry's TTL has run out."""
        return self.expires_at is not None and self.expires_at <= now


Unplaced = tuple[int, str, str | None]  # (entry id, prompt, space) of an entry to re-embed


def partition(scope: str, space: str | None) -> str:
    """The part of the vector search a vector belongs to: its scope within its space."""
    return f"{space or ''}\x1f{scope}"


@dataclasses.dataclass(frozen=True)
class Relocation:
    """An entry's new place after re-embedding: its space and vector, or none (exact hits only)."""

    id: int
    space: str
    vector: Vector | None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Observation:
    """One comparison of a cached answer with the upstream's fresh answer to another prompt: was it right?"""

    tenant: str
    scope: str
    entry_id: int
    score: float  # the verifier's score of the (stored, asked) pair
    wrong: bool
    at: float  # when its request arrived: if its tenant was erased since, it is not kept


Candidates = list[tuple[CacheEntry, float]]  # (entry with its vector, cosine similarity), most similar first
