"""Several fake upstreams on loopback (real uvicorn): routing, latency, failover, breakers, the cache across them."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from semproxy.app import build_app, build_cache, build_transport
from semproxy.cache.service import SemanticCache
from semproxy.config import Settings, UpstreamConfig
from semproxy.types import Attempt, RequestFacts, facts
from tests.fakes import FakeOpenAI, HashingEmbedder
from tests.servers import ThreadServer, free_port
from tests.upstream.test_routing import FakeClock

pytestmark = pytest.mark.anyio


@dataclasses.dataclass
class Routed:
    """A semproxy app over real upstream sockets, and what each request reported in its facts."""

    client: httpx.AsyncClient
    infos: list[RequestFacts]
    cache: SemanticCache

    async def chat(self, prompt: str, model: str = "gpt-test", **fields: Any) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], **fields}
        return await self.client.post("/v1/chat/completions", json=body,
                                      headers={"authorization": "Bearer sk-client"})


def _recording(app: Any, infos: list[RequestFacts]) -> Any:
    async def wrapper(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            infos.append(facts(scope))  # created here, so the layers fill in this one
        await app(scope, receive, send)

    return wrapper


@pytest.fixture
def fleet() -> Iterator[Callable[[], tuple[FakeOpenAI, str]]]:
    """Start fake upstreams on loopback: `fake, url = fleet()`."""
    with contextlib.ExitStack() as stack:
        def start() -> tuple[FakeOpenAI, str]:
            fake = FakeOpenAI()
            server = stack.enter_context(ThreadServer(fake, lifespan="off"))
            return fake, server.url + "/v1"

        yield start


@pytest.fixture
async def routed(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """`await routed(*upstreams, clock=..., **settings)`: semproxy in-process, talking to real sockets."""
    opened: list[tuple[httpx.AsyncClient, SemanticCache, httpx.AsyncBaseTransport]] = []

    async def make(*upstreams: UpstreamConfig, clock: Callable[[], float] | None = None, **fields: Any) -> Routed:
        settings = Settings(data_dir=tmp_path / "data", upstreams=upstreams, compression_enabled=False,
                            semantic_enabled=False, **{"allow_any_client": True, **fields})
        cache = build_cache(settings, load_embedder=HashingEmbedder)
        await cache.start()
        transport = build_transport()
        infos: list[RequestFacts] = []
        app = build_app(settings, transport=transport, cache=cache, **({"clock": clock} if clock else {}))
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=_recording(app, infos)),
                                   base_url="http://semproxy.test", timeout=30)
        opened.append((client, cache, transport))
        return Routed(client, infos, cache)

    yield make
    for client, cache, transport in opened:
        await client.aclose()
        await cache.close()
        await transport.aclose()


def _refused() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there


# ---------------------------------------------------------------- routing


async def test_requests_go_by_model_pattern_and_alias(routed, fleet) -> None:  # type: ignore[no-untyped-def]
    (general, general_url), (coder, coder_url) = fleet(), fleet()
    proxy = await routed(
        UpstreamConfig(name="general", url=general_url, models=("mistral-*",), api_key="sk-general",
                       aliases=(("fast", "mistral-small-latest"),), headers=(("X-Team", "search"),)),
        UpstreamConfig(name="coder", url=coder_url, models=("codestral-2405",),
                       aliases=(("code", "codestral-latest"),)),
    )
    large = await proxy.chat("hello", model="mistral-large-latest")
    fast = await proxy.chat("hello", model="fast")
    code = await proxy.chat("write a loop", model="code")
    pinned = await proxy.chat("write a loop", model="codestral-2405")
    assert [r.headers["x-semproxy-upstream"] for r in (large, fast, code, pinned)] == [
        "general", "general", "coder", "coder"]
    assert [c.json()["model"] for c in general.completions()] == ["mistral-large-latest", "mistral-small-latest"]
    assert [c.json()["model"] for c in coder.completions()] == ["codestral-latest", "codestral-2405"]
    assert general.calls[0].headers["authorization"] == "Bearer sk-general"  # its own key replaces the client's
    assert general.calls[0].headers["x-team"] == "search"
    assert coder.calls[0].headers["authorization"] == "Bearer sk-client"  # no key configured: the client's
    assert general.calls[1].json()["messages"] == [{"role": "user", "content": "hello"}]  # only model changed
    assert proxy.infos[0].upstream == "general"
    assert proxy.infos[0].attempts[0].upstream == "general"
    assert proxy.infos[0].attempts[0].outcome == "ok" and proxy.infos[0].attempts[0].ms > 0

    unknown = await proxy.chat("hello", model="gpt-4o")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert unknown.json()["error"]["type"] == "invalid_request_error"
    assert len(general.calls) + len(coder.calls) == 4  # nothing was forwarded


async def test_models_lists_the_union_of_what_is_routable(routed, fleet) -> None:  # type: ignore[no-untyped-def]
    (general, general_url), (_, coder_url) = fleet(), fleet()
    general.models = ["mistral-small-latest", "mistral-large-latest", "pixtral-12b"]
    proxy = await routed(
        UpstreamConfig(name="general", url=general_url, models=("mistral-*",),
                       aliases=(("fast", "mistral-small-latest"),)),
        UpstreamConfig(name="coder", url=coder_url, models=("codestral-2405",)),
        UpstreamConfig(name="gone", url=_refused(), models=("llama-*",)),  # unreachable: left out, no error
    )
    response = await proxy.client.get("/v1/models")
    assert response.status_code == 200
    ids = [m["id"] for m in response.json()["data"]]
    assert ids == ["fast", "mistral-small-latest", "mistral-large-latest", "codestral-2405"]
    assert all(m["object"] == "model" for m in response.json()["data"])


async def test_the_fastest_region_wins_on_its_own(routed, fleet) -> None:  # type: ignore[no-untyped-def]
    (slow, slow_url), (_, quick_url) = fleet(), fleet()
    slow.delay = 0.15
    proxy = await routed(UpstreamConfig(name="far", url=slow_url), UpstreamConfig(name="near", url=quick_url),
                         clock=FakeClock())
    answered = [(await proxy.chat(f"question {i}")).headers["x-semproxy-upstream"] for i in range(6)]
    assert answered == ["far", "near", "near", "near", "near", "near"]  # each measured once, then the fast one


async def test_priority_beats_latency(routed, fleet) -> None:  # type: ignore[no-untyped-def]
    (slow, slow_url), (_, quick_url) = fleet(), fleet()
    slow.delay = 0.05
    proxy = await routed(UpstreamConfig(name="primary", url=slow_url),
                         UpstreamConfig(name="spare", url=quick_url, priority=1), clock=FakeClock())
    answered = {(await proxy.chat(f"question {i}")).headers["x-semproxy-upstream"] for i in range(4)}
    assert answered == {"primary"}


# ---------------------------------------------------------------- failover


async def test_failover_on_connection_refused(routed, fleet) -> None:  # type: ignore[no-untyped-def]
    _, backup_url = fleet()
    proxy = await routed(UpstreamConfig(name="down", url=_refused()), UpstreamConfig(name="up", url=backup_url))
    response = await proxy.chat("hello")
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "answer #1 to: hello"
    assert response.headers["x-semproxy-upstream"] == "up"
    assert response.headers["x-semproxy-attempts"] == "down:connect_error,up:ok"
    info = proxy.infos[0]
    assert info.upstream == "up"
    assert [(a.upstream, a.outcome) for a in info.attempts] == [("down", "connect_error"), ("up", "ok")]


async def test_failover_on_503_and_the_last_upstream_answer_is_passed_on(routed, fleet) -> None:  # type: ignore[no-untyped-def]
    (a, a_url), (b, b_url) = fleet(), fleet()
    a.status = 503
    proxy = await routed(UpstreamConfig(name="a", url=a_url), UpstreamConfig(name="b", url=b_url))
    response = await proxy.chat("hello")
    assert response.status_code == 200 and response.headers["x-semproxy-attempts"] == "a:status_503,b:ok"
    assert a.completions()[0].body == b.completions()[0].body  # the same request, replayed byte for byte

    b.status = 429
    failed = await proxy.chat("something else")
    assert failed.status_code == 429  # every candidate failed: the last upstream answer, verbatim
    assert failed.json()["error"]["message"] == "fake upstream error 429"
    assert failed.headers["x-semproxy-upstream"] == "b"
    assert failed.headers["x-semproxy-attempts"] == "a:status_503,b:status_429"
    assert failed.headers["x-request-id"] == "req-fake"
    assert failed.headers["x-semproxy-cache"] == "miss"
    again = await proxy.chat("something else")
    assert again.headers["x-semproxy-cache"] == "miss"  # an error is never stored


async def test_a_streaming_request_fails_over_before_its_first_byte(routed, fleet) -> None:  # type: ignore[no-untyped-def]
    (a, a_url), (b, b_url) = fleet(), fleet()
    a.status = 502
    proxy = await routed(UpstreamConfig(name="a", url=a_url), UpstreamConfig(name="b", url=b_url))
    response = await proxy.chat("hello", stream=True)
    assert response.headers["x-semproxy-attempts"] == "a:status_502,b:ok"
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.rstrip().endswith("data: [DONE]") and len(b.completions()) == 1


async def test_a_client_error_passes_through_without_failover(routed, fleet) -> None:  # type: ignore[no-untyped-def]
    (a, a_url), (b, b_url) = fleet(), fleet()
    a.status = 400
    proxy = await routed(UpstreamConfig(name="a", url=a_url), UpstreamConfig(name="b", url=b_url))
    response = await proxy.chat("hello")
    assert response.status_code == 400 and response.headers["x-semproxy-attempts"] == "a:ok"
    assert response.json()["error"]["message"] == "fake upstream error 400"
    assert b.calls == []  # another upstream would refuse the same request


async def test_failover_on_timeout(routed, fleet) -> None:  # type: ignore[no-untyped-def]
    (stuck, stuck_url), (_, ok_url) = fleet(), fleet()
    stuck.delay = 0.8
    proxy = await routed(UpstreamConfig(name="stuck", url=stuck_url, read_timeout=0.2),
                         UpstreamConfig(name="ok", url=ok_url))
    response = await proxy.chat("hello")
    assert response.status_code == 200 and response.headers["x-semproxy-attempts"] == "stuck:timeout,ok:ok"
    assert 150 < proxy.infos[0].attempts[0].ms < 1500


async def test_when_nothing_answers_the_client_gets_502_or_504(routed, fleet) -> None:  # type: ignore[no-untyped-def]
    stuck, stuck_url = fleet()
    stuck.delay = 0.8
    proxy = await routed(UpstreamConfig(name="down", url=_refused()),
                         UpstreamConfig(name="stuck", url=stuck_url, read_timeout=0.2))
    response = await proxy.chat("hello")
    assert response.status_code == 504  # the last failure decides
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert response.headers["x-semproxy-attempts"] == "down:connect_error,stuck:timeout"
    assert "x-semproxy-upstream" not in response.headers and proxy.infos[0].upstream is None


async def test_attempts_are_bounded_in_number_and_time(routed, fleet) -> None:  # type: ignore[no-untyped-def]
    fakes = [fleet() for _ in range(3)]
    for fake, _ in fakes:
        fake.status = 500
    proxy = await routed(*(UpstreamConfig(name=f"u{i}", url=url) for i, (_, url) in enumerate(fakes)),
                         failover_max_attempts=2, clock=FakeClock())
    response = await proxy.chat("hello")
    assert response.status_code == 500 and response.headers["x-semproxy-attempts"] == "u0:status_500,u1:status_500"
    assert len(fakes[2][0].calls) == 0

    stuck, stuck_url = fleet()
    stuck.delay = 0.8
    late = await routed(UpstreamConfig(name="stuck", url=stuck_url, read_timeout=0.3),
                        UpstreamConfig(name="never", url=fakes[2][1]), failover_deadline=0.1)
    response = await late.chat("hello")
    assert response.status_code == 504 and response.headers["x-semproxy-attempts"] == "stuck:timeout"
    assert len(fakes[2][0].calls) == 0


async def test_an_upload_too_large_to_buffer_is_not_retried(routed, fleet) -> None:  # type: ignore[no-untyped-def]
    backup, backup_url = fleet()
    proxy = await routed(UpstreamConfig(name="down", url=_refused()), UpstreamConfig(name="up", url=backup_url),
                         max_body_bytes=2048)
    response = await proxy.client.post("/v1/files", content=b"x" * 5000)
    assert response.status_code == 502 and response.headers["x-semproxy-attempts"] == "down:connect_error"
    assert backup.calls == []
    small = await proxy.client.post("/v1/files", content=b"x" * 500)
    assert small.status_code == 418 and small.headers["x-semproxy-attempts"] == "down:connect_error,up:ok"
    assert backup.calls[0].body == b"x" * 500

    async def chunks(size: int) -> AsyncIterator[bytes]:  # no content-length: chunked transfer encoding
        for part in (b"a", b"b", b"c"):
            yield part * size

    chunked = await proxy.client.post("/v1/files", content=chunks(1000))  # found too large while reading
    assert chunked.status_code == 502 and chunked.headers["x-semproxy-attempts"] == "down:connect_error"
    small_chunked = await proxy.client.post("/v1/files", content=chunks(100))
    assert small_chunked.headers["x-semproxy-attempts"] == "down:connect_error,up:ok"
    assert backup.calls[-1].body == b"a" * 100 + b"b" * 100 + b"c" * 100
    direct = await routed(UpstreamConfig(name="up", url=backup_url), max_body_bytes=2048)
    streamed = await direct.client.post("/v1/files", content=chunks(1000))
    assert streamed.status_code == 418 and backup.calls[-1].body == b"a" * 1000 + b"b" * 1000 + b"c" * 1000


# ---------------------------------------------------------------- circuit breaker


async def test_breaker_opens_then_a_probe_closes_it_again(routed, fleet) -> None:  # type: ignore[no-untyped-def]
    (flaky, flaky_url), (_, backup_url) = fleet(), fleet()
    clock = FakeClock()
    flaky.status = 503
    proxy = await routed(UpstreamConfig(name="flaky", url=flaky_url),
                         UpstreamConfig(name="backup", url=backup_url, priority=1),
                         clock=clock, breaker_failures=2, breaker_cooldown=30)
    attempts = [(await proxy.chat(f"q{i}")).headers["x-semproxy-attempts"] for i in range(3)]
    assert attempts == ["flaky:status_503,backup:ok"] * 2 + ["flaky:circuit_open,backup:ok"]
    assert len(flaky.calls) == 2  # the open circuit kept the third request away
    assert proxy.infos[2].attempts[0] == Attempt(upstream="flaky", outcome="circuit_open", ms=0.0)

    clock.now += 30  # cooldown over: the next request probes, and the probe fails
    assert (await proxy.chat("q3")).headers["x-semproxy-attempts"] == "flaky:status_503,backup:ok"
    assert (await proxy.chat("q4")).headers["x-semproxy-attempts"] == "flaky:circuit_open,backup:ok"

    flaky.status = 200  # it recovers; after the next cooldown a probe finds out and closes the circuit
    clock.now += 30
    assert (await proxy.chat("q5")).headers["x-semproxy-attempts"] == "flaky:ok"
    assert (await proxy.chat("q6")).headers["x-semproxy-attempts"] == "flaky:ok"


async def test_every_circuit_open_answers_503_with_retry_after(routed, fleet) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    proxy = await routed(UpstreamConfig(name="down", url=_refused()), clock=clock, breaker_failures=1,
                         breaker_cooldown=20)
    assert (await proxy.chat("q1")).status_code == 502
    clock.now += 5
    resting = await proxy.chat("q2")
    assert resting.status_code == 503 and resting.headers["retry-after"] == "15"
    assert resting.json()["error"]["code"] == "upstreams_unavailable"
    assert resting.headers["x-semproxy-attempts"] == "down:circuit_open"


async def test_a_429_moves_on_but_does_not_open_the_circuit(routed, fleet) -> None:  # type: ignore[no-untyped-def]
    (limited, limited_url), (_, backup_url) = fleet(), fleet()
    limited.status = 429
    proxy = await routed(UpstreamConfig(name="limited", url=limited_url),
                         UpstreamConfig(name="backup", url=backup_url, priority=1), breaker_failures=1,
                         clock=FakeClock())
    for i in range(3):  # rate limits are per key and pass: the upstream stays in rotation
        assert (await proxy.chat(f"q{i}")).headers["x-semproxy-attempts"] == "limited:status_429,backup:ok"


# ---------------------------------------------------------------- the cache across upstreams


async def test_a_cached_answer_is_served_when_the_upstream_that_gave_it_is_down(routed, fleet) -> None:  # type: ignore[no-untyped-def]
    (a, a_url), (b, b_url) = fleet(), fleet()
    proxy = await routed(UpstreamConfig(name="a", url=a_url, aliases=(("fast", "small-model"),), priority=0),
                         UpstreamConfig(name="b", url=b_url, aliases=(("fast", "small-model"),), priority=1))
    first = await proxy.chat("what is the capital of France?", model="fast")
    assert first.headers["x-semproxy-upstream"] == "a" and first.headers["x-semproxy-cache"] == "miss"
    a.status = 503  # a goes down
    cached = await proxy.chat("what is the capital of France?", model="fast")
    assert cached.headers["x-semproxy-cache"] == "exact"  # keyed by the client's model name, not by upstream
    assert cached.json() == first.json()
    assert "x-semproxy-upstream" not in cached.headers
    fresh = await proxy.chat("and of Spain?", model="fast")
    assert fresh.headers["x-semproxy-attempts"] == "a:status_503,b:ok"
    assert [c.json()["model"] for c in b.completions()] == ["small-model"]
    again = await proxy.chat("and of Spain?", model="fast")
    assert again.headers["x-semproxy-cache"] == "exact"  # b's answer serves the same model's requests too


async def test_the_single_upstream_form_still_routes_everything(routed, make_proxy, upstream: FakeOpenAI) -> None:  # type: ignore[no-untyped-def]
    proxy = await make_proxy()
    response = await proxy.chat("hello", model="any-model-name-at-all")
    assert response.status_code == 200 and response.headers["x-semproxy-upstream"] == "upstream.test"
    assert upstream.calls[-1].headers["authorization"] == "Bearer sk-alice"  # the client's key passes through
    assert (await proxy.client.get("/v1/models")).json()["data"][0]["id"] == "fake-model"  # passed through


def test_no_retry_once_the_stream_has_begun(tmp_path: Path, fleet) -> None:  # type: ignore[no-untyped-def]
    (breaking, breaking_url), (backup, backup_url) = fleet(), fleet()
    breaking.break_stream_after = 2
    settings = Settings(data_dir=tmp_path / "data", compression_enabled=False, semantic_enabled=False,
                        breaker_failures=1, upstreams=(UpstreamConfig(name="a", url=breaking_url),
                                                       UpstreamConfig(name="b", url=backup_url, priority=1)))
    app = build_app(settings, cache=build_cache(settings), clock=FakeClock())
    body = {"model": "m", "messages": [{"role": "user", "content": "tell me a long story"}], "stream": True}
    with ThreadServer(app) as server:
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=10) as response:
            assert response.headers["x-semproxy-upstream"] == "a"
            assert b'"code": "upstream_broke_off"' in response.read()  # an error event ends the stream
        assert backup.calls == []  # bytes had reached the client: the broken stream stays broken
        # ...but the break counts against the upstream: its circuit is open now.
        retry = httpx.post(server.url + "/v1/chat/completions", json={**body, "stream": False}, timeout=10)
        assert retry.headers["x-semproxy-attempts"] == "a:circuit_open,b:ok"
