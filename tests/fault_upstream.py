"""A misbehaving OpenAI-compatible upstream on a raw socket, and a driver that sends semproxy into each fault.

The server speaks just enough HTTP/1.1 by hand to break it in the ways real upstreams do: resets before and
in the middle of an answer, bodies that are not JSON or not a completion, event streams without `[DONE]` or
with broken events, a hang, a trickle of a byte per second. `mode` says what the next request gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

MODES = ("ok", "reset_before", "reset_mid", "not_json", "not_completion", "no_done", "malformed_sse", "hang",
         "trickle")


class FaultUpstream:
    """A loopback server whose answer to the next request depends on `mode`."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests = 0  # requests received (in any mode)
        self.answered = 0  # requests answered in mode "ok"
        self.open_connections = 0
        # Close a kept-alive connection when its next request arrives, unanswered: what a server does when
        # its keep-alive timeout fires just as the client reuses the connection.
        self.drop_reused = False
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._connections: set[asyncio.Task[None]] = set()

    def __enter__(self) -> FaultUpstream:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._connection, "127.0.0.1", 0), self.loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *_: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # ------------------------------------------------------------ the server

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self.open_connections += 1
        try:
            served = 0
            while await self._one_request(reader, writer, reused=served > 0):
                served += 1
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self.open_connections -= 1
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                           reused: bool) -> bool:
        """Serve one request; False when the connection is to be closed."""
        head = await reader.readuntil(b"\r\n\r\n")
        if reused and self.drop_reused:
            return False
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = json.loads(await reader.readexactly(length)) if length else {}
        self.requests += 1
        mode = self.mode
        stream = bool(body.get("stream"))
        if mode == "ok":
            self.answered += 1
            writer.write(_answer(body, self.answered, stream))
            await writer.drain()
            return True
        await _FAULTS[mode](reader, writer, body, stream)
        return False


def _http(status: str, content_type: str, body: bytes | None, extra: str = "") -> bytes:
    length = "" if body is None else f"content-length: {len(body)}\r\n"
    return (f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n{length}{extra}\r\n").encode() + (body or b"")


def _completion(body: dict[str, Any], number: int) -> dict[str, Any]:
    prompt = (body.get("messages") or [{}])[-1].get("content", "")
    return {"id": f"chatcmpl-{number}", "object": "chat.completion", "created": 1, "model": body.get("model", "m"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer #{number} to: {prompt}"},
                         "logprobs": None, "finish_reason": "stop"}]}


def _events(completion: dict[str, Any], *, done: bool = True) -> list[bytes]:
    head = {k: completion[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    text = completion["choices"][0]["message"]["content"]
    chunks = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text[:6]},
                                    "finish_reason": None}]},
              {**head, "choices": [{"index": 0, "delta": {"content": text[6:]}, "finish_reason": None}]},
              {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    events = [f"data: {json.dumps(c)}\n\n".encode() for c in chunks]
    return events + ([b"data: [DONE]\n\n"] if done else [])


def _chunked(parts: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def _answer(body: dict[str, Any], number: int, stream: bool) -> bytes:
    completion = _completion(body, number)
    if stream:
        return _http("200 OK", "text/event-stream", None, "transfer-encoding: chunked\r\n") + _chunked(
            _events(completion))
    return _http("200 OK", "application/json", json.dumps(completion).encode())


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST instead of a FIN (SO_LINGER 0), as a crashed or killed upstream does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _reset_before(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: Any, stream: bool) -> None:
    _reset(writer)


async def _reset_mid(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: Any, stream: bool) -> None:
    completion = _completion(body, 0)
    if stream:
        events = _events(completion)
        writer.write(_http("200 OK", "text/event-stream", None, "transfer-encoding: chunked\r\n")
                     + b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events[:2]))
    else:
        whole = json.dumps(completion).encode()
        writer.write(_http("200 OK", "application/json", None, f"content-length: {len(whole)}\r\n")
                     + whole[: len(whole) // 2])
    await _delivered(writer)  # a reset discards what the proxy's end has not acknowledged yet
    _reset(writer)


async def _delivered(writer: asyncio.StreamWriter, timeout: float = 10.0) -> None:
    """Wait until every byte written is acknowledged by the peer (received by its kernel, if not yet read):
    asyncio's buffer and the socket's send queue are empty (TIOCOUTQ counts the unacknowledged bytes)."""
    await writer.drain()
    sock = writer.get_extra_info("socket")
    deadline = time.monotonic() + timeout
    while writer.transport.get_write_buffer_size() or _unacknowledged(sock.fileno()):
        if time.monotonic() > deadline:
            raise TimeoutError("the partial answer was never received")
        await asyncio.sleep(0.001)


def _unacknowledged(fd: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0" * 4))[0])


async def _not_json(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: Any, stream: bool) -> None:
    writer.write(_http("200 OK", "application/json", b"<html><body>502 Bad Gateway</body></html>"))
    await writer.drain()


async def _not_completion(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: Any,
                          stream: bool) -> None:
    writer.write(_http("200 OK", "application/json", b'{"object": "chat.completion", "choices": []}'))
    await writer.drain()


async def _no_done(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: Any, stream: bool) -> None:
    events = _events(_completion(body, 0), done=False)
    writer.write(_http("200 OK", "text/event-stream", None, "transfer-encoding: chunked\r\n") + _chunked(events))
    await writer.drain()


async def _malformed_sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: Any,
                         stream: bool) -> None:
    events = _events(_completion(body, 0))
    events.insert(1, b'data: {"choices": [{"index": 0, "delta": {"content": "x"\n\n')
    writer.write(_http("200 OK", "text/event-stream", None, "transfer-encoding: chunked\r\n") + _chunked(events))
    await writer.drain()


async def _hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: Any, stream: bool) -> None:
    await reader.read()  # until the proxy gives up and closes


async def _trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: Any, stream: bool) -> None:
    answer = _answer(body, 0, stream)
    head, _, rest = answer.partition(b"\r\n\r\n")
    writer.write(head + b"\r\n\r\n")
    for byte in rest:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(1.0)


_FAULTS = {"reset_before": _reset_before, "reset_mid": _reset_mid, "not_json": _not_json,
           "not_completion": _not_completion, "no_done": _no_done, "malformed_sse": _malformed_sse,
           "hang": _hang, "trickle": _trickle}


# ---------------------------------------------------------------- the driver

# (fault, stream) -> what the client must see: a status, and for 200 streams what ends them.
EXPECTED: dict[tuple[str, bool], tuple[int, str]] = {
    ("refused", False): (502, "upstream_unreachable"),
    ("refused", True): (502, "upstream_unreachable"),
    ("reset_before", False): (502, "upstream_unreachable"),
    ("reset_before", True): (502, "upstream_unreachable"),
    ("reset_mid", False): (502, "upstream_invalid_response"),
    ("reset_mid", True): (200, "error:upstream_broke_off"),
    ("not_json", False): (502, "upstream_invalid_response"),
    ("not_completion", False): (502, "upstream_invalid_response"),
    ("no_done", True): (200, "end"),
    ("malformed_sse", True): (200, "done"),
    ("hang", False): (504, "upstream_timeout"),
    ("hang", True): (504, "upstream_timeout"),
    ("trickle", False): (502, "upstream_invalid_response"),
    ("trickle", True): (200, "error:upstream_timeout"),
}


@dataclass
class FaultReport:
    """What a run of faults found."""

    faults: int = 0
    failures: list[str] = field(default_factory=list)
    by_fault: dict[str, int] = field(default_factory=dict)


def observe(client: httpx.Client, proxy_url: str, model: str, prompt: str, stream: bool) -> tuple[int, str]:
    """(status, what the client saw): an error code, or how a 200 stream ended (done / end / error:CODE)."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": stream}
    response = client.post(proxy_url + "/v1/chat/completions", json=body)
    if response.status_code != 200:
        return response.status_code, str(response.json()["error"]["code"])
    if not stream:
        return 200, "json:" + str(response.json()["choices"][0]["message"]["content"])
    events = [e for e in response.text.split("\n\n") if e.strip()]
    last = events[-1].removeprefix("data: ") if events else ""
    if last == "[DONE]":
        return 200, "done"
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return 200, "error:" + str(json.loads(last)["error"]["code"])
    return 200, "end"


def run_faults(proxy_url: str, upstream: FaultUpstream, *, rounds: int, tag: str = "") -> FaultReport:
    """Each fault of `EXPECTED`, `rounds` times: the client's view must match, and the same request
    afterwards must reach the upstream again (nothing was stored)."""
    report = FaultReport()
    with httpx.Client(timeout=30) as client:
        for number in range(rounds):
            for (fault, stream), expected in EXPECTED.items():
                prompt = f"{tag} round {number}: {fault} {'stream' if stream else 'json'}"
                model = "refused-model" if fault == "refused" else "fault-model"
                upstream.mode = fault if fault != "refused" else "ok"
                seen = observe(client, proxy_url, model, prompt, stream)
                upstream.mode = "ok"
                report.faults += 1
                report.by_fault[fault] = report.by_fault.get(fault, 0) + 1
                if seen != expected:
                    report.failures.append(f"{fault}/{stream}: expected {expected}, saw {seen}")
                if fault == "refused":
                    continue
                before = upstream.answered
                again = observe(client, proxy_url, model, prompt, False)
                if upstream.answered != before + 1 or not again[1].startswith("json:answer #"):
                    report.failures.append(f"{fault}/{stream}: the retry did not reach the upstream: {again}")
    return report


def open_fds() -> int:
    """File descriptors this process holds."""
    return len(os.listdir("/proc/self/fd"))


def open_sockets() -> int:
    """Sockets this process holds (client, proxy and upstream ends alike: they all live in this process)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{name}").startswith("socket:")
    return count


def eventually(condition: Callable[[], bool], failure: str, timeout: float = 30.0) -> None:
    """Poll until the condition holds; fail with `failure` if it does not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.05)


@contextlib.contextmanager
def settled(timeout: float = 5.0) -> Iterator[None]:
    """Give connections closed a moment ago time to be released before counting."""
    yield
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        now = open_fds()
        if now == last:
            return
        last = now
        time.sleep(0.2)
