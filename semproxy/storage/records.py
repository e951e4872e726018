"""What the stores keep: typed records that cross the storage boundary."""

from __future__ import annotations

import dataclasses

import numpy as np
from numpy.typing import NDArray

from semproxy.openai import Kind

Vector = NDArray[np.float32]
Removed = list[tuple[int, str]]  # (entry id, scope) of deleted entries, so a vector index can follow


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
    vector: Vector | None = dataclasses.field(default=None, repr=False, compare=False)

    def expired(self, now: float) -> bool:
        """Whether the entry's TTL has run out."""
        return self.expires_at is not None and self.expires_at <= now


Candidates = list[tuple[CacheEntry, float]]  # (entry with its vector, cosine similarity), most similar first
