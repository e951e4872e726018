"""The cache's storage seam: entries and their vector search behind one small protocol.

    SemanticCache --exact get / nearest in scope / put / evict, expire, clear--> SemanticStore
        EmbeddedStore: SqliteStore (entries, the source of truth) + FaissIndex (per scope, rebuilt at start)
        PostgresStore (semproxy.cache.postgres): one table with a pgvector column, shared by every replica

The service calls these methods from worker threads (only `get_exact` may run on the event loop, when
`inline_reads` says a read is cheaper than a thread hop). Every method may raise; the service logs and
forwards uncached.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from semproxy.cache.index import FaissIndex
from semproxy.cache.records import CacheEntry, NewEntry, Vector
from semproxy.cache.store import Removed, SqliteStore

Candidates = list[tuple[CacheEntry, float]]  # (entry with its vector, cosine similarity), most similar first


class SemanticStore(Protocol):
    """Entries looked up by exact key or by nearest vector inside a scope."""

    salt: bytes  # the per-installation salt of tenant hashes
    inline_reads: bool  # True if get_exact is fast enough to run on the event loop
    shared: bool  # True if other processes serve the same entries (then misses take try_lock first)

    def get_exact(self, key: str) -> CacheEntry | None:
        """The entry an exact key points to, expired or not."""
        ...

    def nearest(self, scope: str, vector: Vector, k: int, *, min_similarity: float) -> Candidates:
        """Up to k entries of the scope at or above `min_similarity`, with their vectors, most similar first."""
        ...

    def put(self, entry: NewEntry, *, now: float) -> int:
        """Store an entry under its exact key (replacing what the key named); return how many it replaced."""
        ...

    def add_alias(self, key: str, entry_id: int) -> None:
        """Point another exact key at an entry."""
        ...

    def touch(self, used: dict[int, float]) -> None:
        """Record when entries were last served (for LRU eviction)."""
        ...

    def delete_expired(self, *, now: float) -> int:
        """Remove entries whose TTL ran out; return how many."""
        ...

    def evict(self, *, keep: int) -> int:
        """Remove the least recently used entries beyond `keep`; return how many."""
        ...

    def clear(self, *, tenant: str | None = None) -> int:
        """Remove every entry, or one tenant's; return how many."""
        ...

    def count(self) -> int:
        """How many entries exist."""
        ...

    def enable_vectors(self, dimension: int, *, now: float) -> None:
        """Prepare the vector search for embeddings of this size (at start, once the model is loaded)."""
        ...

    def maintain(self) -> None:
        """Slow background upkeep of the vector search (may take seconds; runs off the write path)."""
        ...

    def try_lock(self, key: str) -> bool:
        """Take the cross-process lock on a request key (single flight across replicas); False if taken."""
        ...

    def unlock(self, key: str) -> None:
        """Release a lock taken with try_lock."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class EmbeddedStore:
    """The embedded default: SQLite in the data dir for entries, per-scope FAISS indexes in memory."""

    inline_reads = True  # a primary-key read from SQLite takes ~12 µs; a hop to a thread and back ~100 µs
    shared = False  # one process per data dir: the in-process single flight is enough

    def __init__(self, path: Path, *, make_index: Callable[[int], FaissIndex]) -> None:
        self.entries = SqliteStore(path)
        self.salt = self.entries.salt
        self._make_index = make_index
        self._index: FaissIndex | None = None

    def get_exact(self, key: str) -> CacheEntry | None:
        return self.entries.get_exact(key)

    def nearest(self, scope: str, vector: Vector, k: int, *, min_similarity: float) -> Candidates:
        if self._index is None:
            return []
        found = [(i, s) for i, s in self._index.search(scope, vector, k) if s >= min_similarity]
        if not found:
            return []
        entries = {entry.id: entry for entry in self.entries.get_many([i for i, _ in found])}
        gone = [i for i, _ in found if i not in entries]
        if gone:  # deleted by another process (e.g. `semproxy cache clear`): heal the index
            self._index.remove(scope, gone)
        return [(entries[i], min(s, 1.0)) for i, s in found if i in entries]

    def put(self, entry: NewEntry, *, now: float) -> int:
        entry_id, removed = self.entries.put(entry, now=now)
        self._unindex(removed)
        if entry.vector is not None and self._index is not None:
            self._index.add(entry.key.scope, [entry_id], entry.vector.reshape(1, -1))
        return len(removed)

    def add_alias(self, key: str, entry_id: int) -> None:
        self.entries.add_alias(key, entry_id)

    def touch(self, used: dict[int, float]) -> None:
        self.entries.touch(used)

    def delete_expired(self, *, now: float) -> int:
        return self._unindex(self.entries.delete_expired(now=now))

    def evict(self, *, keep: int) -> int:
        return self._unindex(self.entries.evict(keep=keep))

    def clear(self, *, tenant: str | None = None) -> int:
        return self._unindex(self.entries.clear(tenant=tenant))

    def count(self) -> int:
        return self.entries.count()

    def enable_vectors(self, dimension: int, *, now: float) -> None:
        index = self._make_index(dimension)
        for ids, scopes, vectors in self.entries.iter_vectors(now=now):
            for scope in dict.fromkeys(scopes):
                rows = [i for i, s in enumerate(scopes) if s == scope]
                index.add(scope, [ids[i] for i in rows], vectors[rows])
        for scope in index.scopes_to_rebuild():
            index.rebuild(scope)
        self._index = index

    def maintain(self) -> None:
        if self._index is not None:
            for scope in self._index.scopes_to_rebuild():
                self._index.rebuild(scope)

    def try_lock(self, key: str) -> bool:
        return True

    def unlock(self, key: str) -> None:
        return None

    def close(self) -> None:
        self.entries.close()

    def _unindex(self, removed: Removed) -> int:
        if self._index is not None:
            by_scope: dict[str, list[int]] = {}
            for entry_id, scope in removed:
                by_scope.setdefault(scope, []).append(entry_id)
            for scope, ids in by_scope.items():
                self._index.remove(scope, ids)
        return len(removed)
