"""Keys and tenants; micro-batching of embeddings."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from semproxy.cache.batching import BatchingEmbedder
from semproxy.cache.keys import ANONYMOUS, make_key, tenant_id, uncacheable_reason
from tests.fakes import FailingEmbedder, HashingEmbedder

BODY = {"model": "m", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hello"}]}


def test_tenant_hashes_are_salted_and_separate_keys_from_namespaces() -> None:
    salt = b"salt"
    alice = tenant_id(api_key="sk-alice", namespace=None, salt=salt)
    assert "sk-alice" not in alice and len(alice) == 32
    assert alice != tenant_id(api_key="sk-alice", namespace=None, salt=b"other")
    assert tenant_id(api_key="shared", namespace=None, salt=salt) != tenant_id(
        api_key=None, namespace="shared", salt=salt)
    assert tenant_id(api_key="sk-alice", namespace="team", salt=salt) == tenant_id(
        api_key="sk-bob", namespace="team", salt=salt)
    assert tenant_id(api_key=None, namespace=None, salt=salt) == ANONYMOUS


def test_exact_key_and_scope() -> None:
    key = make_key("chat", BODY, tenant="t")
    assert key.prompt == "hello"
    streamed = make_key("chat", {**BODY, "stream": True, "user": "u"}, tenant="t")
    assert streamed.exact == key.exact  # delivery fields never split entries
    other_prompt = make_key("chat", {**BODY, "messages": [BODY["messages"][0],
                                                          {"role": "user", "content": "bye"}]}, tenant="t")
    assert other_prompt.scope == key.scope and other_prompt.exact != key.exact
    assert make_key("chat", BODY, tenant="u").scope != key.scope
    assert make_key("completion", {"model": "m", "prompt": "hello"}, tenant="t").scope != key.scope
    assert make_key("embedding", {"model": "m", "input": "hello"}, tenant="t").prompt is None


@pytest.mark.parametrize(("fields", "reason"), [
    ({}, None), ({"n": 1}, None), ({"n": 3}, "n>1"), ({"temperature": 0.2}, None), ({"temperature": 1.7},
                                                                                     "temperature"),
])
def test_uncacheable_reasons(fields: dict[str, object], reason: str | None) -> None:
    assert uncacheable_reason({**BODY, **fields}, max_temperature=1.0) == reason


@pytest.mark.anyio
async def test_batches_form_under_load_and_lone_requests_go_at_once() -> None:
    embedder = HashingEmbedder(max_chars=20)
    batching = BatchingEmbedder(embedder, max_batch=8)
    assert (await batching.embed("alone")) is not None
    assert embedder.batches == [1]
    embedder.hold.clear()  # the next forward pass waits until the other texts have queued behind it
    results: dict[int, object] = {}

    async def one(i: int) -> None:
        results[i] = await batching.embed(f"text {i}")

    async with anyio.create_task_group() as group:
        group.start_soon(one, 0)
        await _until(embedder.holding.is_set)  # its forward pass runs (held) ...
        for i in range(1, 20):
            group.start_soon(one, i)
        await _until(lambda: batching.pending == 19)  # ... while the others queue
        embedder.hold.set()
    assert embedder.batches[1:] == [1, 8, 8, 3]  # a lone pass, then whatever waited, max_batch at a time
    assert (await batching.embed("x" * 21)) is None  # too long to embed whole
    await batching.aclose()


async def _until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(30):
        while not condition():
            await anyio.sleep(0.005)


@pytest.mark.anyio
async def test_a_failing_model_fails_the_waiting_calls_not_the_worker() -> None:
    batching = BatchingEmbedder(FailingEmbedder())
    with pytest.raises(RuntimeError, match="exploded"):
        await batching.embed("a")
    with pytest.raises(RuntimeError, match="exploded"):
        await batching.embed("b")
    await batching.aclose()
