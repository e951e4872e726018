"""The embedded backend: SQLite files in the data dir, all opened by `connect` and migrated from one list.

    cache.sqlite3        entries, exact_keys, meta (the tenant salt)    the cache's source of truth
    stats.sqlite3        requests, meta (the prompt-hash key)           the request log
                         (both: erasures, the tenants erased lately: see semproxy.storage.sql)
    compression.sqlite3  compressions                                    stored compressions of system prompts

Three files rather than one because SQLite has one writer per file: the log's writer thread and the
compression thread never wait for the cache's writes. Each file records how many of its migrations ran in
`PRAGMA user_version`. Every thread reads through its own connection (WAL: readers never wait for the
writer); writes to a file take its lock, then `BEGIN IMMEDIATE`, so a crash leaves a whole transaction or none.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semproxy.storage.records import CacheEntry, NewEntry, Observation, Relocation, Removed, Unplaced, Vector
from semproxy.storage.requests import LogQueries
from semproxy.storage.sql import Dialect, EntryQueries
from semproxy.storage.sqlite_schema import CACHE, COMPRESSIONS, FILES, LOG, migrate

DIALECT = Dialect(
    entries="entries", exact_keys="exact_keys", requests="requests", erasures="erasures", audits="audits",
    vector="vector",
    mark="?", greatest="max", floor="CAST({} AS INTEGER)",
    to_vector=lambda v: np.asarray(v, dtype=np.float32).tobytes(),
    from_vector=lambda blob: np.frombuffer(blob, dtype=np.float32),
)


def connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    """The one way semproxy opens SQLite: WAL, synchronous=NORMAL, foreign keys on, secure_delete=FAST, a 30 s
    busy timeout, and no implicit transactions (writers say BEGIN IMMEDIATE themselves)."""
    uri = path.resolve().as_uri() + ("?mode=ro" if read_only else "")
    db = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None, check_same_thread=False)
    if not read_only:
        db.execute("PRAGMA journal_mode=WAL")
    # NORMAL is durable against a killed process (the WAL is in the OS's hands); FULL adds an fsync per commit,
    # only needed against power loss.
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    # Deleted rows (expiry, eviction, retention) are zeroed where that costs no extra I/O, so their bytes do not
    # linger in the file's pages; an erasure turns the full mode on (below).
    db.execute("PRAGMA secure_delete=FAST")
    return db


class SqliteStorage:
    """The embedded backend for one data dir: its files, their schema, this process's connections."""

    shared = False  # one process per data dir: nothing needs a lock across processes

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.entries = EntryQueries(DIALECT)
        self.log = LogQueries(DIALECT)
        self._local = threading.local()
        self._write_locks = {name: threading.Lock() for name in FILES}
        self._open_lock = threading.Lock()
        self._migrated: set[str] = set()

    def path(self, file: str) -> Path:
        """Where one of the files lives."""
        return self.data_dir / file

    def open(self) -> None:
        """Create the data dir and bring the cache file's schema up to date. The other files are made when
        first used: a proxy with statistics or compression off leaves none of theirs behind."""
        self.connection(CACHE)

    def connection(self, file: str) -> sqlite3.Connection:
        """This thread's connection to a file, whose schema is brought up to date the first time."""
        try:
            connections: dict[str, sqlite3.Connection] = self._local.connections
        except AttributeError:
            connections = self._local.connections = {}
        if file not in connections:
            self._migrate_once(file)
            connections[file] = connect(self.path(file))
        return connections[file]

    def _migrate_once(self, file: str) -> None:
        if file in self._migrated:  # a plain set lookup, no lock: this runs once per thread and file
            return
        with self._open_lock:
            if file not in self._migrated:
                self.data_dir.mkdir(parents=True, exist_ok=True)
                db = connect(self.path(file))
                try:
                    migrate(db, file)
                finally:
                    db.close()
                self._migrated.add(file)

    @contextlib.contextmanager
    def transaction(self, file: str) -> Iterator[sqlite3.Connection]:
        """A write transaction on a file: committed at the end, rolled back on any error."""
        with self._write_locks[file]:
            db = self.connection(file)
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @contextlib.contextmanager
    def reading_log(self) -> Iterator[sqlite3.Connection | None]:
        """A read-only connection to the request log for a report, or None if there is no log yet. It creates
        nothing: `semproxy stats` on an empty data dir must not make one."""
        path = self.path(LOG)
        if not path.exists():
            yield None
            return
        db = connect(path, read_only=True)
        try:
            has_log = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'requests'").fetchone() is not None
            yield db if has_log else None
        finally:
            db.close()

    def tenant_salt(self) -> bytes:
        """The per-installation salt of tenant hashes, made once."""
        with self.transaction(CACHE) as db:
            db.execute("INSERT INTO meta (key, value) VALUES ('tenant_salt', ?) ON CONFLICT DO NOTHING",
                       (secrets.token_hex(32),))
            return bytes.fromhex(db.execute("SELECT value FROM meta WHERE key = 'tenant_salt'").fetchone()[0])

    def log_key(self) -> bytes:
        """The per-installation key of prompt hashes, kept in the log's own file."""
        with self.transaction(LOG) as db:
            db.execute("INSERT INTO meta (name, value) VALUES ('prompt_hash_key', ?) ON CONFLICT DO NOTHING",
                       (secrets.token_bytes(32),))
            return bytes(db.execute("SELECT value FROM meta WHERE name = 'prompt_hash_key'").fetchone()[0])

    # ---------------------------------------------------------------- cache entries

    def get_entry(self, key: str) -> CacheEntry | None:
        """The entry an exact key points to (a primary-key read: ~12 µs, cheap enough for the event loop)."""
        return self.entries.get_exact(self.connection(CACHE), key)

    def get_entries(self, ids: Sequence[int]) -> list[CacheEntry]:
        """The entries with these ids that still exist, with their vectors."""
        return self.entries.get_many(self.connection(CACHE), ids)

    def put_entry(self, entry: NewEntry, *, now: float) -> tuple[int | None, Removed]:
        """Store an entry in one transaction; (its id, the entries it replaced); None: its tenant was erased
        after its request began, nothing was stored."""
        with self.transaction(CACHE) as db:
            return self.entries.put(db, entry, now=now)

    def record_audit(self, observation: Observation) -> None:
        """Keep a comparison of a cached answer with a fresh one (see EntryQueries.record)."""
        with self.transaction(CACHE) as db:
            self.entries.record(db, observation)

    def audit_history(self, scope: str, limit: int) -> list[tuple[float, bool]]:
        """The scope's latest comparisons, newest first."""
        return self.entries.history(self.connection(CACHE), scope, limit)

    def alias(self, key: str, entry_id: int) -> None:
        """Point another exact key at an entry."""
        with self.transaction(CACHE) as db:
            self.entries.alias(db, key, entry_id)

    def sweep(self, *, now: float, keep: int, used: Mapping[int, float],
              born_after: float | None = None) -> tuple[Removed, int]:
        """LRU times, expiry and eviction in one transaction; (what went, how many are left)."""
        with self.transaction(CACHE) as db:
            return self.entries.sweep(db, now=now, keep=keep, used=used, born_after=born_after)

    def last_erasure(self) -> float | None:
        """When a tenant was last erased from the cache (within the erasure notes' hold), if at all."""
        row = self.connection(CACHE).execute("SELECT max(erased_at) FROM erasures").fetchone()
        return None if row[0] is None else float(row[0])

    def vector_ids(self) -> set[int]:
        """The ids of the entries that have a vector."""
        rows = self.connection(CACHE).execute("SELECT id FROM entries WHERE vector IS NOT NULL").fetchall()
        return {int(row[0]) for row in rows}

    def iter_vectors(self, *, now: float,
                     batch: int = 4096) -> Iterator[tuple[list[int], list[tuple[str, str]], Vector]]:
        """Every live entry's id, (scope, space) and vector, in batches, in id order (to rebuild the index)."""
        cursor = self.connection(CACHE).execute(
            "SELECT id, scope, space, vector FROM entries WHERE vector IS NOT NULL AND space IS NOT NULL "
            "AND (expires_at IS NULL OR expires_at > ?) ORDER BY id", (now,))
        while rows := cursor.fetchmany(batch):
            vectors = np.vstack([np.frombuffer(row[3], dtype=np.float32) for row in rows])
            yield [row[0] for row in rows], [(row[1], row[2]) for row in rows], vectors

    def unplaced(self, is_current: Callable[[str], bool], *, after: int, limit: int) -> list[Unplaced]:
        """Entries to re-embed (see EntryQueries.unplaced)."""
        return self.entries.unplaced(self.connection(CACHE), is_current, after=after, limit=limit)

    def relocate(self, moves: Sequence[Relocation]) -> None:
        """Store re-embedded entries' spaces and vectors in one transaction."""
        with self.transaction(CACHE) as db:
            self.entries.relocate(db, moves)

    # ---------------------------------------------------------------- compressions

    def stored_compression(self, key: str) -> str | None:
        """A stored compression result (JSON), if one was stored under `key`."""
        row = self.connection(COMPRESSIONS).execute("SELECT result FROM compressions WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def delete_compressions_before(self, ts: float) -> int:
        """Apply the retention to stored compressions (each holds a system prompt)."""
        with self.transaction(COMPRESSIONS) as db:
            return int(db.execute("DELETE FROM compressions WHERE created_at < ?", (ts,)).rowcount)

    def store_compression(self, key: str, result: str, *, now: float) -> None:
        """Keep a compression result for every later request with the same prompt."""
        with self.transaction(COMPRESSIONS) as db:
            db.execute("INSERT INTO compressions (key, result, created_at) VALUES (?, ?, ?) "
                       "ON CONFLICT (key) DO UPDATE SET result = excluded.result, created_at = excluded.created_at",
                       (key, result, now))

    # ---------------------------------------------------------------- maintenance

    # ---------------------------------------------------------------- request log

    def append_requests(self, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
        """Append log rows in one transaction (those of requests older than their tenant's erasure are dropped)."""
        with self.transaction(LOG) as db:
            self.log.insert(db, columns, rows)
            self.log.erasures.prune(db, now=time.time())  # this file has no other regular sweep

    def delete_requests_before(self, ts: float) -> int:
        """Apply the log's retention."""
        with self.transaction(LOG) as db:
            return self.log.delete_before(db, ts)

    def count_entries(self) -> int:
        """How many cache entries exist."""
        return self.entries.count(self.connection(CACHE))

    def count_by_space(self) -> dict[str | None, int]:
        """Cache entries per vector space (see EntryQueries.count_by_space)."""
        return self.entries.count_by_space(self.connection(CACHE))

    def clear_entries(self, *, tenants: Collection[str] | None = None) -> int:
        """Remove every cache entry, or those of these tenants (a running proxy drops them from its index
        when it next finds them)."""
        with self.transaction(CACHE) as db:
            return len(self.entries.delete_tenants(db, tenants))

    def erase_tenants(self, tenants: Collection[str], *, now: float | None = None) -> tuple[int, int]:
        """Erase tenants from the cache and the log, so the rows' bytes do not stay on disk: secure_delete
        overwrites the freed pages and a checkpoint folds the WAL back into each file. What their requests begun
        before `now` (in flight, or queued for the log) write later is dropped (see semproxy.storage.sql).
        (entries, log rows)."""
        at = time.time() if now is None else now
        entries = self._erase(CACHE, lambda db: len(self.entries.erase_tenants(db, tenants, now=at)))
        rows = self._erase(LOG, lambda db: self.log.erase_tenants(db, tenants, now=at))
        return entries, rows

    def _erase(self, file: str, delete: Callable[[sqlite3.Connection], int]) -> int:
        db = self.connection(file)
        db.execute("PRAGMA secure_delete=ON")
        try:
            with self.transaction(file) as transaction:
                removed = delete(transaction)
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.execute("PRAGMA secure_delete=FAST")
        return removed

    def close(self) -> None:
        """Close this thread's connections (other threads' close when their threads end)."""
        for db in self._local.__dict__.pop("connections", {}).values():
            db.close()
