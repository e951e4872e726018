"""semproxy's own vector index (semproxy.cache.index.FaissIndex) with one scope of 1,000,000 entries.

bench/faiss_scale.py compares raw FAISS index types to choose one; this script measures what semproxy
actually does with its choice: a scope filled past `large_scope_entries` is rebuilt as IVF with the
parameters FaissIndex picks itself, then searched one query at a time through FaissIndex.search, as a
lookup does. Same synthetic-around-real vectors as faiss_scale.py (real all-MiniLM-L6-v2 embeddings of
QQP and ShareGPT texts plus noise; held-out queries).

    .venv/bin/python bench/index_scale.py            # 1M entries, a few minutes (embeddings cached by faiss_scale.py)
    .venv/bin/python bench/index_scale.py --n 100000
    .venv/bin/python bench/index_scale.py --quick      # a smoke run: 30,000 entries, 5,000 corpus texts

Checked before anything is written: the scope was rebuilt as IVF, every query returned its 4 neighbours,
both recalls exist (in (0, 1]), and the targets hold (recall@1 >= 0.97, search p50 <= 5 ms). A run that
fails a check prints FAIL, exits with status 1 and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import Checks, provenance, run_main, write_results  # noqa: E402
from bench.faiss_scale import build_dataset, data_dir, load_real_embeddings  # noqa: E402
from semproxy.cache.index import FaissIndex  # noqa: E402

RESULTS = REPO / "bench" / "results" / "index_scale.json"
TARGET_RECALL, TARGET_P50_MS = 0.97, 5.0  # issue 13: what a scope of any size must reach


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--corpus-limit", type=int, default=None, help="embed only the first N corpus texts")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 30,000 entries, 5,000 corpus texts")
    args = parser.parse_args()
    if args.quick:
        args.n, args.queries, args.corpus_limit = 30_000, 200, 5000
    origin = provenance()
    real, _ = load_real_embeddings(data_dir(), torch_threads=1, limit=args.corpus_limit)
    data = build_dataset(real, args.n, args.queries, 1000, np.random.default_rng(20240601))
    index = FaissIndex(real.shape[1])
    started = time.perf_counter()
    for begin in range(0, args.n, 100_000):
        index.add("scope", data.ids[begin:begin + 100_000].tolist(), data.xb[begin:begin + 100_000])
    add_s = time.perf_counter() - started
    started = time.perf_counter()
    index.rebuild("scope")
    rebuild_s = time.perf_counter() - started
    truth = _exact_top4(data.xb, data.ids, data.xq)
    found, latencies = _search_all(index, data.xq)
    report = {
        "entries": args.n, "queries": args.queries, "dataset": data.meta,
        "index": _describe(index), "fill_seconds": round(add_s, 1), "rebuild_seconds": round(rebuild_s, 1),
        "search_ms": {"p50": round(statistics.median(latencies), 3),
                      "p99": round(sorted(latencies)[int(0.99 * (len(latencies) - 1))], 3)},
        "recall_at_1": round(float(np.mean(found[:, 0] == truth[:, 0])), 4),
        "recall_at_4": round(float(np.mean([len(set(f) & set(t)) / 4 for f, t in zip(found, truth, strict=True)])), 4),
        "answered": int((found >= 0).all(axis=1).sum()),
        "remove_1000_ms": _remove_timing(index, data.ids),
    }
    print(json.dumps({k: v for k, v in report.items() if k != "dataset"}, indent=2))
    checks = _check(report)
    checks.raise_if_failed()
    write_results(RESULTS, {**report, "checks": checks.record()}, origin)


def _check(report: dict[str, Any]) -> Checks:
    checks = Checks()
    checks.expect("IVF" in report["index"]["type"], f"index: {report['index']}, expected the scope rebuilt as IVF")
    checks.expect(report["answered"] == report["queries"],
                  f"queries: {report['answered']} of {report['queries']} returned 4 neighbours")
    for name in ("recall_at_1", "recall_at_4"):
        checks.expect(0 < report[name] <= 1, f"{name}: {report[name]}, expected in (0, 1]")
    checks.expect(report["recall_at_1"] >= TARGET_RECALL,
                  f"recall@1: {report['recall_at_1']}, expected at least {TARGET_RECALL}")
    checks.expect(report["search_ms"]["p50"] <= TARGET_P50_MS,
                  f"search p50: {report['search_ms']['p50']} ms, expected at most {TARGET_P50_MS} ms")
    return checks


def _exact_top4(xb: np.ndarray, ids: np.ndarray, xq: np.ndarray) -> np.ndarray:
    flat = faiss.IndexFlatIP(xb.shape[1])
    flat.add(xb)
    _, rows = flat.search(xq, 4)
    return ids[rows]


def _search_all(index: FaissIndex, xq: np.ndarray) -> tuple[np.ndarray, list[float]]:
    found = np.full((len(xq), 4), -1, dtype=np.int64)
    latencies = []
    for row, query in enumerate(xq):
        started = time.perf_counter()
        hits = index.search("scope", query, 4)
        latencies.append((time.perf_counter() - started) * 1000)
        found[row, :len(hits)] = [entry_id for entry_id, _ in hits]
    return found, latencies


def _describe(index: FaissIndex) -> dict[str, object]:
    inner = index._scopes["scope"]  # reading its parameters only
    ivf = {"nlist": int(inner.nlist), "nprobe": int(inner.nprobe)} if hasattr(inner, "nlist") else {}
    return {"type": type(inner).__name__, **ivf}


def _remove_timing(index: FaissIndex, ids: np.ndarray) -> float:
    started = time.perf_counter()
    for entry_id in ids[:1000]:  # one at a time, as LRU and TTL eviction do
        index.remove("scope", [int(entry_id)])
    return round((time.perf_counter() - started) * 1000, 1)


if __name__ == "__main__":
    run_main(main)
