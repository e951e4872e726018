"""The request log in PostgreSQL: every replica appends to one `semproxy_requests` table."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from semproxy.cache.postgres import migrate


class PostgresLogDatabase:
    """A LogDatabase on the shared store. Connects lazily and again after any failure (the database may
    be down when the writer starts, or restart under it)."""

    def __init__(self, url: str, *, connect_timeout: float = 5.0) -> None:
        self.url, self.connect_timeout = url, connect_timeout
        self._db: Any = None
        self._key: bytes | None = None

    def hash_key(self) -> bytes:
        if self._key is None:
            with self._connection() as db:
                db.execute("INSERT INTO semproxy_meta (key, value) VALUES ('prompt_hash_key', %s) "
                           "ON CONFLICT DO NOTHING", (os.urandom(32).hex(),))
                row = db.execute("SELECT value FROM semproxy_meta WHERE key = 'prompt_hash_key'").fetchone()
            self._key = bytes.fromhex(row[0])
        return self._key

    def insert(self, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
        sql = f"INSERT INTO semproxy_requests ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"
        # The log's flags (stream, priced) are integer columns, as in SQLite.
        values = [tuple(int(v) if isinstance(v, bool) else v for v in row) for row in rows]
        with self._connection() as db, db.cursor() as cursor:
            cursor.executemany(sql, values)

    def delete_before(self, ts: float) -> None:
        with self._connection() as db:
            db.execute("DELETE FROM semproxy_requests WHERE ts < %s", (ts,))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _connection(self) -> Any:
        """The connection as a transaction context; a broken one is replaced on the next call."""
        if self._db is not None and self._db.closed:
            self._db = None
        if self._db is None:
            import psycopg

            migrate(self.url, connect_timeout=self.connect_timeout)
            self._db = psycopg.connect(self.url, connect_timeout=max(1, round(self.connect_timeout)))
        return _Transaction(self)


class _Transaction:
    """Commit on success; on an error roll back, or drop the connection if it broke."""

    def __init__(self, owner: PostgresLogDatabase) -> None:
        self.owner = owner

    def __enter__(self) -> Any:
        return self.owner._db

    def __exit__(self, exc_type: object, *_: object) -> None:
        db = self.owner._db
        try:
            if exc_type is None:
                db.commit()
            else:
                db.rollback()
        except Exception:
            self.owner.close()
            raise
        if db.broken:
            self.owner.close()
