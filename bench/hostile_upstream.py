"""A hostile OpenAI-compatible upstream: answers that are valid HTTP but hostile in size, shape or ending.

Raw asyncio on loopback rather than uvicorn, which refuses to send a wrong content-length. The request's
model names the scenario (`hostile-<name>`, see SCENARIOS); a request with the header `x-bench-probe: 1`
gets a small, well-formed answer instead, so that sending the same request again shows whether the
hostile answer was stored. GET /stats says, per scenario, what was sent: requests, body bytes, whether the
whole answer went out, and when an endless one stopped (the proxy closed the connection).

    .venv/bin/python bench/hostile_upstream.py --port 18090     # base URL http://127.0.0.1:18090/v1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

PROBE_HEADER = b"x-bench-probe"
PROBE_ID = "chatcmpl-probe"  # the id of every well-formed answer (a hostile one's is chatcmpl-hostile-<scenario>)
BLOCK = 64 * 1024  # bytes per write (and per chunk of a chunked body)
MB = 1024 * 1024
HEAD = {"id": "chatcmpl-hostile", "object": "chat.completion.chunk", "created": 1, "model": "hostile"}


@dataclass(frozen=True)
class Scenario:
    """One hostile answer: a stream (chunked SSE) or a JSON body, described for the results table."""

    name: str
    stream: bool
    what: str
    # A well-formed answer within every bound (200,000 deltas of one character are what a 200,000-token answer
    # looks like): storing it is right. Every other scenario's answer must never be stored.
    storable: bool = False


def _event(payload: Any) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _chunk(delta: dict[str, Any], *, index: Any = 0, finish: str | None = None, **extra: Any) -> bytes:
    return _event({**HEAD, "choices": [{"index": index, "delta": delta, "finish_reason": finish, **extra}]})


def _opening() -> bytes:
    return _chunk({"role": "assistant", "content": ""})


def _closing(finish: str = "stop", *, done: bool = True) -> bytes:
    return _chunk({}, finish=finish) + (_event("[DONE]") if done else b"")


def _bad_choice_index(value: Any) -> Callable[[], bytes]:
    return lambda: _opening() + _chunk({"content": "hello"}, index=value) + _closing()


def _bad_tool_index(value: Any) -> Callable[[], bytes]:
    call = {"index": value, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    return lambda: _opening() + _chunk({"tool_calls": [call]}) + _closing("tool_calls")


def _tiny_deltas(*, logprobs: bool) -> Callable[[], bytes]:
    def build() -> bytes:
        token = {"token": "x", "logprob": -0.1, "bytes": [120], "top_logprobs": []}
        extra: dict[str, Any] = {"logprobs": {"content": [token]}} if logprobs else {}
        one = _chunk({"content": "x"}, **extra)
        return _opening() + one * 200_000 + _closing()
    return build


def _big_delta() -> bytes:
    return _opening() + _chunk({"content": "x" * (50 * MB)}) + _closing()


def _not_json() -> bytes:
    return b"".join(_event(f"<html><body>{i}: 502 Bad Gateway</body></html>") for i in range(1000)) + \
        _event("[DONE]")


def _no_done() -> bytes:
    return _opening() + _chunk({"content": "an answer that never says [DONE]"}) + _closing(done=False)


def _completion(content: Any, choices: int = 1) -> dict[str, Any]:
    return {"id": "chatcmpl-hostile", "object": "chat.completion", "created": 1, "model": "hostile",
            "choices": [{"index": i, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                        for i in range(choices)]}


def _json_100mb() -> bytes:
    return json.dumps(_completion("x" * (100 * MB))).encode()


def _deep_json() -> bytes:
    head, tail = json.dumps(_completion("PLACEHOLDER")).encode().split(b'"PLACEHOLDER"')
    return head + b"[" * 100_000 + b"]" * 100_000 + tail


def _many_choices() -> bytes:
    choices = b",".join(b'{"index":%d,"message":{"content":""},"finish_reason":"stop"}' % i
                        for i in range(1_000_000))
    return b'{"id":"chatcmpl-hostile","object":"chat.completion","created":1,"model":"hostile","choices":[' + \
        choices + b"]}"


def _small_json() -> bytes:
    return json.dumps(_completion("a small, valid answer")).encode()


STREAMS: dict[str, tuple[str, Callable[[], bytes]]] = {
    **{f"choice_index_{label}": (f"stream: choices[0].index = {shown}", _bad_choice_index(value))
       for label, shown, value in (("1e9", "10**9", 10**9), ("neg", "-1", -1), ("str", '"7"', "7"),
                                   ("1e300", "1e300", 1e300))},
    **{f"tool_index_{label}": (f"stream: tool_calls[0].index = {shown}", _bad_tool_index(value))
       for label, shown, value in (("1e9", "10**9", 10**9), ("neg", "-1", -1), ("str", '"7"', "7"),
                                   ("1e300", "1e300", 1e300))},
    "tiny_deltas": ("stream: 200,000 one-character deltas", _tiny_deltas(logprobs=False)),
    "tiny_deltas_logprobs": ("stream: 200,000 one-character deltas, each with logprobs", _tiny_deltas(logprobs=True)),
    "big_delta": ("stream: one delta of 50 MB", _big_delta),
    "not_json": ("stream: 1,000 events that are not JSON, then [DONE]", _not_json),
    "no_done": ("stream: a whole answer without [DONE]", _no_done),
}
ENDLESS = {
    "endless": "stream: endless events of 1,000-character deltas (client leaves)",
    "endless_line": "stream: one data line that never ends (client leaves)",
}
BODIES: dict[str, tuple[str, Callable[[], bytes]]] = {
    "json_100mb": ("JSON: a completion of 100 MB", _json_100mb),
    "deep_json": ("JSON: content nested 100,000 levels deep", _deep_json),
    "many_choices": ("JSON: 1,000,000 tiny choices", _many_choices),
}
WRONG_LENGTH = {
    "length_over": "JSON: content-length 2x the body, then the connection closes",
    "length_under": "JSON: content-length half the body (the rest follows on a kept-alive connection)",
}
SCENARIOS = [
    *(Scenario(name, True, what, storable=name == "tiny_deltas") for name, (what, _) in STREAMS.items()),
    *(Scenario(name, True, what) for name, what in ENDLESS.items()),
    *(Scenario(name, False, what) for name, (what, _) in BODIES.items()),
    *(Scenario(name, False, what) for name, what in WRONG_LENGTH.items()),
]


# ---------------------------------------------------------------------------------------------- the server


@dataclass
class Sent:
    """What one scenario's requests got from this server."""

    requests: int = 0
    probes: int = 0
    body_bytes: int = 0  # of the last hostile answer (chunked framing excluded)
    whole: bool = False  # the last hostile answer went out to its end
    stopped_at: float | None = None  # time.time() when an endless answer could no longer be written


class HostileUpstream:
    """The server: one request at a time per connection, keep-alive unless a scenario closes it."""

    def __init__(self) -> None:
        self.sent: dict[str, Sent] = {}
        self._built: dict[str, bytes] = {}

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
        method, path = request_line.split(" ")[:2]
        if method == "GET" and path.endswith("/models"):
            await _write(writer, _http("application/json", b'{"object":"list","data":[]}'))
            return True
        if method == "GET" and path.endswith("/stats"):
            stats = {name: vars(sent) for name, sent in self.sent.items()}
            await _write(writer, _http("application/json", json.dumps(stats).encode()))
            return True
        body = json.loads(raw)
        name = str(body.get("model", "")).removeprefix("hostile-")
        sent = self.sent.setdefault(name, Sent())
        if headers.get(PROBE_HEADER.decode()) == "1" or not any(s.name == name for s in SCENARIOS):
            sent.probes += 1
            await _write(writer, _probe_answer(bool(body.get("stream"))))
            return True
        sent.requests += 1
        sent.whole, sent.body_bytes, sent.stopped_at = False, 0, None
        return await self._hostile(name, sent, writer)

    async def _hostile(self, name: str, sent: Sent, writer: asyncio.StreamWriter) -> bool:
        if name in ENDLESS:
            await _write(writer, _stream_head())
            try:
                for block in _endless(line=name == "endless_line"):
                    await _write(writer, _framed(block))
                    sent.body_bytes += len(block)
            finally:
                sent.stopped_at = time.time()
            return False
        if name in WRONG_LENGTH:
            body = self._body(name, _small_json)
            declared = 2 * len(body) if name == "length_over" else len(body) // 2
            await _write(writer, _http("application/json", body, length=declared))
            sent.body_bytes, sent.whole = len(body), True
            return name == "length_under"  # the surplus is left for the next response to trip over
        if name in BODIES:
            body = self._body(name, BODIES[name][1])
            await _write(writer, _http("application/json", b"", length=len(body)))
            for start in range(0, len(body), BLOCK):
                await _write(writer, body[start:start + BLOCK])
                sent.body_bytes += min(BLOCK, len(body) - start)
        else:
            body = self._body(name, STREAMS[name][1])
            await _write(writer, _stream_head())
            for start in range(0, len(body), BLOCK):
                await _write(writer, _framed(body[start:start + BLOCK]))
                sent.body_bytes += min(BLOCK, len(body) - start)
            await _write(writer, b"0\r\n\r\n")
        sent.whole = True
        return True

    def _body(self, name: str, build: Callable[[], bytes]) -> bytes:
        """The scenario's answer, built once, its id naming the scenario (which a stored entry then shows)."""
        if name not in self._built:
            self._built[name] = build().replace(b'"chatcmpl-hostile"', b'"chatcmpl-hostile-%s"' % name.encode())
        return self._built[name]


async def _write(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


def _http(content_type: str, body: bytes, *, length: int | None = None) -> bytes:
    length = len(body) if length is None else length
    return f"HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {length}\r\n\r\n".encode() + body


def _stream_head() -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _framed(block: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(block), block)


def _endless(*, line: bool) -> Iterator[bytes]:
    if line:
        yield b'data: {"choices":[{"index":0,"delta":{"content":"'
        block = b"x" * BLOCK
    else:
        event = _chunk({"content": "y" * 1000})
        block = event * (BLOCK // len(event))
        yield _opening()
    while True:
        yield block


def _probe_answer(stream: bool) -> bytes:
    if not stream:
        return _http("application/json", _small_json().replace(b"chatcmpl-hostile", PROBE_ID.encode()))
    events = _opening() + _chunk({"content": "a small, valid answer"}) + _closing()
    return _stream_head() + _framed(events.replace(b"chatcmpl-hostile", PROBE_ID.encode())) + b"0\r\n\r\n"


async def serve(port: int) -> None:
    upstream = HostileUpstream()
    server = await asyncio.start_server(upstream.connection, "127.0.0.1", port, limit=MB)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=18090)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
