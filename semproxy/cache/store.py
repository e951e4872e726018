"""The cache's storage seam: entries looked up by exact key or by nearest vector inside a scope and space.

    SemanticCache --get / nearest / put / alias / sweep / unplaced / relocate / record / history--> EntryStore
        EmbeddedStore (here): SQLite rows (the source of truth) + FAISS indexes per scope and space, rebuilt at start
        PostgresEntries (semproxy.storage.pgvector): one table with a pgvector column, shared by replicas

The service calls these methods from worker threads (only `get` may run on the event loop, when
`inline_reads` says a read is cheaper than a thread hop). Every method may raise; the service logs and
forwards uncached.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from semproxy.cache.index import FaissIndex
from semproxy.storage.records import (
    CacheEntry,
    Candidates,
    NewEntry,
    Observation,
    Relocation,
    Removed,
    Unplaced,
    Vector,
    partition,
)
from semproxy.storage.sqlite import SqliteStorage


class EntryStore(Protocol):
    """Entries by exact key and by nearest vector inside a scope."""

    salt: bytes  # the per-installation salt of tenant hashes
    inline_reads: bool  # True if get() is fast enough to run on the event loop

    @property
    def flight_lock(self) -> FlightLock | None:
        """Set where other processes serve the same entries: their identical misses take turns."""
        ...

    def get(self, key: str) -> CacheEntry | None:
        """The entry an exact key points to, expired or not."""
        ...

    def nearest(self, scope: str, space: str, vector: Vector, k: int, *, min_similarity: float) -> Candidates:
        """Up to k entries of the scope and space at or above `min_similarity`, with their vectors, most
        similar first."""
        ...

    def put(self, entry: NewEntry, *, now: float) -> int | None:
        """Store an entry under its exact key (replacing what the key named); how many it replaced. None:
        not stored, its tenant was erased after its request began (`asked_at`)."""
        ...

    def alias(self, key: str, entry_id: int) -> None:
        """Point another exact key at an entry (a semantic hit becomes an exact hit next time)."""
        ...

    def sweep(self, *, now: float, keep: int, used: Mapping[int, float], born_after: float | None = None) -> int:
        """Record when entries were last served, drop expired ones and those created before `born_after`,
        evict the least recently used beyond `keep`; how many entries are left."""
        ...

    def enable_vectors(self, dimension: int, *, now: float) -> None:
        """Prepare the vector search for embeddings of this size (at start, once the model is loaded)."""
        ...

    def unplaced(self, is_current: Callable[[str], bool], *, after: int, limit: int) -> list[Unplaced]:
        """Entries past id `after` whose vector is missing or in a space no longer current: (id, prompt, space)."""
        ...

    def relocate(self, moves: Sequence[Relocation]) -> None:
        """Give entries their re-embedded vectors and spaces."""
        ...

    def maintain(self) -> None:
        """Slow background upkeep of the vector search (may take seconds; runs off the write path)."""
        ...

    def record(self, observation: Observation) -> None:
        """Keep what comparing a cached answer with a fresh one found (a wrong one marks its entry)."""
        ...

    def history(self, scope: str, limit: int) -> list[tuple[float, bool]]:
        """The scope's latest comparisons, (score, wrong), newest first, from every replica."""
        ...

    def close(self) -> None:
        """Release what the store holds for this process (the storage itself is closed by its owner)."""
        ...


class FlightLock(Protocol):
    """A lock on a request key across processes that share a store (single flight across replicas)."""

    def try_lock(self, key: str) -> bool:
        """Take the lock unless another process holds it."""
        ...

    def unlock(self, key: str) -> None:
        """Release a lock taken with try_lock."""
        ...


class EmbeddedStore:
    """The embedded default: SQLite in the data dir for entries, per-scope FAISS indexes in memory."""

    inline_reads = True  # a primary-key read from SQLite takes ~12 µs; a hop to a thread and back ~100 µs
    flight_lock: FlightLock | None = None  # one process per data dir: the in-process single flight is enough

    def __init__(self, storage: SqliteStorage, *, make_index: Callable[[int], FaissIndex]) -> None:
        self.storage = storage
        self.salt = storage.tenant_salt()
        self._make_index = make_index
        self._index: FaissIndex | None = None
        self._erasure_seen = storage.last_erasure()  # an index built after it holds none of the tenant's

    def get(self, key: str) -> CacheEntry | None:
        return self.storage.get_entry(key)

    def nearest(self, scope: str, space: str, vector: Vector, k: int, *, min_similarity: float) -> Candidates:
        if self._index is None:
            return []
        part = partition(scope, space)
        found = [(i, s) for i, s in self._index.search(part, vector, k) if s >= min_similarity]
        if not found:
            return []
        entries = {entry.id: entry for entry in self.storage.get_entries([i for i, _ in found])}
        gone = [i for i, _ in found if i not in entries]
        if gone:  # deleted by another process (e.g. `semproxy cache clear`): heal the index
            self._index.remove(part, gone)
        return [(entries[i], min(s, 1.0)) for i, s in found if i in entries]

    def put(self, entry: NewEntry, *, now: float) -> int | None:
        entry_id, removed = self.storage.put_entry(entry, now=now)
        if entry_id is None:
            return None
        self._unindex(removed)
        if entry.vector is not None and entry.space and self._index is not None:
            self._index.add(partition(entry.key.scope, entry.space), [entry_id], entry.vector.reshape(1, -1))
        return len(removed)

    def alias(self, key: str, entry_id: int) -> None:
        self.storage.alias(key, entry_id)

    def sweep(self, *, now: float, keep: int, used: Mapping[int, float], born_after: float | None = None) -> int:
        removed, count = self.storage.sweep(now=now, keep=keep, used=used, born_after=born_after)
        self._unindex(removed)
        self._forget_erased()
        return count

    def _forget_erased(self) -> None:
        """After another process erased a tenant (`semproxy cache clear --tenant`), drop its vectors from this
        process's index too. A search would never serve them (their rows are gone), but they should not stay
        in memory until the tenant asks again or the process ends. Runs with the writes, one at a time."""
        erased = self.storage.last_erasure()
        if erased is None or erased == self._erasure_seen or self._index is None:
            return
        self._erasure_seen = erased
        live = self.storage.vector_ids()
        for part, ids in self._index.ids().items():
            gone = [int(i) for i in ids if int(i) not in live]
            if gone:
                self._index.remove(part, gone)

    def enable_vectors(self, dimension: int, *, now: float) -> None:
        index = self._make_index(dimension)
        for ids, places, vectors in self.storage.iter_vectors(now=now):
            parts = [partition(scope, space) for scope, space in places]
            for part in dict.fromkeys(parts):
                rows = [i for i, p in enumerate(parts) if p == part]
                index.add(part, [ids[i] for i in rows], vectors[rows])
        for scope in index.scopes_to_rebuild():
            index.rebuild(scope)
        self._index = index

    def maintain(self) -> None:
        if self._index is not None:
            for scope in self._index.scopes_to_rebuild():
                self._index.rebuild(scope)

    def unplaced(self, is_current: Callable[[str], bool], *, after: int, limit: int) -> list[Unplaced]:
        return self.storage.unplaced(is_current, after=after, limit=limit)

    def record(self, observation: Observation) -> None:
        self.storage.record_audit(observation)

    def history(self, scope: str, limit: int) -> list[tuple[float, bool]]:
        return self.storage.audit_history(scope, limit)

    def relocate(self, moves: Sequence[Relocation]) -> None:
        before = {e.id: e for e in self.storage.get_entries([m.id for m in moves])}
        self.storage.relocate(moves)
        if self._index is None:
            return
        self._unindex([(e.id, e.scope, e.space) for e in before.values()])
        for move in moves:
            entry = before.get(move.id)
            if entry is not None and move.vector is not None and move.space:
                self._index.add(partition(entry.scope, move.space), [move.id], move.vector.reshape(1, -1))

    def close(self) -> None:
        self._index = None

    def _unindex(self, removed: Removed) -> None:
        if self._index is None:
            return
        by_part: dict[str, list[int]] = {}
        for entry_id, scope, space in removed:
            if space:
                by_part.setdefault(partition(scope, space), []).append(entry_id)
        for part, ids in by_part.items():
            self._index.remove(part, ids)
