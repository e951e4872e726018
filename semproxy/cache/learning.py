"""Thresholds learned from the proxy's own traffic: audited hits, in the manner of vCache.

The verifier's operating point was chosen on public pairs, and some traffic behaves nothing like them: the
prompts of a classifier ("Is this review friendly? <review>") differ in a word or two and need other answers.
So semproxy compares, now and then, a cached answer with the upstream's fresh answer to the new prompt:

- **audits**: a request that would be served as a semantic hit is forwarded anyway, with a probability that is
  high while a scope has few comparisons and falls to `audit_rate` as its record grows (the client gets the
  fresh answer, never a worse one);
- **free comparisons**: a candidate the learned bar refused was forwarded anyway, so its answer is compared
  with the fresh one at no cost; this is how a bar comes down again when a scope's traffic changes.

Only requests whose answers are reproducible (temperature 0 or a seed) are compared. What is learned:

- **per entry**: an entry whose answer proved wrong for a prompt is not served again for prompts the verifier
  scores no higher (`CacheEntry.wrong_above`);
- **per scope** (one tenant's requests with the same model, system prompt and parameters): the lowest score
  at which the candidates served would be wrong at most `max_false_hit_rate` of the time. Walking down from
  the best-scored comparisons, the bar stops at the first one where the wrong ones so far outnumber the
  budget's share of all so far (the first wrong one stops it unless 1 / budget right ones lie above it). A
  young scope, with no comparison yet, is served at the verifier's own point, and audited the most.

A wrong comparison also drops the entry's aliases (the prompts it was served for as a semantic hit, which
would get it again as exact hits): their repeats are judged again under the new bars.

Comparisons are stored (both stores, all replicas see them); each process keeps each scope's record for
`REFRESH_SECONDS` and re-reads it after a comparison of its own.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

EXPLORE = 20  # audit probability starts at 1 and halves once a scope has this many comparisons above its bar
HISTORY = 2000  # latest comparisons of a scope taken into account
REFRESH_SECONDS = 5.0
MAX_SCOPES = 4096  # records kept in memory (two numbers each: a history is read, walked and dropped)

History = Sequence[tuple[float, bool]]  # (verifier score, wrong), any order


@dataclasses.dataclass(frozen=True)
class ScopeRecord:
    """What a scope's comparisons say: serve candidates scoring above `bar`; `above` comparisons back it."""

    bar: float  # -inf: no comparison objects, the verifier's own point applies
    above: int  # comparisons scoring above the bar (how clear the record is where hits are served)

    def audit_probability(self, rate: float) -> float:
        """How likely a would-be hit is audited: high where few comparisons back the bar, `rate` once many do."""
        if rate <= 0:
            return 0.0
        return max(rate, min(1.0, EXPLORE / (EXPLORE + self.above)))


def learn(history: History, budget: float) -> ScopeRecord:
    """The bar for a scope's candidates, from its comparisons (see the module's docstring)."""
    ranked = sorted(history, key=lambda pair: -pair[0])
    wrong = 0
    for seen, (score, was_wrong) in enumerate(ranked, start=1):
        wrong += int(was_wrong)
        if wrong > budget * seen:
            return ScopeRecord(bar=score, above=seen - 1)
    return ScopeRecord(bar=-math.inf, above=len(ranked))


class Learner:
    """Scope records, read from the store at most every REFRESH_SECONDS (thread-safe: lookups run on model
    threads)."""

    def __init__(self, *, budget: float, read: Callable[[str, int], History],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self._read, self._clock = read, clock
        self._records: OrderedDict[str, tuple[float, ScopeRecord]] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, scope: str) -> ScopeRecord:
        """The scope's record, read again if it is older than REFRESH_SECONDS."""
        now = self._clock()
        with self._lock:
            found = self._records.get(scope)
            if found is not None and now - found[0] < REFRESH_SECONDS:
                self._records.move_to_end(scope)
                return found[1]
        record = learn(self._read(scope, HISTORY), self.budget)
        with self._lock:
            self._records[scope] = (now, record)
            self._records.move_to_end(scope)
            while len(self._records) > MAX_SCOPES:
                self._records.popitem(last=False)
        return record

    def forget(self, scope: str) -> None:
        """Read the scope again at its next lookup (a comparison was just stored)."""
        with self._lock:
            self._records.pop(scope, None)

