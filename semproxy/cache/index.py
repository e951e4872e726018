"""The vector index: one FAISS index per scope, searched by inner product (= cosine on unit vectors).

A scope starts as an exact flat index. When it grows past `large_scope_entries`, it is rebuilt as an IVF
index in the background (exact search over a million vectors takes ~60 ms); mutations that arrive during
the rebuild are journaled and replayed before the swap, so none is lost. bench/faiss_scale.py chose IVF:
at 1M entries, 4096 lists probed 128 at a time find the exact nearest neighbour of 98% of queries (99.7% of
near-duplicates) in about 3.3 ms, and unlike HNSW it deletes entries in place, which LRU and TTL need.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from semproxy.storage.records import Vector

Ids = NDArray[np.int64]


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise ImportError("the semantic tier needs faiss-cpu: pip install semproxy") from exc
    return faiss


class FaissIndex:
    """Per-scope FAISS indexes; thread-safe (one lock: a search on a scope of a few thousand takes µs)."""

    def __init__(self, dimension: int, *, large_scope_entries: int = 20_000) -> None:
        self.dimension = dimension
        self.large_scope_entries = large_scope_entries
        self._faiss = _faiss()
        self._scopes: dict[str, Any] = {}
        self._trained_size: dict[str, int] = {}  # scopes on IVF, and how many entries they were trained on
        self._journals: dict[str, list[tuple[str, Ids, Vector | None]]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return sum(int(index.ntotal) for index in self._scopes.values())

    def scope_size(self, scope: str) -> int:
        """How many vectors a scope holds."""
        with self._lock:
            index = self._scopes.get(scope)
            return 0 if index is None else int(index.ntotal)

    def add(self, scope: str, ids: Sequence[int], vectors: Vector) -> None:
        id_array = np.asarray(ids, dtype=np.int64)
        rows = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(id_array), self.dimension)
        with self._lock:
            index = self._scopes.get(scope)
            if index is None:
                index = self._scopes[scope] = self._flat()
            self._one_thread()
            index.add_with_ids(rows, id_array)
            if scope in self._journals:
                self._journals[scope].append(("add", id_array, rows))

    def search(self, scope: str, vector: Vector, k: int) -> list[tuple[int, float]]:
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, self.dimension)
        with self._lock:
            index = self._scopes.get(scope)
            if index is None or index.ntotal == 0:
                return []
            self._one_thread()
            scores, ids = index.search(query, k)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def remove(self, scope: str, ids: Sequence[int]) -> None:
        id_array = np.asarray(ids, dtype=np.int64)
        with self._lock:
            index = self._scopes.get(scope)
            if index is None:
                return
            self._remove(index, id_array)
            if scope in self._journals:
                self._journals[scope].append(("remove", id_array, None))
            if index.ntotal == 0 and scope not in self._journals:
                del self._scopes[scope]
                self._trained_size.pop(scope, None)

    def ids(self) -> dict[str, Ids]:
        """Every scope's ids (to find those whose entries another process deleted)."""
        with self._lock:
            return {scope: self._ids(index) for scope, index in self._scopes.items()}

    def clear(self) -> None:
        """Drop every scope."""
        with self._lock:
            self._scopes.clear()
            self._trained_size.clear()

    # ------------------------------------------------------------ large scopes

    def scopes_to_rebuild(self) -> list[str]:
        """Scopes past the flat limit, or IVF scopes that grew 8x beyond what they were trained on."""
        with self._lock:
            return [scope for scope, index in self._scopes.items()
                    if scope not in self._journals and self._needs_rebuild(scope, int(index.ntotal))]

    def _needs_rebuild(self, scope: str, size: int) -> bool:
        trained = self._trained_size.get(scope)
        return size >= self.large_scope_entries if trained is None else size >= 8 * trained

    def rebuild(self, scope: str) -> None:
        """Rebuild one scope as IVF without blocking searches; call from a background thread."""
        with self._lock:
            index = self._scopes.get(scope)
            if index is None or scope in self._journals:
                return
            self._journals[scope] = []
            ids, vectors = self._contents(index)
        try:
            replacement = self._ivf(ids, vectors)
        except BaseException:
            with self._lock:
                del self._journals[scope]
            raise
        with self._lock:
            for op, op_ids, op_vectors in self._journals.pop(scope):
                if op == "add":
                    replacement.add_with_ids(op_vectors, op_ids)
                else:
                    self._remove(replacement, op_ids)
            self._scopes[scope] = replacement
            self._trained_size[scope] = len(ids)

    def _one_thread(self) -> None:
        # One query runs on one core anyway; more OpenMP threads only fight the model and each other for
        # the CPU. The setting is per OS thread, so it is made on every call (it costs nanoseconds).
        self._faiss.omp_set_num_threads(1)

    def _remove(self, index: Any, ids: Ids) -> None:
        faiss = self._faiss
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        index.remove_ids(faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids)))

    def _contents(self, index: Any) -> tuple[Ids, Vector]:
        """All ids and vectors of a scope's index, flat or IVF."""
        faiss = self._faiss
        if isinstance(index, faiss.IndexIDMap2):
            ids = faiss.vector_to_array(index.id_map).astype(np.int64)
            return ids, index.index.reconstruct_n(0, index.ntotal).astype(np.float32)
        parts = [self._inverted_list(index, number) for number in range(index.nlist)]
        ids = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int64)
        vectors = np.vstack([p[1] for p in parts]) if parts else np.empty((0, self.dimension), np.float32)
        return ids, vectors

    def _ids(self, index: Any) -> Ids:
        faiss = self._faiss
        if isinstance(index, faiss.IndexIDMap2):
            ids: Ids = faiss.vector_to_array(index.id_map).astype(np.int64)
            return ids
        lists = index.invlists
        parts = [faiss.rev_swig_ptr(lists.get_ids(n), lists.list_size(n)).copy()
                 for n in range(index.nlist) if lists.list_size(n)]
        return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)

    def _inverted_list(self, ivf: Any, number: int) -> tuple[Ids, Vector]:
        faiss, lists = self._faiss, ivf.invlists
        size = lists.list_size(number)
        if size == 0:
            return np.empty(0, np.int64), np.empty((0, self.dimension), np.float32)
        ids = faiss.rev_swig_ptr(lists.get_ids(number), size).copy()
        codes = faiss.rev_swig_ptr(lists.get_codes(number), size * ivf.code_size).copy()
        return ids.astype(np.int64), codes.view(np.float32).reshape(size, self.dimension)

    def _flat(self) -> Any:
        faiss = self._faiss
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dimension))

    def _ivf(self, ids: Ids, vectors: Vector) -> Any:
        """IVF keeps our 64-bit ids itself (an IDMap over IVF would break on remove_ids).

        About 4*sqrt(n) lists (FAISS wants at least 39 training points per list), probing 1/32 of them
        but at least 128 (1/32 found 96.7% of nearest neighbours at 200,000 entries, 128 98.5%);
        the hash-table direct map makes deleting one id O(1) instead of a scan of every list. Training
        and adding run on one core, so a rebuild in the background leaves the other to the requests.
        """
        faiss = self._faiss
        nlist = max(16, min(int(4 * math.sqrt(len(ids))), len(ids) // 39))
        quantizer = faiss.IndexFlatIP(self.dimension)
        index = faiss.IndexIVFFlat(quantizer, self.dimension, nlist, faiss.METRIC_INNER_PRODUCT)
        self._one_thread()
        # 64 points per list train as well as all of them (bench/faiss_scale.py), at a fraction of the time.
        sample = np.random.default_rng(0).choice(len(vectors), size=min(len(vectors), 64 * nlist), replace=False)
        index.train(vectors[np.sort(sample)])
        index.nprobe = min(nlist, max(128, nlist // 32))
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        index.add_with_ids(vectors, ids)
        return index
