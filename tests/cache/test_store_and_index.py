"""The embedded storage's cache entries and the per-scope FAISS index on their own."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from semproxy.cache.index import FaissIndex
from semproxy.cache.keys import make_key
from semproxy.cache.store import EmbeddedStore
from semproxy.storage.records import NewEntry
from semproxy.storage.sqlite import SqliteStorage


def _entry(prompt: str, *, tenant: str = "t", ttl: int = 0, vector: np.ndarray | None = None) -> NewEntry:
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}]}
    return NewEntry(key=make_key("chat", body, tenant=tenant), response=prompt.encode(), vector=vector,
                    space=None if vector is None else "hashing/en", ttl_seconds=ttl)


def test_put_get_replace_and_alias(tmp_path: Path) -> None:
    store = SqliteStorage(tmp_path)
    first_id, removed = store.put_entry(_entry("a"), now=1.0)
    assert removed == []
    entry = _entry("a")
    second_id, removed = store.put_entry(entry, now=2.0)  # the same key replaces the old entry
    assert removed == [(first_id, entry.key.scope, None)]
    found = store.get_entry(entry.key.exact)
    assert found is not None and found.id == second_id and found.created_at == 2.0
    store.alias("another-key", second_id)
    alias = store.get_entry("another-key")
    assert alias is not None and alias.id == second_id
    store.clear_entries()
    assert store.get_entry("another-key") is None  # aliases go with their entry


def test_sweep_expires_touches_and_evicts_and_reports_what_went(tmp_path: Path) -> None:
    store = SqliteStorage(tmp_path)
    ids = [store.put_entry(_entry(p, tenant=t, ttl=ttl), now=10.0)[0]
           for p, t, ttl in [("a", "t1", 5), ("b", "t1", 0), ("c", "t2", 0), ("d", "t2", 0)]]
    removed, left = store.sweep(now=16.0, keep=10, used={})
    assert [i for i, _, _ in removed] == [ids[0]] and left == 3
    removed, left = store.sweep(now=16.0, keep=2, used={ids[1]: 20.0})
    assert [i for i, _, _ in removed] == [ids[2]] and left == 2  # c is now the least recently used
    assert store.clear_entries(tenants={"t2"}) == 1
    assert store.count_entries() == 1


def test_entries_and_salt_persist(tmp_path: Path) -> None:
    store = SqliteStorage(tmp_path)
    entry = _entry("persist me", vector=np.arange(4, dtype=np.float32))
    entry_id, _ = store.put_entry(entry, now=1.0)
    reopened = SqliteStorage(tmp_path)
    assert reopened.tenant_salt() == store.tenant_salt()
    [(ids, places, vectors)] = list(reopened.iter_vectors(now=2.0))
    assert ids == [entry_id] and places == [(entry.key.scope, "hashing/en")]
    assert vectors.tolist() == [[0.0, 1.0, 2.0, 3.0]]


def test_concurrent_readers_and_a_writer(tmp_path: Path) -> None:
    store = SqliteStorage(tmp_path)
    entries = [_entry(f"p{i}") for i in range(200)]
    errors: list[BaseException] = []

    def write() -> None:
        for entry in entries:
            store.put_entry(entry, now=1.0)

    def read() -> None:
        try:
            for entry in entries:
                found = store.get_entry(entry.key.exact)
                assert found is None or found.response == entry.response
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and store.count_entries() == 200


def _unit(rows: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_index_searches_only_inside_a_scope() -> None:
    index = FaissIndex(32)
    vectors = _unit(4)
    index.add("a", [1, 2], vectors[:2])
    index.add("b", [3, 4], vectors[2:])
    assert [i for i, _ in index.search("a", vectors[3], 4)] in ([1, 2], [2, 1])
    best, similarity = index.search("b", vectors[3], 1)[0]
    assert best == 4 and abs(similarity - 1.0) < 1e-5
    index.remove("b", [4])
    assert [i for i, _ in index.search("b", vectors[3], 4)] == [3]
    assert index.search("nowhere", vectors[0], 4) == []


def test_large_scope_becomes_ivf_without_losing_concurrent_writes() -> None:
    index = FaissIndex(32, large_scope_entries=1000)
    vectors = _unit(3000, seed=1)
    index.add("big", list(range(2000)), vectors[:2000])
    assert index.scopes_to_rebuild() == ["big"]
    done = threading.Event()

    def mutate_while_rebuilding() -> None:
        for i in range(2000, 3000):
            index.add("big", [i], vectors[i:i + 1])
        index.remove("big", list(range(0, 100)))
        done.set()

    writer = threading.Thread(target=mutate_while_rebuilding)
    writer.start()
    index.rebuild("big")
    writer.join()
    assert done.is_set() and index.scope_size("big") == 2900
    assert index.scopes_to_rebuild() == []
    hits = sum(index.search("big", vectors[i], 1)[0][0] == i for i in range(100, 3000, 29))
    assert hits >= 0.95 * len(range(100, 3000, 29))  # IVF recall on its own vectors
    assert all(index.search("big", vectors[i], 1)[0][0] != i for i in range(0, 100, 7))  # removed stay gone
    assert sorted(index.ids()["big"].tolist()) == list(range(100, 3000))  # an IVF scope lists its ids too


def test_a_tenant_erased_by_another_process_leaves_this_ones_index(tmp_path: Path) -> None:
    """Its vectors would never be served (their rows are gone) but do not stay in memory either."""
    made: list[FaissIndex] = []
    store = EmbeddedStore(SqliteStorage(tmp_path), make_index=lambda d: made.append(FaissIndex(d)) or made[-1])
    store.enable_vectors(32, now=0.0)
    vectors = _unit(4)
    for i, tenant in enumerate(["gone", "gone", "stays", "stays"]):
        store.put(_entry(f"p{i}", tenant=tenant, vector=vectors[i]), now=1.0)
    SqliteStorage(tmp_path).erase_tenants({"gone"})  # `semproxy cache clear --tenant`, in another process
    assert len(made[0]) == 4
    store.sweep(now=2.0, keep=10, used={})  # housekeeping, every 30 s
    assert len(made[0]) == 2
    assert sorted(int(i) for ids in made[0].ids().values() for i in ids) == [3, 4]
