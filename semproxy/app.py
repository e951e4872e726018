"""The composition root: the only place that picks concrete classes and wires them together.

    SemanticCacheMiddleware( CompressionMiddleware( route: /v1/* -> UpstreamProxy(Router, httpx transport),
                                                           else Starlette(/healthz) ) )
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from functools import partial

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from semproxy.cache.embedder import Embedder, SentenceTransformerEmbedder
from semproxy.cache.index import FaissIndex
from semproxy.cache.service import CachePolicy, SemanticCache
from semproxy.cache.store import SqliteStore
from semproxy.compress.compressor import Compressor, SpanSafeCompressor
from semproxy.compress.models import resolve_compression_model
from semproxy.compress.scorers import PerplexityScorer, TokenClassifierScorer, load_prompt_compressor
from semproxy.compress.service import CompressionPolicy, CompressionService
from semproxy.compress.tokens import install_offline_encodings
from semproxy.config import Settings
from semproxy.errors import error_body
from semproxy.middleware.asgi import ASGIApp, Receive, Scope, Send
from semproxy.middleware.cache import SemanticCacheMiddleware
from semproxy.middleware.compression import CompressionMiddleware
from semproxy.upstream.config import UpstreamConfig
from semproxy.upstream.proxy import UpstreamProxy
from semproxy.upstream.routing import Router, RoutingPolicy


def build_cache(
    settings: Settings,
    *,
    load_embedder: Callable[[], Embedder] | None = None,
    clock: Callable[[], float] = time.time,
) -> SemanticCache:
    """The embedded cache: SQLite entries, per-scope FAISS indexes, a sentence-transformers embedder."""
    if load_embedder is None and settings.semantic_enabled:
        load_embedder = partial(SentenceTransformerEmbedder, settings.embedding_model)
    policy = CachePolicy(
        threshold=settings.similarity_threshold, top_k=settings.semantic_top_k, ttl_seconds=settings.ttl_seconds,
        max_entries=settings.max_entries, embed_batch_size=settings.embed_batch_size,
    )
    return SemanticCache(
        open_store=partial(SqliteStore, settings.db_path),
        load_embedder=load_embedder if settings.semantic_enabled else None,
        make_index=partial(FaissIndex, large_scope_entries=settings.large_scope_entries),
        policy=policy,
        clock=clock,
    )


def build_compression(settings: Settings) -> CompressionService:
    """The compression service: LLMLingua scoring, protected spans, results stored in the data dir."""
    policy = CompressionPolicy(
        rate=settings.compression_rate, min_tokens=settings.compression_min_tokens, wait=settings.compression_wait,
        fingerprint="|".join([settings.compression_method, settings.compression_model,
                              settings.compression_keep_start, settings.compression_keep_end]),
    )
    return CompressionService(load_compressor=partial(load_compressor, settings),
                              db_path=settings.data_dir / "compression.sqlite3", policy=policy)


def load_compressor(settings: Settings) -> Compressor:
    """Make tiktoken offline, prepare the model folder, load it into llmlingua (slow: run it off the loop)."""
    install_offline_encodings(settings.data_dir / "tiktoken")
    model = resolve_compression_model(settings.compression_model, models_dir=settings.data_dir / "models")
    llmlingua2 = settings.compression_method == "llmlingua2"
    prompt_compressor = load_prompt_compressor(model, llmlingua2=llmlingua2)
    scorer = TokenClassifierScorer(prompt_compressor) if llmlingua2 else PerplexityScorer(prompt_compressor)
    return SpanSafeCompressor(scorer, keep_markers=(settings.compression_keep_start, settings.compression_keep_end))


def compression_layer(app: ASGIApp, settings: Settings, service: CompressionService | None = None) -> ASGIApp:
    """`app` behind the compression middleware, if compression is on."""
    if not settings.compression_enabled:
        return app
    return CompressionMiddleware(app, service=service or build_compression(settings),
                                 max_body_bytes=settings.max_body_bytes)


def _compression_state(service: CompressionService | None) -> str:
    if service is None:
        return "off"
    if service.problem is not None:
        return f"failed: {service.problem}"
    return "ready" if service.ready else "loading"


def build_transport() -> httpx.AsyncBaseTransport:
    """The upstream connection pool."""
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=128, keepalive_expiry=60)
    return httpx.AsyncHTTPTransport(limits=limits)


def upstream_configs(settings: Settings) -> tuple[UpstreamConfig, ...]:
    """The configured upstreams, or the single `upstream` (every model; the client's key passes through)."""
    if settings.upstreams:
        return settings.upstreams
    return (UpstreamConfig(name="default", url=settings.upstream, api_key=settings.upstream_api_key),)


def build_upstream(settings: Settings, transport: httpx.AsyncBaseTransport, *,
                   clock: Callable[[], float] = time.monotonic) -> UpstreamProxy:
    """The forwarding app: routing by model, failover, circuit breakers (`clock` drives their cooldown)."""
    policy = RoutingPolicy(
        max_attempts=settings.failover_max_attempts, deadline=settings.failover_deadline,
        breaker_failures=settings.breaker_failures, breaker_cooldown=settings.breaker_cooldown,
        latency_alpha=settings.latency_alpha, latency_probe_interval=settings.latency_probe_interval,
    )
    router = Router(upstream_configs(settings), policy=policy, clock=clock,
                    connect_timeout=settings.upstream_connect_timeout, read_timeout=settings.upstream_read_timeout)
    return UpstreamProxy(transport, router, body_limit=settings.max_body_bytes)


def build_app(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    cache: SemanticCache | None = None,
    compression: CompressionService | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ASGIApp:
    """The stand-alone proxy. `transport` replaces the network (tests pass an httpx.MockTransport);
    `clock` drives the circuit breakers' cooldowns and latency freshness."""
    cache = cache or build_cache(settings)
    transport = transport or build_transport()
    proxy = build_upstream(settings, transport, clock=clock)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await transport.aclose()

    compression = compression or (build_compression(settings) if settings.compression_enabled else None)

    async def healthz(_: Request) -> JSONResponse:
        status, report = cache.health() if settings.cache_enabled else (200, {"status": "ok", "cache": False})
        report["compression"] = _compression_state(compression)
        return JSONResponse(report, status_code=status)

    async def not_found(request: Request, _: Exception) -> Response:
        body = error_body(f"Unknown path {request.url.path}; semproxy serves /v1/* and /healthz.",
                          error_type="invalid_request_error", code="not_found")
        return Response(body, status_code=404, media_type="application/json")

    service = Starlette(routes=[Route("/healthz", healthz)], lifespan=lifespan, exception_handlers={404: not_found})

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        # The API goes straight to the proxy: Starlette's router and error middlewares cost more per request
        # than everything else semproxy adds to a forwarded one.
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            await proxy(scope, receive, send)
        else:
            await service(scope, receive, send)

    return SemanticCacheMiddleware(compression_layer(route, settings, compression), settings=settings, cache=cache)
