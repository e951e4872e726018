"""Forwarding and errors: what passes through verbatim, what is refused, and how failures are contained."""

from __future__ import annotations

import json
import urllib.parse

import httpx
import pytest

from semproxy.app import build_app, build_cache
from semproxy.config import Settings
from tests.conftest import Proxy
from tests.fakes import FailingEmbedder, FakeOpenAI

pytestmark = pytest.mark.anyio


async def test_other_paths_and_methods_are_forwarded_verbatim(proxy: Proxy, upstream: FakeOpenAI) -> None:
    response = await proxy.client.request(
        "DELETE", "/v1/files/file%2Fabc?purpose=batch&x=1", content=b"raw-bytes",
        headers={"authorization": "Bearer sk-alice", "x-custom": "kept", "x-semproxy-threshold": "0.5"},
    )
    assert response.status_code == 418
    assert response.headers["x-echo"] == "yes"
    assert response.json() == {"method": "DELETE", "path": "/v1/files/file%2Fabc", "query": "purpose=batch&x=1",
                               "body": "raw-bytes"}
    call = upstream.calls[-1]
    assert call.headers["authorization"] == "Bearer sk-alice"
    assert call.headers["x-custom"] == "kept"
    assert "x-semproxy-threshold" not in call.headers
    assert "x-semproxy-cache" not in response.headers


@pytest.mark.parametrize("path", [b"/v1/../../admin", b"/v1/files/..%2F..%2Fadmin", b"/v1/%2e%2E/secrets",
                                  b"/v1/files/./x", b"/v1/files/..%5C..%5Cadmin"])
async def test_paths_that_climb_out_of_the_upstreams_base_are_refused(proxy: Proxy, upstream: FakeOpenAI,
                                                                       path: bytes) -> None:
    # Straight to the ASGI app, as uvicorn passes it: an httpx client would resolve the dots itself.
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": urllib.parse.unquote(path.decode()), "raw_path": path, "query_string": b"", "root_path": "",
             "headers": [(b"host", b"semproxy.test"), (b"authorization", b"Bearer sk-alice")],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8080)}
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await proxy.app(scope, receive, send)
    assert sent[0]["status"] == 400 and json.loads(sent[1]["body"])["error"]["code"] == "invalid_url"  # type: ignore[arg-type]
    assert upstream.calls == []


async def test_models_list_passes_through(proxy: Proxy) -> None:
    response = await proxy.client.get("/v1/models")
    assert response.status_code == 200
    assert response.json()["data"][0]["id"] == "fake-model"


async def test_configured_upstream_key_replaces_the_clients(make_proxy, settings: Settings,  # type: ignore[no-untyped-def]
                                                            upstream: FakeOpenAI) -> None:
    proxy = await make_proxy(settings=Settings(**{**vars(settings), "upstream_api_key": "sk-upstream",
                                                              "allow_any_client": True}))
    await proxy.chat("hello", headers={"authorization": "Bearer sk-client"})
    assert upstream.calls[-1].headers["authorization"] == "Bearer sk-upstream"


async def test_upstream_response_headers_are_relayed(proxy: Proxy) -> None:
    response = await proxy.chat("hello")
    assert response.headers["x-request-id"] == "req-fake"


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"{not json", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_json"),
    (b'{"model": "m"}', 400, "missing_required_parameter"),
    (b'{"model": 3, "messages": [{"role": "user", "content": "hi"}]}', 400, "invalid_type"),
    (b'{"model": "m", "messages": "hi"}', 400, "invalid_type"),
    (b'{"model": "m", "messages": []}', 400, "invalid_value"),
    (b'{"model": "m", "messages": [{"content": "hi"}]}', 400, "invalid_type"),
    (b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', 400, "invalid_type"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": true}', 400, "invalid_type"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', 400, "invalid_type"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', 400, "invalid_type"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 0}', 400, "invalid_value"),
])
async def test_bad_requests_get_openai_shaped_errors_and_change_nothing(
        proxy: Proxy, upstream: FakeOpenAI, body: bytes, status: int, code: str) -> None:
    response = await proxy.client.post("/v1/chat/completions", content=body,
                                       headers={"content-type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert upstream.calls == []
    assert proxy.cache._count == 0


async def test_an_oversized_body_is_refused_with_413(make_proxy, settings: Settings,  # type: ignore[no-untyped-def]
                                                     upstream: FakeOpenAI) -> None:
    proxy = await make_proxy(settings=Settings(**{**vars(settings), "max_body_bytes": 2048}))
    response = await proxy.chat("x" * 5000)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"
    assert upstream.calls == []


async def test_unreachable_upstream_is_a_502(settings: Settings) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    status, error = await _ask_through(settings, httpx.MockTransport(refuse))
    assert status == 502
    assert error["type"] == "upstream_error" and error["code"] == "upstream_unreachable"


async def test_upstream_timeout_is_a_504(settings: Settings) -> None:
    def too_slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    status, error = await _ask_through(settings, httpx.MockTransport(too_slow))
    assert status == 504
    assert error["code"] == "upstream_timeout"


async def _ask_through(settings: Settings, transport: httpx.MockTransport) -> tuple[int, dict[str, str]]:
    cache = build_cache(Settings(**{**vars(settings), "semantic_enabled": False}))
    app = build_app(settings, transport=transport, cache=cache)
    await cache.start()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.post("/v1/chat/completions",
                                     json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    await cache.close()
    return response.status_code, response.json()["error"]


async def test_a_failing_embedder_never_fails_the_request(make_proxy, upstream: FakeOpenAI) -> None:  # type: ignore[no-untyped-def]
    proxy = await make_proxy(embedder=FailingEmbedder())
    first = await proxy.chat("hello there")
    second = await proxy.chat("hello there")
    assert first.status_code == second.status_code == 200
    assert second.headers["x-semproxy-cache"] == "exact"  # the exact tier does not need the embedder
    near = await proxy.chat("hello there !")
    assert near.status_code == 200 and near.headers["x-semproxy-cache"] == "miss"


async def test_a_failing_store_never_fails_the_request(proxy: Proxy, settings: Settings,
                                                       upstream: FakeOpenAI) -> None:
    await proxy.chat("hello there")
    store = proxy.cache._store
    assert store is not None
    store.storage.connection("cache.sqlite3").execute("DROP TABLE exact_keys")  # it breaks under the running proxy
    for prompt in ("hello there", "something new"):
        response = await proxy.chat(prompt)
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"].startswith("answer #")


async def test_a_store_that_cannot_open_leaves_a_working_proxy(tmp_path, upstream: FakeOpenAI) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data dir should be")
    settings = Settings(data_dir=blocker, upstream="http://upstream.test/v1", semantic_enabled=False,
                        compression_enabled=False)
    cache = build_cache(settings)
    app = build_app(settings, transport=upstream.transport(), cache=cache)
    await cache.start()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        health = await client.get("/healthz")
        response = await client.post("/v1/chat/completions",
                                     json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        metrics = await client.get("/metrics")  # no token could be made there: closed, not open
    assert metrics.status_code == 403 and "admin_token" in metrics.json()["error"]["message"]
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert response.status_code == 200 and response.headers["x-semproxy-cache"] == "bypass"
    await cache.close()


async def test_healthz_waits_for_the_models(make_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy = await make_proxy(start=False)
    assert (await proxy.client.get("/healthz")).status_code == 503
    await proxy.cache.start()
    health = await proxy.client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "semantic": True, "embedders": ["hashing"], "problems": [],
                             "compression": "off"}


async def test_unknown_paths_get_an_openai_shaped_404(proxy: Proxy) -> None:
    response = await proxy.client.get("/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_upstream_cookies_never_ride_along_on_other_requests(proxy: Proxy, upstream: FakeOpenAI) -> None:
    upstream.extra_headers["set-cookie"] = "__cf_bm=tenant-a-session; path=/"
    first = await proxy.chat("hello", headers={"authorization": "Bearer sk-a"})
    assert first.headers["set-cookie"].startswith("__cf_bm=")  # relayed to the client that got it...
    proxy.client.cookies.clear()  # (the test's own client would send it back, as a browser would)
    await proxy.chat("something else", headers={"authorization": "Bearer sk-b"})
    assert "cookie" not in upstream.calls[-1].headers  # ...but never replayed upstream by semproxy
