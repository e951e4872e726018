"""The statistics layer in the proxy: what the log records, /metrics, the stats API, and who may read them."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from semproxy.cache.keys import tenant_id
from semproxy.cli import main
from semproxy.config import Settings
from tests.conftest import Proxy
from tests.fakes import FakeOpenAI

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("offline_encodings")]


def _rows(proxy: Proxy) -> list[dict[str, Any]]:
    assert proxy.app.log.flush()  # type: ignore[attr-defined]
    with sqlite3.connect(proxy.app.log.store.path("stats.sqlite3")) as db:  # type: ignore[attr-defined]
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM requests ORDER BY id")]


async def test_every_request_is_logged_with_outcome_tenant_tokens_and_timings(proxy: Proxy) -> None:
    assert (await proxy.chat("how do I sort a list in python")).headers["x-semproxy-cache"] == "miss"
    assert (await proxy.chat("how do I sort a list in python")).headers["x-semproxy-cache"] == "exact"
    assert (await proxy.chat("how do I sort a python list")).headers["x-semproxy-cache"] == "semantic"
    assert (await proxy.chat("fresh", headers={"cache-control": "no-store"})).headers["x-semproxy-cache"] == "bypass"
    assert (await proxy.client.get("/v1/models")).status_code == 200
    rows = _rows(proxy)
    assert [r["outcome"] for r in rows] == ["miss", "exact", "semantic", "bypass", "bypass"]
    tenant = proxy.cache.tenant(api_key="sk-alice", namespace=None)
    assert {r["tenant"] for r in rows[:4]} == {tenant}
    miss, exact, semantic, bypass, models = rows
    assert miss["model"] == "gpt-test" and miss["upstream"] == "upstream.test" and miss["status"] == 200
    assert (miss["prompt_tokens"], miss["completion_tokens"], miss["hit_saved_tokens"]) == (10, 5, 0)  # usage
    assert miss["embed_ms"] > 0 and miss["search_ms"] > 0 and miss["upstream_ms"] > 0
    assert miss["total_ms"] >= miss["upstream_ms"]
    assert exact["hit_saved_tokens"] == 15 and exact["upstream"] is None and exact["embed_ms"] is None
    assert semantic["hit_saved_tokens"] == 15 and 0.8 <= semantic["similarity"] <= 1.0
    assert semantic["embed_ms"] > 0 and semantic["upstream_ms"] is None
    assert miss["prompt_hash"] == exact["prompt_hash"] != semantic["prompt_hash"]
    assert miss["prompt_text"] is None  # hashes only, by default
    assert bypass["upstream_ms"] > 0 and bypass["embed_ms"] is None and bypass["hit_saved_tokens"] == 0
    assert models["endpoint"] == "/v1/models" and models["method"] == "GET"
    assert b"sk-alice" not in Path(proxy.app.log.store.path("stats.sqlite3")).read_bytes()  # type: ignore[attr-defined]


async def test_rows_name_their_tenant_with_the_cache_off(make_proxy, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    """A row without a tenant could not be erased with it (`semproxy cache clear --tenant`)."""
    proxy = await make_proxy(settings=dataclasses.replace(settings, cache_enabled=False))
    await proxy.chat("who am I")
    [row] = _rows(proxy)
    salt = proxy.app.log.store.tenant_salt()  # type: ignore[attr-defined]
    assert row["tenant"] == tenant_id(api_key="sk-alice", namespace=None, salt=salt)


async def test_prompt_text_and_prices_follow_the_settings(make_proxy, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    proxy = await make_proxy(settings=dataclasses.replace(settings, stats_prompt_chars=8,
                                                          prices={"gpt-test": [2.0, 4.0]}))
    await proxy.chat("a question worth caching")
    await proxy.chat("a question worth caching")
    hit = _rows(proxy)[1]
    assert hit["prompt_text"] == "a questi"
    assert hit["cost_saved_hit"] == pytest.approx((10 * 2.0 + 5 * 4.0) / 1e6)
    figures = (await proxy.client.get("/semproxy/api/stats?since=1h")).json()
    assert figures["top_prompts"][0]["text"] == "a questi"
    assert figures["cost_saved_usd"]["cache"] == pytest.approx(40 / 1e6)


async def test_metrics_in_prometheus_text_format(proxy: Proxy, make_proxy) -> None:  # type: ignore[no-untyped-def]
    await proxy.chat("one")
    await proxy.chat("one")
    await proxy.chat("two", headers={"cache-control": "no-store"})
    proxy.app.log.flush()  # type: ignore[attr-defined]
    response = await proxy.client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'semproxy_requests_total{model="gpt-test",outcome="exact",upstream="none"} 1.0' in text
    assert 'semproxy_requests_total{model="gpt-test",outcome="miss",upstream="upstream.test"} 1.0' in text
    assert 'semproxy_tokens_saved_total{source="cache"} 15.0' in text
    assert 'semproxy_request_duration_seconds_count{outcome="bypass"} 1.0' in text
    assert 'semproxy_stage_duration_seconds_count{stage="upstream"} 2.0' in text
    assert "semproxy_cache_entries 1.0" in text and "semproxy_compression_ratio 1.0" in text
    assert "semproxy_log_dropped_records 0.0" in text
    assert (await proxy.client.get("/semproxy/metrics")).text.count("semproxy_requests_total{") == 3
    other = await make_proxy()  # a second app in the same process has registries of its own
    assert "semproxy_requests_total{" not in (await other.client.get("/metrics")).text


async def test_compression_savings_are_logged(make_proxy, settings: Settings, tmp_path: Path,
                                              upstream: FakeOpenAI) -> None:  # type: ignore[no-untyped-def]
    from tests.compress.test_spans_and_tokens import PROMPT
    from tests.test_compression_proxy import _chat, _service

    service = _service(tmp_path)
    proxy = await make_proxy(settings=dataclasses.replace(settings, compression_enabled=True), compression=service)
    service.start()
    service.drain()
    headers = {"cache-control": "no-store"}
    await proxy.client.post("/v1/chat/completions", json=_chat(PROMPT), headers=headers)
    service.drain()
    response = await proxy.client.post("/v1/chat/completions", json=_chat(PROMPT), headers=headers)
    saved = int(response.headers["x-semproxy-prompt-tokens-saved"])
    rows = _rows(proxy)
    assert saved > 0 and [r["compression_saved_tokens"] for r in rows] == [0, saved]
    assert rows[1]["cost_saved_compression"] == pytest.approx(saved * 0.15 / 1e6)
    figures = (await proxy.client.get("/semproxy/api/stats")).json()
    assert figures["tokens"]["saved_by_compression"] == saved
    assert "semproxy_compression_ratio 1.0" not in (await proxy.client.get("/metrics")).text
    await service.close()


async def test_the_stats_api_and_the_dashboard_page(proxy: Proxy) -> None:
    await proxy.chat("hello")
    await proxy.chat("hello")
    figures = (await proxy.client.get("/semproxy/api/stats?since=15m&buckets=5&by=upstream")).json()
    assert figures["requests"] == 2 and figures["hit_rate"] == 0.5 and len(figures["timeline"]) == 5
    assert [row["key"] for row in figures["groups"]["rows"]] == [None, "upstream.test"]
    page = await proxy.client.get("/semproxy/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "api/stats" in page.text and "<script src" not in page.text and "http" not in page.text.replace(
        "http://www.w3.org/2000/svg", "")  # self-contained: nothing is fetched from elsewhere
    assert (await proxy.client.get("/semproxy/api/stats?since=soon")).status_code == 400
    assert (await proxy.client.get("/semproxy/api/stats?by=colour")).status_code == 400
    assert (await proxy.client.post("/semproxy/api/stats")).status_code == 405
    assert (await proxy.client.get("/semproxy/nothing")).status_code == 404


def _client(app: Any, host: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(host, 5000)), base_url="http://semproxy")


ADMIN_PATHS = ("/metrics", "/semproxy/metrics", "/semproxy/api/stats", "/semproxy/dashboard")


ADMIN_API_PATHS = ("/metrics", "/semproxy/metrics", "/semproxy/api/stats")


async def test_admin_endpoints_need_a_token_by_default_even_on_loopback(make_proxy, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    proxy = await make_proxy(settings=dataclasses.replace(settings, admin_open=False))
    token = (settings.data_dir / "admin_token").read_text().strip()  # made at start, for its owner only
    assert len(token) >= 32 and (settings.data_dir / "admin_token").stat().st_mode & 0o077 == 0
    for host in ("127.0.0.1", "::1", "203.0.113.9"):  # a reverse proxy on the host makes everyone loopback
        async with _client(proxy.app, host) as client:
            for path in ADMIN_API_PATHS:
                refused = await client.get(path)
                assert refused.status_code == 401 and refused.json()["error"]["code"] == "admin_token_required"
                assert (await client.get(path, headers={"x-semproxy-admin-token": token})).status_code == 200
            assert (await client.get("/healthz")).status_code == 200  # load balancers still see health
            assert (await client.get("/semproxy/healthz")).status_code == 200
            chat = await client.post("/v1/chat/completions", json={"model": "m", "messages": [
                {"role": "user", "content": "hi"}]}, headers={"authorization": "Bearer sk-alice"})
            assert chat.status_code == 200  # the API itself is not an admin endpoint
    assert main(["admin-token", "--data-dir", str(settings.data_dir)]) == 0


async def test_with_an_admin_token_tenant_keys_and_urls_get_nothing(make_proxy, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    secret = "s3cret-admin-token-42"
    proxy = await make_proxy(settings=dataclasses.replace(settings, admin_token=secret, admin_open=False))
    await proxy.chat("hello")
    assert not (settings.data_dir / "admin_token").exists()  # the configured token is the only one
    for path in ADMIN_API_PATHS:
        assert (await proxy.client.get(path)).status_code == 401
        assert (await proxy.client.get(path, headers={"authorization": "Bearer sk-alice"})).status_code == 401
        assert (await proxy.client.get(path, headers={"x-semproxy-admin-token": secret[:-1]})).status_code == 401
        assert (await proxy.client.get(path + f"?token={secret}")).status_code == 401  # never in a URL
        assert (await proxy.client.get(path, headers={"x-semproxy-admin-token": secret})).status_code == 200
        assert (await proxy.client.get(path, headers={"authorization": f"Bearer {secret}"})).status_code == 200


async def test_admin_open_serves_everyone(make_proxy, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    proxy = await make_proxy(settings=dataclasses.replace(settings, admin_open=True))
    async with _client(proxy.app, "198.51.100.7") as remote:
        for path in ADMIN_API_PATHS:
            assert (await remote.get(path)).status_code == 200
    assert not (settings.data_dir / "admin_token").exists()


async def test_statistics_can_be_turned_off(make_proxy, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    proxy = await make_proxy(settings=dataclasses.replace(settings, stats_enabled=False))
    assert (await proxy.chat("hello")).status_code == 200
    assert (await proxy.client.get("/metrics")).status_code == 404
    assert not settings.stats_path.exists()
