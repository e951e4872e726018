"""Failover: one request tried on its candidate upstreams in turn, until one answers.

A connection error, a timeout, a 429 or a 5xx moves the request to the next candidate, but only before any
byte of the answer reached the client: once relaying has begun, a broken stream stays broken. Attempts are
bounded in number (`max_attempts`) and in time (no new one starts `deadline` seconds after the first). If
every attempt fails, the client gets the last answer an upstream actually gave (its 429 or 5xx, verbatim),
or, if none answered, 502 (unreachable) / 504 (timeout) in OpenAI's error shape; 503 if every candidate's
circuit was open, with Retry-After.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import httpx

from semproxy.errors import HTTPError, ModelNotFound, NoUpstreamAvailable, RequestError, UpstreamError
from semproxy.types import JSON_HEADERS, Attempt, RawHeaders, Receive, RequestFacts, Send, send_response
from semproxy.upstream.relay import map_httpx_error, relay, response_headers, until_disconnect
from semproxy.upstream.requests import RequestFactory
from semproxy.upstream.routing import Router, Upstream

log = logging.getLogger("semproxy.upstream")

UPSTREAM_HEADER = b"x-semproxy-upstream"
ATTEMPTS_HEADER = b"x-semproxy-attempts"


@dataclasses.dataclass(frozen=True)
class FailedAnswer:
    """An upstream's 429 or 5xx, read whole, kept in case no other upstream does better."""

    upstream: str
    status: int
    headers: RawHeaders
    body: bytes


class Failover:
    """The state of one request across its attempts, each recorded in the request's facts.

    It is given the router (which upstreams, in which order, their breakers), the transport to send with, and
    the factory that makes the request for a given upstream; it knows nothing of how requests are built.
    """

    def __init__(self, router: Router, transport: httpx.AsyncBaseTransport, make_request: RequestFactory, *,
                 facts: RequestFacts) -> None:
        self.router = router
        self.transport = transport
        self.make_request = make_request
        self.replayable = make_request.replayable
        self.model = make_request.model
        self.facts = facts
        self.attempts = facts.attempts
        self.failed_answer: FailedAnswer | None = None
        self.error: UpstreamError | None = None

    async def run(self, send: Send, receive: Receive | None = None) -> None:
        """Try the candidates in turn; `receive` is given when the disconnect watch is still to be started."""
        try:
            candidates = self.router.candidates(self.model)
        except ModelNotFound as exc:
            await self._answer_error(send, exc)
            return
        limit = self.router.policy.max_attempts if self.replayable else 1
        started, tried = self.router.clock(), 0
        for upstream in candidates:
            if tried >= limit or (tried and self.router.clock() - started >= self.router.policy.deadline):
                break
            if not upstream.breaker.acquire():
                self._record(upstream, "circuit_open", 0.0)
                continue
            tried += 1
            if await self._attempt(upstream, send, receive):
                return
        await self._give_up(send, candidates)

    async def _attempt(self, upstream: Upstream, send: Send, receive: Receive | None) -> bool:
        """One try; True if its answer went to the client (the request is done)."""
        try:
            request = self.make_request(upstream)
        except RequestError as exc:  # the client's request, not this upstream, is at fault: no other would do
            upstream.breaker.release()
            await self._answer_error(send, exc)
            return True
        self.router.chosen(upstream)
        began = time.perf_counter()
        settled = False
        try:
            try:
                response = await self._send(request, upstream)
            except httpx.TransportError as exc:
                settled = True
                self._transport_failed(upstream, exc, began)
                return False
            try:
                settled = True
                return await self._answered(upstream, response, send, receive, time.perf_counter() - began)
            finally:
                await response.aclose()
        finally:
            if not settled:  # cancelled (the client left) before a verdict: another request may probe
                upstream.breaker.release()

    async def _send(self, request: httpx.Request, upstream: Upstream) -> httpx.Response:
        """Send once; again on a new connection if a kept-alive one was closed under the request.

        A server whose keep-alive timeout fires just as the pool reuses the connection closes it without
        reading the request ("Server disconnected without sending a response", or a reset). The request never
        reached the application, and the pool has discarded the connection: one more try is safe.
        """
        try:
            return await self.transport.handle_async_request(request)
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            if not self.replayable:
                raise
            log.info("upstream %s closed a connection under the request (%s); sending it again",
                     upstream.name, type(exc).__name__)
            return await self.transport.handle_async_request(self.make_request(upstream))

    def _transport_failed(self, upstream: Upstream, exc: httpx.TransportError, began: float) -> None:
        upstream.breaker.failed()
        outcome = ("timeout" if isinstance(exc, httpx.TimeoutException)
                   else "connect_error" if isinstance(exc, httpx.ConnectError) else "network_error")
        self._record(upstream, outcome, time.perf_counter() - began)
        self.error = map_httpx_error(exc)
        log.warning("upstream %s: %s %s failed: %s", upstream.name, self.make_request.method,
                    self.make_request.path, self.error)

    async def _answered(self, upstream: Upstream, response: httpx.Response, send: Send, receive: Receive | None,
                        seconds: float) -> bool:
        status = response.status_code
        if status == 429 or status >= 500:
            # A 429 means the upstream is up but this key is over its limit: not a breaker failure.
            if status == 429:
                upstream.breaker.release()
            else:
                upstream.breaker.failed()
            self._record(upstream, f"status_{status}", seconds)
            try:
                body = b"".join([chunk async for chunk in response.aiter_raw()])
            except httpx.TransportError as exc:  # not even the error arrived whole: nothing to pass on
                self.error = map_httpx_error(exc)
                return False
            self.failed_answer = FailedAnswer(upstream.name, status, response_headers(response, []), body)
            return False
        upstream.breaker.succeeded()
        if status < 300:  # a quick refusal (400, 404) says little about how fast answers come
            self.router.observe(upstream, seconds)
        self._record(upstream, "ok", seconds)
        self.facts.upstream = upstream.name
        streaming = relay(response, send, self._headers(upstream.name))
        broken = not await (streaming if receive is None else until_disconnect(receive, streaming, default=True))
        if broken:  # the upstream broke off mid-stream (a client that left is not the upstream's failure)
            upstream.breaker.failed()
        return True

    async def _give_up(self, send: Send, candidates: list[Upstream]) -> None:
        if self.failed_answer is not None:
            answer = self.failed_answer
            self.facts.upstream = answer.upstream
            headers = [*answer.headers, *self._headers(answer.upstream)]
            await send({"type": "http.response.start", "status": answer.status, "headers": headers})
            await send({"type": "http.response.body", "body": answer.body, "more_body": False})
            return
        if self.error is not None:
            await self._answer_error(send, self.error)
            return
        wait = min(u.breaker.retry_after() for u in candidates)
        error = NoUpstreamAvailable("Every upstream that serves this request failed repeatedly and is resting; "
                                    "retry later.", code="upstreams_unavailable")
        await self._answer_error(send, error, [(b"retry-after", str(max(1, math.ceil(wait))).encode())])

    async def _answer_error(self, send: Send, error: HTTPError, extra: RawHeaders | None = None) -> None:
        await send_response(send, error.status, error.body(), [*JSON_HEADERS, *(extra or []), *self._headers(None)])

    def _headers(self, upstream: str | None) -> RawHeaders:
        summary = ",".join(f"{a.upstream}:{a.outcome}" for a in self.attempts)
        headers = [(ATTEMPTS_HEADER, summary.encode("latin-1"))] if summary else []
        return headers if upstream is None else [(UPSTREAM_HEADER, upstream.encode("latin-1")), *headers]

    def _record(self, upstream: Upstream, outcome: str, seconds: float) -> None:
        self.attempts.append(Attempt(upstream=upstream.name, outcome=outcome, ms=round(seconds * 1000, 3)))
