"""Audited hits and learned bars through the whole proxy, on both stores (semproxy.cache.learning).

The prompts get chosen vectors, so the similarities are known: POS is stored; NEG is near it (0.95) but needs
another answer; MID is a little farther (0.93) from POS and far from NEG; CLOSE (0.99) and CLOSE2 (0.98) are
nearest POS.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import numpy as np
import pytest

from semproxy.config import Settings
from semproxy.storage.records import Observation
from tests.conftest import Proxy, ProxyFactory
from tests.fakes import FakeOpenAI, HashingEmbedder, Vector

pytestmark = pytest.mark.anyio

POS = "Is this review friendly? The staff were kind and helpful."
NEG = "Is this review friendly? The staff were rude and unhelpful."
MID = "Is this review friendly? The staff were kind, if a little slow."
CLOSE = "Is this review friendly? The staff were kind and very helpful."
CLOSE2 = "Is this review friendly? The staff were really kind and helpful."
POINTS = {POS: (1.0, 0.0, 0.0), NEG: (0.95, 0.3122, 0.0), MID: (0.93, -0.3676, 0.0), CLOSE: (0.99, 0.0, 0.1411),
          CLOSE2: (0.98, 0.0, -0.199)}
LABELS = {POS: "yes", NEG: "no", MID: "yes", CLOSE: "yes", CLOSE2: "yes"}


class ChosenVectors(HashingEmbedder):
    """The hashing embedder, but the prompts above get the vectors chosen for them."""

    def _one(self, text: str) -> Vector:
        if text not in POINTS:
            return super()._one(text)
        vector = np.zeros(self.dimension, dtype=np.float32)
        vector[:3] = POINTS[text]
        return vector / np.linalg.norm(vector)


@pytest.fixture(params=["embedded", "postgres"])
def settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    if request.param == "postgres":
        settings = dataclasses.replace(settings, store=request.getfixturevalue("pg_url"))
    return settings


@pytest.fixture
def answering(upstream: FakeOpenAI) -> FakeOpenAI:
    upstream.answer = lambda prompt: LABELS.get(prompt, "I cannot tell.")
    return upstream


def draws(*values: float) -> Iterator[float]:
    yield from values
    while True:
        yield 0.999  # later would-be hits: not audited


def seed(proxy: Proxy, count: int, *, score: float = 0.9) -> None:
    """Give the scope of the prompts above `count` right comparisons at `score`, as if from earlier traffic."""
    store = proxy.cache._store
    assert store is not None
    for _ in range(count):
        store.record(Observation(tenant=proxy.cache.tenant(api_key="sk-alice", namespace=None),
                                 scope=_scope(proxy, POS), entry_id=0, score=score, wrong=False, at=time.time()))


async def ask(proxy: Proxy, prompt: str) -> tuple[str, str, str]:
    response = await proxy.chat(prompt, temperature=0)
    assert response.status_code == 200
    return (response.headers["x-semproxy-cache"], response.json()["choices"][0]["message"]["content"],
            response.headers.get("x-semproxy-verdict", ""))


@pytest.mark.usefixtures("offline_encodings")
async def test_a_wrong_hit_found_by_an_audit_is_not_served_again(make_proxy: ProxyFactory,
                                                                answering: FakeOpenAI) -> None:
    chances = draws(0.0)
    proxy = await make_proxy(embedder=ChosenVectors(), draw=lambda: next(chances))
    seed(proxy, 200)  # the scope's record is clear: audits at 20 / 220
    assert (await ask(proxy, POS))[:2] == ("miss", "yes")
    # NEG is drawn for an audit: it gets its own fresh answer, and POS proves wrong for it.
    assert (await ask(proxy, NEG))[:2] == ("audit", "no")
    assert len(answering.completions()) == 2
    # MID scores below the score at which POS proved wrong: refused, forwarded, compared for free (and right).
    outcome, answer, verdict = await ask(proxy, MID)
    assert (outcome, answer) == ("miss", "yes") and verdict.startswith("reject") and "proved wrong" in verdict
    # CLOSE scores above it, where the scope has no record yet: audited with certainty, and right.
    assert (await ask(proxy, CLOSE))[:2] == ("audit", "yes")
    assert len(answering.completions()) == 4
    assert proxy.app.log.flush()  # type: ignore[attr-defined]
    figures = (await proxy.client.get("/semproxy/api/stats?since=15m")).json()
    audits = figures["audits"]
    assert figures["outcomes"]["audit"] == 2 and audits["audited"] == 2
    assert (audits["compared"], audits["wrong"]) == (2, 1)
    assert (audits["refused_compared"], audits["refused_wrong"]) == (1, 0)
    assert audits["wrong_hit_rate"] == 1.0  # NEG's audit stands for 10 served hits, CLOSE's (drawn at 1) for none


async def test_a_young_scope_is_audited_with_certainty_and_one_wrong_hit_raises_its_bar(
        make_proxy: ProxyFactory, answering: FakeOpenAI) -> None:
    proxy = await make_proxy(embedder=ChosenVectors(), draw=lambda: 0.999)
    await ask(proxy, POS)
    assert (await ask(proxy, NEG))[:2] == ("audit", "no")  # no record: the chance is 1
    record = proxy.cache.learner.record(_scope(proxy, NEG))
    assert record.bar == pytest.approx(0.95, abs=1e-3) and record.above == 0
    outcome, answer, verdict = await ask(proxy, MID)  # below the bar (and POS proved wrong above it)
    assert (outcome, answer) == ("miss", "yes") and verdict.startswith("reject")
    assert await _history(proxy) == [(pytest.approx(0.93, abs=1e-3), False), (pytest.approx(0.95, abs=1e-3), True)]


async def test_a_scope_whose_audits_are_right_keeps_serving_and_audits_less(make_proxy: ProxyFactory,
                                                                          answering: FakeOpenAI) -> None:
    chances = draws(0.0)
    proxy = await make_proxy(embedder=ChosenVectors(), draw=lambda: next(chances))
    await ask(proxy, POS)
    assert (await ask(proxy, CLOSE))[:2] == ("audit", "yes")  # right: the record grows
    record = proxy.cache.learner.record(_scope(proxy, CLOSE))
    assert record.above == 1 and record.audit_probability(0.05) == pytest.approx(20 / 21)
    assert (await ask(proxy, CLOSE2))[:2] == ("semantic", "yes")  # drawn above 20/21: served
    assert len(answering.completions()) == 2


async def test_audits_only_measure_when_learning_is_off_and_nothing_is_compared_at_temperature_one(
        make_proxy: ProxyFactory, answering: FakeOpenAI, settings: Settings) -> None:
    off = dataclasses.replace(settings, learn_thresholds=False, audit_rate=1.0)
    proxy = await make_proxy(settings=off, embedder=ChosenVectors(), draw=lambda: 0.5)
    await ask(proxy, POS)
    assert (await ask(proxy, NEG))[:2] == ("audit", "no")
    assert (await ask(proxy, MID))[:2] == ("audit", "yes")  # not refused: the bars are not applied
    hot = await proxy.chat(CLOSE, temperature=1)  # not reproducible: never audited, served as usual
    assert hot.headers["x-semproxy-cache"] in ("semantic", "miss")
    assert hot.headers["x-semproxy-cache"] != "audit"


def _scope(proxy: Proxy, prompt: str) -> str:
    from semproxy.cache.keys import make_key

    body = {"model": "gpt-test", "messages": [{"role": "user", "content": prompt}], "temperature": 0}
    return make_key("chat", body, tenant=proxy.cache.tenant(api_key="sk-alice", namespace=None)).scope



async def test_what_one_replica_learned_the_other_applies(make_proxy: ProxyFactory, answering: FakeOpenAI,
                                                          pg_url: str, settings: Settings) -> None:
    shared = dataclasses.replace(settings, store=pg_url)
    chances = draws(0.0)
    a = await make_proxy(settings=shared, embedder=ChosenVectors(), draw=lambda: next(chances))
    b = await make_proxy(settings=shared, embedder=ChosenVectors(), draw=lambda: 0.999)
    seed(a, 200)
    await ask(a, POS)
    assert (await ask(a, NEG))[:2] == ("audit", "no")  # wrong: replica a stores what it found
    outcome, answer, verdict = await ask(b, MID)
    assert (outcome, answer) == ("miss", "yes") and "proved wrong" in verdict
    # Above the bar a's record has no comparison yet, so b audits there with certainty.
    assert (await ask(b, CLOSE))[:2] == ("audit", "yes")


@pytest.mark.usefixtures("offline_encodings")
async def test_metrics_count_audits_and_the_served_wrong_hit_rate(make_proxy: ProxyFactory,
                                                                  answering: FakeOpenAI, settings: Settings) -> None:
    measuring = dataclasses.replace(settings, learn_thresholds=False, audit_rate=0.5)
    chances = draws(0.0, 0.0)
    proxy = await make_proxy(settings=measuring, embedder=ChosenVectors(), draw=lambda: next(chances))
    await ask(proxy, POS)
    assert (await ask(proxy, NEG))[0] == "audit"  # wrong, drawn at 0.5: stands for one served hit
    assert (await ask(proxy, CLOSE))[0] == "audit"  # right
    assert proxy.app.log.flush()  # type: ignore[attr-defined]
    metrics = (await proxy.client.get("/metrics")).text
    tenant = proxy.cache.tenant(api_key="sk-alice", namespace=None)
    assert f'semproxy_audits_total{{result="wrong",tenant="{tenant}"}} 1.0' in metrics
    assert f'semproxy_audits_total{{result="right",tenant="{tenant}"}} 1.0' in metrics
    assert f'semproxy_served_wrong_hit_rate{{bound="estimate",tenant="{tenant}"}} 0.5' in metrics
    assert 'semproxy_served_wrong_hit_rate{bound="estimate",tenant="all"} 0.5' in metrics
    audits = (await proxy.client.get("/semproxy/api/stats?since=15m")).json()["audits"]
    assert audits["wrong_hit_rate"] == 0.5 and audits["interval"][0] < 0.5 < audits["interval"][1]


async def _history(proxy: Proxy) -> list[tuple[float, bool]]:
    store = proxy.cache._store
    assert store is not None
    await proxy.cache.close()  # the comparison's write is flushed
    await proxy.cache.start()
    return store.history(_scope(proxy, POS), 10)
