"""Entry stores. The embedded default is SQLite in WAL mode: the source of truth the vector index is rebuilt from.

An entry is one row holding its key, vector and answer, written in one transaction, so a crash leaves
either the whole entry or nothing. Every thread reads through its own connection; writes are serialized.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from semproxy.cache.records import CacheEntry, NewEntry, Vector

SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    tenant TEXT NOT NULL,
    scope TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt TEXT,
    vector BLOB,
    response BLOB NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    last_used_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_tenant ON entries(tenant);
CREATE INDEX IF NOT EXISTS entries_lru ON entries(last_used_at);
CREATE INDEX IF NOT EXISTS entries_expiry ON entries(expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS exact_keys (
    key TEXT PRIMARY KEY,
    entry_id INTEGER NOT NULL REFERENCES entries(id) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS exact_keys_entry ON exact_keys(entry_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_ENTRY_COLUMNS = "e.id, e.kind, e.tenant, e.scope, e.model, e.prompt, e.response, e.created_at, e.expires_at"
_CANDIDATE_COLUMNS = _ENTRY_COLUMNS + ", e.vector"  # semantic candidates: the verifier compares vectors

Removed = list[tuple[int, str]]  # (entry id, scope) pairs, so the caller can update the vector index


class EntryStore(Protocol):
    """Where entries live. Lookups by exact key and by id; every write reports what it removed."""

    def get_exact(self, key: str) -> CacheEntry | None:
        """The entry an exact key points to, expired or not."""
        ...

    def get_many(self, ids: Sequence[int]) -> list[CacheEntry]:
        """The entries with these ids that still exist, with their vectors (for the hit verifier)."""
        ...

    def put(self, entry: NewEntry, *, now: float) -> tuple[int, Removed]:
        """Store an entry under its exact key, replacing whatever that key named; return its id."""
        ...


class SqliteStore:
    """The embedded store: one SQLite file in the data dir."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        with self._write_lock:
            self._connection().executescript(_SCHEMA)
        self.salt = self._salt()

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable against a killed process (the WAL is in the OS's hands); FULL adds an
            # fsync per commit, only needed against power loss.
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA foreign_keys=ON")
            self._local.connection = connection
        return connection

    def _salt(self) -> bytes:
        """The per-installation salt of tenant hashes, created once."""
        with self._write_lock:
            db = self._connection()
            db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('tenant_salt', ?)", (secrets.token_hex(32),))
            db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            row = db.execute("SELECT value FROM meta WHERE key = 'tenant_salt'").fetchone()
        return bytes.fromhex(row[0])

    # ---------------------------------------------------------------- reads

    def get_exact(self, key: str) -> CacheEntry | None:
        row = self._connection().execute(
            f"SELECT {_ENTRY_COLUMNS} FROM exact_keys k JOIN entries e ON e.id = k.entry_id WHERE k.key = ?",
            (key,),
        ).fetchone()
        return None if row is None else _entry(row)

    def get_many(self, ids: Sequence[int]) -> list[CacheEntry]:
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = self._connection().execute(
            f"SELECT {_CANDIDATE_COLUMNS} FROM entries e WHERE e.id IN ({marks})", list(ids)).fetchall()
        return [_entry(row) for row in rows]

    def count(self) -> int:
        """How many entries exist."""
        return int(self._connection().execute("SELECT count(*) FROM entries").fetchone()[0])

    def iter_vectors(self, *, now: float, batch: int = 4096) -> Iterator[tuple[list[int], list[str], Vector]]:
        """Every live entry's id, scope and vector, in batches, for rebuilding the index at start."""
        cursor = self._connection().execute(
            "SELECT id, scope, vector FROM entries WHERE vector IS NOT NULL "
            "AND (expires_at IS NULL OR expires_at > ?) ORDER BY id", (now,))
        while rows := cursor.fetchmany(batch):
            vectors = np.vstack([np.frombuffer(row[2], dtype=np.float32) for row in rows])
            yield [row[0] for row in rows], [row[1] for row in rows], vectors

    # ---------------------------------------------------------------- writes

    def put(self, entry: NewEntry, *, now: float) -> tuple[int, Removed]:
        key = entry.key
        expires = now + entry.ttl_seconds if entry.ttl_seconds > 0 else None
        vector = None if entry.vector is None else np.asarray(entry.vector, dtype=np.float32).tobytes()
        with self._write_lock, self._transaction() as db:
            removed = self._delete_where(db, "id IN (SELECT entry_id FROM exact_keys WHERE key = ?)", (key.exact,))
            cursor = db.execute(
                "INSERT INTO entries(kind, tenant, scope, model, prompt, vector, response, created_at, "
                "expires_at, last_used_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key.kind, key.tenant, key.scope, key.model, key.prompt, vector, entry.response, now, expires, now),
            )
            entry_id = int(cursor.lastrowid or 0)
            db.execute("INSERT INTO exact_keys(key, entry_id) VALUES (?, ?)", (key.exact, entry_id))
        return entry_id, removed

    def add_alias(self, key: str, entry_id: int) -> None:
        """Point another exact key at an entry (a semantic hit becomes an exact hit next time)."""
        with self._write_lock, self._transaction() as db:
            if db.execute("SELECT 1 FROM entries WHERE id = ?", (entry_id,)).fetchone():
                db.execute("INSERT OR REPLACE INTO exact_keys(key, entry_id) VALUES (?, ?)", (key, entry_id))

    def touch(self, used: dict[int, float]) -> None:
        """Record when entries were last served (batched, for LRU eviction)."""
        with self._write_lock, self._transaction() as db:
            db.executemany("UPDATE entries SET last_used_at = max(last_used_at, ?) WHERE id = ?",
                           [(at, entry_id) for entry_id, at in used.items()])

    def delete_expired(self, *, now: float) -> Removed:
        """Remove entries whose TTL ran out."""
        with self._write_lock, self._transaction() as db:
            return self._delete_where(db, "expires_at IS NOT NULL AND expires_at <= ?", (now,))

    def evict(self, *, keep: int) -> Removed:
        """Remove the least recently used entries beyond `keep`."""
        with self._write_lock, self._transaction() as db:
            excess = int(db.execute("SELECT count(*) FROM entries").fetchone()[0]) - keep
            if excess <= 0:
                return []
            return self._delete_where(
                db, "id IN (SELECT id FROM entries ORDER BY last_used_at, id LIMIT ?)", (excess,))

    def clear(self, *, tenant: str | None = None) -> Removed:
        """Remove every entry, or a tenant's."""
        with self._write_lock, self._transaction() as db:
            if tenant is None:
                return self._delete_where(db, "1", ())
            return self._delete_where(db, "tenant = ?", (tenant,))

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    @staticmethod
    def _delete_where(db: sqlite3.Connection, where: str, params: tuple[object, ...]) -> Removed:
        rows = db.execute(f"DELETE FROM entries WHERE {where} RETURNING id, scope", params).fetchall()
        return [(int(row[0]), str(row[1])) for row in rows]

    def _transaction(self) -> _Transaction:
        return _Transaction(self._connection())


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def _entry(row: Any) -> CacheEntry:
    return CacheEntry(
        id=int(row[0]), kind=row[1], tenant=row[2], scope=row[3], model=row[4], prompt=row[5],
        response=bytes(row[6]), created_at=float(row[7]), expires_at=None if row[8] is None else float(row[8]),
        vector=np.frombuffer(row[9], dtype=np.float32) if len(row) > 9 and row[9] is not None else None,
    )
