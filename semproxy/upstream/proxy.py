"""UpstreamProxy: forwards a request to an OpenAI-compatible upstream and relays the answer as it arrives.

Status, headers and body bytes are relayed verbatim (minus hop-by-hop headers). A client that hangs up
cancels the upstream request, whether it was still waiting for headers or halfway through a stream. Which
upstream gets the request, and what happens when it fails, is `Router`'s and `Failover`'s business.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from semproxy.types import JSON_HEADERS, Receive, Scope, Send, declared_over, facts, header, send_response
from semproxy.upstream.failover import Failover
from semproxy.upstream.models import union_of_models
from semproxy.upstream.relay import until_disconnect
from semproxy.upstream.requests import Body, RequestFactory, relative_path, upstream_headers
from semproxy.upstream.routing import Router, Upstream

# Bodies up to this size are read before forwarding, so they can be routed by model, retried on another
# upstream, and one task can watch for a disconnect throughout. Larger ones stream through to one upstream.
BUFFERED_BODY_LIMIT = 8 * 1024 * 1024


class UpstreamProxy:
    """An ASGI app that forwards requests under `prefix` to the upstreams `router` picks.

    It talks to an httpx transport, not a client: a proxy must not keep a cookie jar (one tenant's cookies
    would ride along on another's requests), follow redirects or add headers of its own.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport, router: Router, *, prefix: str = "/v1",
                 body_limit: int = BUFFERED_BODY_LIMIT) -> None:
        self.transport = transport
        self.router = router
        self.prefix = prefix.encode()
        self.body_limit = body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "GET" and not self.router.passthrough and relative_path(scope, self.prefix) == "/models":
            await until_disconnect(receive, self._models(scope, send))
            return
        body = await _buffer_or_stream(receive, limit=self.body_limit, declared=header(scope, b"content-length"),
                                       chunked=header(scope, b"transfer-encoding") is not None)
        failover = self._failover(scope, body)
        if failover.replayable:
            await until_disconnect(receive, failover.run(send))
        else:  # a large upload streams through: one attempt; the disconnect watch starts once it is sent
            await failover.run(send, receive)

    def _failover(self, scope: Scope, body: Body) -> Failover:
        make_request = RequestFactory(scope, body, prefix=self.prefix, read_model=self.router.needs_model)
        return Failover(self.router, self.transport, make_request, facts=facts(scope))

    async def _models(self, scope: Scope, send: Send) -> None:
        async def fetch(upstream: Upstream) -> list[dict[str, Any]]:
            request = httpx.Request("GET", upstream.base_url + "/models", extensions={"timeout": upstream.timeout},
                                    headers=upstream_headers(scope["headers"], upstream, keep_length=False))
            response = await self.transport.handle_async_request(request)
            try:
                content = await response.aread()
                if response.status_code != 200:
                    raise ValueError(f"status {response.status_code}")
                data = json.loads(content)["data"]
                return [entry for entry in data if isinstance(entry, dict) and isinstance(entry.get("id"), str)]
            finally:
                await response.aclose()

        listing = await union_of_models(self.router, fetch)
        await send_response(send, 200, json.dumps(listing).encode(), JSON_HEADERS)


async def _buffer_or_stream(receive: Receive, *, limit: int, declared: str | None,
                            chunked: bool) -> bytes | AsyncIterator[bytes] | None:
    """The whole body if it is at most `limit` bytes; otherwise a stream of it (what was read, then the rest)."""
    if declared_over(declared, limit):
        return _body_stream(receive, [])
    if declared is None and not chunked:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk: bytes = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        more = bool(message.get("more_body", False))
        if size > limit and more:
            return _body_stream(receive, chunks)
        if not more:
            break
    return b"".join(chunks)


async def _body_stream(receive: Receive, read: list[bytes]) -> AsyncIterator[bytes]:
    """The request body as it arrives (for uploads too large to buffer), after the part already `read`."""
    for chunk in read:
        yield chunk
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return
