"""Streaming on real sockets: chunks are relayed as they arrive, disconnects reach the upstream, the SDK works."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from semproxy.app import build_app, build_cache
from semproxy.config import Settings
from tests.fakes import FakeOpenAI, HashingEmbedder
from tests.servers import ThreadServer

CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "tell me a long story please"}]}


@pytest.fixture
def upstream_server(upstream: FakeOpenAI) -> Iterator[ThreadServer]:
    with ThreadServer(upstream, lifespan="off") as server:
        yield server


def _semproxy(tmp_path: Path, upstream_url: str, transport: httpx.AsyncBaseTransport | None = None) -> ThreadServer:
    settings = Settings(data_dir=tmp_path / "data", upstream=upstream_url + "/v1", similarity_threshold=0.8,
                        compression_enabled=False, verify_hits=False)
    cache = build_cache(settings, load_embedder=HashingEmbedder)
    server = ThreadServer(build_app(settings, transport=transport, cache=cache))
    server.cache = cache  # type: ignore[attr-defined]
    return server


@pytest.fixture
def semproxy(tmp_path: Path, upstream_server: ThreadServer) -> Iterator[ThreadServer]:
    with _semproxy(tmp_path, upstream_server.url) as server:
        _wait_ready(server.url)
        yield server


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 30
    while httpx.get(url + "/healthz").status_code != 200:
        assert time.monotonic() < deadline, "semproxy never became ready"
        time.sleep(0.02)


def _eventually(condition: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.02)


def test_stream_chunks_arrive_before_the_upstream_finishes(semproxy: ThreadServer, upstream: FakeOpenAI,
                                                           upstream_server: ThreadServer) -> None:
    upstream.gate = asyncio.Event()  # the upstream sends one chunk, then waits for this test
    with httpx.stream("POST", semproxy.url + "/v1/chat/completions", json={**CHAT, "stream": True},
                      timeout=10) as response:
        assert response.headers["x-semproxy-cache"] == "miss"
        chunks = response.iter_raw()
        first = next(chunks)
        assert b'"role": "assistant"' in first  # arrived while the upstream is still holding the rest
        assert upstream.finished_streams == 0
        assert upstream_server.loop is not None
        upstream_server.loop.call_soon_threadsafe(upstream.gate.set)
        rest = b"".join(chunks)
    assert rest.rstrip().endswith(b"data: [DONE]")
    again = httpx.post(semproxy.url + "/v1/chat/completions", json=CHAT)
    assert again.headers["x-semproxy-cache"] == "exact"


def test_client_disconnect_closes_the_upstream_stream_and_stores_nothing(
        semproxy: ThreadServer, upstream: FakeOpenAI) -> None:
    upstream.gate = asyncio.Event()  # never opened: the stream stalls after its first chunk
    with httpx.stream("POST", semproxy.url + "/v1/chat/completions", json={**CHAT, "stream": True},
                      timeout=10) as response:
        next(response.iter_raw())
    # Leaving the block closed our connection mid-stream.
    _eventually(lambda: upstream.closed_streams == 1)
    upstream.gate = None
    again = httpx.post(semproxy.url + "/v1/chat/completions", json=CHAT)
    assert again.headers["x-semproxy-cache"] == "miss"


def test_a_broken_upstream_stream_is_not_stored(semproxy: ThreadServer, upstream: FakeOpenAI) -> None:
    upstream.break_stream_after = 2
    with httpx.stream("POST", semproxy.url + "/v1/chat/completions", json={**CHAT, "stream": True},
                      timeout=10) as response:
        assert response.status_code == 200
        events = response.read().decode().strip().split("\n\n")
    # The stream ends cleanly with an error event in OpenAI's shape (the SDKs raise it), never with [DONE].
    assert json.loads(events[-1].removeprefix("data: "))["error"]["code"] == "upstream_broke_off"
    assert "[DONE]" not in events[-1]
    upstream.break_stream_after = None
    again = httpx.post(semproxy.url + "/v1/chat/completions", json=CHAT)
    assert again.status_code == 200 and again.headers["x-semproxy-cache"] == "miss"


def test_stream_hits_are_valid_sse_with_done(semproxy: ThreadServer) -> None:
    httpx.post(semproxy.url + "/v1/chat/completions", json=CHAT)
    with httpx.stream("POST", semproxy.url + "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        assert response.headers["x-semproxy-cache"] == "exact"
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    payloads = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert "".join(p["choices"][0]["delta"].get("content", "") for p in payloads).startswith("answer #1")
    assert payloads[-1]["choices"][0]["finish_reason"] == "stop"


def test_the_official_openai_sdk_works_unchanged(tmp_path: Path, upstream: FakeOpenAI) -> None:
    openai = pytest.importorskip("openai")
    with _semproxy(tmp_path, "http://upstream.test", upstream.transport()) as server:
        _wait_ready(server.url)
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-sdk-test", max_retries=0)
        messages = [{"role": "user", "content": "What is semproxy?"}]

        first = client.chat.completions.with_raw_response.create(model="gpt-test", messages=messages)
        second = client.chat.completions.with_raw_response.create(model="gpt-test", messages=messages)
        assert first.headers["x-semproxy-cache"] == "miss"
        assert second.headers["x-semproxy-cache"] == "exact"
        assert second.parse().choices[0].message.content == first.parse().choices[0].message.content

        stream = client.chat.completions.create(model="gpt-test", messages=messages, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert text == first.parse().choices[0].message.content

        fresh = client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "A brand new question"}], stream=True,
            stream_options={"include_usage": True})
        chunks = list(fresh)
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 15

        embedding = client.embeddings.create(model="text-embedding-3-small", input="hello")
        assert embedding.data[0].embedding == [5.0, 0.5]
        assert [m.id for m in client.models.list()] == ["fake-model"]
        with pytest.raises(openai.BadRequestError) as error:
            client.chat.completions.create(model="gpt-test", messages=[])
        assert error.value.status_code == 400
