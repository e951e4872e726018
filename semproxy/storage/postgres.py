"""The shared backend: PostgreSQL with pgvector, so several semproxy replicas serve one cache and one log.

Everything goes through one connection pool: the cache's reads and writes, the request log's batches,
reports, and the one session per replica that holds its single-flight locks (taken from the same pool and
kept). The pool replaces broken connections by itself. Once the database could not be reached, calls fail
at once for `retry_seconds` instead of each waiting `timeout` for it: during an outage requests are
forwarded at full speed, and one call per interval finds out whether it is back.

Schema changes are numbered migrations in one list (postgres_schema.py), applied in order at open.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import numpy as np

from semproxy.errors import CacheFailure
from semproxy.storage.postgres_schema import migrate
from semproxy.storage.requests import LogQueries
from semproxy.storage.sql import Dialect, EntryQueries

# Advisory lock id ("SEMR"): writes of entries and log rows hold it shared, an erasure exclusively. So a write
# that did not see an erasure's note commits before the erasure deletes (and its rows go with the rest), or
# waits and sees the note: READ COMMITTED alone would let a write slip between the two.
ERASURE_LOCK = 0x53454D52

DIALECT = Dialect(
    entries="semproxy_entries", exact_keys="semproxy_exact_keys", requests="semproxy_requests",
    erasures="semproxy_erasures", audits="semproxy_audits", vector="embedding",
    mark="%s", greatest="greatest", floor="floor({})", to_vector=lambda v: np.asarray(v, dtype=np.float32),
    from_vector=lambda v: np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, dtype=np.float32),
)


def psycopg_module() -> Any:
    """psycopg, with the hint to install the extra when it is missing."""
    try:
        import psycopg
    except ImportError as exc:
        raise ImportError("a postgresql:// store needs psycopg and pgvector: pip install 'semproxy[postgres]'") from exc
    return psycopg


@dataclasses.dataclass(frozen=True, kw_only=True)
class HnswParams:
    """The HNSW index's build and search parameters (defaults chosen at 1,000,000 entries by bench/pg_bench.py)."""

    m: int = 24
    ef_construction: int = 128
    ef_search: int = 200


class PostgresStorage:
    """The shared backend for one database URL: its schema, and this process's pool."""

    shared = True  # other replicas serve the same entries: misses take the single-flight lock first

    def __init__(self, url: str, *, pool_size: int = 10, timeout: float = 2.0, hnsw: HnswParams | None = None,
                 retry_seconds: float = 5.0) -> None:
        self.url, self.timeout, self.retry_seconds = url, timeout, retry_seconds
        self.hnsw = hnsw or HnswParams()
        self.pool_size = pool_size
        self.entries = EntryQueries(DIALECT)
        self.log = LogQueries(DIALECT)
        self._pool: Any = None
        self._open_lock = threading.Lock()
        self._down_until = 0.0

    # ---------------------------------------------------------------- connections

    def open(self) -> None:
        """Migrate the schema and open the pool (once; cheap after that). Raises while the database is down."""
        if self._pool is not None:
            return
        with self._open_lock:
            if self._pool is not None:
                return
            self._check_up()
            try:
                migrate(self.url, connect_timeout=self.timeout)
                self._pool = self._open_pool()
            except psycopg_module().OperationalError:
                self._down_until = time.monotonic() + self.retry_seconds
                raise

    def _open_pool(self) -> Any:
        from psycopg_pool import ConnectionPool

        # +1: the single-flight session is taken from the pool for good.
        pool = ConnectionPool(
            self.url, min_size=1, max_size=self.pool_size + 1, timeout=self.timeout, open=False,
            configure=self._configure, check=ConnectionPool.check_connection, reconnect_timeout=24 * 3600,
            name="semproxy", kwargs={"connect_timeout": max(1, round(self.timeout)),
                                     "options": "-c statement_timeout=30000"},
        )
        try:
            pool.open(wait=True, timeout=self.timeout + 5)
        except BaseException:
            pool.close()  # no reconnecting workers left behind: a later open() makes a new pool
            raise
        return pool

    def _configure(self, db: Any) -> None:
        from pgvector.psycopg import register_vector

        register_vector(db)
        db.execute(f"SET hnsw.ef_search = {int(self.hnsw.ef_search)}")
        db.execute("SET hnsw.iterative_scan = relaxed_order")
        db.commit()

    def _check_up(self) -> None:
        if time.monotonic() < self._down_until:
            raise CacheFailure("the database was unreachable a moment ago; not trying again yet")

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Note when the database cannot be reached, so that calls fail at once for a while (see above)."""
        from psycopg_pool import PoolTimeout

        psycopg = psycopg_module()
        try:
            yield
        except (psycopg.OperationalError, PoolTimeout) as exc:
            if not isinstance(exc, psycopg.errors.QueryCanceled):
                self._down_until = time.monotonic() + self.retry_seconds
            raise

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """A pooled connection inside one transaction (committed at the end, rolled back on an error)."""
        self.open()
        self._check_up()
        with self.watching(), self._pool.connection() as db:
            yield db

    def session(self) -> Any:
        """A connection of the pool kept out of it (autocommit), for session-level advisory locks."""
        self.open()
        self._check_up()
        with self.watching():
            db = self._pool.getconn()
        db.autocommit = True
        return db

    def end_session(self, db: Any) -> None:
        """Give a session back to the pool, its locks released (a broken one is dropped: the pool makes another)."""
        if not db.closed and not db.broken:
            with contextlib.suppress(Exception):
                db.execute("SELECT pg_advisory_unlock_all()")
                db.autocommit = False  # pooled connections hand out transactions
        if self._pool is not None:
            self._pool.putconn(db)
        else:
            db.close()

    @contextlib.contextmanager
    def reading_log(self) -> Iterator[Any]:
        """A connection for the report's queries (the log table always exists once migrated)."""
        with self.transaction() as db:
            yield db

    # ---------------------------------------------------------------- meta, log, maintenance

    def tenant_salt(self) -> bytes:
        """The per-installation salt of tenant hashes, shared by every replica."""
        return bytes.fromhex(self._meta("tenant_salt", secrets.token_hex(32)))

    def log_key(self) -> bytes:
        """The key of prompt hashes, shared by every replica."""
        return bytes.fromhex(self._meta("prompt_hash_key", secrets.token_hex(32)))

    def _meta(self, key: str, default: str) -> str:
        with self.transaction() as db:
            db.execute("INSERT INTO semproxy_meta (key, value) VALUES (%s, %s) ON CONFLICT DO NOTHING", (key, default))
            return str(db.execute("SELECT value FROM semproxy_meta WHERE key = %s", (key,)).fetchone()[0])

    def append_requests(self, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
        """Append log rows in one transaction (those of requests older than their tenant's erasure are dropped)."""
        with self.transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock_shared(%s)", (ERASURE_LOCK,))
            self.log.insert(db, columns, rows)

    def delete_requests_before(self, ts: float) -> int:
        """Apply the log's retention."""
        with self.transaction() as db:
            return self.log.delete_before(db, ts)

    def count_entries(self) -> int:
        """How many cache entries exist (every replica's)."""
        with self.transaction() as db:
            return self.entries.count(db)

    def count_by_space(self) -> dict[str | None, int]:
        """Cache entries per vector space (see EntryQueries.count_by_space)."""
        with self.transaction() as db:
            return self.entries.count_by_space(db)

    def clear_entries(self, *, tenants: Collection[str] | None = None) -> int:
        """Remove every cache entry, or those of these tenants, for every replica."""
        with self.transaction() as db:
            return len(self.entries.delete_tenants(db, tenants))

    def erase_tenants(self, tenants: Collection[str], *, now: float | None = None) -> tuple[int, int]:
        """Erase tenants from the cache and the log in one transaction, for every replica; (entries, log rows).
        What their requests begun before `now` (in flight, or queued for a replica's log) write later is
        dropped (see semproxy.storage.sql). PostgreSQL reuses the space of deleted rows once VACUUM has run
        (autovacuum does)."""
        at = time.time() if now is None else now
        with self.transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (ERASURE_LOCK,))
            entries = len(self.entries.erase_tenants(db, tenants, now=at))  # notes the erasure for the log too
            return entries, self.log.delete_tenants(db, sorted(tenants))

    def close(self) -> None:
        """Close the pool."""
        with self._open_lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
