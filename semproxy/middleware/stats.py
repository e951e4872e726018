"""StatsMiddleware: the outermost layer. It times every request, watches its answer and hands one record
to the request log; it also serves the admin endpoints (metrics, the JSON statistics, the dashboard).

Nothing here parses a body on the request path: the chunks are kept by reference and the log's own
thread reads `usage`, counts tokens and prices them.
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import json
import time
import urllib.parse
from collections.abc import Callable, Collection
from importlib import resources

import anyio.to_thread

from semproxy.errors import ConfigError, error_body
from semproxy.stats import report
from semproxy.stats.log import RequestLog
from semproxy.stats.metrics import CONTENT_TYPE, Metrics
from semproxy.stats.record import Observed
from semproxy.types import (
    JSON_HEADERS,
    ASGIApp,
    Message,
    Receive,
    RequestFacts,
    Scope,
    Send,
    bind_facts,
    facts,
    header,
    lifespan_hooks,
    route_path,
    send_response,
    unbind_facts,
)

HEALTH_PATHS = frozenset({"/healthz", "/semproxy/healthz"})  # open to load balancers: they reveal no figures
ADMIN_PREFIX = "/semproxy/"
DASHBOARD_PATH = "/semproxy/dashboard"
API_PATH = "/semproxy/api/stats"


@dataclasses.dataclass(frozen=True)
class AdminAccess:
    """Who may read the statistics: whoever sends the token in a header, or everyone when `open`.

    Not "loopback clients": behind a reverse proxy on the same host every client is on loopback. Not the
    query string: a token there lands in access logs and browser history."""

    token: str | None = None
    open: bool = False

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """(status, message) if this request may not see the admin endpoints, else None."""
        if self.open:
            return None
        if self.token is None:
            return 403, "The admin endpoints are closed: set admin_token (or admin_open for a trusted network)."
        given = _admin_token(scope)
        if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
            return None
        if given is None and b"token=" in bytes(scope.get("query_string", b"")):
            return 401, ("The admin token goes in a header (X-Semproxy-Admin-Token or Authorization: Bearer), "
                         "never in the URL, where access logs and browser history would keep it.")
        return 401, "This endpoint needs the admin token (X-Semproxy-Admin-Token or Authorization: Bearer)."


def _admin_token(scope: Scope) -> str | None:
    given = header(scope, b"x-semproxy-admin-token")
    if given is None:
        authorization = header(scope, b"authorization") or ""
        scheme, _, credentials = authorization.partition(" ")
        given = credentials.strip() if scheme.lower() == "bearer" else None
    return given


class StatsMiddleware:
    """Records every request in the log and the metrics; serves /metrics, the stats API and the dashboard."""

    def __init__(self, app: ASGIApp, *, log: RequestLog, source: report.LogSource, metrics: Metrics,
                 access: AdminAccess, tenant_of: Callable[[Scope], str | None], default_upstream: str,
                 metrics_paths: Collection[str] = ("/metrics", "/semproxy/metrics"),
                 max_body_bytes: int = 8 * 1024 * 1024, show_prompt_text: bool = False) -> None:
        self.app, self.log, self.source, self.metrics, self.access = app, log, source, metrics, access
        self.tenant_of, self.default_upstream = tenant_of, default_upstream
        self.metrics_paths = frozenset(metrics_paths)
        self.max_body_bytes, self.show_prompt_text = max_body_bytes, show_prompt_text
        self._dashboard: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, lifespan_hooks(receive, on_startup=self.log.start, on_shutdown=self._close), send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        if path in HEALTH_PATHS:  # polled every few seconds by load balancers: not worth a log row
            await self.app(scope, receive, send)
            return
        if path in self.metrics_paths or (path.startswith(ADMIN_PREFIX) and path not in HEALTH_PATHS):
            await self._admin(scope, receive, send, path)
            return
        await StatsResponder(self)(scope, receive, send)

    async def _close(self) -> None:
        await anyio.to_thread.run_sync(self.log.close)

    # ---------------------------------------------------------------- admin endpoints

    async def _admin(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        if path == DASHBOARD_PATH and scope["method"] in ("GET", "HEAD"):
            # The page holds no figures (it is the file shipped in the package); its script asks for the token
            # and sends it in a header to the statistics API.
            await send_response(send, 200, self._dashboard_page(), [
                (b"content-type", b"text/html; charset=utf-8"), (b"cache-control", b"no-store")])
            return
        refused = self.access.refusal(scope)
        if refused is not None:
            status, message = refused
            code = "forbidden" if status == 403 else "admin_token_required"
            await send_response(send, status, error_body(message, error_type="permission_error", code=code),
                                JSON_HEADERS)
            return
        if scope["method"] not in ("GET", "HEAD"):
            await send_response(send, 405, error_body("Use GET.", error_type="invalid_request_error",
                                                      code="method_not_allowed"), JSON_HEADERS)
        elif path in self.metrics_paths:
            body = await anyio.to_thread.run_sync(self.metrics.render)
            await send_response(send, 200, body, [(b"content-type", CONTENT_TYPE.encode())])
        elif path == API_PATH:
            await self._api(scope, send)
        else:
            await send_response(send, 404, error_body(f"Unknown path {path}.", error_type="invalid_request_error",
                                                      code="not_found"), JSON_HEADERS)

    async def _api(self, scope: Scope, send: Send) -> None:
        query = urllib.parse.parse_qs(bytes(scope.get("query_string", b"")).decode("latin-1"))
        try:
            since = report.parse_duration((query.get("since") or ["1h"])[0])
            buckets = max(1, min(500, int((query.get("buckets") or ["30"])[0])))
            by = next(iter(query.get("by", [])), None)
        except (ConfigError, ValueError) as exc:
            await send_response(send, 400, error_body(str(exc), error_type="invalid_request_error",
                                                      code="invalid_query"), JSON_HEADERS)
            return
        await anyio.to_thread.run_sync(self.log.flush, 5.0)  # the figures include the request just answered
        try:
            figures = await anyio.to_thread.run_sync(lambda: report.summarize(
                self.source, since_seconds=since, by=by, buckets=buckets, show_text=self.show_prompt_text))
        except ConfigError as exc:
            await send_response(send, 400, error_body(str(exc), error_type="invalid_request_error",
                                                      code="invalid_query"), JSON_HEADERS)
            return
        await send_response(send, 200, json.dumps(figures).encode(), [*JSON_HEADERS, (b"cache-control", b"no-store")])

    def _dashboard_page(self) -> bytes:
        if self._dashboard is None:
            self._dashboard = resources.files("semproxy.stats").joinpath("dashboard", "index.html").read_bytes()
        return self._dashboard


class StatsResponder:
    """One request as the stats layer sees it: when it started, its first byte, its status and its bodies."""

    def __init__(self, middleware: StatsMiddleware) -> None:
        self.middleware = middleware
        self.request_chunks: list[bytes] = []
        self.response_chunks: list[bytes] = []
        self.request_size = self.response_size = 0
        self.held_bytes = 0  # what the kept chunks hold against the log's budget
        self.keeping = True  # False once the budget refused a chunk: a body with a hole in it is no use
        self.status = 0
        self.content_type = ""
        self.first_byte: float | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        record = facts(scope)
        self._receive, self._send = receive, send
        token = bind_facts(record)
        started, clock = time.time(), time.perf_counter()
        try:
            await self.middleware.app(scope, self.receive, self.send)
        finally:
            unbind_facts(token)
            end = time.perf_counter()
            self._submit(scope, record, started, clock, end)

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            self.request_size += len(chunk)
            if chunk and self.request_size <= self.middleware.max_body_bytes and self._take(len(chunk)):
                self.request_chunks.append(chunk)
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            for key, value in message.get("headers", []):
                if key.lower() == b"content-type":
                    self.content_type = bytes(value).decode("latin-1").lower()
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            if chunk and self.first_byte is None:
                self.first_byte = time.perf_counter()
            self.response_size += len(chunk)
            if chunk and self.response_size <= self.middleware.max_body_bytes and self._take(len(chunk)):
                self.response_chunks.append(chunk)
        await self._send(message)

    def _take(self, size: int) -> bool:
        self.keeping = self.keeping and self.middleware.log.budget.take(size)
        if self.keeping:
            self.held_bytes += size
        return self.keeping

    def _submit(self, scope: Scope, record: RequestFacts, started: float, clock: float, end: float) -> None:
        if not self.keeping:  # let go at once of what was kept before the budget ran out
            self.middleware.log.budget.give(self.held_bytes)
            self.held_bytes, self.request_chunks, self.response_chunks = 0, [], []
        self.middleware.log.submit(Observed(
            started=started, method=str(scope["method"]), endpoint=route_path(scope),
            tenant=functools.partial(self.middleware.tenant_of, scope),
            request_body=self.request_chunks, status=self.status, content_type=self.content_type,
            response_body=self.response_chunks, total_ms=(end - clock) * 1000,
            ttfb_ms=None if self.first_byte is None else (self.first_byte - clock) * 1000,
            facts=record, default_upstream=self.middleware.default_upstream, held_bytes=self.held_bytes,
            bodies_whole=self.keeping))


class UpstreamTimer:
    """Wraps the innermost app (the upstream proxy, or the user's routes) to time what happens there."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            facts(scope).add_ms("upstream_ms", time.perf_counter() - started)

