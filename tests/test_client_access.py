"""Who may use the proxy: with an operator key, only the client keys the operator listed (by hash), or every
client when allow_any_client is set; a refused client gets a 401 in OpenAI's shape and nothing is forwarded,
served from the cache or stored. Middleware mode guards the routes semproxy answers, and only those."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from semproxy.app import SemanticCacheMiddleware
from semproxy.cli import main
from semproxy.config import Settings
from semproxy.middleware.access import key_hash
from tests.fakes import FakeOpenAI

BODY = {"model": "gpt-test", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
TEAM_KEY = "sk-team-a-0123"

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("offline_encodings")]


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def _post(proxy: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return await proxy.client.post("/v1/chat/completions", json=BODY, headers=headers or {})


async def test_an_operator_key_serves_no_one_until_the_operator_lists_clients(
        make_proxy, settings: Settings, upstream: FakeOpenAI) -> None:  # type: ignore[no-untyped-def]
    proxy = await make_proxy(settings=dataclasses.replace(settings, upstream_api_key="sk-operator"))
    for headers in ({}, _auth("sk-anyone")):
        refused = await _post(proxy, headers)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        assert "client_keys" in refused.json()["error"]["message"]
    assert (await proxy.client.get("/v1/models")).status_code == 401  # pass-through spends the key too
    assert (await proxy.client.get("/healthz")).status_code == 200
    assert upstream.calls == []


async def test_listed_client_keys_are_served_with_the_operator_key_and_others_get_401(
        make_proxy, settings: Settings, upstream: FakeOpenAI) -> None:  # type: ignore[no-untyped-def]
    shared = dataclasses.replace(settings, upstream_api_key="sk-operator", client_keys=(key_hash(TEAM_KEY),),
                                 namespace="everyone")  # one cache for all: a refused client must not read it
    proxy = await make_proxy(settings=shared)
    served = await _post(proxy, _auth(TEAM_KEY))
    assert served.status_code == 200 and served.headers["x-semproxy-cache"] == "miss"
    assert upstream.calls[-1].headers["authorization"] == "Bearer sk-operator"  # the client's key stays here
    assert (await _post(proxy, _auth(TEAM_KEY))).headers["x-semproxy-cache"] == "exact"
    missing = await _post(proxy)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    for key in ("sk-team-a-012", "sk-team-a-01234", key_hash(TEAM_KEY)):  # near keys, or the hash itself
        wrong = await _post(proxy, _auth(key))
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        assert "x-semproxy-cache" not in wrong.headers  # refused before the cache could answer
    other_header = await _post(proxy, {"x-api-key": TEAM_KEY})  # the SDKs' other key headers count too
    assert other_header.status_code == 200
    assert len(upstream.calls) == 1


async def test_allow_any_client_opens_the_operator_key_to_every_client(
        make_proxy, settings: Settings, upstream: FakeOpenAI) -> None:  # type: ignore[no-untyped-def]
    proxy = await make_proxy(settings=dataclasses.replace(settings, upstream_api_key="sk-operator",
                                                          allow_any_client=True))
    assert (await _post(proxy)).status_code == 200
    assert upstream.calls[-1].headers["authorization"] == "Bearer sk-operator"


async def test_client_keys_without_an_operator_key_pass_the_clients_key_on(
        make_proxy, settings: Settings, upstream: FakeOpenAI) -> None:  # type: ignore[no-untyped-def]
    proxy = await make_proxy(settings=dataclasses.replace(settings, client_keys=(key_hash(TEAM_KEY),)))
    assert (await _post(proxy, _auth(TEAM_KEY))).status_code == 200
    assert upstream.calls[-1].headers["authorization"] == f"Bearer {TEAM_KEY}"
    assert (await _post(proxy, _auth("sk-someone-else"))).status_code == 401


async def test_without_an_operator_key_or_a_list_every_key_passes_to_the_upstream(
        make_proxy, settings: Settings, upstream: FakeOpenAI) -> None:  # type: ignore[no-untyped-def]
    proxy = await make_proxy(settings=settings)
    assert (await _post(proxy, _auth("sk-anyone"))).status_code == 200  # the upstream judges the key
    assert upstream.calls[-1].headers["authorization"] == "Bearer sk-anyone"


async def test_middleware_mode_guards_the_cached_routes_only(settings: Settings) -> None:
    async def chat(_: Request) -> JSONResponse:
        choice = {"index": 0, "message": {"role": "assistant", "content": "Paris"}, "finish_reason": "stop"}
        return JSONResponse({"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": [choice]})

    async def page(_: Request) -> PlainTextResponse:
        return PlainTextResponse("the app's own page")

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/about", page)])
    guarded = SemanticCacheMiddleware(app, settings=dataclasses.replace(
        settings, semantic_enabled=False, client_keys=(key_hash(TEAM_KEY),)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guarded), base_url="http://app") as client:
        assert (await client.post("/v1/chat/completions", json=BODY)).status_code == 401
        served = await client.post("/v1/chat/completions", json=BODY, headers=_auth(TEAM_KEY))
        assert served.status_code == 200 and served.json()["choices"][0]["message"]["content"] == "Paris"
        assert (await client.get("/about")).text == "the app's own page"
    guarded.storage.close()


def test_hash_key_reads_the_key_from_standard_input(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(TEAM_KEY + "\n"))
    assert main(["hash-key"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == key_hash(TEAM_KEY) and TEAM_KEY not in printed
    assert Settings(client_keys=(printed.upper().replace("SHA256", "sha256"),)).client_keys == (printed,)
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert main(["hash-key"]) == 2
