"""Routing: which upstreams may answer a request, in which order, and what each one's health looks like.

A request's `model` picks the candidates (the upstreams whose model list, patterns or aliases cover it).
They are tried in order of configured priority, then of measured latency: an exponentially weighted moving
average of the time to the response headers, so the nearest or fastest region comes first on its own. An
upstream with no recent measurement goes first among its equals, once, to be measured again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

from semproxy.config import UpstreamConfig
from semproxy.errors import ModelNotFound
from semproxy.upstream.breaker import CircuitBreaker

MEMO_SIZE = 4096  # model names whose candidate upstreams are remembered


@dataclasses.dataclass(frozen=True, kw_only=True)
class RoutingPolicy:
    """How hard to try: attempts and time per request, breaker thresholds, latency smoothing."""

    max_attempts: int = 3
    deadline: float = 30.0  # no new attempt starts this many seconds after the first one
    breaker_failures: int = 5
    breaker_cooldown: float = 30.0
    latency_alpha: float = 0.3
    latency_probe_interval: float = 60.0


class Upstream:
    """A configured upstream with its live state: circuit breaker and smoothed latency."""

    def __init__(self, config: UpstreamConfig, *, policy: RoutingPolicy, clock: Callable[[], float],
                 connect_timeout: float, read_timeout: float) -> None:
        self.config = config
        self.name = config.name
        self.base_url = config.url
        self.breaker = CircuitBreaker(failures=policy.breaker_failures, cooldown=policy.breaker_cooldown,
                                      clock=clock)
        self.latency: float | None = None  # seconds to the response headers, smoothed
        self.last_chosen = float("-inf")
        self.timeout = {"connect": config.connect_timeout or connect_timeout,
                        "read": config.read_timeout or read_timeout,
                        "write": config.read_timeout or read_timeout,
                        "pool": config.read_timeout or read_timeout}
        self.api_key = config.api_key
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in config.headers]

    def observe(self, seconds: float, alpha: float) -> None:
        """Fold one time-to-headers sample into the moving average."""
        self.latency = seconds if self.latency is None else alpha * seconds + (1 - alpha) * self.latency


class Router:
    """Orders the upstreams that serve a model; owns their breakers and latency figures."""

    def __init__(self, configs: Sequence[UpstreamConfig], *, policy: RoutingPolicy, connect_timeout: float,
                 read_timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not configs:
            raise ValueError("a router needs at least one upstream")
        self.policy = policy
        self.clock = clock
        self.upstreams = [Upstream(c, policy=policy, clock=clock, connect_timeout=connect_timeout,
                                   read_timeout=read_timeout) for c in configs]
        self._catch_all = [u for u in self.upstreams if u.config.serves_everything] or self.upstreams[:1]
        # With only catch-all upstreams and no aliases the model changes nothing: the body need not be parsed.
        self.needs_model = any(not u.config.serves_everything or u.config.aliases for u in self.upstreams)
        self._by_model: dict[str, list[Upstream]] = {}

    @property
    def passthrough(self) -> bool:
        """One upstream that serves every model under its own names: semproxy adds no model list of its own."""
        only = self.upstreams[0].config
        return len(self.upstreams) == 1 and only.serves_everything and not only.aliases

    def candidates(self, model: str | None) -> list[Upstream]:
        """The upstreams that may answer, best first (circuit state is checked when each one's turn comes).

        A request without a model (files, batches, uploads, a body that is not JSON) may go to any upstream
        that serves every model, or else to the first one configured.
        """
        found = self._catch_all if model is None or not self.needs_model else self._serving(model)
        if not found:
            raise ModelNotFound(f"The model {model!r} does not exist or no upstream serves it.",
                                code="model_not_found", param="model")
        if len(found) == 1:
            return found
        now = self.clock()
        return sorted(found, key=lambda u: self._rank(u, now))

    def _serving(self, model: str) -> list[Upstream]:
        found = self._by_model.get(model)
        if found is None:
            if len(self._by_model) >= MEMO_SIZE:  # clients may send any name: keep the memo bounded
                self._by_model.clear()
            found = self._by_model[model] = [u for u in self.upstreams if u.config.serves(model)]
        return found

    def _rank(self, upstream: Upstream, now: float) -> tuple[int, int, float]:
        stale = upstream.latency is None or now - upstream.last_chosen > self.policy.latency_probe_interval
        return upstream.config.priority, 0 if stale else 1, 0.0 if stale else upstream.latency or 0.0

    def chosen(self, upstream: Upstream) -> None:
        """An attempt goes to `upstream` now."""
        upstream.last_chosen = self.clock()

    def observe(self, upstream: Upstream, seconds: float) -> None:
        """`upstream` answered after `seconds`."""
        upstream.observe(seconds, self.policy.latency_alpha)
