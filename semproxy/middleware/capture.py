"""Tee an upstream answer to the client while rebuilding it for the cache.

Stream chunks go to the client the moment they arrive. A non-stream 2xx answer on a cached route is held
until it is complete (a JSON completion is of no use to a client before its last byte anyway) and checked:
if it is not a completion, or the upstream broke off before its end, the client gets a 502 in OpenAI's
shape instead of a body it cannot parse. An answer is stored only when it ended cleanly (a stream: with
`data: [DONE]`), and it is committed *before* the client sees the end of it, so an answer a client
received in full is never missing from the cache after a crash.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable

import anyio.to_thread

from semproxy.errors import UpstreamError
from semproxy.openai import BadJSON, Kind, SSEParser, StreamAssembler, is_complete_response, loads
from semproxy.types import JSON_HEADERS, ByteBudget, Message, RawHeaders, Send

log = logging.getLogger("semproxy.cache")

Store = Callable[[bytes], Awaitable[object]]
# A held (non-stream) answer larger than this is relayed as it comes, unchecked and unstored. (A batch of 1,000
# float embeddings, as LangChain sends them, is about 31 MB.)
HOLD_LIMIT = 64 * 1024 * 1024
# Parsing makes an object of every JSON value, and the objects weigh more than their text: about 230 bytes for
# an object, 64 for an array, 32 for a number or a string (62 MB of tiny choices once took 640 MB). The cost,
# bounded from above at C speed, is taken from the same budget as the bytes; an answer it does not fit is
# relayed unchecked and unstored.
_PARSE_COST = ((b"{", 232), (b"[", 64), (b",", 32))
OFF_LOOP_BYTES = 1024 * 1024  # larger answers are parsed on a worker thread: the event loop keeps serving


def parse_cost(body: bytes | bytearray) -> int:
    """An upper bound of the memory parsing `body` as JSON takes, in bytes."""
    return sum(body.count(mark) * size for mark, size in _PARSE_COST)


class InvalidAnswer(UpstreamError):
    """The upstream answered 2xx with something that is not a whole completion."""

    status = 502


class ResponseCapture:
    """A `send` wrapper: adds the cache header, relays every message, stores a complete 2xx answer.

    Call `finish()` once the wrapped app returned: it answers 502 if a held answer never completed; and
    `close()` in any case (a `finally`): it gives back the bytes held against `budget`.
    """

    def __init__(self, send: Send, *, kind: Kind, stream: bool, outcome: str, store: Store | None,
                 headers: list[tuple[bytes, bytes]] | None = None, budget: ByteBudget | None = None) -> None:
        self._send = send
        self._headers = headers or []
        self._kind = kind
        self._stream = stream
        self._outcome = outcome
        self._store = store
        self._capturing = False
        self._held: Message | None = None  # the start message of a non-stream answer being held
        self._stored = False
        self._chunks: list[bytes] = []  # the held answer as it came: joined once, to be parsed; never copied before
        self._size = 0
        self._cost = 0  # what parsing the held chunks would take (parse_cost), counted as they come
        self._budget = budget
        self._taken = 0  # bytes reserved in the budget
        self._parser = SSEParser()
        self._assembler = StreamAssembler(kind)
        self.status: int | None = None  # the status the client got
        self.first_byte_at: float | None = None  # perf_counter() when the first body byte went out

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            await self._start(message)
        elif message["type"] == "http.response.body" and self._held is not None:
            await self._hold(message)
        elif message["type"] == "http.response.body" and self._capturing:
            await self._stream_chunk(message)
        else:
            await self._relay(message)

    async def _relay(self, message: Message) -> None:
        if message["type"] == "http.response.body":
            self._note_body(message)
        await self._send(message)

    def _note_body(self, message: Message) -> None:
        if message.get("body") and self.first_byte_at is None:
            self.first_byte_at = time.perf_counter()

    async def _start(self, message: Message) -> None:
        self.status = int(message["status"])
        headers = list(message.get("headers", []))
        headers.append((b"x-semproxy-cache", self._outcome.encode()))
        headers.extend(self._headers)
        message = {**message, "headers": headers}
        status, values = message["status"], {k.lower(): v.lower() for k, v in headers}
        identity = values.get(b"content-encoding", b"identity") == b"identity"
        if not self._stream and 200 <= status < 300 and identity:
            self._held = message
            return
        content_type = values.get(b"content-type", b"")
        self._capturing = (self._store is not None and 200 <= status < 300 and identity
                           and self._stream and b"text/event-stream" in content_type)
        await self._send(message)

    # ---------------------------------------------------------------- streams

    async def _stream_chunk(self, message: Message) -> None:
        chunk: bytes = message.get("body", b"")
        for data in self._parser.feed(chunk):
            self._assembler.feed(data)
        if self._assembler.done:
            await self._store_once(self._assembled())
        elif not message.get("more_body", False) and not self._stored:
            log.debug("stream not stored: it ended without [DONE]")
        await self._relay(message)

    def _assembled(self) -> bytes | None:
        response = self._assembler.result()
        return None if response is None else json.dumps(response, separators=(",", ":")).encode()

    # ---------------------------------------------------------------- held answers

    async def _hold(self, message: Message) -> None:
        assert self._held is not None
        chunk: bytes = message.get("body", b"")
        if self._size + len(chunk) > HOLD_LIMIT or not self._take(len(chunk)):
            # Too big to be a completion we would check, or all requests together hold too much already:
            # relayed unchecked, never stored.
            await self._pass_on(message)
            return
        if chunk:
            self._chunks.append(chunk)
            self._size += len(chunk)
            self._cost += parse_cost(chunk)
        if not message.get("more_body", False):
            await self._release()

    def _take(self, size: int) -> bool:
        if self._budget is None:
            return True
        if not self._budget.take(size):
            log.warning("an answer is relayed unchecked: held answers reached their limit (max_held_bytes)")
            return False
        self._taken += size
        return True

    async def _pass_on(self, message: Message) -> None:
        assert self._held is not None
        start, self._held = self._held, None
        held, self._chunks, self._size = self._chunks, [], 0
        self.close()
        await self._send(start)
        for chunk in held:
            await self._relay({"type": "http.response.body", "body": chunk, "more_body": True})
        await self._relay({"type": "http.response.body", "body": message.get("body", b""),
                           "more_body": message.get("more_body", False)})

    def _give(self, size: int) -> None:
        if size and self._budget is not None:
            self._budget.give(size)
            self._taken -= size

    def close(self) -> None:
        """Give back the bytes this answer held against the budget (idempotent)."""
        if self._taken and self._budget is not None:
            self._budget.give(self._taken)
        self._taken = 0

    async def _release(self) -> None:
        assert self._held is not None
        large = self._size > OFF_LOOP_BYTES
        cost = self._cost if large else 0
        if cost and not self._take(cost):
            await self._pass_on({"type": "http.response.body", "body": b"", "more_body": False})
            return
        start, self._held = self._held, None
        try:
            response = await anyio.to_thread.run_sync(self._parsed) if large else self._parsed()
        finally:
            self._give(cost)
        if response is None:
            await self._refuse(start, "The upstream answered 2xx with something that is not a whole "
                                      f"{'embedding list' if self._kind == 'embedding' else 'completion'}.")
            return
        content_type = dict((k.lower(), v.lower()) for k, v in start["headers"]).get(b"content-type", b"")
        if self._store is not None and b"json" in content_type:
            await self._store_once(response)
        self._chunks = []
        self.close()
        await self._send(start)
        await self._relay({"type": "http.response.body", "body": response, "more_body": False})

    def _parsed(self) -> bytes | None:
        """The upstream's own bytes, once they proved to be a complete answer."""
        raw = b"".join(self._chunks)
        try:
            response = loads(raw)
        except BadJSON:
            return None
        return raw if is_complete_response(self._kind, response) else None

    async def _refuse(self, start: Message, reason: str) -> None:
        log.warning("answering 502: %s (%d bytes received)", reason, self._size)
        error = InvalidAnswer(reason, code="upstream_invalid_response")
        body = error.body()
        ours: RawHeaders = [(k, v) for k, v in start["headers"] if k.lower().startswith(b"x-semproxy-")]
        headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode()), *ours]
        self.status = error.status
        await self._send({"type": "http.response.start", "status": error.status, "headers": headers})
        await self._relay({"type": "http.response.body", "body": body, "more_body": False})

    async def finish(self) -> None:
        """The app returned: a held answer that never completed (the upstream broke off) becomes a 502."""
        if self._held is not None:
            start, self._held = self._held, None
            await self._refuse(start, "The upstream broke off before the end of its answer.")

    async def _store_once(self, response: bytes | None) -> None:
        if self._stored or self._store is None:
            return
        self._stored = True
        if response is None:
            log.debug("answer not stored: incomplete or not a completion")
            return
        await self._store(response)
