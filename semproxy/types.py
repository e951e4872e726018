"""The shared vocabulary of the layers: ASGI types, the typed per-request record, and small HTTP helpers.

Everything above imports from here; this module imports only `semproxy.errors` (like starlette/types.py,
it sits at the bottom so middleware/ and upstream/ never need each other).
"""

from __future__ import annotations

import contextvars
import dataclasses
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from semproxy.errors import BodyTooLarge

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
RawHeaders = list[tuple[bytes, bytes]]

JSON_HEADERS: RawHeaders = [(b"content-type", b"application/json")]
SSE_HEADERS: RawHeaders = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
SCOPE_KEY = "semproxy"  # where the request's facts travel in the ASGI scope (an extension key, as ASGI allows)
# X-Semproxy-Cache; bypass: no lookup was made; audit: a would-be semantic hit forwarded to be checked
CACHE_OUTCOMES = ("exact", "semantic", "miss", "audit", "bypass")
HIT_OUTCOMES = ("exact", "semantic")


# ---------------------------------------------------------------- what the layers learned about one request


@dataclasses.dataclass(kw_only=True)
class Attempt:
    """One try of one upstream (failover), as the statistics record it."""

    upstream: str
    outcome: str  # ok | connect_error | timeout | network_error | status_NNN | circuit_open
    ms: float


@dataclasses.dataclass(kw_only=True)
class RequestFacts:
    """What the layers learned about one request, for the statistics layer to log.

    The outermost layer that needs it creates it (`facts(scope)`); inner layers get copies of the scope that
    share this one object, so what an inner layer writes the outer one reads after the call.
    """

    cache: str | None = None  # exact | semantic | miss | bypass; None: no cache layer saw it
    similarity: float | None = None  # of a semantic hit
    verdict: str | None = None  # the hit verifier's X-Semproxy-Verdict
    audit_wrong: bool | None = None  # a compared candidate's answer was not the fresh one (semproxy.cache.learning)
    audit_weight: float | None = None  # an audit's weight in the served wrong-hit rate: (1 - p) / p
    prompt_tokens_saved: int = 0  # system-prompt tokens compression removed
    upstream: str | None = None  # whose answer it is
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    embed_ms: float | None = None  # time in the embedding model's forward pass (a shared batch counts whole)
    search_ms: float | None = None  # time in the vector search and the hit verifier
    upstream_ms: float | None = None  # time inside the innermost app (the upstream, or the user's routes)

    def add_ms(self, stage: str, seconds: float) -> None:
        """Add `seconds` to a stage's milliseconds (a request that looks up twice adds both)."""
        if stage not in _STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        current = getattr(self, stage)
        setattr(self, stage, (current or 0.0) + seconds * 1000.0)


_STAGES = frozenset({"embed_ms", "search_ms", "upstream_ms"})
_CURRENT: contextvars.ContextVar[RequestFacts | None] = contextvars.ContextVar("semproxy_request", default=None)


def facts(scope: Scope) -> RequestFacts:
    """The request's record, created on first use."""
    found = scope.get(SCOPE_KEY)
    if not isinstance(found, RequestFacts):
        found = scope[SCOPE_KEY] = RequestFacts()
    return found


def bind_facts(record: RequestFacts) -> contextvars.Token[RequestFacts | None]:
    """Make `record` the current request's for this task, so code that never sees the scope (the embedder's
    model thread, handed it by the task) can add its timings. Undo with `unbind_facts`."""
    return _CURRENT.set(record)


def unbind_facts(token: contextvars.Token[RequestFacts | None]) -> None:
    """Undo `bind_facts`."""
    _CURRENT.reset(token)


def current_facts() -> RequestFacts | None:
    """The record bound to the running task, or None outside a request the statistics layer watches."""
    return _CURRENT.get()


# ---------------------------------------------------------------- HTTP helpers


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
    if declared is None or not (declared.isascii() and declared.isdigit()):
        return False
    digits = declared.lstrip("0")
    # More digits than the limit has is over it: int() refuses strings of more than 4,300 digits (ValueError).
    return len(digits) > len(str(limit)) or int(digits or "0") > limit


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


def with_response_headers(send: Send, extra: RawHeaders) -> Send:
    """A `send` that adds `extra` headers to the response start."""

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return send_with_headers


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


class ByteBudget:
    """How many bytes all requests together may hold at once for one purpose (held answers, log bodies).

    Memory bounded by a count (requests, queued records) is not bounded: 64 requests of 64 MiB each are 4 GiB.
    Each holder takes bytes before keeping them and gives them back when it lets go (thread-safe: the log's
    writer thread gives back what the event loop took)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        """Reserve `size` bytes; False (nothing reserved) if that would pass the limit."""
        with self._lock:
            if self.held + size > self.limit:
                return False
            self.held += size
            return True

    def give(self, size: int) -> None:
        """Return bytes taken earlier."""
        with self._lock:
            self.held -= size
