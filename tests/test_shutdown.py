"""Graceful shutdown: SIGTERM lets in-flight requests, streams included, finish before `semproxy serve` exits."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
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

        streaming = threading.Thread(target=stream)
        streaming.start()
        assert first_chunk.wait(10)
        upstream.delay = 0.5  # the next request waits upstream while the signal arrives
        waiting = threading.Thread(target=plain)
        waiting.start()
        time.sleep(0.2)
        started = time.monotonic()
        proxy.send_signal(signal.SIGTERM)
        streaming.join(30)
        waiting.join(30)
        # uvicorn shuts down gracefully, then re-raises the signal, as process managers expect.
        assert proxy.wait(30) in (0, -signal.SIGTERM)
        upstream.delay = 0.0
    assert str(results["stream"]).rstrip().endswith("data: [DONE]")  # the stream ran to its end
    assert "answer" in str(results["json"]["choices"][0]["message"]["content"])  # type: ignore[index]
    assert time.monotonic() - started > 0.3  # it did wait for them
    # Both answers were stored before the process exited.
    with semproxy_process(tmp_path, slow_upstream.url + "/v1", env_extra=FAST_START) as proxy:
        again = httpx.post(proxy.url + "/v1/chat/completions", json=chat, timeout=30)  # type: ignore[attr-defined]
        assert again.headers["x-semproxy-cache"] == "exact"
