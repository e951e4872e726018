"""Middleware mode: the FastAPI example, served by uvicorn, with the real embedding model."""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import ThreadServer

pytestmark = pytest.mark.slow


def test_fastapi_example_is_cached_by_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("fastapi")
    monkeypatch.setenv("SEMPROXY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SEMPROXY_COMPRESSION_ENABLED", "false")  # this test is about the cache
    example = importlib.import_module("examples.fastapi_app")
    example = importlib.reload(example)  # settings are read when the app is built
    body = {"model": "echo", "messages": [{"role": "user", "content": "How do I sort a list in Python?"}]}
    with ThreadServer(example.app) as server:
        url = server.url + "/v1/chat/completions"
        _wait_until_semantic(server.url)
        first = httpx.post(url, json=body, timeout=30)
        assert first.status_code == 200 and first.headers["x-semproxy-cache"] == "miss"
        second = httpx.post(url, json=body, timeout=30)
        assert second.headers["x-semproxy-cache"] == "exact"
        assert second.json() == first.json()
        near = {**body, "messages": [{"role": "user", "content": "How can I sort a list in Python?"}]}
        reworded = httpx.post(url, json=near, headers={"x-semproxy-threshold": "0.85"}, timeout=30)
        assert reworded.headers["x-semproxy-cache"] == "semantic"
        assert reworded.json() == first.json()
        with httpx.stream("POST", url, json={**body, "stream": True}, timeout=30) as streamed:
            assert streamed.headers["x-semproxy-cache"] == "exact"
            events = [line for line in streamed.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[0][6:])["choices"][0]["delta"]["content"] == first.json()[
            "choices"][0]["message"]["content"]
        other = httpx.get(server.url + "/docs")  # the app's own routes are untouched
        assert other.status_code == 200 and "x-semproxy-cache" not in other.headers


def _wait_until_semantic(base: str) -> None:
    """The model loads in the background after start-up (requests are served meanwhile)."""
    deadline = time.monotonic() + 60
    while (health := httpx.get(base + "/semproxy/healthz")).status_code != 200:
        assert time.monotonic() < deadline, "the cache never became ready"
        time.sleep(0.1)
    assert health.json()["semantic"] is True


def test_middleware_mode_compresses_system_prompts_on_their_way_to_the_app(tmp_path: Path) -> None:
    from semproxy import SemanticCacheMiddleware, Settings
    from tests.compress.test_spans_and_tokens import MUST_SURVIVE, PROMPT

    app = _echo_app()
    # The defaults: the bundled classifier, compressing before forwarding.
    settings = Settings(data_dir=tmp_path / "data", semantic_enabled=False, compression_min_tokens=50)
    app.add_middleware(SemanticCacheMiddleware, settings=settings)
    body = {"model": "m", "messages": [{"role": "system", "content": PROMPT}, {"role": "user", "content": "hi"}]}
    with ThreadServer(app) as server:
        _wait_until_semantic_or_ready(server.url)
        deadline = time.monotonic() + 60
        while (response := httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60,
                                      headers={"cache-control": "no-store"})).headers[
                "x-semproxy-prompt-tokens-saved"] == "0":
            assert time.monotonic() < deadline, "the compressor never came up"
            time.sleep(0.2)
    received = response.json()["choices"][0]["message"]["content"]
    assert len(received) < len(PROMPT)
    for span in MUST_SURVIVE:
        assert span in received


def test_middleware_mode_reports_a_compressor_that_could_not_load_as_degraded(tmp_path: Path) -> None:
    from semproxy import SemanticCacheMiddleware, Settings
    from tests.compress.test_spans_and_tokens import PROMPT

    app = _echo_app()
    settings = Settings(data_dir=tmp_path / "data", semantic_enabled=False, compression_min_tokens=50,
                        compression_model=str(tmp_path / "no-such-model"))
    app.add_middleware(SemanticCacheMiddleware, settings=settings)
    body = {"model": "m", "messages": [{"role": "system", "content": PROMPT}, {"role": "user", "content": "hi"}]}
    with ThreadServer(app) as server:
        deadline = time.monotonic() + 120
        while (health := httpx.get(server.url + "/semproxy/healthz").json()).get("compression") in (None, "loading"):
            httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)  # starts the compressor
            assert time.monotonic() < deadline, health
            time.sleep(0.2)
        response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert health["status"] == "degraded" and health["compression"].startswith("failed: ")
    assert any(problem.startswith("compression: ") for problem in health["problems"])
    assert response.status_code == 200  # forwarded as it was
    assert response.json()["choices"][0]["message"]["content"] == PROMPT


def _echo_app() -> Any:
    """An app whose chat completion echoes the system prompt it was given."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def chat(request: Request) -> JSONResponse:  # the app echoes the system prompt it was given
        system = (await request.json())["messages"][0]["content"]
        return JSONResponse({"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": system}, "finish_reason": "stop"}]})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def _wait_until_semantic_or_ready(base: str) -> None:
    deadline = time.monotonic() + 60
    while httpx.get(base + "/semproxy/healthz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
