"""Small ASGI helpers shared by the layers: headers, whole-body reads and replays, and plain responses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from semproxy.errors import BodyTooLarge

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
RawHeaders = list[tuple[bytes, bytes]]


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (name in lower case), decoded as latin-1 like HTTP/1.1 does."""
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def route_path(scope: Scope) -> str:
    """The request path relative to where this app is mounted."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def declared_over(declared: str | None, limit: int) -> bool:
    """Whether a Content-Length header announces more than `limit` bytes (ASCII digits only: "²" is a
    digit to `str.isdigit` but not to `int`)."""
    return declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit


async def read_body(receive: Receive, *, limit: int, declared: str | None) -> bytes:
    """Read the whole request body, refusing (413) anything over `limit` bytes before reading it all."""
    if declared_over(declared, limit):
        raise BodyTooLarge(f"Request body is {declared} bytes; the limit is {limit} bytes.", code="body_too_large")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"Request body is over the limit of {limit} bytes.", code="body_too_large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive callable that yields `body` once, then defers to the real one (which reports disconnects)."""
    sent = False

    async def receive_again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_again


async def send_response(send: Send, status: int, body: bytes, headers: RawHeaders) -> None:
    """Send a whole response in two messages."""
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


JSON_HEADERS: RawHeaders = [(b"content-type", b"application/json")]
SSE_HEADERS: RawHeaders = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


def request_info(scope: Scope) -> dict[str, Any]:
    """Per-request facts the layers report (cache outcome, tokens saved, ...), for the statistics.

    The outermost layer creates the dict; inner layers receive copies of the scope that share it.
    """
    info: dict[str, Any] = scope.setdefault("semproxy", {})
    return info


def lifespan_hooks(receive: Receive, *, on_startup: Callable[[], object],
                   on_shutdown: Callable[[], Awaitable[None]]) -> Receive:
    """Wrap a lifespan `receive` so a middleware starts and stops its components with the server."""

    async def lifespan_receive() -> Message:
        message = await receive()
        if message["type"] == "lifespan.startup":
            on_startup()
        elif message["type"] == "lifespan.shutdown":
            await on_shutdown()
        return message

    return lifespan_receive
