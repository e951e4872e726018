"""The cache's entries on PostgreSQL: exact keys and a pgvector search, shared by every replica.

The vector search runs in the database (an HNSW index, `vector_cosine_ops`). A query asks for the nearest
vectors *of one scope*: with `hnsw.iterative_scan` (pgvector 0.8) the index scan goes on until it found `k`
rows of the scope instead of returning too few; for scopes the planner sees are small, the btree on `scope`
plus an exact sort wins and the planner chooses it itself. bench/pg_bench.py measures both backends.

Single flight across replicas: the replica that forwards a request holds a session-level advisory lock on
its key until the answer is stored; the others see the lock taken and wait for the stored answer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from semproxy.errors import ConfigError
from semproxy.storage.postgres import ERASURE_LOCK, PostgresStorage
from semproxy.storage.postgres_schema import MIGRATION_LOCK
from semproxy.storage.records import CacheEntry, Candidates, NewEntry, Observation, Relocation, Unplaced, Vector
from semproxy.storage.sql import ENTRY_COLUMNS

_EVICTION_LOCK = 0x53454D45  # replicas evict one at a time
_NEAREST = (f"SELECT {ENTRY_COLUMNS}, e.embedding, e.embedding <=> %b AS distance FROM semproxy_entries e "
            "WHERE e.scope = %s AND e.space = %s AND e.embedding IS NOT NULL ORDER BY e.embedding <=> %b LIMIT %s")


class PostgresEntries:
    """The entry store the cache service uses, on the shared database (see `semproxy.cache.store`)."""

    inline_reads = False  # a read is a round trip to the database: never on the event loop

    @property
    def flight_lock(self) -> PostgresEntries:
        """Replicas share the entries: this store's advisory locks merge their identical misses."""
        return self

    def __init__(self, storage: PostgresStorage) -> None:
        self.storage = storage
        self.queries = storage.entries
        self.salt = storage.tenant_salt()
        self._session: Any = None  # this replica's single-flight locks live on one session
        self._session_lock = threading.Lock()

    def get(self, key: str) -> CacheEntry | None:
        with self.storage.transaction() as db:
            return self.queries.get_exact(db, key)

    def nearest(self, scope: str, space: str, vector: Vector, k: int, *, min_similarity: float) -> Candidates:
        query = np.asarray(vector, dtype=np.float32)
        with self.storage.transaction() as db:
            rows = db.execute(_NEAREST, (query, scope, space, query, k), binary=True).fetchall()
        # relaxed_order may return the k rows slightly out of order: sort them again.
        found = [(self.queries.entry(row[:-1]), min(1.0, 1.0 - float(row[-1]))) for row in rows]
        found.sort(key=lambda pair: (-pair[1], pair[0].id))
        return [(entry, similarity) for entry, similarity in found if similarity >= min_similarity]

    def put(self, entry: NewEntry, *, now: float) -> int | None:
        with self.storage.transaction() as db:
            # Replicas storing the same key at once take turns, so neither leaves an entry without its key.
            # (Seed 1: not the single-flight lock on the same key, which the storing replica holds.)
            db.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 1))", (entry.key.exact,))
            db.execute("SELECT pg_advisory_xact_lock_shared(%s)", (ERASURE_LOCK,))
            entry_id, removed = self.queries.put(db, entry, now=now)
        return None if entry_id is None else len(removed)

    def alias(self, key: str, entry_id: int) -> None:
        with self.storage.transaction() as db:
            self.queries.alias(db, key, entry_id)

    def sweep(self, *, now: float, keep: int, used: Mapping[int, float], born_after: float | None = None) -> int:
        with self.storage.transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_EVICTION_LOCK,))
            _, count = self.queries.sweep(db, now=now, keep=keep, used=used, born_after=born_after)
        return count

    def enable_vectors(self, dimension: int, *, now: float) -> None:
        """Fix the embedding column's size (first start) and build the HNSW index on it, if not there yet."""
        with self.storage.transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            row = db.execute("SELECT value FROM semproxy_meta WHERE key = 'vector_dimension'").fetchone()
            if row is not None and int(row[0]) != dimension:
                raise ConfigError(f"the database holds {row[0]}-dimensional embeddings but the model makes "
                                  f"{dimension}: use another database or `semproxy cache clear` it first")
            if row is None:
                db.execute("DELETE FROM semproxy_entries WHERE embedding IS NOT NULL")
                db.execute(f"ALTER TABLE semproxy_entries ALTER COLUMN embedding TYPE vector({int(dimension)})")
                db.execute("INSERT INTO semproxy_meta (key, value) VALUES ('vector_dimension', %s)", (str(dimension),))
            db.execute(index_sql(self.storage))

    def maintain(self) -> None:
        """Nothing to do: PostgreSQL maintains the HNSW index as rows come and go (autovacuum cleans it)."""

    def record(self, observation: Observation) -> None:
        with self.storage.transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock_shared(%s)", (ERASURE_LOCK,))  # ordered with erasures
            self.queries.record(db, observation)

    def history(self, scope: str, limit: int) -> list[tuple[float, bool]]:
        with self.storage.transaction() as db:
            return self.queries.history(db, scope, limit)

    def unplaced(self, is_current: Callable[[str], bool], *, after: int, limit: int) -> list[Unplaced]:
        with self.storage.transaction() as db:
            return self.queries.unplaced(db, is_current, after=after, limit=limit)

    def relocate(self, moves: Sequence[Relocation]) -> None:
        with self.storage.transaction() as db:
            self.queries.relocate(db, moves)

    # ---------------------------------------------------------------- single flight across replicas

    def try_lock(self, key: str) -> bool:
        """Take this replica's lock on a request key unless another replica holds it."""
        with self._session_lock:
            try:
                if self._session is None:
                    self._session = self.storage.session()
                with self.storage.watching():
                    row = self._session.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                                                (key,)).fetchone()
                return bool(row[0])
            except Exception:
                self._end_session()
                raise

    def unlock(self, key: str) -> None:
        """Release a lock taken with try_lock."""
        with self._session_lock:
            if self._session is None:
                return  # the session ended, and its locks with it
            try:
                self._session.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))
            except Exception:
                self._end_session()
                raise

    def close(self) -> None:
        """Give the lock session back to the pool."""
        with self._session_lock:
            self._end_session()

    def _end_session(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            self.storage.end_session(session)


def index_sql(storage: PostgresStorage) -> str:
    """The statement that creates the HNSW index (bench/pg_bench.py runs it after a bulk load)."""
    return (f"CREATE INDEX IF NOT EXISTS semproxy_entries_hnsw ON semproxy_entries USING hnsw "
            f"(embedding vector_cosine_ops) WITH (m = {int(storage.hnsw.m)}, "
            f"ef_construction = {int(storage.hnsw.ef_construction)})")

