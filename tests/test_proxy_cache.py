"""The cache through the whole proxy (in-process ASGI, fake upstream): tiers, scopes, tenants, controls.

Every test runs on both stores: the embedded SQLite + FAISS one and the shared PostgreSQL + pgvector one.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from semproxy.config import Settings
from semproxy.middleware.cache import CacheMiddleware
from tests.conftest import Proxy, layer
from tests.fakes import FakeOpenAI, HashingEmbedder

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["embedded", "postgres"])
def settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    if request.param == "embedded":
        return settings
    return dataclasses.replace(settings, store=request.getfixturevalue("pg_url"))


def content(response: object) -> str:
    return str(response.json()["choices"][0]["message"]["content"])  # type: ignore[attr-defined]


async def test_repeat_is_an_exact_hit(proxy: Proxy, upstream: FakeOpenAI) -> None:
    first = await proxy.chat("What is the capital of France?")
    second = await proxy.chat("What is the capital of France?")
    assert first.status_code == second.status_code == 200
    assert first.headers["x-semproxy-cache"] == "miss"
    assert second.headers["x-semproxy-cache"] == "exact"
    assert second.json() == first.json()
    assert len(upstream.completions()) == 1


async def test_surrounding_whitespace_does_not_matter(proxy: Proxy, upstream: FakeOpenAI) -> None:
    await proxy.chat("What is the capital of France?")
    again = await proxy.chat("  What is the capital of France?\n")
    assert again.headers["x-semproxy-cache"] == "exact"


async def test_near_duplicate_is_a_semantic_hit_then_exact(proxy: Proxy, upstream: FakeOpenAI) -> None:
    first = await proxy.chat("what is the capital city of france")
    near = await proxy.chat("what is the capital city of france ?!")  # same words, different text
    assert near.headers["x-semproxy-cache"] == "semantic"
    assert float(near.headers["x-semproxy-similarity"]) >= 0.8
    assert content(near) == content(first)
    assert len(upstream.completions()) == 1
    await proxy.cache.close()  # flushes the background alias write
    await proxy.cache.start()
    again = await proxy.chat("what is the capital city of france ?!")
    assert again.headers["x-semproxy-cache"] == "exact"


async def test_unrelated_prompt_is_a_miss(proxy: Proxy, upstream: FakeOpenAI) -> None:
    await proxy.chat("what is the capital city of france")
    other = await proxy.chat("how do I bake sourdough bread at home")
    assert other.headers["x-semproxy-cache"] == "miss"
    assert content(other).startswith("answer #2")


@pytest.mark.parametrize("change", [
    {"model": "gpt-other"},
    {"temperature": 0.0},
    {"max_tokens": 5},
    {"seed": 7},
    {"stop": ["\n"]},
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
    {"response_format": {"type": "json_object"}},
])
@pytest.mark.parametrize("prompt", ["what is the capital city of france", "what is the capital city of france ?"])
async def test_anything_that_changes_the_answer_changes_the_scope(proxy: Proxy, change: dict[str, object],
                                                                  prompt: str) -> None:
    await proxy.chat("what is the capital city of france")
    assert (await proxy.chat(prompt, **change)).headers["x-semproxy-cache"] == "miss"
    # ... while fields that only change delivery keep it
    same = await proxy.chat("what is the capital city of france", user="someone", stream=False)
    assert same.headers["x-semproxy-cache"] == "exact"


async def test_system_prompt_and_history_are_part_of_the_scope(proxy: Proxy) -> None:
    def conversation(system: str, history: list[dict[str, str]]) -> dict[str, object]:
        messages = [{"role": "system", "content": system}, *history, {"role": "user", "content": "and in Spain?"}]
        return {"model": "gpt-test", "messages": messages}

    post = proxy.client.post
    await post("/v1/chat/completions", json=conversation("be brief", []))
    repeat = await post("/v1/chat/completions", json=conversation("be brief", []))
    assert repeat.headers["x-semproxy-cache"] == "exact"
    other_system = await post("/v1/chat/completions", json=conversation("be verbose", []))
    history = [{"role": "user", "content": "capital of France?"}, {"role": "assistant", "content": "Paris"}]
    other_history = await post("/v1/chat/completions", json=conversation("be brief", history))
    assert other_system.headers["x-semproxy-cache"] == "miss"
    assert other_history.headers["x-semproxy-cache"] == "miss"


async def test_tenants_never_share_entries(proxy: Proxy, upstream: FakeOpenAI) -> None:
    await proxy.chat("what is the capital city of france", headers={"authorization": "Bearer sk-alice"})
    near = await proxy.chat("what is the capital city of france ?", headers={"authorization": "Bearer sk-bob"})
    assert near.headers["x-semproxy-cache"] == "miss"
    same = await proxy.chat("what is the capital city of france", headers={"authorization": "Bearer sk-carol"})
    assert same.headers["x-semproxy-cache"] == "miss"
    assert (await proxy.chat("what is the capital city of france",
                             headers={"authorization": "Bearer sk-carol"})).headers["x-semproxy-cache"] == "exact"


async def test_a_shared_namespace_is_shared_across_keys(proxy: Proxy) -> None:
    team = {"x-semproxy-namespace": "team-a"}
    await proxy.chat("what is the capital city of france", headers={"authorization": "Bearer sk-1", **team})
    other_key = await proxy.chat("what is the capital city of france",
                                 headers={"authorization": "Bearer sk-2", **team})
    outsider = await proxy.chat("what is the capital city of france", headers={"authorization": "Bearer sk-2"})
    assert other_key.headers["x-semproxy-cache"] == "exact"
    assert outsider.headers["x-semproxy-cache"] == "miss"


async def test_by_default_the_namespace_header_is_ignored_and_keys_stay_apart(make_proxy, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    default = Settings().allow_namespace_header
    proxy = await make_proxy(settings=dataclasses.replace(settings, allow_namespace_header=default))
    team = {"x-semproxy-namespace": "team-a"}  # a name a stranger could guess
    await proxy.chat("what is the capital city of france", headers={"authorization": "Bearer sk-1", **team})
    guesser = await proxy.chat("what is the capital city of france", headers={"authorization": "Bearer sk-2", **team})
    assert guesser.headers["x-semproxy-cache"] == "miss"  # sk-1's answer stays sk-1's
    again = await proxy.chat("what is the capital city of france", headers={"authorization": "Bearer sk-1"})
    assert again.headers["x-semproxy-cache"] == "exact"  # stored in sk-1's own cache, header or not


async def test_raw_api_keys_are_never_stored(proxy: Proxy, settings: Settings) -> None:
    await proxy.chat("hello there", headers={"authorization": "Bearer sk-very-secret-key-123"})
    await proxy.cache.close()
    for path in settings.data_dir.rglob("*"):
        if path.is_file():
            assert b"sk-very-secret-key-123" not in path.read_bytes(), path


async def test_no_store_neither_reads_nor_writes(proxy: Proxy, upstream: FakeOpenAI) -> None:
    await proxy.chat("hello there")
    bypass = await proxy.chat("hello there", headers={"cache-control": "no-store"})
    assert bypass.headers["x-semproxy-cache"] == "bypass"
    assert content(bypass).startswith("answer #2")
    await proxy.chat("fresh question", headers={"cache-control": "no-store"})
    assert (await proxy.chat("fresh question")).headers["x-semproxy-cache"] == "miss"


async def test_no_cache_skips_the_lookup_but_refreshes_the_entry(proxy: Proxy, upstream: FakeOpenAI) -> None:
    await proxy.chat("hello there")
    refreshed = await proxy.chat("hello there", headers={"cache-control": "no-cache"})
    assert refreshed.headers["x-semproxy-cache"] == "bypass"
    assert content(refreshed).startswith("answer #2")
    again = await proxy.chat("hello there")
    assert again.headers["x-semproxy-cache"] == "exact"
    assert content(again).startswith("answer #2")
    near = await proxy.chat("hello there !")
    assert near.headers["x-semproxy-cache"] == "semantic"  # the refreshed entry was embedded too


async def test_threshold_header_overrides_the_default(proxy: Proxy) -> None:
    await proxy.chat("what is the capital city of france")
    strict = await proxy.chat("what is the capital city of france today", headers={"x-semproxy-threshold": "0.99"})
    assert strict.headers["x-semproxy-cache"] == "miss"
    loose = await proxy.chat("what is the capital city of germany", headers={"x-semproxy-threshold": "0.5"})
    assert loose.headers["x-semproxy-cache"] == "semantic"


@pytest.mark.parametrize(("name", "value"), [
    ("x-semproxy-threshold", "1.5"), ("x-semproxy-threshold", "high"),
    ("x-semproxy-ttl", "-3"), ("x-semproxy-ttl", "soon"), ("x-semproxy-namespace", " "),
])
async def test_bad_control_headers_are_rejected(proxy: Proxy, upstream: FakeOpenAI, name: str, value: str) -> None:
    response = await proxy.chat("hello", headers={name: value})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert upstream.calls == []


async def test_ttl_expires_entries(make_proxy, upstream: FakeOpenAI) -> None:  # type: ignore[no-untyped-def]
    now = [1000.0]
    proxy = await make_proxy(clock=lambda: now[0])
    await proxy.chat("short lived", headers={"x-semproxy-ttl": "60"})
    await proxy.chat("long lived")
    now[0] += 61
    assert (await proxy.chat("short lived")).headers["x-semproxy-cache"] == "miss"
    assert (await proxy.chat("long lived")).headers["x-semproxy-cache"] == "exact"
    now[0] += 8 * 24 * 3600  # past the default TTL of 7 days
    assert (await proxy.chat("long lived")).headers["x-semproxy-cache"] == "miss"


async def test_no_entry_outlives_the_retention_whatever_its_ttl(  # type: ignore[no-untyped-def]
        make_proxy, settings: Settings) -> None:
    now = [1000.0]
    day = 24 * 3600
    proxy = await make_proxy(settings=dataclasses.replace(settings, ttl_seconds=0, cache_retention_days=2),
                             clock=lambda: now[0])
    await proxy.chat("asked to live for ever", headers={"x-semproxy-ttl": str(10**10)})
    await proxy.chat("never expires by the settings")
    now[0] += day
    assert (await proxy.chat("asked to live for ever")).headers["x-semproxy-cache"] == "exact"
    now[0] += day + 1
    for prompt in ("asked to live for ever", "never expires by the settings"):
        assert (await proxy.chat(prompt)).headers["x-semproxy-cache"] == "miss"
    await proxy.cache.housekeeping()  # the misses stored fresh answers; the old rows are gone
    assert proxy.cache.entry_count() == 2


async def test_lru_eviction_keeps_the_recently_used(make_proxy, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    now = [1000.0]
    small = Settings(**{**vars(settings), "max_entries": 3})  # type: ignore[arg-type]
    proxy = await make_proxy(settings=small, clock=lambda: now[0])
    for prompt in ("one apple", "two bananas", "three cherries"):
        now[0] += 1
        await proxy.chat(prompt)
    now[0] += 1
    assert (await proxy.chat("one apple")).headers["x-semproxy-cache"] == "exact"  # now the most recent
    now[0] += 1
    await proxy.chat("four dates")  # evicts the least recently used: "two bananas"
    results = {p: (await proxy.chat(p)).headers["x-semproxy-cache"]
               for p in ("one apple", "three cherries", "four dates")}
    assert results == {"one apple": "exact", "three cherries": "exact", "four dates": "exact"}
    assert (await proxy.chat("two bananas")).headers["x-semproxy-cache"] == "miss"


@pytest.mark.parametrize("fields", [{"n": 2}, {"temperature": 1.5}])
async def test_uncacheable_requests_bypass(proxy: Proxy, upstream: FakeOpenAI, fields: dict[str, object]) -> None:
    first = await proxy.chat("hello", **fields)
    second = await proxy.chat("hello", **fields)
    assert first.headers["x-semproxy-cache"] == second.headers["x-semproxy-cache"] == "bypass"
    assert len(upstream.completions()) == 2


async def test_upstream_errors_pass_through_and_are_not_cached(proxy: Proxy, upstream: FakeOpenAI) -> None:
    upstream.status = 503
    failed = await proxy.chat("hello")
    assert failed.status_code == 503
    assert failed.json()["error"]["message"] == "fake upstream error 503"
    upstream.status = 200
    assert (await proxy.chat("hello")).headers["x-semproxy-cache"] == "miss"


async def test_stream_miss_is_stored_and_served_as_json(proxy: Proxy, upstream: FakeOpenAI) -> None:
    streamed = await proxy.chat("tell me a story", stream=True, stream_options={"include_usage": True})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.headers["x-semproxy-cache"] == "miss"
    assert streamed.text.rstrip().endswith("data: [DONE]")
    as_json = await proxy.chat("tell me a story")
    assert as_json.headers["x-semproxy-cache"] == "exact"
    assert content(as_json) == "answer #1 to: tell me a story"
    assert as_json.json()["object"] == "chat.completion"
    assert as_json.json()["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


async def test_json_miss_is_replayed_as_a_valid_stream(proxy: Proxy) -> None:
    original = await proxy.chat("tell me a story")
    replayed = await proxy.chat("tell me a story", stream=True, stream_options={"include_usage": True})
    assert replayed.headers["x-semproxy-cache"] == "exact"
    assert replayed.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in replayed.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == content(original)
    assert chunks[-1]["usage"] == original.json()["usage"]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


async def test_text_completions_are_cached(proxy: Proxy, upstream: FakeOpenAI) -> None:
    body = {"model": "gpt-test", "prompt": "Once upon a time", "max_tokens": 5}
    first = await proxy.client.post("/v1/completions", json=body)
    second = await proxy.client.post("/v1/completions", json=body)
    near = await proxy.client.post("/v1/completions", json={**body, "prompt": "Once upon a time,"})
    streamed = await proxy.client.post("/v1/completions", json={**body, "stream": True})
    assert [r.headers["x-semproxy-cache"] for r in (first, second, near, streamed)] == [
        "miss", "exact", "semantic", "exact"]
    assert "answer #1" in streamed.text and "text_completion" in streamed.text
    assert len(upstream.completions()) == 1


async def test_embeddings_are_cached_by_exact_match_only(proxy: Proxy, upstream: FakeOpenAI) -> None:
    body = {"model": "text-embedding-3-small", "input": "the quick brown fox"}
    first = await proxy.client.post("/v1/embeddings", json=body)
    second = await proxy.client.post("/v1/embeddings", json=body)
    near = await proxy.client.post("/v1/embeddings", json={**body, "input": "the quick brown fox!"})
    assert [r.headers["x-semproxy-cache"] for r in (first, second, near)] == ["miss", "exact", "miss"]
    assert second.json() == first.json()


async def test_identical_concurrent_misses_reach_the_upstream_once(proxy: Proxy, upstream: FakeOpenAI) -> None:
    import anyio

    upstream.release.clear()  # the first one's answer is held until the other seven wait for it
    flights = layer(proxy.app, CacheMiddleware).flights
    responses = []

    async def ask() -> None:
        responses.append(await proxy.chat("a slow question"))

    async with anyio.create_task_group() as group:
        for _ in range(8):
            group.start_soon(ask)
        with anyio.fail_after(30):
            while flights.waiting < 7:
                await anyio.sleep(0.005)
        upstream.release.set()
    assert len(upstream.completions()) == 1
    assert sorted(r.headers["x-semproxy-cache"] for r in responses) == ["exact"] * 7 + ["miss"]
    assert len({content(r) for r in responses}) == 1


async def test_concurrent_lookups_share_embedding_batches(proxy: Proxy, embedder: HashingEmbedder) -> None:
    import anyio

    await proxy.chat("seed question about apples")
    embedder.delay = 0.05
    embedder.batches.clear()

    async def ask(i: int) -> None:
        await proxy.chat(f"question number {i} about apples")

    async with anyio.create_task_group() as group:
        for i in range(16):
            group.start_soon(ask, i)
    assert sum(embedder.batches) == 16
    assert max(embedder.batches) > 1  # requests that waited for a forward pass went through together
    assert len(embedder.batches) < 16
