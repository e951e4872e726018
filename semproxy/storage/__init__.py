"""Storage: one object per backend that owns its schema, migrations and connections.

    SqliteStorage (sqlite.py)      the embedded default: cache.sqlite3, stats.sqlite3, compression.sqlite3
                                   in the data dir; one opener (`connect`), one migration list
    PostgresStorage (postgres.py)  the shared store for several replicas: one pool, one migration list
        PostgresEntries (pgvector.py)  the cache's entries with the vector search in the database

The SQL both backends share is written once (sql.py: cache entries; requests.py: the request log and its
report), formatted from each backend's `Dialect`. Nothing outside this package reads their tables.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from semproxy.storage.requests import LogQueries


class Storage(Protocol):
    """What the composition root, the request log and the command line use of either backend."""

    shared: bool  # True if other processes serve the same entries
    log: LogQueries

    def open(self) -> None:
        """Create or upgrade the schema and connect (idempotent; raises while the database is unreachable)."""
        ...

    def log_key(self) -> bytes:
        """The per-installation key of prompt hashes."""
        ...

    def append_requests(self, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
        """Append request-log rows in one transaction."""
        ...

    def delete_requests_before(self, ts: float) -> int:
        """Apply the log's retention."""
        ...

    def reading_log(self) -> AbstractContextManager[Any]:
        """A connection for the report's queries (None if there is no log to read)."""
        ...

    def count_entries(self) -> int:
        """How many cache entries exist."""
        ...

    def count_by_space(self) -> dict[str | None, int]:
        """Cache entries per vector space ("": exact hits only; None: not embedded yet)."""
        ...

    def clear_entries(self, *, tenants: Collection[str] | None = None) -> int:
        """Remove every cache entry, or those of these tenants."""
        ...

    def erase_tenants(self, tenants: Collection[str], *, now: float | None = None) -> tuple[int, int]:
        """Erase tenants' cache entries and log rows, and whatever their requests begun before `now` (default:
        the time of the call) write later; (entries, log rows)."""
        ...

    def tenant_salt(self) -> bytes:
        """The per-installation salt of tenant hashes."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
