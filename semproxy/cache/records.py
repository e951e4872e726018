"""Typed records that cross the cache's boundaries."""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from semproxy.cache.verifier import Verdict
from semproxy.openai import Kind

Vector = NDArray[np.float32]
Tier = Literal["exact", "semantic"]


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


@dataclasses.dataclass(frozen=True, kw_only=True)
class CacheHit:
    """A lookup that found an answer."""

    entry: CacheEntry
    tier: Tier
    similarity: float | None = None
    verdict: Verdict | None = None  # the hit verifier's reasons for a semantic hit


@dataclasses.dataclass(frozen=True, kw_only=True)
class Lookup:
    """The outcome of a lookup: a hit, or a miss that carries the embedding so storing needn't redo it."""

    hit: CacheHit | None
    vector: Vector | None = None
    rejected: Verdict | None = None  # why the nearest semantic candidate was not served, if one was found


@dataclasses.dataclass(frozen=True, kw_only=True)
class Controls:
    """Per-request cache controls, read from headers (never from the body)."""

    lookup: bool = True
    store: bool = True
    threshold: float | None = None
    ttl_seconds: int | None = None
