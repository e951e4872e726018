"""Tenant isolation under concurrent, interleaved traffic, the data at rest, and the hit-timing mask.

The upstream signs every answer with a hash of the key it was sent with, so an answer that crossed from one
tenant to another is caught whichever path served it: exact or semantic hit, stream or JSON, compressed or not.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import random
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from semproxy.compress.compressor import SpanSafeCompressor
from semproxy.compress.service import CompressionPolicy, CompressionService
from semproxy.config import Settings
from semproxy.middleware.cache import CacheMiddleware
from semproxy.middleware.timing_mask import LatencySamples
from semproxy.storage.sqlite import SqliteStorage
from tests.compress.test_spans_and_tokens import PROMPT as LONG_SYSTEM_PROMPT
from tests.conftest import Proxy, layer
from tests.fakes import FakeOpenAI, FakeScorer

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("offline_encodings")]

QUESTIONS = ["How do I reverse a list in Python?", "What is the capital city of France?",
             "Explain how a hash map works internally.", "Give me a recipe for a quick tomato soup.",
             "Why is the sky blue during the day?", "How many legs does a spider have?"]
NEAR = ["{}", "{} Please.", "  {}  ", "please {}", "{} Thanks!"]  # the same words, a few more: semantic hits


def sign(key: str) -> str:
    """The mark an answer carries: which key it was produced for."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class SigningUpstream(FakeOpenAI):
    """FakeOpenAI whose answers start with the signature of the caller's key, after a small random delay."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.rng = random.Random(seed)

    def transport(self) -> httpx.MockTransport:
        async def handler(request: httpx.Request) -> httpx.Response:
            await asyncio.sleep(self.rng.uniform(0, 0.004))
            body = json.loads(request.content)
            key = request.headers["authorization"].removeprefix("Bearer ")
            body["messages"][-1]["content"] = f"[{sign(key)}] {body['messages'][-1]['content']}"
            status, headers, chunks = await self.respond_to(request, body)
            return httpx.Response(status, headers=headers, content=chunks)

        return httpx.MockTransport(handler)

    async def respond_to(self, request: httpx.Request, body: dict[str, Any]) -> tuple[
            int, dict[str, str], AsyncIterator[bytes]]:
        from tests.fakes import Call

        call = Call(request.method, request.url.path, "", dict(request.headers), json.dumps(body).encode())
        return await self.respond(call)


def _text(response: httpx.Response, stream: bool) -> str:
    if not stream:
        return str(response.json()["choices"][0]["message"]["content"])
    parts = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    assert response.text.rstrip().endswith("data: [DONE]")
    return "".join(str(c["choices"][0]["delta"].get("content") or "") for c in parts if c["choices"])


@pytest.fixture
async def signing_proxy(make_proxy, settings: Settings, tmp_path: Path):  # type: ignore[no-untyped-def]
    service = CompressionService(
        load_compressor=lambda: SpanSafeCompressor(FakeScorer(), keep_markers=("<keep>", "</keep>")),
        results=SqliteStorage(settings.data_dir), policy=CompressionPolicy(rate=0.5, min_tokens=50))
    upstream = SigningUpstream(seed=3)
    # Its answers are signed per call, so audits (these requests are at temperature 0) would find every hit
    # wrong and the learned bars would soon refuse them all: semantic hits are what this test needs to cross.
    # Audited hits are tested in tests/test_audits.py.
    quiet = dataclasses.replace(settings, compression_enabled=True, audit_rate=0.0, learn_thresholds=False)
    proxy = await make_proxy(settings=quiet, compression=service, transport=upstream.transport())
    service.start()
    service.drain()
    yield proxy
    await service.close()


async def test_no_answer_ever_crosses_tenants(signing_proxy: Proxy, settings: Settings) -> None:
    rng = random.Random(11)
    keys = [f"sk-tenant{i:02d}-{secrets.token_hex(12)}" for i in range(10)]
    namespaces = {"team-red": keys[:3], "team-blue": keys[3:5]}  # members legitimately share answers
    outcomes: Counter[str] = Counter()

    async def one(key: str) -> None:
        namespace = rng.choice([None, None, *[n for n, members in namespaces.items() if key in members]])
        stream, compressed = rng.random() < 0.4, rng.random() < 0.3
        question = rng.choice(NEAR).format(rng.choice(QUESTIONS))
        messages = [{"role": "user", "content": question}]
        if compressed:
            messages.insert(0, {"role": "system", "content": LONG_SYSTEM_PROMPT})
        headers = {"authorization": f"Bearer {key}"} | ({"x-semproxy-namespace": namespace} if namespace else {})
        response = await signing_proxy.client.post("/v1/chat/completions", headers=headers, json={
            "model": "gpt-test", "messages": messages, "stream": stream, "temperature": 0})
        assert response.status_code == 200, response.text
        allowed = {sign(k) for k in (namespaces[namespace] if namespace else [key])}
        answer = _text(response, stream)
        assert answer.split("to: [")[1][:16] in allowed, (key, namespace, answer)
        outcomes[response.headers["x-semproxy-cache"] + (" stream" if stream else "")] += 1

    for _ in range(20):  # 20 waves of 30 concurrent requests
        await asyncio.gather(*(one(rng.choice(keys)) for _ in range(30)))
    for path in ("exact", "semantic", "miss", "exact stream", "semantic stream", "miss stream"):
        assert outcomes[path] > 0, outcomes  # every path was exercised

    # Data at rest: no raw key anywhere in the data dir (cache, request log, compression store, WAL files).
    signing_proxy.app.log.flush()  # type: ignore[attr-defined]
    await signing_proxy.cache.close()
    files = [p for p in settings.data_dir.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"cache.sqlite3", "stats.sqlite3", "compression.sqlite3"}
    for path in files:
        content = path.read_bytes()
        for key in keys:
            assert key.encode() not in content and key[3:].encode() not in content, (path.name, key)


async def test_mask_hit_timing_delays_hits_in_shared_namespaces_only(make_proxy, settings: Settings,
                                                                     upstream: FakeOpenAI) -> None:  # type: ignore[no-untyped-def]
    upstream.delay = 0.15
    proxy = await make_proxy(settings=dataclasses.replace(settings, mask_hit_timing=True))

    async def timed(prompt: str, **headers: str) -> tuple[str, float]:
        started = time.perf_counter()
        response = await proxy.chat(prompt, headers=headers)
        return response.headers["x-semproxy-cache"], time.perf_counter() - started

    shared = {"x-semproxy-namespace": "team"}
    for i in range(3):
        assert (await timed(f"question {i}", **shared))[0] == "miss"
    outcome, seconds = await timed("question 0", **shared)
    assert outcome == "exact" and seconds >= 0.14  # as slow as the misses it could be told from

    # From here on misses are said to take an hour: a masked hit would not be answered within the test.
    layer(proxy.app, CacheMiddleware).latencies = MissesTookAnHour()
    with anyio.move_on_after(0.3) as waited:
        await proxy.chat("question 1", headers=shared)
    assert waited.cancelled_caught  # a shared hit now waits the hour
    assert (await proxy.chat("private question")).headers["x-semproxy-cache"] == "miss"
    with anyio.fail_after(60):
        response = await proxy.chat("private question")
    assert response.headers["x-semproxy-cache"] == "exact"  # a tenant's own cache is not masked

    unmasked = await make_proxy(settings=dataclasses.replace(settings, data_dir=settings.data_dir.parent / "u"))
    layer(unmasked.app, CacheMiddleware).latencies = MissesTookAnHour()
    await unmasked.chat("question 0", headers=shared)
    with anyio.fail_after(60):
        response = await unmasked.chat("question 0", headers=shared)
    assert response.headers["x-semproxy-cache"] == "exact"  # the channel the setting closes


class MissesTookAnHour(LatencySamples):
    """Latencies as the proxy learns them, except that every miss is said to have taken an hour."""

    def draw(self, *, stream: bool) -> float:
        return 3600.0
