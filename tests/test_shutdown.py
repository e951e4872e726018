"""Graceful shutdown: SIGTERM lets in-flight requests, streams included, finish before `semproxy serve` exits."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes import FakeOpenAI
from tests.servers import ThreadServer, semproxy_process

pytestmark = pytest.mark.slow
FAST_START = {"SEMPROXY_SEMANTIC_ENABLED": "false"}  # no model to load: the test is about the server


@pytest.fixture
def slow_upstream(upstream: FakeOpenAI) -> Iterator[ThreadServer]:
    upstream.chunk_delay = 0.03  # a stream of about 2 s
    with ThreadServer(upstream, lifespan="off") as server:
        yield server


def _wait_for(condition: Callable[[], bool], failure: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.01)


def _accepts(url: str) -> bool:
    """Whether the server still accepts connections (it stops listening when it begins to shut down)."""
    try:
        socket.create_connection((httpx.URL(url).host, httpx.URL(url).port or 80), timeout=5).close()
    except ConnectionRefusedError:
        return False
    return True


def _streamed_text(body: str) -> str:
    events = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]
    return "".join(str(e["choices"][0]["delta"].get("content") or "") for e in events if e["choices"])


def test_sigterm_finishes_in_flight_requests_then_exits(tmp_path: Path, slow_upstream: ThreadServer,
                                                        upstream: FakeOpenAI) -> None:
    question = "tell me a long story about " + "lighthouses and keepers " * 12
    chat = {"model": "gpt-test", "messages": [{"role": "user", "content": question}]}
    results: dict[str, object] = {}
    with semproxy_process(tmp_path, slow_upstream.url + "/v1", env_extra=FAST_START) as proxy:
        url = proxy.url  # type: ignore[attr-defined]
        first_chunk = threading.Event()

        def stream() -> None:
            with httpx.stream("POST", url + "/v1/chat/completions", json={**chat, "stream": True},
                              timeout=30) as response:
                body = b""
                for chunk in response.iter_raw():
                    body += chunk
                    first_chunk.set()
            results["stream"] = body.decode()

        def plain() -> None:
            results["json"] = httpx.post(url + "/v1/chat/completions", timeout=30, json={
                "model": "gpt-test", "messages": [{"role": "user", "content": "and a short one"}]}).json()

        assert slow_upstream.loop is not None
        upstream.gate = asyncio.Event()  # the stream sends its first chunk, then waits for the test
        streaming = threading.Thread(target=stream)
        streaming.start()
        assert first_chunk.wait(10)
        upstream.release.clear()  # the next request waits upstream, before its answer, while the signal arrives
        waiting = threading.Thread(target=plain)
        try:
            waiting.start()
            _wait_for(lambda: len(upstream.completions()) == 2, "the second request never reached the upstream")
            proxy.send_signal(signal.SIGTERM)
            _wait_for(lambda: not _accepts(url), "the server never began to shut down")
            assert proxy.poll() is None  # shutting down, and waiting for them
        finally:
            upstream.release.set()
            slow_upstream.loop.call_soon_threadsafe(upstream.gate.set)
        streaming.join(30)
        waiting.join(30)
        # uvicorn shuts down gracefully, then re-raises the signal, as process managers expect.
        assert proxy.wait(30) in (0, -signal.SIGTERM)
    # Both were answered in full after the signal.
    assert set(results) == {"stream", "json"}, "a request in flight at the signal was cut off"
    assert str(results["stream"]).rstrip().endswith("data: [DONE]")  # the stream ran to its end
    assert _streamed_text(str(results["stream"])).endswith(f" to: {question}")
    assert re.fullmatch(r"answer #\d+ to: and a short one",
                        results["json"]["choices"][0]["message"]["content"])  # type: ignore[index]
    # Both answers were stored before the process exited.
    with semproxy_process(tmp_path, slow_upstream.url + "/v1", env_extra=FAST_START) as proxy:
        again = httpx.post(proxy.url + "/v1/chat/completions", json=chat, timeout=30)  # type: ignore[attr-defined]
        assert again.headers["x-semproxy-cache"] == "exact"
