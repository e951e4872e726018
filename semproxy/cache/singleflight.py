"""Single flight: identical concurrent misses reach the upstream once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class SingleFlight:
    """The first caller for a key leads; later callers wait until the leader is done, then look again."""

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Event] = {}
        self.waiting = 0  # callers waiting for a leader, all keys together

    @asynccontextmanager
    async def lead(self, key: str) -> AsyncIterator[bool]:
        """Yield True to the leader, who must do the work; others wait for it and get False."""
        flight = self._flights.get(key)
        if flight is not None:
            self.waiting += 1
            try:
                await flight.wait()
            finally:
                self.waiting -= 1
            yield False
            return
        flight = self._flights[key] = asyncio.Event()
        try:
            yield True
        finally:
            del self._flights[key]
            flight.set()

    def __len__(self) -> int:
        return len(self._flights)
