"""Compression inside the proxy: what goes upstream, what the client sees, and how it meets the cache."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from semproxy.compress.compressor import SpanSafeCompressor
from semproxy.compress.service import CompressionPolicy, CompressionService
from semproxy.config import Settings
from semproxy.storage.sqlite import SqliteStorage
from tests.compress.test_spans_and_tokens import MUST_SURVIVE, PROMPT
from tests.fakes import FakeOpenAI, FakeScorer

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("offline_encodings")]


def _service(tmp_path: Path, *, wait: bool = False) -> CompressionService:
    return CompressionService(
        load_compressor=lambda: SpanSafeCompressor(FakeScorer(), keep_markers=("<keep>", "</keep>")),
        results=SqliteStorage(tmp_path), policy=CompressionPolicy(rate=0.5, min_tokens=50, wait=wait))


@pytest.fixture
async def compressing(make_proxy, settings: Settings, tmp_path: Path):  # type: ignore[no-untyped-def]
    service = _service(tmp_path)
    proxy = await make_proxy(settings=dataclasses.replace(settings, compression_enabled=True), compression=service)
    service.start()
    service.drain()
    proxy.service = service
    yield proxy
    await service.close()


def _chat(system: str, user: str = "Where is my order?", **extra: object) -> dict[str, object]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": system},
                                                 {"role": "user", "content": user}], **extra}


async def test_long_system_prompts_go_upstream_compressed_after_first_sight(compressing, upstream: FakeOpenAI) -> None:  # type: ignore[no-untyped-def]
    first = await compressing.client.post("/v1/chat/completions", json=_chat(PROMPT),
                                          headers={"cache-control": "no-store"})
    assert upstream.calls[-1].json()["messages"][0]["content"] == PROMPT  # forwarded as it is, compressed meanwhile
    assert first.headers["x-semproxy-prompt-tokens-saved"] == "0"
    compressing.service.drain()
    second = await compressing.client.post("/v1/chat/completions", json=_chat(PROMPT),
                                           headers={"cache-control": "no-store"})
    sent = upstream.calls[-1].json()["messages"]
    assert sent[0]["content"] != PROMPT and len(sent[0]["content"]) < len(PROMPT)
    for span in MUST_SURVIVE:
        assert span in sent[0]["content"]
    assert sent[1] == {"role": "user", "content": "Where is my order?"}  # user turns are never touched
    assert int(second.headers["x-semproxy-prompt-tokens-saved"]) > 0
    assert upstream.calls[-1].headers["content-length"] == str(len(upstream.calls[-1].body))


async def test_opt_out_header_and_short_prompts(compressing, upstream: FakeOpenAI) -> None:  # type: ignore[no-untyped-def]
    await compressing.client.post("/v1/chat/completions", json=_chat(PROMPT), headers={"cache-control": "no-store"})
    compressing.service.drain()
    opted_out = await compressing.client.post("/v1/chat/completions", json=_chat(PROMPT),
                                              headers={"cache-control": "no-store", "x-semproxy-compress": "off"})
    assert upstream.calls[-1].json()["messages"][0]["content"] == PROMPT
    assert opted_out.headers["x-semproxy-prompt-tokens-saved"] == "0"
    short = "You are a terse assistant."
    for _ in range(2):
        await compressing.client.post("/v1/chat/completions", json=_chat(short), headers={"cache-control": "no-store"})
        compressing.service.drain()
    assert upstream.calls[-1].json()["messages"][0]["content"] == short


async def test_cache_keys_use_the_original_prompt(compressing, upstream: FakeOpenAI) -> None:  # type: ignore[no-untyped-def]
    first = await compressing.client.post("/v1/chat/completions", json=_chat(PROMPT))
    compressing.service.drain()
    again = await compressing.client.post("/v1/chat/completions", json=_chat(PROMPT))
    assert first.headers["x-semproxy-cache"] == "miss" and again.headers["x-semproxy-cache"] == "exact"
    assert again.json() == first.json()  # stored under the original prompt, even though compression is ready now


async def test_responses_api_instructions_and_developer_messages(compressing, upstream: FakeOpenAI) -> None:  # type: ignore[no-untyped-def]
    body = {"model": "gpt-4o", "instructions": PROMPT, "input": "hi"}
    await compressing.client.post("/v1/responses", json=body)
    developer = {"model": "gpt-4o", "messages": [{"role": "developer", "content": [{"type": "text", "text": PROMPT}]},
                                                 {"role": "user", "content": "hi"}]}
    await compressing.client.post("/v1/chat/completions", json=developer, headers={"cache-control": "no-store"})
    compressing.service.drain()
    await compressing.client.post("/v1/responses", json=body)
    assert upstream.calls[-1].json()["instructions"] != PROMPT
    await compressing.client.post("/v1/chat/completions", json=developer, headers={"cache-control": "no-store"})
    assert upstream.calls[-1].json()["messages"][0]["content"][0]["text"] != PROMPT


async def test_wait_mode_compresses_the_first_request(make_proxy, settings: Settings, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                      upstream: FakeOpenAI) -> None:
    service = _service(tmp_path, wait=True)
    proxy = await make_proxy(settings=dataclasses.replace(settings, compression_enabled=True), compression=service)
    service.start()
    service.drain()
    response = await proxy.client.post("/v1/chat/completions", json=_chat(PROMPT))
    assert upstream.calls[-1].json()["messages"][0]["content"] != PROMPT
    assert int(response.headers["x-semproxy-prompt-tokens-saved"]) > 0
    await service.close()


async def test_a_compressor_that_cannot_load_never_fails_a_request(make_proxy, settings: Settings,  # type: ignore[no-untyped-def]
                                                                   tmp_path: Path, upstream: FakeOpenAI) -> None:
    def cannot_load() -> SpanSafeCompressor:
        raise OSError("no model")

    service = CompressionService(load_compressor=cannot_load, results=SqliteStorage(tmp_path / "c"),
                                 policy=CompressionPolicy())
    proxy = await make_proxy(settings=dataclasses.replace(settings, compression_enabled=True), compression=service)
    service.start()
    service.drain()
    for _ in range(2):
        response = await proxy.client.post("/v1/chat/completions", json=_chat(PROMPT))
        assert response.status_code == 200
    assert upstream.calls[-1].json()["messages"][0]["content"] == PROMPT
    health = await proxy.client.get("/healthz")  # switched on but not working: said so, not "ok"
    assert health.status_code == 200
    assert health.json()["status"] == "degraded" and health.json()["compression"] == "failed: OSError: no model"
    assert "compression: OSError: no model" in health.json()["problems"]
    await service.close()


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/chat/completions"])
async def test_a_body_over_the_limit_is_refused_with_413_by_the_compression_layer(
        make_proxy, settings: Settings, tmp_path: Path, upstream: FakeOpenAI, path: str) -> None:  # type: ignore[no-untyped-def]
    # The cache is off, so the compression layer is the one that reads the body, on either route.
    limited = dataclasses.replace(settings, compression_enabled=True, cache_enabled=False, max_body_bytes=4096)
    proxy = await make_proxy(settings=limited, compression=_service(tmp_path))
    body = {"model": "gpt-4o-mini", "instructions": "x" * 10_000, "input": "hi",
            "messages": [{"role": "system", "content": "y" * 10_000}, {"role": "user", "content": "hi"}]}
    response = await proxy.client.post(path, json=body)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large" and response.json()["error"]["type"]
    assert upstream.calls == []  # nothing was forwarded
    small = await proxy.client.post(path, json={"model": "gpt-4o-mini", "input": "hi",
                                                "messages": [{"role": "user", "content": "hi"}]})
    assert small.status_code != 413 and len(upstream.calls) == 1  # under the limit: forwarded
