"""One contract, two stores: the embedded SQLite + FAISS store and the shared PostgreSQL + pgvector store
behave the same through the SemanticStore protocol the cache service uses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from semproxy.cache.backend import EmbeddedStore, SemanticStore
from semproxy.cache.index import FaissIndex
from semproxy.cache.keys import make_key
from semproxy.cache.records import NewEntry

DIM = 16
Opener = Callable[[], SemanticStore]


@pytest.fixture(params=["embedded", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the store under test (again and again: each call is a new process's view of the same data)."""
    opened: list[SemanticStore] = []

    def embedded() -> SemanticStore:
        return EmbeddedStore(tmp_path / "cache.sqlite3", make_index=partial(FaissIndex, large_scope_entries=1000))

    def postgres() -> SemanticStore:
        from semproxy.cache.postgres import PostgresStore

        return PostgresStore(request.getfixturevalue("pg_url"), pool_size=4)

    def make() -> SemanticStore:
        store = embedded() if request.param == "embedded" else postgres()
        store.enable_vectors(DIM, now=0.0)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def _unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def _near(vector: np.ndarray, seed: int, noise: float) -> np.ndarray:
    moved = vector + noise * _unit(seed)
    return (moved / np.linalg.norm(moved)).astype(np.float32)


def _entry(prompt: str, *, tenant: str = "t", ttl: int = 0, vector: np.ndarray | None = None,
           system: str = "") -> NewEntry:
    messages = [{"role": "system", "content": system}] if system else []
    body = {"model": "m", "messages": [*messages, {"role": "user", "content": prompt}]}
    return NewEntry(key=make_key("chat", body, tenant=tenant), response=prompt.encode(), vector=vector,
                    ttl_seconds=ttl)


def test_exact_put_replace_alias_and_clear(open_store: Opener) -> None:
    store = open_store()
    entry = _entry("a")
    assert store.put(entry, now=1.0) == 0
    assert store.put(_entry("a"), now=2.0) == 1  # the same key replaces the old entry
    found = store.get_exact(entry.key.exact)
    assert found is not None and found.created_at == 2.0 and found.response == b"a" and found.prompt == "a"
    assert found.tenant == "t" and found.scope == entry.key.scope and found.expires_at is None
    store.add_alias("another-key", found.id)
    alias = store.get_exact("another-key")
    assert alias is not None and alias.id == found.id
    store.add_alias("dangling", 10**9)  # an entry that is gone: nothing to point at
    assert store.get_exact("dangling") is None
    assert store.count() == 1
    assert store.clear() == 1
    assert store.get_exact("another-key") is None and store.count() == 0  # aliases go with their entry


def test_nearest_searches_one_scope_and_returns_vectors(open_store: Opener) -> None:
    store = open_store()
    base = _unit(1)
    close, far, elsewhere = _near(base, 2, 0.1), _near(base, 3, 0.6), _near(base, 4, 0.05)
    store.put(_entry("close", vector=close), now=1.0)
    store.put(_entry("far", vector=far), now=1.0)
    store.put(_entry("no vector"), now=1.0)
    store.put(_entry("other scope", vector=elsewhere, system="another system prompt"), now=1.0)
    scope = _entry("x").key.scope
    found = store.nearest(scope, base, 4, min_similarity=0.0)
    assert [e.prompt for e, _ in found] == ["close", "far"]
    (best, similarity), (_, farther) = found
    assert similarity == pytest.approx(float(close @ base), abs=1e-4) and farther < similarity <= 1.0
    assert best.vector is not None and np.allclose(best.vector, close, atol=1e-6)  # the hit verifier needs it
    assert [e.prompt for e, _ in store.nearest(scope, base, 4, min_similarity=(similarity + farther) / 2)] \
        == ["close"]
    assert [e.prompt for e, _ in store.nearest(scope, base, 1, min_similarity=0.0)] == ["close"]
    assert store.nearest("no-such-scope", base, 4, min_similarity=0.0) == []


def test_expiry_lru_eviction_and_tenant_clear(open_store: Opener) -> None:
    store = open_store()
    entries = [_entry(p, tenant=t, ttl=ttl, vector=_unit(i))
               for i, (p, t, ttl) in enumerate([("a", "t1", 5), ("b", "t1", 0), ("c", "t2", 0), ("d", "t2", 0)])]
    for entry in entries:
        store.put(entry, now=10.0)
    ids = {e.prompt: e.id for e in (store.get_exact(x.key.exact) for x in entries) if e is not None}
    assert store.delete_expired(now=16.0) == 1 and store.get_exact(entries[0].key.exact) is None
    store.touch({ids["b"]: 20.0})
    assert store.evict(keep=2) == 1  # c is now the least recently used
    assert store.get_exact(entries[2].key.exact) is None and store.get_exact(entries[1].key.exact) is not None
    assert store.clear(tenant="t2") == 1
    assert store.count() == 1
    scope = entries[0].key.scope
    assert [e.prompt for e, _ in store.nearest(scope, _unit(3), 4, min_similarity=-1.0)] == ["b"]


def test_entries_salt_and_vectors_persist_across_processes(open_store: Opener) -> None:
    first = open_store()
    entry = _entry("persist me", vector=_unit(5))
    first.put(entry, now=1.0)
    second = open_store()  # another replica, or the same one after a restart
    assert second.salt == first.salt and len(first.salt) == 32
    found = second.get_exact(entry.key.exact)
    assert found is not None and found.response == b"persist me"
    [(hit, similarity)] = second.nearest(entry.key.scope, _unit(5), 4, min_similarity=0.9)
    assert hit.id == found.id and similarity == pytest.approx(1.0, abs=1e-5)


def test_a_lock_is_free_again_once_released(open_store: Opener) -> None:
    store = open_store()
    assert store.try_lock("k")
    store.unlock("k")
    assert store.try_lock("k")
    store.unlock("k")
