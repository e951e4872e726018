"""Weigh the pair encoder against the trees and choose its operating points: writes
``semproxy/cache/data/pair_encoder_blend.json`` (see ``semproxy/cache/reading.py``).

Data: the ``calibrate`` split only (``bench/verifier_data.py``: QQP, PAWS-Wiki, STS-B, GPTCache's mock pairs),
plus pairs made by ``bench/pair_edits.py`` from the calibrate split's prompts (rewordings and swaps, "fit" word
lists). Only pairs the blend will ever see count: cosine >= the candidate floor, no rule objects, not the same
words. The calibrate pairs are halved by a hash of the pair:

1. on one half, a logistic regression over (logit of the encoder's score, logit of the trees' score, cosine);
2. on the other half, the calibration curve: for each threshold, the share of each set's negative pairs that
   would be served (over all of that set's negatives, as ``bench/calibrate_verifier.py`` counts), keeping the
   worst set, so a budget holds on every calibration set, PAWS and the generated swaps included.

The held-out split, the hand-written sets and the "heldout" word lists are never read. Run from the repository
root after ``bench/train_pair_encoder.py`` (a few minutes)::

    .venv/bin/python bench/calibrate_pair_encoder.py
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pair_edits
import train_pair_encoder as training
import verifier_data as vd

from bench.common import Checks, provenance, run_main, write_results
from semproxy.cache.onnx_minilm import OnnxMiniLM
from semproxy.cache.pair_encoder import PairEncoder
from semproxy.cache.reading import BLEND_FILE, Blend, logit
from semproxy.cache.text import analyze
from semproxy.cache.verifier import HitVerifier, rule_verdict

DATA_OUT = Path(__file__).resolve().parent.parent / "semproxy" / "cache" / "data"
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "pair_encoder_calibration.json"
FLOOR = 0.80
GENERATED_PROMPTS = 3000
GRID = 1.0 / (1.0 + np.exp(-np.linspace(-10.0, 12.0, 2201)))


def log(message: str) -> None:
    print(f"[calibrate-pair-encoder] {message}", file=sys.stderr, flush=True)


@dataclass
class Scored:
    """The pairs of one calibration set that reach the blend, with their three inputs."""

    name: str
    negatives: int = 0  # every negative pair of the set, reached or not
    labels: list[bool] = field(default_factory=list)
    halves: list[int] = field(default_factory=list)
    inputs: list[tuple[float, float, float]] = field(default_factory=list)  # (encoder, trees, cosine)


def half_of(a: str, b: str) -> int:
    return int(hashlib.md5(f"{a}\n{b}".encode()).hexdigest(), 16) % 2


def score_set(name: str, pairs: list[tuple[str, str, bool]], vectors: dict[str, np.ndarray],
              trees: HitVerifier, encoder: PairEncoder) -> Scored:
    scored = Scored(name, negatives=sum(1 for *_, y in pairs if not y))
    reach = []
    for a, b, y in pairs:
        cosine = float(vectors[a] @ vectors[b])
        stored, asked = analyze(a), analyze(b)
        if cosine < FLOOR or rule_verdict(asked, stored) is not None:
            continue
        reach.append((a, b, y, cosine, trees.score(asked, vectors[b], stored, vectors[a], cosine)))
    for start in range(0, len(reach), 64):
        chunk = reach[start:start + 64]
        read = encoder.score([(a, b) for a, b, *_ in chunk])
        for (a, b, y, cosine, tree), r in zip(chunk, read, strict=True):
            scored.labels.append(y)
            scored.halves.append(half_of(a, b))
            scored.inputs.append((float(r), tree, cosine))
    log(f"{name}: {len(pairs)} pairs, {len(reach)} reach the blend ({sum(scored.labels)} positive)")
    return scored


def features(inputs: list[tuple[float, float, float]]) -> np.ndarray:
    x = np.asarray(inputs, dtype=np.float64).reshape(-1, 3)
    return np.column_stack([logit(x[:, 0]), logit(x[:, 1]), x[:, 2]])


def fit_blend(sets: list[Scored]) -> tuple[tuple[float, float, float], float]:
    from sklearn.linear_model import LogisticRegression
    rows = [(i, s) for s in sets for i, h in enumerate(s.halves) if h == 0]
    x = features([s.inputs[i] for i, s in rows])
    y = np.asarray([s.labels[i] for i, s in rows])
    model = LogisticRegression(C=1.0, max_iter=1000).fit(x, y)
    w = model.coef_[0]
    return (float(w[0]), float(w[1]), float(w[2])), float(model.intercept_[0])


def curve(blend: Blend, sets: list[Scored]) -> tuple[np.ndarray, dict[str, list[float]], dict[str, list[float]]]:
    worst = np.zeros(len(GRID))
    served: dict[str, list[float]] = {}
    recall: dict[str, list[float]] = {}
    for s in sets:
        rows = [i for i, h in enumerate(s.halves) if h == 1]
        x = np.asarray([s.inputs[i] for i in rows], dtype=np.float64).reshape(-1, 3)
        labels = np.asarray([s.labels[i] for i in rows], dtype=bool)
        scores = blend.score(x[:, 0], x[:, 1], x[:, 2]) if len(rows) else np.zeros(0)
        negatives = np.sort(scores[~labels])
        positives = np.sort(scores[labels])
        share = (len(negatives) - np.searchsorted(negatives, GRID, side="left")) / max(s.negatives / 2, 1)
        served[s.name] = share.tolist()
        found = len(positives) - np.searchsorted(positives, GRID, side="left")
        recall[s.name] = (found / max(len(positives), 1)).tolist()
        if s.negatives:
            worst = np.maximum(worst, share)
    return worst, served, recall


def generated_sets(limit: int) -> dict[str, list[tuple[str, str, bool]]]:
    public = training.public_pairs("calibrate")
    prompts = training.base_prompts("calibrate", public)
    random.Random(7).shuffle(prompts)
    out: dict[str, list[tuple[str, str, bool]]] = {"generated_rewordings": [], "generated_swaps": []}
    for a, b, same, _ in pair_edits.edited_pairs(prompts[:limit], which="fit", seed=7):
        out["generated_rewordings" if same else "generated_swaps"].append((a, b, same))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DATA_OUT)
    args = parser.parse_args()
    origin = provenance()
    checks = Checks()
    trees = HitVerifier.packaged(max_false_hit_rate=0.02, space="minilm")
    encoder = PairEncoder.packaged()
    sets: list[Scored] = []
    for d in vd.load_all():
        rows = d.rows("calibrate")
        vectors = {}
        for r in rows:
            vectors[d.texts[d.left[r]]] = d.vectors[d.left[r]]
            vectors[d.texts[d.right[r]]] = d.vectors[d.right[r]]
        pairs = [(d.texts[d.left[r]], d.texts[d.right[r]], bool(d.labels[r])) for r in rows]
        sets.append(score_set(d.name, pairs, vectors, trees, encoder))
    embedder = OnnxMiniLM()
    for name, pairs in generated_sets(GENERATED_PROMPTS).items():
        texts = sorted({t for a, b, _ in pairs for t in (a, b)})
        vectors = {}
        for start in range(0, len(texts), 32):
            chunk = texts[start:start + 32]
            vectors.update(zip(chunk, embedder.embed(chunk), strict=True))
        sets.append(score_set(name, pairs, vectors, trees, encoder))
    for s in sets:
        checks.expect(len(s.labels) > 0, f"{s.name}: no pair reached the blend")
    checks.raise_if_failed()
    weights, bias = fit_blend(sets)
    draft = Blend(weights, bias, GRID, np.zeros(len(GRID)))
    worst, served, recall = curve(draft, sets)
    blend = Blend(weights, bias, GRID, worst)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / BLEND_FILE).write_text(blend.to_json() + "\n")
    budgets = {}
    for budget in (0.01, 0.02, 0.05):
        t = blend.threshold_for(budget)
        k = int(np.searchsorted(GRID, t))
        budgets[str(budget)] = {"threshold": t, "served": {n: v[k] for n, v in served.items()},
                                "recall_of_reached": {n: v[k] for n, v in recall.items()}}
        log(f"budget {budget:.0%}: threshold {t:.4f}; served " +
            ", ".join(f"{n} {v[k]:.2%}" for n, v in served.items()) + "; recall " +
            ", ".join(f"{n} {v[k]:.2%}" for n, v in recall.items()))
    write_results(RESULTS_PATH, {"weights": weights, "bias": bias, "budgets": budgets,
                                 "sets": {s.name: {"reached": len(s.labels), "negatives": s.negatives}
                                          for s in sets}, "checks": checks.record()}, origin)
    log(f"weights {weights}, bias {bias:.3f}; wrote {BLEND_FILE}")


if __name__ == "__main__":
    run_main(main)
