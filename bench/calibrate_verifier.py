"""Fit the hit verifier and write the parameters that ship in the package.

Reproduces ``semproxy/cache/data/verifier_model.npz`` and ``semproxy/cache/data/verifier_idf.json.gz``:

1. word rarity (inverse document frequency) from the train and calibrate splits of every dataset plus the
   ShareGPT first turns (real prompts, no labels);
2. gradient-boosted trees (scikit-learn's HistGradientBoostingClassifier, exported to numpy) on the train split: the
   pairs whose cosine reaches the candidate floor and that no rule rejects, the only pairs it will see;
3. the calibration curve on the calibrate split: for each score threshold, the share of each dataset's
   negative pairs that would be served (cosine >= floor, no rule, score >= threshold). The curve keeps
   the worst dataset at each threshold, so a budget holds on every calibration dataset, PAWS included.

The held-out split is never read here. It prints the commit it runs at (package data records none: the
commit that adds the files names it), and checks before writing that every dataset has train and calibrate
pairs and that the exported trees score as scikit-learn does; otherwise FAIL, exit status 1, nothing
written. Run from the repository root (about two minutes on 2 cores)::

    .venv/bin/python bench/calibrate_verifier.py
    .venv/bin/python bench/calibrate_verifier.py --limit 2000 --out /tmp/verifier   # a smoke run elsewhere
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import verifier_data as vd

from bench.common import Checks, provenance, run_main
from semproxy.cache.pair_model import IDF_FILE, MODEL_FILE, PairModel, WordRarity, pair_vector
from semproxy.cache.rules import rule_rejection
from semproxy.cache.text import analyze

DATA_OUT = Path(__file__).resolve().parent.parent / "semproxy" / "cache" / "data"
CANDIDATE_FLOOR = 0.80  # the default `similarity_threshold`: FAISS candidates below it are never verified
TRAIN_FLOOR = 0.70  # a little below the floor, so the model also learns the region just above it
TREES = 300
SEED = 0
CURVE_LOGITS = np.linspace(-8.0, 16.0, 2401)  # a logit grid resolves scores crowded near 0 and 1


def log(message: str) -> None:
    print(f"[calibrate] {message}", file=sys.stderr, flush=True)


def sharegpt_prompts() -> list[str]:
    path = vd.sweep.data_dir() / "prompts" / "sharegpt_v3_first_turns.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["prompt"][:2000] for line in f]


def fit_rarity(datasets: list[vd.Dataset]) -> WordRarity:
    """IDF over content words of the non-held-out texts and ShareGPT prompts; rare words are left out."""
    documents: list[frozenset[str]] = []
    for d in datasets:
        rows = np.concatenate([d.rows("train"), d.rows("calibrate")])
        for text_id in set(d.left[rows].tolist()) | set(d.right[rows].tolist()):
            documents.append(frozenset(d.facts[text_id].content))
    documents.extend(frozenset(analyze(p).content) for p in sharegpt_prompts())
    return rarity_of(documents)


def rarity_of(documents: list[frozenset[str]]) -> WordRarity:
    """Smoothed inverse document frequency of each word seen in at least 3 documents (their content words)."""
    counts = Counter(word for doc in documents for word in doc)
    total = len(documents)

    def idf(df: int) -> float:
        return round(math.log((total + 1) / (df + 1)) + 1.0, 2)

    table = {word: idf(df) for word, df in counts.items() if df >= 3}
    log(f"word rarity: {len(table):,} words from {total:,} texts")
    return WordRarity(table, idf(1))


def pair_matrix(d: vd.Dataset, rows: npt.NDArray[np.intp], rarity: WordRarity,
                floor: float) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Model inputs of the rows the verifier scores (cosine >= floor, no rule), their labels, and which of
    them have the same words on both sides (accepted before the model, as `HitVerifier.verify` does)."""
    cosines = d.cosines(rows)
    features, labels, same = [], [], []
    for k, row in enumerate(rows):
        asked, stored = d.facts[d.right[row]], d.facts[d.left[row]]
        same_words = asked.words == stored.words
        if cosines[k] < floor or (not same_words and rule_rejection(asked, stored) is not None):
            continue
        features.append(pair_vector(asked, d.vectors[d.right[row]], stored, d.vectors[d.left[row]],
                                    float(cosines[k]), rarity))
        labels.append(bool(d.labels[row]))
        same.append(same_words)
    matrix = np.vstack(features) if features else np.zeros((0, 1), dtype=np.float32)
    return matrix, np.asarray(labels, dtype=np.bool_), np.asarray(same, dtype=np.bool_)


def fit_model(datasets: list[vd.Dataset], rarity: WordRarity) -> PairModel:
    from sklearn.ensemble import HistGradientBoostingClassifier

    parts = [pair_matrix(d, d.rows("train"), rarity, TRAIN_FLOOR) for d in datasets]
    x = np.vstack([p[0][~p[2]] for p in parts])
    y = np.concatenate([p[1][~p[2]] for p in parts])
    log(f"fitting on {len(y):,} pairs ({int(y.sum()):,} positive), {x.shape[1]} inputs")
    started = time.perf_counter()
    boosted = HistGradientBoostingClassifier(max_iter=TREES, learning_rate=0.05, random_state=SEED)
    boosted.fit(x, y)
    log(f"fitted {len(boosted._predictors)} trees in {time.perf_counter() - started:.0f} s")
    model = export_trees(boosted)
    agreement = np.abs(model.score(x) - boosted.predict_proba(x)[:, 1]).max()
    log(f"numpy trees agree with scikit-learn within {agreement:.1e}")
    checks = Checks()
    checks.expect(agreement < 1e-6, f"the exported trees score up to {agreement:.1e} away from scikit-learn")
    checks.raise_if_failed()  # a model that is not the one fitted must not ship
    return model


def export_trees(boosted: Any) -> PairModel:
    """scikit-learn's fitted trees as padded node arrays (a leaf points to itself)."""
    trees = [predictors[0].nodes for predictors in boosted._predictors]
    width = max(len(nodes) for nodes in trees)
    shape = (len(trees), width)
    feature, left, right = (np.zeros(shape, dtype=np.int32) for _ in range(3))
    threshold, value = np.zeros(shape), np.zeros(shape)
    for t, nodes in enumerate(trees):
        n = len(nodes)
        own = np.arange(n, dtype=np.int32)
        leaf = nodes["is_leaf"].astype(bool)
        feature[t, :n] = np.where(leaf, 0, nodes["feature_idx"])
        threshold[t, :n] = np.where(leaf, np.inf, nodes["num_threshold"])
        left[t, :n] = np.where(leaf, own, nodes["left"])
        right[t, :n] = np.where(leaf, own, nodes["right"])
        value[t, :n] = np.where(leaf, nodes["value"], 0.0)
    depth = int(max(nodes["depth"].max() for nodes in trees))
    return PairModel(feature=feature, threshold=threshold, left=left, right=right, value=value,
                     baseline=float(np.ravel(boosted._baseline_prediction)[0]), depth=depth,
                     curve_scores=np.zeros(1), curve_false_hit_rates=np.zeros(1))


def calibration_curve(model: PairModel, datasets: list[vd.Dataset], rarity: WordRarity
                      ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], dict[str, list[float]]]:
    """Score thresholds and, at each, the worst dataset's share of negatives served (calibrate split)."""
    grid = 1.0 / (1.0 + np.exp(-CURVE_LOGITS))
    worst = np.zeros(len(grid))
    per_dataset: dict[str, list[float]] = {}
    for d in datasets:
        rows = d.rows("calibrate")
        x, labels, same = pair_matrix(d, rows, rarity, CANDIDATE_FLOOR)
        negatives = int((~d.labels[rows]).sum())
        scores = np.where(same, 1.0, model.score(x)) if len(x) else np.zeros(0)
        negative_scores = np.sort(scores[~labels])
        served = len(negative_scores) - np.searchsorted(negative_scores, grid, side="left")
        rates = served / max(negatives, 1)
        per_dataset[d.name] = rates.tolist()
        worst = np.maximum(worst, rates)
    return grid, worst, per_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="read only the first N pairs of each dataset (a smoke run)")
    parser.add_argument("--out", type=Path, default=DATA_OUT, help="where to write (default: the package data)")
    args = parser.parse_args()
    origin = provenance()
    log(f"at commit {origin['commit']}{' with uncommitted changes' if origin['dirty'] else ''}")
    datasets = vd.load_all(args.limit)
    checks = Checks()
    for d in datasets:
        checks.expect(len(d.rows("train")) > 0 and len(d.rows("calibrate")) > 0,
                      f"{d.name}: {len(d.rows('train'))} train and {len(d.rows('calibrate'))} calibrate pairs")
    checks.raise_if_failed()
    rarity = fit_rarity(datasets)
    model = fit_model(datasets, rarity)
    grid, worst, per_dataset = calibration_curve(model, datasets, rarity)
    model = model.with_curve(grid, worst)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / MODEL_FILE)
    payload = json.dumps({"idf": rarity.idf, "unknown": rarity.unknown}, sort_keys=True, separators=(",", ":"))
    (args.out / IDF_FILE).write_bytes(gzip.compress(payload.encode(), mtime=0))
    for budget in (0.005, 0.01, 0.02, 0.05, 0.10):
        threshold = model.threshold_for(budget)
        index = int(np.searchsorted(grid, threshold))
        rates = ", ".join(f"{name} {values[index]:.3%}" for name, values in per_dataset.items())
        log(f"budget {budget:.1%}: score >= {threshold:.6f} (calibration false hits: {rates})")
    log(f"wrote {MODEL_FILE} and {IDF_FILE} to {args.out}")


if __name__ == "__main__":
    run_main(main)
