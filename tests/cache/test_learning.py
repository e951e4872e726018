"""Learned bars: what a scope's comparisons say about the candidates it may serve."""

from __future__ import annotations

import math

import pytest

from semproxy.cache.learning import EXPLORE, REFRESH_SECONDS, Learner, ScopeRecord, learn
from semproxy.stats.report import wilson

BUDGET = 0.02


def test_a_scope_without_comparisons_keeps_the_verifiers_point_and_is_audited_every_time() -> None:
    record = learn([], BUDGET)
    assert record == ScopeRecord(bar=-math.inf, above=0)
    assert record.audit_probability(0.05) == 1.0
    assert record.audit_probability(0.0) == 0.0  # audits off: off


def test_the_audit_probability_falls_to_the_rate_as_the_record_grows() -> None:
    right = [(0.9 + i / 1000, False) for i in range(90)]
    record = learn(right, BUDGET)
    assert record.bar == -math.inf and record.above == 90
    assert record.audit_probability(0.05) == pytest.approx(EXPLORE / (EXPLORE + 90))
    assert learn(right * 5, BUDGET).audit_probability(0.05) == 0.05


def test_one_wrong_hit_at_the_top_raises_the_bar_above_it() -> None:
    record = learn([(0.97, True), (0.9, False), (0.95, False)], BUDGET)
    assert record.bar == 0.97 and record.above == 0


def test_the_bar_stops_where_the_wrong_share_above_it_passes_the_budget() -> None:
    # 200 right comparisons above 0.95, then a band where half are wrong.
    history = [(0.95 + i / 10_000, False) for i in range(200)]
    history += [(0.90 + i / 1000, i % 2 == 0) for i in range(20)]
    record = learn(history, BUDGET)
    assert 0.90 < record.bar < 0.95
    served = [wrong for score, wrong in history if score > record.bar]
    assert sum(served) / len(served) <= BUDGET  # what it still serves is within the budget
    assert record.above == len(served)


def test_a_few_wrong_hits_among_many_right_ones_stay_within_the_budget() -> None:
    history = [(0.9 + i / 10_000, i % 100 == 0) for i in range(500)]  # 1 % wrong, spread out
    assert learn(history, BUDGET).bar == -math.inf


def test_records_are_read_again_after_a_while_or_when_forgotten() -> None:
    reads: list[str] = []
    now = [0.0]

    def read(scope: str, limit: int) -> list[tuple[float, bool]]:
        reads.append(scope)
        return [(0.99, True)] if len(reads) > 1 else []

    learner = Learner(budget=BUDGET, read=read, clock=lambda: now[0])
    assert learner.record("s").bar == -math.inf
    assert learner.record("s").bar == -math.inf and reads == ["s"]  # cached
    learner.forget("s")
    assert learner.record("s").bar == 0.99 and reads == ["s", "s"]
    now[0] += REFRESH_SECONDS
    learner.record("s")
    assert reads == ["s", "s", "s"]


def test_the_wilson_interval_holds_the_share_and_narrows_with_more_trials() -> None:
    low, high = wilson(2, 100, effective=100) or (0, 0)
    assert low < 0.02 < high
    wide = wilson(2, 100, effective=25) or (0, 0)
    assert wide[0] < low and wide[1] > high  # fewer effective trials (unequal weights): wider
    assert wilson(0, 0, effective=0) is None
