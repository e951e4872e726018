"""CacheMiddleware: the exact + semantic response cache as a pure ASGI layer.

It sits in front of anything that answers OpenAI-shaped requests: semproxy's own upstream proxy, or a
Starlette / FastAPI app's routes (middleware mode). It is given its cache; `semproxy.app` builds both.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio.to_thread

from semproxy.cache.answers import reproducible, same_answer
from semproxy.cache.keys import make_key, uncacheable_reason
from semproxy.cache.records import AuditPlan, CacheHit, Controls, Lookup, Verdict
from semproxy.cache.service import SemanticCache
from semproxy.cache.singleflight import SingleFlight
from semproxy.config import Settings
from semproxy.errors import HTTPError, RequestError
from semproxy.middleware import controls
from semproxy.middleware.capture import ResponseCapture
from semproxy.middleware.timing_mask import LatencySamples
from semproxy.openai import JSON, Kind, is_stream, parse_body, replay_stream, wants_usage_chunk
from semproxy.storage.records import CacheKey
from semproxy.types import (
    JSON_HEADERS,
    SSE_HEADERS,
    ASGIApp,
    ByteBudget,
    RawHeaders,
    Receive,
    Scope,
    Send,
    facts,
    header,
    lifespan_hooks,
    read_body,
    replay,
    route_path,
    send_response,
)

log = logging.getLogger("semproxy.cache")

DEFAULT_ROUTES: Mapping[str, Kind] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completion",
    "/v1/embeddings": "embedding",
}


HEALTH_PATH = "/semproxy/healthz"  # in middleware mode too, where the app's own /healthz may mean something else


class CacheMiddleware:
    """Answers repeated and near-duplicate requests from the cache; forwards and stores the rest."""

    def __init__(self, app: ASGIApp, *, settings: Settings, cache: SemanticCache,
                 routes: Mapping[str, Kind] = DEFAULT_ROUTES, held: ByteBudget | None = None,
                 health: Callable[[], tuple[int, dict[str, Any]]] | None = None) -> None:
        self.app = app
        self.health = health or cache.health  # the composition root adds the other layers' state
        self.settings = settings
        self.cache = cache
        self.routes = dict(routes)
        self.flights = SingleFlight()
        self.latencies = LatencySamples()  # for mask_hit_timing
        # Non-stream answers held to be checked before they are stored, all requests together.
        self.held = held or ByteBudget(settings.max_held_bytes)
        self._starting: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, lifespan_hooks(receive, on_startup=self.start, on_shutdown=self.cache.close), send)
            return
        if scope["type"] == "http":
            facts(scope)  # created here if no outer layer did, shared by the inner layers' copies of the scope
        path = route_path(scope) if scope["type"] == "http" else None
        if path == HEALTH_PATH:
            self.start()
            status, report = self.health()
            await send_response(send, status, json.dumps(report).encode(), JSON_HEADERS)
            return
        kind = self.routes.get(path) if path is not None else None
        if kind is None or scope["method"] != "POST" or not self.settings.cache_enabled:
            await self.app(scope, receive, send)
            return
        self.start()
        await CacheResponder(self, kind)(scope, receive, send)

    def start(self) -> None:
        """Start the cache in the background (idempotent): models load while requests are forwarded."""
        if self._starting is None and self.settings.cache_enabled:
            self._starting = asyncio.get_running_loop().create_task(self.cache.start())



class CacheResponder:
    """The state of one request through the cache."""

    def __init__(self, middleware: CacheMiddleware, kind: Kind) -> None:
        self.middleware = middleware
        self.cache = middleware.cache
        self.settings = middleware.settings
        self.kind = kind
        self.shared = False  # whether the request reads a shared namespace

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.facts = facts(scope)
        self.started = time.perf_counter()
        self.arrived = time.time()  # an erasure of the tenant after this drops what the request would store
        try:
            raw = await read_body(receive, limit=self.settings.max_body_bytes,
                                  declared=header(scope, b"content-length"))
            body = parse_body(self.kind, raw)
            request_controls = controls.read_controls(scope)
            key = self._key(scope, body)
        except HTTPError as exc:
            await send_response(send, exc.status, exc.body(), JSON_HEADERS)
            return
        scope = _identity_encoding(scope)
        receive = replay(raw, receive)
        if key is None or not (request_controls.lookup or request_controls.store):
            self.facts.cache = "bypass"
            bypass = ResponseCapture(send, kind=self.kind, stream=is_stream(body), outcome="bypass", store=None,
                                     budget=self.middleware.held)
            await self._answer_through(scope, receive, bypass)
            return
        await self._cached(scope, receive, send, body, key, request_controls)

    def _key(self, scope: Scope, body: JSON) -> CacheKey | None:
        """The request's cache key, or None if it must not be cached (or the store is not open yet)."""
        reason = uncacheable_reason(body, max_temperature=self.settings.max_temperature)
        if reason is not None or not self.cache.store_ready:
            return None
        namespace = controls.namespace(scope, configured=self.settings.namespace,
                                       header_allowed=self.settings.allow_namespace_header)
        tenant = self.cache.tenant(api_key=controls.api_key(scope), namespace=namespace)
        self.shared = namespace is not None
        try:
            return make_key(self.kind, body, tenant=tenant)
        except RecursionError as exc:  # parsed, but too deep to serialize again at this depth of the stack
            raise RequestError("The JSON body of your request is nested too deeply.", code="invalid_json") from exc

    async def _cached(self, scope: Scope, receive: Receive, send: Send, body: JSON, key: CacheKey,
                      request_controls: Controls) -> None:
        if not request_controls.lookup:  # no-cache: refresh the entry, embedded as usual
            lookup = Lookup(hit=None, embedding=await self.cache.embed(key))
            await self._forward(scope, receive, send, body, key, request_controls, lookup, "bypass")
            return
        # A reproducible answer can be compared with a candidate's (audited hits); it must be kept to be compared.
        comparable = request_controls.store and reproducible(body)
        lookup = await self.cache.lookup(key, threshold=request_controls.threshold, comparable=comparable)
        if lookup.hit is not None:
            await self._send_hit(send, body, lookup.hit)
            return
        async with self.middleware.flights.lead(key.exact) as leader:
            if not leader:  # an identical request just went upstream: its answer is probably stored now
                lookup = await self.cache.lookup(key, threshold=request_controls.threshold, comparable=comparable)
                if lookup.hit is not None:
                    await self._send_hit(send, body, lookup.hit)
                    return
            # Replicas sharing a database: one of them forwards, the others wait for its stored answer.
            async with self.cache.replica_flight(key, threshold=request_controls.threshold) as hit:
                if hit is not None:
                    await self._send_hit(send, body, hit)
                    return
                audit = lookup.compare is not None and lookup.compare.audit
                await self._forward(scope, receive, send, body, key, request_controls, lookup,
                                    "audit" if audit else "miss")

    async def _forward(self, scope: Scope, receive: Receive, send: Send, body: JSON, key: CacheKey,
                       request_controls: Controls, lookup: Lookup, outcome: str) -> None:
        async def store(response: bytes) -> None:
            if lookup.compare is not None:
                await self._compare(key, lookup.compare, response)
            await self.cache.put(key, response, embedding=lookup.embedding, ttl_seconds=request_controls.ttl_seconds,
                                 asked_at=self.arrived)

        self.facts.cache = outcome
        headers: RawHeaders = []
        if lookup.rejected is not None:  # a near prompt was found but its answer does not fit: say why
            self._note_verdict(lookup.rejected, headers)
        capture = ResponseCapture(send, kind=self.kind, stream=is_stream(body), outcome=outcome,
                                  store=store if request_controls.store else None, headers=headers,
                                  budget=self.middleware.held)
        await self._answer_through(scope, receive, capture)
        if self.settings.mask_hit_timing and capture.status is not None and 200 <= capture.status < 300:
            stream = is_stream(body)
            end = capture.first_byte_at if stream else time.perf_counter()
            if end is not None:
                self.middleware.latencies.observe(stream=stream, seconds=end - self.started)

    async def _compare(self, key: CacheKey, compared: AuditPlan, fresh: bytes) -> None:
        """Was the candidate's answer the fresh one? Logged with the request, kept for the learned bars."""
        # Both answers are parsed and compared word by word: off the event loop, as large answers are.
        same = await anyio.to_thread.run_sync(same_answer, self.kind, compared.entry.response, fresh)
        if same is None:
            return
        self.facts.audit_wrong = not same
        if compared.audit:
            self.facts.audit_weight = compared.weight
        self.facts.similarity = compared.similarity
        await self.cache.observe(key, compared, wrong=not same, asked_at=self.arrived)

    async def _answer_through(self, scope: Scope, receive: Receive, capture: ResponseCapture) -> None:
        """The app's answer, through `capture`; what it held against the budget is given back whatever happens."""
        try:
            await self.middleware.app(scope, receive, capture)
            await capture.finish()
        finally:
            capture.close()

    def _note_verdict(self, verdict: Verdict, headers: RawHeaders) -> None:
        """The verifier's verdict for the log and the client. Its reason may quote the cached prompt: in a shared
        namespace that is someone else's, and the log keeps prompt words only where stats_prompt_chars allows."""
        self.facts.verdict = verdict.header(quote_prompts=self.settings.stats_prompt_chars > 0)
        headers.append((b"x-semproxy-verdict", _header_value(verdict.header(quote_prompts=not self.shared))))

    async def _send_hit(self, send: Send, body: JSON, hit: CacheHit) -> None:
        if self.settings.mask_hit_timing and self.shared:  # look like a miss (see timing_mask.py)
            wait = self.middleware.latencies.draw(stream=is_stream(body)) - (time.perf_counter() - self.started)
            if wait > 0:
                await asyncio.sleep(wait)
        self.facts.cache, self.facts.similarity = hit.tier, hit.similarity
        headers = [(b"x-semproxy-cache", hit.tier.encode())]
        if hit.similarity is not None:
            headers.append((b"x-semproxy-similarity", f"{hit.similarity:.4f}".encode()))
        if hit.verdict is not None:
            self._note_verdict(hit.verdict, headers)
        if is_stream(body) and self.kind != "embedding":
            completion: dict[str, Any] = json.loads(hit.entry.response)
            events = b"".join(replay_stream(self.kind, completion, include_usage=wants_usage_chunk(body)))
            await send_response(send, 200, events, SSE_HEADERS + headers)
        else:
            await send_response(send, 200, hit.entry.response, JSON_HEADERS + headers)


def _header_value(text: str) -> bytes:
    """Text safe for an HTTP header: ASCII, one line (names in a reason may be in any language)."""
    return " ".join(text.split()).encode("ascii", "backslashreplace")


def _identity_encoding(scope: Scope) -> Scope:
    """Ask the upstream for an uncompressed answer, so the cache can read what it stores."""
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"accept-encoding"]
    return {**scope, "headers": [*headers, (b"accept-encoding", b"identity")]}
