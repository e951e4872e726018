"""UpstreamProxy: forwards a request to an OpenAI-compatible upstream and relays the answer as it arrives.

Status, headers and body bytes are relayed verbatim (minus hop-by-hop headers). A client that hangs up
cancels the upstream request, whether it was still waiting for headers or halfway through a stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable

import httpx

from semproxy.errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable
from semproxy.middleware.asgi import (
    JSON_HEADERS,
    RawHeaders,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    send_response,
)

log = logging.getLogger("semproxy.upstream")

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"host",
})
# Bodies up to this size are read before forwarding, so one task can watch for a disconnect throughout.
BUFFERED_BODY_LIMIT = 1024 * 1024


def map_httpx_error(exc: httpx.TransportError) -> UpstreamError:
    """The one place where httpx's errors become semproxy's."""
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"The upstream did not answer in time ({type(exc).__name__}).", code="upstream_timeout")
    return UpstreamUnreachable(f"The upstream could not be reached: {exc or type(exc).__name__}.",
                               code="upstream_unreachable")


class UpstreamProxy:
    """An ASGI app that forwards requests under `prefix` to `base_url`.

    It talks to an httpx transport, not a client: a proxy must not keep a cookie jar (one tenant's cookies
    would ride along on another's requests), follow redirects or add headers of its own.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport, *, base_url: str, timeout: httpx.Timeout,
                 api_key: str | None = None, prefix: str = "/v1") -> None:
        self.transport = transport
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout.as_dict()
        self.api_key = api_key
        self.prefix = prefix.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        declared = header(scope, b"content-length")
        chunked = header(scope, b"transfer-encoding") is not None
        if chunked or (declared is not None and (not declared.isdigit() or int(declared) > BUFFERED_BODY_LIMIT)):
            # A large upload streams through; the disconnect watch starts once it is sent.
            request = self._request(scope, _body_stream(receive))
            await self._exchange(request, send, receive)
            return
        body = await read_body(receive, limit=BUFFERED_BODY_LIMIT, declared=declared) if declared else None
        request = self._request(scope, body)
        await _until_disconnect(receive, self._exchange(request, send))

    def _request(self, scope: Scope, content: bytes | AsyncIterator[bytes] | None) -> httpx.Request:
        return httpx.Request(scope["method"], self._url(scope), headers=self._headers(scope["headers"]),
                             content=content, extensions={"timeout": self.timeout})

    def _url(self, scope: Scope) -> str:
        # raw_path keeps the client's percent-encoding (a file id with %2F must stay one path segment).
        path: bytes = scope.get("raw_path") or scope["path"].encode()
        root = scope.get("root_path", "").encode() + self.prefix
        relative = path[len(root):] if path.startswith(root) else path
        query: bytes = scope.get("query_string", b"")
        return self.base_url + relative.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")

    def _headers(self, raw: RawHeaders) -> RawHeaders:
        headers = [(k, v) for k, v in raw if k.lower() not in HOP_BY_HOP and not k.lower().startswith(b"x-semproxy-")]
        if self.api_key:
            headers = [(k, v) for k, v in headers if k.lower() != b"authorization"]
            headers.append((b"authorization", b"Bearer " + self.api_key.encode()))
        return headers

    async def _exchange(self, request: httpx.Request, send: Send, receive: Receive | None = None) -> None:
        try:
            response = await self.transport.handle_async_request(request)
        except httpx.TransportError as exc:
            error = map_httpx_error(exc)
            log.warning("upstream %s %s failed: %s", request.method, request.url, error)
            await send_response(send, error.status, error.body(), JSON_HEADERS)
            return
        try:
            relay = self._relay(response, send)
            await (relay if receive is None else _until_disconnect(receive, relay))
        finally:
            await response.aclose()

    async def _relay(self, response: httpx.Response, send: Send) -> None:
        headers = [(k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP]
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        try:
            async for chunk in response.aiter_raw():
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.TransportError as exc:
            # Bytes already reached the client: the only honest signal left is to leave the response
            # unfinished, so the server closes the connection (and no layer above stores half an answer).
            log.warning("upstream stream broke off (%s); closing the client connection", type(exc).__name__)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _body_stream(receive: Receive) -> AsyncIterator[bytes]:
    """The request body as it arrives (for uploads too large to buffer)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def _until_disconnect(receive: Receive, work: Awaitable[None]) -> None:
    """Run `work`; if the client disconnects first, cancel it (which closes the upstream request).

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
        await work
    except asyncio.CancelledError:
        if not hung_up:
            raise
        current.uncancel()  # our own cancellation: the client is gone, nothing is left to do
    finally:
        watcher.cancel()
