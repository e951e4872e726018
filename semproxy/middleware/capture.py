"""Tee an upstream answer to the client while rebuilding it for the cache.

Chunks go to the client the moment they arrive. The answer is stored only when it ended cleanly, and
it is committed *before* the client sees the end of it (the `[DONE]` event, or the last byte of a JSON
body): an answer a client received in full is never missing from the cache after a crash.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from semproxy.middleware.asgi import Message, Send
from semproxy.openai import Kind, SSEParser, StreamAssembler, is_complete_response

log = logging.getLogger("semproxy.cache")

Store = Callable[[bytes], Awaitable[object]]


class ResponseCapture:
    """A `send` wrapper: adds the cache header, relays every message, stores a complete 2xx answer."""

    def __init__(self, send: Send, *, kind: Kind, stream: bool, outcome: str, store: Store | None,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self._send = send
        self._headers = headers or []
        self._kind = kind
        self._stream = stream
        self._outcome = outcome
        self._store = store
        self._capturing = False
        self._stored = False
        self._body = bytearray()
        self._parser = SSEParser()
        self._assembler = StreamAssembler(kind)

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            await self._start(message)
        elif message["type"] == "http.response.body" and self._capturing:
            await self._body_chunk(message)
        else:
            await self._send(message)

    async def _start(self, message: Message) -> None:
        headers = list(message.get("headers", []))
        self._capturing = self._store is not None and self._storable(message["status"], headers)
        headers.append((b"x-semproxy-cache", self._outcome.encode()))
        headers.extend(self._headers)
        await self._send({**message, "headers": headers})

    def _storable(self, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        values = {k.lower(): v.lower() for k, v in headers}
        if not 200 <= status < 300 or values.get(b"content-encoding", b"identity") != b"identity":
            return False
        content_type = values.get(b"content-type", b"")
        return b"text/event-stream" in content_type if self._stream else b"json" in content_type

    async def _body_chunk(self, message: Message) -> None:
        chunk: bytes = message.get("body", b"")
        last = not message.get("more_body", False)
        if self._stream:
            for data in self._parser.feed(chunk):
                self._assembler.feed(data)
            if self._assembler.done or last:
                await self._store_once(self._assembled())
        else:
            self._body += chunk
            if last:
                await self._store_once(self._parsed())
        await self._send(message)

    def _assembled(self) -> bytes | None:
        response = self._assembler.result()
        return None if response is None else json.dumps(response, separators=(",", ":")).encode()

    def _parsed(self) -> bytes | None:
        """The upstream's own bytes, once they proved to be a complete answer."""
        try:
            response = json.loads(self._body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        return bytes(self._body) if is_complete_response(self._kind, response) else None

    async def _store_once(self, response: bytes | None) -> None:
        if self._stored or self._store is None:
            return
        self._stored = True
        if response is None:
            log.debug("answer not stored: incomplete or not a completion")
            return
        await self._store(response)
