"""Every route, in proxy mode and in middleware mode, with the cache and compression each on and off: hostile and
malformed requests get the upstream's answer passed through or a 4xx in OpenAI's error shape from semproxy, never
a 5xx or a logged traceback, and a refused request leaves no cache entry behind (issue 16).

The upstream (tests.fakes.ok_transport, or ok_app in middleware mode) answers 200 to anything and marks its
answers, so every other answer is semproxy's own. Requests go to the ASGI app directly rather than through an HTTP
client, so a test controls what a server could hand semproxy: the raw path, a body in chunks without a length, a
Content-Length that lies. SEMPROXY_FUZZ_EXAMPLES sets the examples per property, as in test_hostile_input.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from starlette.testclient import TestClient

from semproxy.app import SemanticCacheMiddleware, build_app, build_cache, build_layers, build_storage
from semproxy.cache.service import SemanticCache
from semproxy.compress.service import CompressionService
from semproxy.config import Settings, UpstreamConfig
from semproxy.middleware.stats import StatsMiddleware
from semproxy.types import ASGIApp, Message
from tests.conftest import layer
from tests.fakes import UPSTREAM_MARK, HashingEmbedder, fake_compression, ok_app, ok_transport
from tests.test_hostile_input import (
    FIELDS,
    FUZZ,
    HEADERS,
    MAX_BODY,
    ROUTES,
    _nested,
    assert_openai_error,
    cache_entries,
    field_values,
    header_values,
    json_values,
    plausible,
)

CHAT, COMPLETIONS, EMBEDDINGS = ROUTES
RESPONSES = "/v1/responses"
POSTED = (*ROUTES, RESPONSES, "/v1/files", "/v1/moderations")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# Raw paths as a server hands them over: ASCII, with any percent-encoding (a server refuses other bytes).
PASS_THROUGH = (
    b"/v1/models", b"/v1/models/gpt-4o", b"/v1/files", b"/v1/files/file-abc/content", b"/v1/files/file%2Fabc",
    b"/v1/files/%ZZ", b"/v1/files/%", b"/v1/files/%FF%FE%C0%80", b"/v1/files/%00%0A%0D", b"/v1/files/caf%C3%A9",
    b"/v1/files/..%2F..%2Fadmin", b"/v1//chat/completions", b"/v1/chat/completions/", b"/v1/CHAT/COMPLETIONS",
    b"/v1/chat%2Fcompletions", b"/v1/chat/completions%00", b"/v1/responses/resp_1/cancel", b"/v1/../../admin",
)
OWN = (b"/", b"/healthz", b"/semproxy/healthz", b"/semproxy/api/stats", b"/semproxy/metrics", b"/metrics",
       b"/semproxy/dashboard", b"/semproxy/nope", b"/v2/chat/completions", b"/favicon.ico")
SYSTEM = "You are a careful assistant. Answer briefly, politely and only about the shop's orders. " * 2


# ---------------------------------------------------------------- one request, straight to the ASGI app


@dataclasses.dataclass(frozen=True)
class Answer:
    """What the client got (or, if it hung up, what the app began to send it)."""

    status: int
    headers: dict[str, str]
    body: bytes
    hung_up: bool = False

    @property
    def from_upstream(self) -> bool:
        """Passed through from the fake upstream (or the app), not made by semproxy."""
        return UPSTREAM_MARK in self.headers


HANG_UP = None  # in a request's chunks: the client goes away instead of sending the rest


async def call_asgi(app: ASGIApp, method: str, raw_path: bytes, query: bytes, headers: Sequence[tuple[bytes, bytes]],
                    chunks: Sequence[bytes | None]) -> Answer | None:
    """Send one request as a server would (the body in `chunks`), check the answer follows ASGI, return it;
    None if the client hung up before the app began an answer."""
    pending = list(chunks) or [b""]
    done = asyncio.Event()
    gone = False
    start: Message | None = None
    body: list[bytes] = []

    async def receive() -> Message:
        nonlocal gone
        if pending and pending[0] is HANG_UP:
            gone = True
            done.set()  # from now on every receive says so, as a server's does
        elif pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        await done.wait()  # like uvicorn: once the answer is complete, the client is gone
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            assert start is None, "two response starts"
            start = message
        if gone:  # a server drops what it can no longer deliver
            return
        assert not done.is_set(), f"{message['type']} after the answer was complete"
        if message["type"] == "http.response.body":
            assert start is not None, "a body before the response start"
            body.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                done.set()

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": urllib.parse.unquote(raw_path.decode("ascii")), "raw_path": raw_path, "root_path": "",
             "query_string": query, "headers": [(b"host", b"semproxy.test"), *headers],
             "client": ("127.0.0.1", 50000), "server": ("semproxy.test", 80), "state": {}}
    try:
        await app(scope, receive, send)
    finally:
        complete = done.is_set()
        done.set()
    if start is None and gone:
        return None
    assert start is not None and complete, "no complete answer"
    answer_headers = {bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1") for k, v in start["headers"]}
    return Answer(int(start["status"]), answer_headers, b"".join(body), hung_up=gone)


# ---------------------------------------------------------------- the stacks under test


class LoggedErrors(logging.Handler):
    """Keeps what semproxy logs at ERROR or above: a traceback in a log is a bug found, even after a 2xx."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def report(self) -> str:
        return "\n".join(self.format(r) for r in self.records)


class Stack:
    """One way to deploy semproxy, started (lifespan) on a TestClient's event loop."""

    def __init__(self, name: str, app: ASGIApp, client: TestClient, settings: Settings, errors: LoggedErrors) -> None:
        self.name, self.app, self.client, self.settings, self.errors = name, app, client, settings, errors

    def __repr__(self) -> str:  # what hypothesis prints of the fixture in a failing example
        return f"<{self.name}>"

    @property
    def caches(self) -> bool:
        """Whether the cache layer is on."""
        return self.settings.cache_enabled

    @property
    def compresses(self) -> bool:
        """Whether the compression layer is on."""
        return self.settings.compression_enabled

    def entries(self) -> int:
        """How many entries the cache holds (none without a cache, whose tables are never made)."""
        return cache_entries(self.settings.db_path) if self.caches else 0

    def request(self, method: str, raw_path: bytes, *, body: bytes = b"",
                chunks: Sequence[bytes | None] | None = None, headers: Sequence[tuple[bytes, bytes]] = (),
                query: bytes = b"") -> Answer | None:
        """Send a request, check everything semproxy promises of its answer, and return it (None: hung up)."""
        if chunks is None:
            chunks = [body]
            headers = [(b"content-length", str(len(body)).encode()), *headers]
        self.errors.records.clear()
        before = self.entries()
        assert self.client.portal is not None
        answer = self.client.portal.call(partial(call_asgi, self.app, method, raw_path, query, headers, chunks))
        if answer is None or answer.hung_up:
            assert self.entries() == before, "a request whose client left stored an entry"
        if answer is not None and not answer.from_upstream:  # the fake says 200, or the app's own 4xx or 5xx
            assert answer.status < 500, (answer.status, answer.headers, answer.body[:500])
            if answer.status >= 400 and not answer.hung_up:
                assert_openai_error(answer.body)
        if answer is not None and answer.status >= 400:
            assert self.entries() == before, "a refused request stored an entry"
        assert layer(self.app, StatsMiddleware).log.flush(10)
        assert not self.errors.records, self.errors.report()
        return answer


def _settings(folder: Path, **changes: Any) -> Settings:
    return Settings(data_dir=folder, upstream="http://upstream.test/v1", similarity_threshold=0.8,
                    verify_hits=False, max_body_bytes=MAX_BODY, **changes)


def _proxy(settings: Settings) -> tuple[ASGIApp, SemanticCache, CompressionService | None]:
    storage = build_storage(settings)
    cache = build_cache(settings, storage=storage, load_embedder=HashingEmbedder)
    compression = fake_compression(storage) if settings.compression_enabled else None
    app = build_app(settings, transport=ok_transport(), storage=storage, cache=cache, compression=compression)
    return app, cache, compression


def _in_app(settings: Settings) -> tuple[ASGIApp, SemanticCache, CompressionService | None]:
    """Middleware mode, the way SemanticCacheMiddleware wires it, with the fake embedder and compressor."""
    storage = build_storage(settings)
    cache = build_cache(settings, storage=storage, load_embedder=HashingEmbedder)
    compression = fake_compression(storage) if settings.compression_enabled else None
    app = build_layers(ok_app(), settings, cache=cache, storage=storage, compression=compression, proxy_mode=False)
    return app, cache, compression


def _middleware(settings: Settings) -> tuple[ASGIApp, SemanticCache, CompressionService | None]:
    """The public SemanticCacheMiddleware as a user adds it (exact hits only: its embedder is the real model)."""
    middleware = SemanticCacheMiddleware(ok_app(), settings=settings)
    return middleware, middleware.cache, None


STACKS: dict[str, tuple[Callable[[Settings], tuple[ASGIApp, SemanticCache, CompressionService | None]],
                        dict[str, Any]]] = {
    "proxy": (_proxy, {"allow_namespace_header": True}),
    "proxy, cache off": (_proxy, {"cache_enabled": False}),
    "proxy, compression off": (_proxy, {"compression_enabled": False, "admin_open": True}),  # the stats API too
    # Routing reads the model from the body, and an alias makes semproxy write the body anew.
    "proxy, routed by model": (_proxy, {"upstreams": (
        UpstreamConfig(name="gpt", url="http://gpt.test/v1", models=("gpt-*",), aliases=(("gpt-test", "gpt-4o"),)),
        UpstreamConfig(name="any", url="http://any.test/v1"))}),
    "middleware": (_middleware, {"semantic_enabled": False, "compression_enabled": False,
                                 "allow_namespace_header": True}),
    "middleware, fake models": (_in_app, {}),
    "middleware, cache off": (_in_app, {"cache_enabled": False}),
}


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory, offline_encodings: Path) -> Iterator[dict[str, Stack]]:
    """Every stack of STACKS, started and ready, sharing one handler for what semproxy logs as an error."""
    errors = LoggedErrors()
    logging.getLogger("semproxy").addHandler(errors)
    started: dict[str, Stack] = {}
    try:
        with contextlib.ExitStack() as running:
            for name, (build, changes) in STACKS.items():
                settings = _settings(tmp_path_factory.mktemp("fuzz") / "data", **changes)
                app, cache, compression = build(settings)
                client = running.enter_context(TestClient(app))
                _wait_until_ready(settings, cache, compression)
                started[name] = Stack(name, app, client, settings, errors)
            yield started
    finally:
        logging.getLogger("semproxy").removeHandler(errors)


def _wait_until_ready(settings: Settings, cache: SemanticCache, compression: CompressionService | None) -> None:
    deadline = time.monotonic() + 30
    while not ((not settings.cache_enabled or cache.store_ready)
               and (not settings.cache_enabled or not settings.semantic_enabled or cache.semantic_ready)
               and (compression is None or compression.ready)):
        assert time.monotonic() < deadline, "the stack never became ready"
        time.sleep(0.01)


stack_names = st.sampled_from(sorted(STACKS))


# ---------------------------------------------------------------- strategies


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


lone_surrogates = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)
texts = st.text(max_size=200) | lone_surrogates.map(lambda s: f"a {s} b")
KNOWN_FIELDS = (*FIELDS, "messages", "prompt", "input", "instructions", "max_completion_tokens", "presence_penalty",
                "frequency_penalty", "encoding_format", "metadata", "store", "reasoning", "previous_response_id")
hostile_values = field_values | texts | st.lists(texts, max_size=3)


def _valid(path: str, prompt: str) -> dict[str, Any]:
    """A body the route accepts, with a system prompt long enough to be compressed where there is one."""
    if path == CHAT:
        return {"model": "gpt-test", "messages": [{"role": "system", "content": SYSTEM},
                                                  {"role": "user", "content": prompt}]}
    if path == RESPONSES:
        return {"model": "gpt-test", "instructions": SYSTEM, "input": prompt}
    field = {COMPLETIONS: "prompt", EMBEDDINGS: "input"}.get(path, "purpose")
    return {"model": "gpt-test", field: prompt}


SURROGATE_IN_PROMPT = b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}'  # not text
SURROGATE_BESIDE_INSTRUCTIONS = b'{"model": "m", "instructions": "' + SYSTEM.encode() + b'", "input": "\\ud83d"}'
MESSAGES_NOT_A_LIST = b'{"model": "m", "messages": 5, "note": "system"}'  # "system": compression parses it
SURROGATE_FOR_AN_ALIAS = b'{"model": "gpt-test", "input": "\\udc00"}'  # the alias makes semproxy write it anew
SPECIAL_BODIES = (
    b"", b"null", b"[]", b"\"text\"", b"\xff\xfe", b"\x00" * 100, b"{", b"{}" * 1000, _nested(100_000),
    SURROGATE_IN_PROMPT, SURROGATE_BESIDE_INSTRUCTIONS, MESSAGES_NOT_A_LIST, SURROGATE_FOR_AN_ALIAS,
    b'{"model": "m", "messages": [{"role": "system", "content": "' + SYSTEM.encode() + b'\\udfff"}]}',
    b'{"model": "m", "messages": [{"role": "system", "content": "' + SYSTEM.encode() + b'"}], "tools": '
    + _nested(950) + b"}",  # deep enough to parse, maybe not to serialize again after compression
    b'{"model": "m", "prompt": "p", "max_tokens": ' + b"9" * 5000 + b"}",  # an integer too long for Python
)
bodies = (plausible.map(_dumps) | json_values.map(_dumps) | st.binary(max_size=2000)
          | st.sampled_from(SPECIAL_BODIES))
_VCHAR = [bytes([b]) for b in range(0x21, 0x7F) if b not in b"?#"]
raw_segments = st.lists(st.sampled_from(_VCHAR) | st.integers(0, 255).map(lambda b: b"%%%02X" % b),
                        max_size=20).map(b"".join)
raw_paths = (st.sampled_from(PASS_THROUGH + OWN + tuple(p.encode() for p in POSTED))
             | raw_segments.map(lambda segment: b"/v1/" + segment))
stats_values = st.text(max_size=20) | st.sampled_from(
    ["1e400s", "9" * 5000, "1" + "0" * 400 + "w", "nan", "-1", "0", "0s", "24h", "model", "tenant"])
stats_queries = st.dictionaries(st.sampled_from(["since", "buckets", "by", "token"]), stats_values, max_size=3)
queries = (st.just(b"") | st.lists(st.sampled_from([*_VCHAR, b"?", b"%00", b"%FF"]), max_size=30).map(b"".join)
           | stats_queries.map(lambda query: urllib.parse.urlencode(query).encode()))


# ---------------------------------------------------------------- the properties


@FUZZ
@given(name=stack_names, path=st.sampled_from(POSTED), body=bodies, typed=st.booleans())
@example(name="proxy", path=CHAT, body=SURROGATE_IN_PROMPT, typed=True)
@example(name="proxy, cache off", path=RESPONSES, body=SURROGATE_BESIDE_INSTRUCTIONS, typed=True)
@example(name="proxy, cache off", path=CHAT, body=MESSAGES_NOT_A_LIST, typed=True)
@example(name="proxy, routed by model", path=RESPONSES, body=SURROGATE_FOR_AN_ALIAS, typed=True)
def test_any_body_on_any_route(stacks: dict[str, Stack], name: str, path: str, body: bytes, typed: bool) -> None:
    stacks[name].request("POST", path.encode(), body=body,
                         headers=[(b"content-type", b"application/json")] if typed else [])


@FUZZ
@given(name=stack_names, path=st.sampled_from(POSTED), prompt=texts,
       changes=st.dictionaries(st.sampled_from(KNOWN_FIELDS), hostile_values, min_size=1, max_size=4))
def test_wrong_types_for_known_fields(stacks: dict[str, Stack], name: str, path: str, prompt: str,
                                      changes: dict[str, Any]) -> None:
    stacks[name].request("POST", path.encode(), body=_dumps({**_valid(path, prompt), **changes}))


FRAMINGS = ("length", "chunked", "no length", "short length", "long length", "garbage length", "huge length",
            "hang up")


def _framed(body: bytes, framing: str, chunk: int) -> tuple[list[bytes | None], list[tuple[bytes, bytes]]]:
    """The body's chunks and its framing headers: honest, chunked without a length (HTTP/1.1), without either
    (HTTP/2 may), a Content-Length that lies, or a client that leaves halfway through."""
    chunks: list[bytes | None] = [body[i:i + chunk] for i in range(0, len(body), chunk)] or [b""]
    if framing == "hang up":
        return [*chunks[:len(chunks) // 2], HANG_UP], [(b"content-length", str(len(body)).encode())]
    if framing == "chunked":
        return chunks, [(b"transfer-encoding", b"chunked")]
    declared = {"length": len(body), "short length": len(body) // 2, "long length": 2 * len(body) + 1,
                "garbage length": "1e3", "huge length": "9" * 5000}.get(framing)
    return chunks, [] if declared is None else [(b"content-length", str(declared).encode())]


@FUZZ
@given(name=stack_names, path=st.sampled_from(POSTED),
       size=st.sampled_from([0, MAX_BODY - 1, MAX_BODY, MAX_BODY + 1]) | st.integers(1, 3 * MAX_BODY),
       framing=st.sampled_from(FRAMINGS), chunk=st.sampled_from([1, 1000, 16 * 1024, 1024 * 1024]))
@example(name="proxy", path=CHAT, size=100, framing="huge length", chunk=1000)
@example(name="middleware", path=CHAT, size=MAX_BODY + 1, framing="chunked", chunk=1000)
@example(name="proxy", path=COMPLETIONS, size=500, framing="hang up", chunk=1)
def test_bodies_over_the_limit_and_lying_framing(stacks: dict[str, Stack], name: str, path: str, size: int,
                                                 framing: str, chunk: int) -> None:
    stack = stacks[name]
    head = _dumps(_valid(path, ""))[:-3]  # ends in the prompt's opening quote
    body = head + b"a" * max(0, size - len(head) - 3) + b'"}'
    chunks, headers = _framed(body, framing, max(chunk, len(body) // 200))
    answer = stack.request("POST", path.encode(), chunks=chunks, headers=headers)
    held = (path in ROUTES and stack.caches) or (path in (CHAT, RESPONSES) and stack.compresses)
    if held and len(body) > MAX_BODY and answer is not None:  # a layer that reads the body refuses what it may
        assert answer.status == 413, answer  # not hold


cache_headers = st.dictionaries(st.sampled_from(HEADERS), header_values | st.sampled_from(
    [b"no-store", b"no-cache", b"max-age=0, no-cache", b"0", b"0.0", b"1.0000001", b"inf", b"10000000001", b"1_000",
     b"\xef\xbc\x91", b"x" * 257, b"", b"  "]), max_size=5)


@FUZZ
@given(name=stack_names, path=st.sampled_from(POSTED), headers=cache_headers, prompt=st.text(max_size=50),
       stream=st.booleans())
def test_hostile_semproxy_headers(stacks: dict[str, Stack], name: str, path: str, headers: dict[str, bytes],
                                  prompt: str, stream: bool) -> None:
    body = _dumps({**_valid(path, prompt), "stream": stream})
    stacks[name].request("POST", path.encode(), body=body, headers=[(k.encode(), v) for k, v in headers.items()])


@FUZZ
@given(name=stack_names, method=st.sampled_from(METHODS), path=raw_paths, query=queries, body=bodies)
@example(name="proxy", method="GET", path=b"/v1/models", query=b"", body=b"")
@example(name="proxy, compression off", method="GET", path=b"/semproxy/api/stats", query=b"since=1e400s", body=b"")
def test_any_method_and_path(stacks: dict[str, Stack], name: str, method: str, path: bytes, query: bytes,
                             body: bytes) -> None:
    stacks[name].request(method, path, query=query, body=body)


@pytest.mark.parametrize("name", sorted(STACKS))
def test_a_url_longer_than_httpx_sends(stacks: dict[str, Stack], name: str) -> None:
    answer = stacks[name].request("GET", b"/v1/files/" + b"a" * 70_000, query=b"after=" + b"b" * 1000)
    assert answer is not None
    assert answer.status == 400 if name.startswith("proxy") else answer.from_upstream  # an app has no such limit


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_healthz_refuses_other_methods_in_openai_shape(stacks: dict[str, Stack], method: str) -> None:
    stacks["proxy"].request(method, b"/healthz", body=b"{}")


def test_a_ttl_of_thousands_of_digits_is_refused(stacks: dict[str, Stack]) -> None:
    answer = stacks["proxy"].request("POST", CHAT.encode(), body=_dumps(_valid(CHAT, "hi")),
                                     headers=[(b"x-semproxy-ttl", b"9" * 5000)])
    assert answer is not None and answer.status == 400
