"""A circuit breaker per upstream: stop sending to one that keeps failing, probe it again later.

    closed --(`failures` failures in a row)--> open --(`cooldown` seconds)--> half-open
    half-open: one request goes through as a probe; success -> closed, failure -> open again

All requests share one event loop, so plain attributes are enough (no locks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Counts consecutive failures of one upstream; `clock` is injectable so tests need not sleep."""

    def __init__(self, *, failures: int, cooldown: float, clock: Callable[[], float]) -> None:
        self.threshold = failures
        self.cooldown = cooldown
        self.clock = clock
        self.failures = 0
        self.opened_at = 0.0
        self.probing = False
        self._state: State = "closed"

    @property
    def state(self) -> State:
        """closed, open, or half_open (the cooldown is over: the next request probes)."""
        if self._state == "open" and self.clock() - self.opened_at >= self.cooldown:
            self._state = "half_open"
        return self._state

    def acquire(self) -> bool:
        """May a request go to this upstream now? In half-open state only one probe at a time may."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self.probing:
            self.probing = True
            return True
        return False

    def succeeded(self) -> None:
        """The upstream answered: close the circuit."""
        self._state, self.failures, self.probing = "closed", 0, False

    def failed(self) -> None:
        """The upstream failed: open the circuit after `threshold` failures in a row, or if this was a probe."""
        self.failures += 1
        if self.probing or self.failures >= self.threshold:
            self._state, self.opened_at, self.probing = "open", self.clock(), False

    def release(self) -> None:
        """The request ended without a verdict (the client left): let another request probe."""
        self.probing = False

    def retry_after(self) -> float:
        """Seconds until the next probe may go out (0 if a request may go now)."""
        if self.state != "open":
            return 0.0
        return max(0.0, self.opened_at + self.cooldown - self.clock())
