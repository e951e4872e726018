"""The composition root: the only place that picks concrete classes and wires them together.

    StatsMiddleware( SemanticCacheMiddleware( CompressionMiddleware( UpstreamTimer(
        route: /v1/* -> UpstreamProxy(Router, httpx transport), else Starlette(/healthz) ) ) ) )
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from semproxy.cache.backend import EmbeddedStore, SemanticStore
from semproxy.cache.embedder import Embedder, SentenceTransformerEmbedder
from semproxy.cache.index import FaissIndex
from semproxy.cache.service import CachePolicy, SemanticCache
from semproxy.cache.verifier import HitVerifier
from semproxy.compress.compressor import Compressor, SpanSafeCompressor
from semproxy.compress.models import resolve_compression_model
from semproxy.compress.scorers import PerplexityScorer, TokenClassifierScorer, load_prompt_compressor
from semproxy.compress.service import CompressionPolicy, CompressionService
from semproxy.compress.tokens import count_tokens, install_offline_encodings
from semproxy.config import Settings
from semproxy.errors import error_body
from semproxy.middleware import controls
from semproxy.middleware.asgi import ASGIApp, Receive, Scope, Send
from semproxy.middleware.cache import SemanticCacheMiddleware
from semproxy.middleware.compression import CompressionMiddleware
from semproxy.middleware.stats import AdminAccess, StatsMiddleware, UpstreamTimer
from semproxy.stats.log import RequestLog, TokenCounter
from semproxy.stats.metrics import Metrics
from semproxy.stats.prices import PriceTable
from semproxy.upstream.config import UpstreamConfig
from semproxy.upstream.proxy import UpstreamProxy
from semproxy.upstream.routing import Router, RoutingPolicy

log = logging.getLogger("semproxy")


def build_cache(
    settings: Settings,
    *,
    load_embedder: Callable[[], Embedder] | None = None,
    clock: Callable[[], float] = time.time,
) -> SemanticCache:
    """The cache: the store (embedded SQLite + FAISS, or a shared PostgreSQL), a sentence-transformers embedder."""
    if load_embedder is None and settings.semantic_enabled:
        load_embedder = partial(SentenceTransformerEmbedder, settings.embedding_model)
    policy = CachePolicy(
        threshold=settings.similarity_threshold, top_k=settings.semantic_top_k, ttl_seconds=settings.ttl_seconds,
        max_entries=settings.max_entries, embed_batch_size=settings.embed_batch_size, flight_wait=settings.flight_wait,
    )
    return SemanticCache(
        open_store=partial(open_store, settings),
        load_embedder=load_embedder if settings.semantic_enabled else None,
        load_verifier=partial(HitVerifier.packaged, max_false_hit_rate=settings.max_false_hit_rate)
        if settings.verify_hits else None,
        policy=policy,
        clock=clock,
    )


def open_store(settings: Settings) -> SemanticStore:
    """The configured store, opened (and, for PostgreSQL, migrated); blocking."""
    if settings.store is None:
        return EmbeddedStore(settings.db_path,
                             make_index=partial(FaissIndex, large_scope_entries=settings.large_scope_entries))
    from semproxy.cache.postgres import HnswParams, PostgresStore

    hnsw = HnswParams(m=settings.hnsw_m, ef_construction=settings.hnsw_ef_construction,
                      ef_search=settings.hnsw_ef_search)
    return PostgresStore(settings.store, pool_size=settings.postgres_pool_size, timeout=settings.postgres_timeout,
                         hnsw=hnsw)


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


def stats_layer(app: ASGIApp, settings: Settings, cache: SemanticCache, *, proxy_mode: bool = True) -> ASGIApp:
    """`app` behind the statistics layer (request log, Prometheus metrics, admin endpoints), if it is on."""
    if not settings.stats_enabled:
        return app
    entries = partial(_count_entries, settings.db_path) if settings.store is None else cache.entry_count
    metrics = Metrics(cache_entries=entries)
    request_log = RequestLog(
        settings.stats_location, prices=PriceTable(settings.prices), count=partial(_token_counter, settings.data_dir),
        retention_days=settings.stats_retention_days, prompt_chars=settings.stats_prompt_chars,
        listeners=[metrics.observe],
    )
    metrics.dropped.set_function(lambda: request_log.dropped)
    return StatsMiddleware(
        app, log=request_log, metrics=metrics, access=AdminAccess(settings.admin_token, settings.admin_remote),
        tenant_of=partial(_tenant_of, settings, cache),
        default_upstream=urllib.parse.urlsplit(settings.upstream).netloc if proxy_mode else "app",
        # In middleware mode the app's own /metrics (if any) stays the app's.
        metrics_paths=("/metrics", "/semproxy/metrics") if proxy_mode else ("/semproxy/metrics",),
        max_body_bytes=settings.max_body_bytes, show_prompt_text=settings.stats_prompt_chars > 0,
    )


def middleware_layers(app: ASGIApp, cache_layer: ASGIApp, settings: Settings,
                      cache: SemanticCache) -> tuple[ASGIApp, ASGIApp]:
    """Middleware mode: (what the cache layer wraps, what wraps the cache layer) around the user's app."""
    inner = compression_layer(UpstreamTimer(app), settings)
    return inner, stats_layer(cache_layer, settings, cache, proxy_mode=False)


def _tenant_of(settings: Settings, cache: SemanticCache, scope: Scope) -> str | None:
    """The request's tenant hash, the same the cache uses (None until the cache's store is open)."""
    if not cache.store_ready:
        return None
    namespace = controls.namespace(scope, configured=settings.namespace,
                                   header_allowed=settings.allow_namespace_header)
    return cache.tenant(api_key=controls.api_key(scope), namespace=namespace)


def _token_counter(data_dir: Path) -> TokenCounter:
    """tiktoken, offline; a rough four-characters-a-token estimate if its encodings are missing."""
    try:
        install_offline_encodings(data_dir / "tiktoken")
        count_tokens("warm up", "gpt-4o")
        return count_tokens
    except Exception:
        log.exception("tiktoken is unavailable; token counts without `usage` are estimated from characters")
        return lambda text, _model: (len(text) + 3) // 4


def _count_entries(db_path: Path) -> float:
    """Entries in the cache, read from its SQLite file (for the metrics gauge)."""
    if not db_path.exists():
        return 0.0
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        return float(db.execute("SELECT count(*) FROM entries").fetchone()[0])
    except sqlite3.Error:
        return float("nan")
    finally:
        db.close()


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
    # Named after its host, so headers and statistics say where requests went (e.g. "api.mistral.ai").
    name = httpx.URL(settings.upstream).host or "default"
    return (UpstreamConfig(name=name, url=settings.upstream, api_key=settings.upstream_api_key),)


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

    inner = compression_layer(UpstreamTimer(route), settings, compression)
    return stats_layer(SemanticCacheMiddleware(inner, settings=settings, cache=cache), settings, cache)
