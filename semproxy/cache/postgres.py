"""The shared store: PostgreSQL with pgvector, so several semproxy replicas serve one cache.

Entries, exact keys, the tenant salt and the request log live in `semproxy_*` tables; the vector search runs
in the database (an HNSW index, `vector_cosine_ops`). Every write is one transaction, so a replica killed
mid-write leaves all of an entry or none. Connections come from a pool that replaces broken ones by itself:
while the database is down every call raises (the service then forwards uncached) and the next call after
it is back succeeds.

Scope filter and HNSW: a query asks for the nearest vectors *of one scope*. With `hnsw.iterative_scan`
(pgvector 0.8) the index scan goes on until it found `k` rows of the scope instead of returning too few;
for scopes the planner sees are small, the btree on `scope` plus an exact sort wins and is chosen by the
planner itself. bench/pg_bench.py measures both backends (README: "Several replicas").
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from semproxy.cache.backend import Candidates
from semproxy.cache.records import CacheEntry, NewEntry, Vector
from semproxy.errors import CacheFailure, ConfigError

log = logging.getLogger("semproxy.cache")

_MIGRATION_LOCK = 0x53454D50  # advisory lock id ("SEMP"): replicas starting together migrate one at a time
_EVICTION_LOCK = 0x53454D45
# Each migration is applied once, in order, inside one transaction; semproxy_schema_version records them.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE semproxy_meta (key text PRIMARY KEY, value text NOT NULL);
    CREATE TABLE semproxy_entries (
        id bigserial PRIMARY KEY,
        kind text NOT NULL,
        tenant text NOT NULL,
        scope text NOT NULL,
        model text NOT NULL,
        prompt text,
        embedding vector,
        response bytea NOT NULL,
        created_at double precision NOT NULL,
        expires_at double precision,
        last_used_at double precision NOT NULL
    );
    CREATE INDEX semproxy_entries_scope ON semproxy_entries (scope);
    CREATE INDEX semproxy_entries_tenant ON semproxy_entries (tenant);
    CREATE INDEX semproxy_entries_lru ON semproxy_entries (last_used_at, id);
    CREATE INDEX semproxy_entries_expiry ON semproxy_entries (expires_at) WHERE expires_at IS NOT NULL;
    CREATE TABLE semproxy_exact_keys (
        key text PRIMARY KEY,
        entry_id bigint NOT NULL REFERENCES semproxy_entries (id) ON DELETE CASCADE
    );
    CREATE INDEX semproxy_exact_keys_entry ON semproxy_exact_keys (entry_id);
    CREATE TABLE semproxy_requests (
        id bigserial PRIMARY KEY,
        ts double precision NOT NULL, tenant text, model text, upstream text, endpoint text NOT NULL,
        method text NOT NULL, status integer NOT NULL, outcome text NOT NULL, stream integer NOT NULL,
        similarity double precision, verdict text, attempts text, total_ms double precision NOT NULL,
        ttfb_ms double precision, embed_ms double precision, search_ms double precision,
        upstream_ms double precision, prompt_tokens integer NOT NULL, completion_tokens integer NOT NULL,
        compression_saved_tokens integer NOT NULL, hit_saved_tokens integer NOT NULL,
        cost_saved_hit double precision NOT NULL, cost_saved_compression double precision NOT NULL,
        priced integer NOT NULL, prompt_hash text, prompt_text text
    );
    CREATE INDEX semproxy_requests_ts ON semproxy_requests (ts);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
_ENTRY_COLUMNS = "e.id, e.kind, e.tenant, e.scope, e.model, e.prompt, e.response, e.created_at, e.expires_at"


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise ImportError("a postgresql:// store needs psycopg and pgvector: pip install 'semproxy[postgres]'") from exc
    return psycopg


def is_postgres_url(location: object) -> bool:
    """Whether a `store` setting names a PostgreSQL database."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def migrate(url: str, *, connect_timeout: float = 10.0) -> tuple[int, int]:
    """Create or upgrade semproxy's tables; return (version before, version after). Safe to run concurrently."""
    psycopg = _psycopg()
    with psycopg.connect(url, autocommit=True, connect_timeout=max(1, round(connect_timeout))) as db:
        db.execute("CREATE EXTENSION IF NOT EXISTS vector")
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            db.execute("CREATE TABLE IF NOT EXISTS semproxy_schema_version ("
                       "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
            before = int(db.execute("SELECT coalesce(max(version), 0) FROM semproxy_schema_version").fetchone()[0])
            if before > SCHEMA_VERSION:
                raise ConfigError(f"the database's semproxy schema is version {before}, newer than this "
                                  f"semproxy's ({SCHEMA_VERSION}): upgrade semproxy")
            for version in range(before + 1, SCHEMA_VERSION + 1):
                db.execute(MIGRATIONS[version - 1])
                db.execute("INSERT INTO semproxy_schema_version (version) VALUES (%s)", (version,))
            db.execute("INSERT INTO semproxy_meta (key, value) VALUES ('tenant_salt', %s) ON CONFLICT DO NOTHING",
                       (secrets.token_hex(32),))
    return before, SCHEMA_VERSION


@dataclasses.dataclass(frozen=True, kw_only=True)
class HnswParams:
    """The HNSW index's build and search parameters (bench/pg_bench.py chose the defaults)."""

    m: int = 16
    ef_construction: int = 64
    ef_search: int = 100


class PostgresStore:
    """Entries in PostgreSQL, vectors searched by pgvector; shared by every replica that names the database."""

    inline_reads = False  # a read is a round trip to the database: never on the event loop
    shared = True

    def __init__(self, url: str, *, pool_size: int = 10, timeout: float = 2.0,
                 hnsw: HnswParams | None = None, retry_seconds: float = 5.0) -> None:
        self.url, self.hnsw, self.retry_seconds = url, hnsw or HnswParams(), retry_seconds
        migrate(url, connect_timeout=timeout)
        from psycopg_pool import ConnectionPool, PoolTimeout

        self._psycopg, self._pool_timeout = _psycopg(), PoolTimeout
        self._down_until = 0.0

        self._pool = ConnectionPool(
            url, min_size=1, max_size=pool_size, timeout=timeout, open=False, configure=self._configure,
            check=ConnectionPool.check_connection, reconnect_timeout=24 * 3600, name="semproxy",
            kwargs={"connect_timeout": max(1, round(timeout)), "options": "-c statement_timeout=30000"},
        )
        try:
            self._pool.open(wait=True, timeout=timeout + 5)
            self.salt = self._salt()
        except BaseException:
            self._pool.close()  # no reconnecting workers left behind: the service opens a new store later
            raise
        self._flight: Any = None  # one session that holds every single-flight lock of this replica
        self._flight_lock = threading.Lock()

    def _configure(self, db: Any) -> None:
        from pgvector.psycopg import register_vector

        register_vector(db)
        db.execute(f"SET hnsw.ef_search = {int(self.hnsw.ef_search)}")
        db.execute("SET hnsw.iterative_scan = relaxed_order")
        db.commit()

    @contextmanager
    def _db(self) -> Iterator[Any]:
        """A pooled connection inside one transaction (committed at the end, rolled back on an error).

        Once the database could not be reached, calls fail at once for `retry_seconds` instead of each
        waiting `timeout` for it: during an outage requests are forwarded at full speed, and one call per
        interval finds out whether it is back (the pool reconnects in the background meanwhile).
        """
        if time.monotonic() < self._down_until:
            raise CacheFailure("the database was unreachable a moment ago; not trying again yet")
        try:
            with self._pool.connection() as db:
                yield db
        except (self._psycopg.OperationalError, self._pool_timeout) as exc:
            if not isinstance(exc, self._psycopg.errors.QueryCanceled):
                self._down_until = time.monotonic() + self.retry_seconds
            raise

    def _salt(self) -> bytes:
        with self._db() as db:
            return bytes.fromhex(db.execute("SELECT value FROM semproxy_meta WHERE key = 'tenant_salt'").fetchone()[0])

    # ---------------------------------------------------------------- reads

    def get_exact(self, key: str) -> CacheEntry | None:
        with self._db() as db:
            row = db.execute(f"SELECT {_ENTRY_COLUMNS} FROM semproxy_exact_keys k "
                             "JOIN semproxy_entries e ON e.id = k.entry_id WHERE k.key = %s", (key,)).fetchone()
        return None if row is None else _entry(row)

    def nearest(self, scope: str, vector: Vector, k: int, *, min_similarity: float) -> Candidates:
        query = np.asarray(vector, dtype=np.float32)
        with self._db() as db:
            rows = db.execute(
                f"SELECT {_ENTRY_COLUMNS}, e.embedding, e.embedding <=> %b AS distance FROM semproxy_entries e "
                "WHERE e.scope = %s AND e.embedding IS NOT NULL ORDER BY e.embedding <=> %b LIMIT %s",
                (query, scope, query, k), binary=True).fetchall()
        # relaxed_order may return the k rows slightly out of order: sort them again.
        found = [(_entry(row), min(1.0, 1.0 - float(row[-1]))) for row in rows]
        found.sort(key=lambda pair: (-pair[1], pair[0].id))
        return [(entry, similarity) for entry, similarity in found if similarity >= min_similarity]

    def count(self) -> int:
        with self._db() as db:
            return int(db.execute("SELECT count(*) FROM semproxy_entries").fetchone()[0])

    # ---------------------------------------------------------------- writes

    def put(self, entry: NewEntry, *, now: float) -> int:
        key = entry.key
        expires = now + entry.ttl_seconds if entry.ttl_seconds > 0 else None
        vector = None if entry.vector is None else np.asarray(entry.vector, dtype=np.float32)
        with self._db() as db:
            # Replicas storing the same key at once take turns, so neither leaves an entry without its key.
            # (Seed 1: not the single-flight lock on the same key, which the storing replica holds.)
            db.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 1))", (key.exact,))
            removed = db.execute("DELETE FROM semproxy_entries WHERE id IN "
                                 "(SELECT entry_id FROM semproxy_exact_keys WHERE key = %s)", (key.exact,)).rowcount
            entry_id = db.execute(
                "INSERT INTO semproxy_entries (kind, tenant, scope, model, prompt, embedding, response, created_at, "
                "expires_at, last_used_at) VALUES (%s, %s, %s, %s, %s, %b, %s, %s, %s, %s) RETURNING id",
                (key.kind, key.tenant, key.scope, key.model, key.prompt, vector, entry.response, now, expires, now),
            ).fetchone()[0]
            db.execute("INSERT INTO semproxy_exact_keys (key, entry_id) VALUES (%s, %s)", (key.exact, entry_id))
        return int(removed)

    def add_alias(self, key: str, entry_id: int) -> None:
        with self._db() as db:
            db.execute("INSERT INTO semproxy_exact_keys (key, entry_id) SELECT %s, id FROM semproxy_entries "
                       "WHERE id = %s ON CONFLICT (key) DO UPDATE SET entry_id = excluded.entry_id", (key, entry_id))

    def touch(self, used: dict[int, float]) -> None:
        ids, times = list(used), [used[i] for i in used]
        with self._db() as db:
            db.execute("UPDATE semproxy_entries e SET last_used_at = greatest(e.last_used_at, u.at) FROM "
                       "(SELECT unnest(%s::bigint[]) AS id, unnest(%s::float8[]) AS at) u WHERE e.id = u.id",
                       (ids, times))

    def delete_expired(self, *, now: float) -> int:
        with self._db() as db:
            return int(db.execute("DELETE FROM semproxy_entries WHERE expires_at IS NOT NULL "
                                  "AND expires_at <= %s", (now,)).rowcount)

    def evict(self, *, keep: int) -> int:
        with self._db() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_EVICTION_LOCK,))  # replicas evict one at a time
            excess = int(db.execute("SELECT count(*) FROM semproxy_entries").fetchone()[0]) - keep
            if excess <= 0:
                return 0
            return int(db.execute("DELETE FROM semproxy_entries WHERE id IN (SELECT id FROM semproxy_entries "
                                  "ORDER BY last_used_at, id LIMIT %s)", (excess,)).rowcount)

    def clear(self, *, tenant: str | None = None) -> int:
        with self._db() as db:
            if tenant is None:
                return int(db.execute("DELETE FROM semproxy_entries").rowcount)
            return int(db.execute("DELETE FROM semproxy_entries WHERE tenant = %s", (tenant,)).rowcount)

    # ---------------------------------------------------------------- vectors

    def enable_vectors(self, dimension: int, *, now: float) -> None:
        """Fix the embedding column's size (first start) and build the HNSW index on it, if not there yet."""
        with self._db() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            row = db.execute("SELECT value FROM semproxy_meta WHERE key = 'vector_dimension'").fetchone()
            if row is not None and int(row[0]) != dimension:
                raise ConfigError(f"the database holds {row[0]}-dimensional embeddings but the model makes "
                                  f"{dimension}: use another database or `semproxy cache clear` it first")
            if row is None:
                db.execute("DELETE FROM semproxy_entries WHERE embedding IS NOT NULL")
                db.execute(f"ALTER TABLE semproxy_entries ALTER COLUMN embedding TYPE vector({int(dimension)})")
                db.execute("INSERT INTO semproxy_meta (key, value) VALUES ('vector_dimension', %s)", (str(dimension),))
            db.execute(self.index_sql())

    def index_sql(self) -> str:
        """The statement that creates the HNSW index (bench/pg_bench.py runs it after a bulk load)."""
        return (f"CREATE INDEX IF NOT EXISTS semproxy_entries_hnsw ON semproxy_entries USING hnsw "
                f"(embedding vector_cosine_ops) WITH (m = {int(self.hnsw.m)}, "
                f"ef_construction = {int(self.hnsw.ef_construction)})")

    def maintain(self) -> None:
        """Nothing to do: PostgreSQL maintains the HNSW index as rows come and go (autovacuum cleans it)."""

    # ---------------------------------------------------------------- single flight across replicas

    def try_lock(self, key: str) -> bool:
        """Take this replica's lock on a request key unless another replica holds it."""
        if time.monotonic() < self._down_until:
            raise CacheFailure("the database was unreachable a moment ago; not trying again yet")
        with self._flight_lock:
            try:
                db = self._flight_session()
                return bool(db.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)).fetchone()[0])
            except Exception:
                self._drop_flight_session()
                self._down_until = time.monotonic() + self.retry_seconds
                raise

    def unlock(self, key: str) -> None:
        """Release a lock taken with try_lock."""
        with self._flight_lock:
            if self._flight is None:
                return  # the session ended, and its locks with it
            try:
                self._flight.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))
            except Exception:
                self._drop_flight_session()
                raise

    def _flight_session(self) -> Any:
        if self._flight is None or self._flight.closed:
            timeout = max(1, round(self._pool.timeout))
            self._flight = _psycopg().connect(self.url, autocommit=True, connect_timeout=timeout)
        return self._flight

    def _drop_flight_session(self) -> None:
        if self._flight is not None:
            self._flight.close()
        self._flight = None

    def close(self) -> None:
        with self._flight_lock:
            self._drop_flight_session()
        self._pool.close()


def _entry(row: Any) -> CacheEntry:
    vector = row[9] if len(row) > 10 else None
    return CacheEntry(
        id=int(row[0]), kind=row[1], tenant=row[2], scope=row[3], model=row[4], prompt=row[5],
        response=bytes(row[6]), created_at=float(row[7]), expires_at=None if row[8] is None else float(row[8]),
        vector=None if vector is None else np.asarray(vector.to_numpy(), dtype=np.float32),
    )
