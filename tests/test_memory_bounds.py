"""Memory bounded in bytes, not only in counts: the answers held to be checked and the bodies waiting for the
request log each stay within max_held_bytes for all requests together. Past it, an answer is relayed as it
came and never stored, and a log row is written without its bodies; every byte taken is given back."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from semproxy.config import Settings
from semproxy.middleware.cache import CacheMiddleware
from semproxy.middleware.capture import parse_cost
from semproxy.middleware.stats import StatsMiddleware
from tests.conftest import layer

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("offline_encodings")]
LIMIT = 4096


def _answer(text: str) -> bytes:
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    return json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": [choice],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}).encode()


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 1000):  # as a network would: several body messages
        yield body[start:start + 1000]


def _upstream(calls: list[str]) -> httpx.MockTransport:
    """Answers "long ..." prompts with 6 KB, "medium ..." with 3 KB, others with a few bytes."""

    async def handle(request: httpx.Request) -> httpx.Response:
        prompt = json.loads(await request.aread())["messages"][-1]["content"]
        calls.append(prompt)
        text = {"long": "x" * 6000, "medium": "x" * 3000}.get(prompt.split()[0], "short answer")
        return httpx.Response(200, content=_chunks(_answer(text)), headers={"content-type": "application/json"})

    return httpx.MockTransport(handle)


@pytest.fixture
def bounded(settings: Settings) -> Settings:
    return dataclasses.replace(settings, max_body_bytes=LIMIT, max_held_bytes=LIMIT, semantic_enabled=False)


async def test_an_answer_past_the_budget_is_relayed_whole_and_never_stored(make_proxy, bounded: Settings) -> None:  # type: ignore[no-untyped-def]
    calls: list[str] = []
    proxy = await make_proxy(settings=bounded, transport=_upstream(calls))
    for _ in range(2):
        long = await proxy.chat("long answer please")
        assert long.status_code == 200 and len(long.json()["choices"][0]["message"]["content"]) == 6000
        assert long.headers["x-semproxy-cache"] == "miss"  # relayed unchecked: not stored
    assert (await proxy.chat("short one")).headers["x-semproxy-cache"] == "miss"
    assert (await proxy.chat("short one")).headers["x-semproxy-cache"] == "exact"
    assert calls == ["long answer please", "long answer please", "short one"]
    assert layer(proxy.app, CacheMiddleware).held.held == 0  # every byte given back


async def test_the_budget_is_given_back_when_the_client_goes_away(make_proxy, bounded: Settings) -> None:  # type: ignore[no-untyped-def]
    async def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("the upstream went away mid-answer", request=request)

    proxy = await make_proxy(settings=bounded, transport=httpx.MockTransport(broken))
    assert (await proxy.chat("anything")).status_code == 502
    assert layer(proxy.app, CacheMiddleware).held.held == 0


async def test_log_bodies_past_the_budget_leave_a_row_without_token_counts(make_proxy, bounded: Settings) -> None:  # type: ignore[no-untyped-def]
    calls: list[str] = []
    proxy = await make_proxy(settings=bounded, transport=_upstream(calls))
    stats = layer(proxy.app, StatsMiddleware)
    await proxy.chat("short one")
    await proxy.chat("medium " + "y" * 3000)  # 3 KB asked, 3 KB answered: past the log's 4 KB budget
    assert stats.log.flush()
    assert stats.log.without_bodies == 1 and stats.log.budget.held == 0
    figures = (await proxy.client.get("/semproxy/api/stats")).json()
    assert figures["requests"] == 2  # both rows are there; only the second lacks its bodies
    metrics = (await proxy.client.get("/metrics")).text
    assert "semproxy_log_records_without_bodies 1.0" in metrics
    assert 'semproxy_held_bytes{purpose="log"} 0.0' in metrics


async def test_an_answer_whose_parsing_would_not_fit_is_relayed_unparsed(make_proxy, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    """1.5 MB of 40,000 tiny choices would take about 25 MB as Python objects; 1.5 MB of one string, little."""
    tiny = [{"index": i, "text": "", "finish_reason": "stop"} for i in range(40_000)]
    many = json.dumps({"id": "c", "object": "text_completion", "created": 1, "model": "m", "choices": tiny}).encode()
    one = _answer("y" * 1_500_000)

    async def handle(request: httpx.Request) -> httpx.Response:
        prompt = json.loads(await request.aread())["messages"][-1]["content"]
        return httpx.Response(200, content=_chunks(many if prompt == "many" else one),
                              headers={"content-type": "application/json"})

    budget = 8 * 1024 * 1024
    proxy = await make_proxy(settings=dataclasses.replace(settings, max_held_bytes=budget, semantic_enabled=False),
                             transport=httpx.MockTransport(handle))
    assert parse_cost(many) > budget > parse_cost(one) + len(one)
    for prompt, outcomes in (("many", ["miss", "miss"]), ("one", ["miss", "exact"])):
        seen = [(await proxy.chat(prompt)) for _ in outcomes]
        assert [r.headers["x-semproxy-cache"] for r in seen] == outcomes
        assert all(r.status_code == 200 and len(r.content) > 1_000_000 for r in seen)  # relayed whole either way
    assert layer(proxy.app, CacheMiddleware).held.held == 0
