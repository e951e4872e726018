"""One contract, two stores: the embedded SQLite + FAISS store and the shared PostgreSQL + pgvector store
behave the same through the EntryStore protocol the cache service uses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from semproxy.app import build_storage, open_entry_store
from semproxy.cache.keys import make_key
from semproxy.cache.store import EntryStore
from semproxy.config import Settings
from semproxy.storage import Storage
from semproxy.storage.records import NewEntry, Observation

DIM = 16
Opener = Callable[[], tuple[EntryStore, Storage]]


@pytest.fixture(params=["embedded", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    store = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    return Settings(data_dir=tmp_path / "data", store=store, postgres_pool_size=4, large_scope_entries=1000)


@pytest.fixture
def open_store(backend: Settings) -> Iterator[Opener]:
    """Opens the store under test (again and again: each call is a new process's view of the same data)."""
    opened: list[tuple[EntryStore, Storage]] = []

    def make() -> tuple[EntryStore, Storage]:
        storage = build_storage(backend)
        store = open_entry_store(backend, storage)
        store.enable_vectors(DIM, now=0.0)
        opened.append((store, storage))
        return store, storage

    yield make
    for store, storage in opened:
        store.close()
        storage.close()


def _unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def _near(vector: np.ndarray, seed: int, noise: float) -> np.ndarray:
    moved = vector + noise * _unit(seed)
    return (moved / np.linalg.norm(moved)).astype(np.float32)


SPACE = "hashing/en"


def _entry(prompt: str, *, tenant: str = "t", ttl: int = 0, vector: np.ndarray | None = None,
           system: str = "") -> NewEntry:
    messages = [{"role": "system", "content": system}] if system else []
    body = {"model": "m", "messages": [*messages, {"role": "user", "content": prompt}]}
    return NewEntry(key=make_key("chat", body, tenant=tenant), response=prompt.encode(), vector=vector,
                    ttl_seconds=ttl, space=None if vector is None else SPACE)


def _everything(store: EntryStore) -> int:
    return store.sweep(now=0.0, keep=10**9, used={})


def test_exact_put_replace_alias_and_clear(open_store: Opener) -> None:
    store, storage = open_store()
    entry = _entry("a")
    assert store.put(entry, now=1.0) == 0
    assert store.put(_entry("a"), now=2.0) == 1  # the same key replaces the old entry
    found = store.get(entry.key.exact)
    assert found is not None and found.created_at == 2.0 and found.response == b"a" and found.prompt == "a"
    assert found.tenant == "t" and found.scope == entry.key.scope and found.expires_at is None
    store.alias("another-key", found.id)
    alias = store.get("another-key")
    assert alias is not None and alias.id == found.id
    store.alias("dangling", 10**9)  # an entry that is gone: nothing to point at
    assert store.get("dangling") is None
    assert _everything(store) == 1 == storage.count_entries()
    assert storage.clear_entries() == 1
    assert store.get("another-key") is None and storage.count_entries() == 0  # aliases go with their entry


def test_nearest_searches_one_scope_and_returns_vectors(open_store: Opener) -> None:
    store, _ = open_store()
    base = _unit(1)
    close, far, elsewhere = _near(base, 2, 0.1), _near(base, 3, 0.6), _near(base, 4, 0.05)
    store.put(_entry("close", vector=close), now=1.0)
    store.put(_entry("far", vector=far), now=1.0)
    store.put(_entry("no vector"), now=1.0)
    store.put(_entry("other scope", vector=elsewhere, system="another system prompt"), now=1.0)
    scope = _entry("x").key.scope
    found = store.nearest(scope, SPACE, base, 4, min_similarity=0.0)
    assert [e.prompt for e, _ in found] == ["close", "far"]
    (best, similarity), (_, farther) = found
    assert similarity == pytest.approx(float(close @ base), abs=1e-4) and farther < similarity <= 1.0
    assert best.vector is not None and np.allclose(best.vector, close, atol=1e-6)  # the hit verifier needs it
    assert [e.prompt for e, _ in store.nearest(scope, SPACE, base, 4, min_similarity=(similarity + farther) / 2)] \
        == ["close"]
    assert [e.prompt for e, _ in store.nearest(scope, SPACE, base, 1, min_similarity=0.0)] == ["close"]
    assert store.nearest("no-such-scope", SPACE, base, 4, min_similarity=0.0) == []


def test_expiry_lru_eviction_and_tenant_clear(open_store: Opener) -> None:
    store, storage = open_store()
    entries = [_entry(p, tenant=t, ttl=ttl, vector=_unit(i))
               for i, (p, t, ttl) in enumerate([("a", "t1", 5), ("b", "t1", 0), ("c", "t2", 0), ("d", "t2", 0)])]
    for entry in entries:
        store.put(entry, now=10.0)
    ids = {e.prompt: e.id for e in (store.get(x.key.exact) for x in entries) if e is not None}
    assert store.sweep(now=16.0, keep=10, used={}) == 3 and store.get(entries[0].key.exact) is None
    assert store.sweep(now=16.0, keep=2, used={ids["b"]: 20.0}) == 2  # c is now the least recently used
    assert store.get(entries[2].key.exact) is None and store.get(entries[1].key.exact) is not None
    assert storage.clear_entries(tenants={"t2"}) == 1
    assert storage.count_entries() == 1
    scope = entries[0].key.scope
    assert [e.prompt for e, _ in store.nearest(scope, SPACE, _unit(3), 4, min_similarity=-1.0)] == ["b"]


def test_what_a_request_begun_before_its_tenants_erasure_writes_later_is_dropped(open_store: Opener) -> None:
    import dataclasses

    from semproxy.storage.sql import ERASURE_HOLD

    store, storage = open_store()
    store.put(_entry("before", tenant="t1", vector=_unit(1)), now=10.0)
    assert storage.erase_tenants({"t1"}, now=100.0) == (1, 0)
    in_flight = dataclasses.replace(_entry("in flight", tenant="t1", vector=_unit(2)), asked_at=99.0)
    assert store.put(in_flight, now=101.0) is None  # its answer came back after the erasure
    assert store.get(in_flight.key.exact) is None
    assert store.nearest(in_flight.key.scope, SPACE, _unit(2), 4, min_similarity=0.0) == []
    other = dataclasses.replace(_entry("in flight", tenant="t2"), asked_at=99.0)
    after = dataclasses.replace(_entry("after", tenant="t1"), asked_at=100.5)
    assert store.put(other, now=101.0) == 0 and store.put(after, now=101.0) == 0  # another tenant; a new request

    columns = ["ts", "tenant", "endpoint", "method", "status", "outcome", "stream", "total_ms", "prompt_tokens",
               "completion_tokens", "compression_saved_tokens", "hit_saved_tokens", "cost_saved_hit",
               "cost_saved_compression", "priced"]
    rows = [(ts, tenant, "/v1/chat/completions", "POST", 200, "miss", False, 1.0, 1, 1, 0, 0, 0.0, 0.0, True)
            for ts, tenant in [(99.0, "t1"), (99.0, "t2"), (100.5, "t1"), (99.0, None)]]
    storage.append_requests(columns, rows)  # records of requests begun before the erasure, still queued
    with storage.reading_log() as db:
        logged = sorted(db.execute(storage.log.dialect.sql("SELECT ts, tenant FROM {requests}")).fetchall(),
                        key=lambda row: (row[0], row[1] or ""))
    assert logged == [(99.0, None), (99.0, "t2"), (100.5, "t1")]

    store.sweep(now=100.0 + ERASURE_HOLD + 1, keep=10, used={})  # the note is forgotten a day later
    late = dataclasses.replace(_entry("late", tenant="t1"), asked_at=99.0)
    assert store.put(late, now=100.0 + ERASURE_HOLD + 2) == 0


def test_the_retention_removes_entries_by_age_whatever_their_ttl(open_store: Opener) -> None:
    store, _ = open_store()
    for created, prompt in [(10.0, "old"), (20.0, "new")]:
        store.put(_entry(prompt, ttl=0, vector=_unit(len(prompt))), now=created)
    assert store.sweep(now=30.0, keep=10, used={}, born_after=15.0) == 1
    assert store.get(_entry("old").key.exact) is None and store.get(_entry("new").key.exact) is not None
    assert [e.prompt for e, _ in store.nearest(_entry("old").key.scope, SPACE, _unit(3), 4,
                                               min_similarity=-1.0)] == ["new"]


def test_entries_salt_and_vectors_persist_across_processes(open_store: Opener) -> None:
    first, _ = open_store()
    entry = _entry("persist me", vector=_unit(5))
    first.put(entry, now=1.0)
    second, _ = open_store()  # another replica, or the same one after a restart
    assert second.salt == first.salt and len(first.salt) == 32
    found = second.get(entry.key.exact)
    assert found is not None and found.response == b"persist me"
    [(hit, similarity)] = second.nearest(entry.key.scope, SPACE, _unit(5), 4, min_similarity=0.9)
    assert hit.id == found.id and similarity == pytest.approx(1.0, abs=1e-5)


def test_only_a_shared_store_locks_across_processes(open_store: Opener, backend: Settings) -> None:
    first, _ = open_store()
    second, _ = open_store()  # another replica on the same data
    if backend.store is None:  # one process per data dir: the in-process single flight is all there is
        assert first.flight_lock is None and second.flight_lock is None
        return
    one, other = first.flight_lock, second.flight_lock
    assert one is not None and other is not None
    assert one.try_lock("k")
    assert not other.try_lock("k")  # held by the first replica
    assert other.try_lock("another key")
    one.unlock("k")
    assert other.try_lock("k")
    first.close()
    second.close()  # the session goes back to the pool, its locks released
    third, _ = open_store()
    assert third.flight_lock is not None and third.flight_lock.try_lock("k")


def test_comparisons_are_kept_per_scope_mark_wrong_entries_and_go_with_their_tenant(open_store: Opener) -> None:
    store, storage = open_store()
    kept = _entry("the food was great", tenant="t1", vector=_unit(1))
    store.put(kept, now=1.0)
    found = store.get(kept.key.exact)
    assert found is not None and found.wrong_above is None
    scope = kept.key.scope
    for score, wrong in [(0.91, False), (0.95, True), (0.93, True), (0.99, False)]:
        store.record(Observation(tenant="t1", scope=scope, entry_id=found.id, score=score, wrong=wrong, at=2.0))
    assert store.history(scope, 10) == [(0.99, False), (0.93, True), (0.95, True), (0.91, False)]  # newest first
    assert store.history(scope, 2) == [(0.99, False), (0.93, True)]
    assert store.history("another scope", 10) == []
    marked = store.get(kept.key.exact)
    assert marked is not None and marked.wrong_above == pytest.approx(0.95)  # the highest wrong score stays
    near = store.nearest(scope, SPACE, _unit(1), 1, min_similarity=0.5)
    assert near[0][0].wrong_above == pytest.approx(0.95)  # the semantic tier sees it too
    store.alias("served-semantically", found.id)
    store.record(Observation(tenant="t1", scope=scope, entry_id=found.id, score=0.9, wrong=False, at=2.0))
    assert store.get("served-semantically") is not None  # a right comparison leaves the aliases
    store.record(Observation(tenant="t1", scope=scope, entry_id=found.id, score=0.9, wrong=True, at=2.0))
    assert store.get("served-semantically") is None  # a wrong one sends them back to the semantic tier
    assert store.get(kept.key.exact) is not None  # the entry's own key stays
    reopened, _ = open_store()  # another process (or replica) reads the same record
    assert reopened.history(scope, 10)[0] == (0.9, True)
    storage.erase_tenants({"t1"}, now=3.0)
    assert store.history(scope, 10) == []
    store.record(Observation(tenant="t1", scope=scope, entry_id=found.id, score=0.9, wrong=True, at=2.5))
    assert store.history(scope, 10) == []  # its request began before the erasure


def test_the_retention_removes_old_comparisons(open_store: Opener) -> None:
    store, _ = open_store()
    scope = _entry("x").key.scope
    store.record(Observation(tenant="t", scope=scope, entry_id=1, score=0.9, wrong=True, at=10.0))
    store.record(Observation(tenant="t", scope=scope, entry_id=1, score=0.8, wrong=False, at=50.0))
    store.sweep(now=60.0, keep=10, used={}, born_after=20.0)
    assert store.history(scope, 10) == [(0.8, False)]
