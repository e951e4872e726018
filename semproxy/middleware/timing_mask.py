"""Masking the timing side channel of shared namespaces.

A hit is answered in about a millisecond, a miss takes the upstream's time: a member of a shared namespace
who times an answer learns whether someone in the namespace asked the same thing before. With
`mask_hit_timing`, hits in shared namespaces are delayed to a latency drawn from the proxy's recent misses
(time to the whole answer for JSON, to the first byte for streams), so the two cannot be told apart by
their timing. A tenant's own cache needs no mask: only the key's holder can probe it.
"""

from __future__ import annotations

import collections
import random

# Until the first misses are observed, hits wait this long (seconds): a typical first token.
FALLBACK_SECONDS = {False: 1.0, True: 0.4}


class LatencySamples:
    """The latest upstream latencies of answered misses, by whether they were streamed."""

    def __init__(self, size: int = 512, *, rng: random.Random | None = None) -> None:
        self._samples = {False: collections.deque[float](maxlen=size), True: collections.deque[float](maxlen=size)}
        self._rng = rng or random.Random()

    def observe(self, *, stream: bool, seconds: float) -> None:
        """Remember how long a miss took."""
        self._samples[stream].append(seconds)

    def draw(self, *, stream: bool) -> float:
        """A latency a miss of this kind could have taken (seconds)."""
        samples = self._samples[stream]
        return self._rng.choice(samples) if samples else FALLBACK_SECONDS[stream]
