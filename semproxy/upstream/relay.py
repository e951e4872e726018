"""Moving one upstream answer to the client: header filtering, streaming relay, error mapping, disconnects."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

import httpx

from semproxy.errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable
from semproxy.types import RawHeaders, Receive, Send

log = logging.getLogger("semproxy.upstream")
T = TypeVar("T")

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"host",
})


def map_httpx_error(exc: httpx.TransportError) -> UpstreamError:
    """The one place where httpx's errors become semproxy's."""
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"The upstream did not answer in time ({type(exc).__name__}).", code="upstream_timeout")
    return UpstreamUnreachable(f"The upstream could not be reached: {str(exc).rstrip('.') or type(exc).__name__}.",
                               code="upstream_unreachable")


def response_headers(response: httpx.Response, extra: RawHeaders) -> RawHeaders:
    """The upstream's headers minus hop-by-hop ones, plus semproxy's own."""
    return [(k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP] + extra


async def relay(response: httpx.Response, send: Send, extra: RawHeaders) -> bool:
    """Relay `response` chunk by chunk as it arrives; False if the upstream broke off mid-stream."""
    await send({"type": "http.response.start", "status": response.status_code,
                "headers": response_headers(response, extra)})
    events = "text/event-stream" in response.headers.get("content-type", "")
    boundary = True  # whether what was sent so far ends between two server-sent events
    try:
        async for chunk in response.aiter_raw():
            if chunk:
                boundary = chunk.endswith((b"\n\n", b"\r\n\r\n", b"\r\r"))
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except httpx.TransportError as exc:
        if events and boundary:
            # An event stream can still say what happened: an error event in OpenAI's shape (the SDKs raise
            # it as an APIError), then a clean end. No layer above stores an answer without [DONE].
            log.warning("upstream stream broke off (%s); ending it with an error event", type(exc).__name__)
            error = map_httpx_error(exc) if isinstance(exc, httpx.TimeoutException) else UpstreamUnreachable(
                f"The upstream broke off in the middle of its answer ({type(exc).__name__}).",
                code="upstream_broke_off")
            await send({"type": "http.response.body", "body": b"data: " + error.body() + b"\n\n",
                        "more_body": False})
            return False
        # Halfway through an event or a body: the only honest signal left is to leave the response
        # unfinished, so the server closes the connection (and no layer above stores half an answer).
        log.warning("upstream stream broke off (%s); closing the client connection", type(exc).__name__)
        return False
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return True


async def until_disconnect(receive: Receive, work: Awaitable[T], *, default: T | None = None) -> T | None:
    """Run `work` and return its result; if the client disconnects first, cancel it (which closes the
    upstream request) and return `default`.

    Plain asyncio rather than a task group: this wraps every forwarded request, and a task group costs
    several times more than one watcher task.
    """
    current = asyncio.current_task()
    assert current is not None
    hung_up = False

    async def watch() -> None:
        nonlocal hung_up
        while (await receive())["type"] != "http.disconnect":
            pass
        hung_up = True
        current.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not hung_up:
            raise
        current.uncancel()  # our own cancellation: the client is gone, nothing is left to do
        return default
    finally:
        watcher.cancel()
