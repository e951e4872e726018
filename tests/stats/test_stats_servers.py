"""On real servers: a stream's time to first byte, shutdown writes the log, and middleware mode."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from semproxy.app import build_app, build_cache
from semproxy.config import Settings
from tests.fakes import FakeOpenAI, HashingEmbedder
from tests.servers import ThreadServer

pytestmark = pytest.mark.usefixtures("offline_encodings")


def _rows(path: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM requests ORDER BY id")]


def _wait_healthy(url: str) -> None:
    deadline = time.monotonic() + 30
    while httpx.get(url).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_streams_record_time_to_first_byte_and_shutdown_writes_the_log(tmp_path: Path) -> None:
    upstream = FakeOpenAI()
    upstream.chunk_delay = 0.03
    body = {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "tell me a slow story please"}]}
    with ThreadServer(upstream) as fake:
        settings = Settings(data_dir=tmp_path, upstream=fake.url + "/v1", compression_enabled=False)
        embedder = HashingEmbedder()
        app = build_app(settings, cache=build_cache(settings, load_embedder=lambda: embedder))
        with ThreadServer(app) as server:
            _wait_healthy(server.url + "/healthz")
            for expected in ("miss", "exact"):
                with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30,
                                  headers={"authorization": "Bearer sk-bob"}) as response:
                    assert response.headers["x-semproxy-cache"] == expected
                    events = [line for line in response.iter_lines() if line.startswith("data: ")]
                assert events[-1] == "data: [DONE]"
    rows = _rows(settings.stats_path)  # written at shutdown: no flush was asked for
    miss, hit = rows
    assert miss["stream"] == 1 and miss["outcome"] == "miss"
    assert json.loads(events[-2][6:])["usage"]["total_tokens"] == 15
    # Six content chunks, each followed by a 30 ms pause: the first byte left at least ~150 ms before the last.
    assert miss["ttfb_ms"] > 0 and miss["total_ms"] - miss["ttfb_ms"] >= 140
    assert (miss["prompt_tokens"], miss["completion_tokens"]) == (10, 5)  # from the stream's usage chunk
    assert hit["outcome"] == "exact" and hit["stream"] == 1 and hit["hit_saved_tokens"] == 15
    assert hit["total_ms"] < miss["total_ms"]


def test_middleware_mode_records_and_serves_statistics_beside_the_apps_routes(tmp_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    from semproxy import SemanticCacheMiddleware

    async def chat(request: Request) -> JSONResponse:
        prompt = (await request.json())["messages"][-1]["content"]
        choice = {"index": 0, "message": {"role": "assistant", "content": f"echo {prompt}"}, "finish_reason": "stop"}
        return JSONResponse({"id": "x", "object": "chat.completion", "created": 1, "model": "mistral-small",
                             "choices": [choice]})

    async def own_metrics(_: Request) -> PlainTextResponse:
        return PlainTextResponse("the app's own metrics")

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/metrics", own_metrics)])
    settings = Settings(data_dir=tmp_path, semantic_enabled=False, compression_enabled=False)
    app.add_middleware(SemanticCacheMiddleware, settings=settings)
    body = {"model": "mistral-small", "messages": [{"role": "user", "content": "a repeated question"}]}
    with ThreadServer(app) as server:
        _wait_healthy(server.url + "/semproxy/healthz")
        outcomes = [httpx.post(server.url + "/v1/chat/completions", json=body).headers["x-semproxy-cache"]
                    for _ in range(3)]
        assert outcomes == ["miss", "exact", "exact"]
        assert httpx.get(server.url + "/metrics").text == "the app's own metrics"
        assert httpx.get(server.url + "/semproxy/api/stats").status_code == 401  # closed in an app too
        admin = {"x-semproxy-admin-token": (tmp_path / "admin_token").read_text().strip()}
        figures = httpx.get(server.url + "/semproxy/api/stats", headers=admin).json()
        metrics = httpx.get(server.url + "/semproxy/metrics", headers=admin).text
    assert figures["requests"] == 4 and figures["outcomes"]["exact"] == 2  # the app's /metrics counts too
    assert 'semproxy_requests_total{model="mistral-small",outcome="miss",upstream="app"} 1.0' in metrics
    rows = _rows(settings.stats_path)
    assert rows[0]["upstream_ms"] > 0 and rows[0]["completion_tokens"] > 0  # no usage: counted with tiktoken
    assert rows[1]["hit_saved_tokens"] == rows[0]["prompt_tokens"] + rows[0]["completion_tokens"]
    assert rows[1]["cost_saved_hit"] > 0  # mistral-small has a default price
