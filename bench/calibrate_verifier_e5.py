"""Fit the hit verifier of the e5 space (prompts in other languages than English) and write its package files.

Reproduces ``semproxy/cache/data/verifier_model_e5.npz`` and ``verifier_idf_e5.json.gz`` from the multilingual
pairs of ``bench/verifier_data_e5.py`` (embedded with multilingual-e5-small), as ``bench/calibrate_verifier.py``
does for the English MiniLM space:

1. word rarity (inverse document frequency) from the texts of the train splits, every language together;
2. gradient-boosted trees (scikit-learn, exported to numpy) over ``pair_vector`` on the train split: only the
   pairs the verifier will ever see (both sides detected as the same language, e5 cosine >= the candidate
   floor, no rule rejects, not the same words);
3. the calibration curve on the calibrate split: for each score threshold, the share of each language's
   negative pairs that would be served (same language, cosine >= floor, no rule, score >= threshold), all of
   the language's calibration data together (STS, SICK-NL, PAWS-X). Each language keeps its own curve (a
   budget then holds per language, and the hardest language does not set every language's threshold), and
   the worst language's curve serves languages that have none.

The held-out split is never read here. Checked before writing: every source read all its rows, the PAWS-X
translations were matched, every language has train and calibrate pairs, the exported trees score as
scikit-learn does, and the default budget serves something; otherwise FAIL, exit status 1, nothing written.
Run from the repository root (a few minutes once the embeddings are cached; embedding them takes about 20
minutes on 2 busy cores)::

    .venv/bin/python bench/calibrate_verifier_e5.py
    .venv/bin/python bench/calibrate_verifier_e5.py --out some/folder   # write elsewhere
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import calibrate_verifier as cv
import verifier_data_e5 as vd5

from bench.common import Checks, provenance, run_main
from semproxy.cache.pair_model import SPACE_FILES, PairModel, WordRarity

FLOOR = 0.80  # the candidate floor (default `similarity_threshold`); e5 pairs below it never reach the verifier
TREES = 300
LEARNING_RATE = 0.1  # chosen on the calibrate split among (0.05, 200), (0.05, 400), (0.1, 300)
MIN_MATCHED = 0.9  # PAWS-X rows matched to their French translation, at least


def log(message: str) -> None:
    print(f"[calibrate-e5] {message}", file=sys.stderr, flush=True)


def verified(d: vd5.Dataset, rows: npt.NDArray[np.intp], rarity: WordRarity
             ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """`cv.pair_matrix` of the rows whose two sides share a language partition (the others never meet)."""
    return cv.pair_matrix(d, rows[d.same_language(rows)], rarity, FLOOR)


def fit_rarity(datasets: list[vd5.Dataset]) -> WordRarity:
    """IDF over the content words of the train texts; words seen in fewer than 3 texts are left out."""
    documents = []
    for d in datasets:
        rows = d.rows("train")
        documents += [frozenset(d.facts[i].content) for i in set(d.left[rows].tolist()) | set(d.right[rows].tolist())]
    return cv.rarity_of(documents)


def fit_model(datasets: list[vd5.Dataset], rarity: WordRarity) -> PairModel:
    from sklearn.ensemble import HistGradientBoostingClassifier

    parts = [verified(d, d.rows("train"), rarity) for d in datasets]
    x = np.vstack([p[0][~p[2]] for p in parts if len(p[0])])
    y = np.concatenate([p[1][~p[2]] for p in parts])
    log(f"fitting on {len(y):,} pairs ({int(y.sum()):,} positive), {x.shape[1]} inputs")
    boosted = HistGradientBoostingClassifier(max_iter=TREES, learning_rate=LEARNING_RATE, random_state=cv.SEED)
    boosted.fit(x, y)
    model = cv.export_trees(boosted)
    agreement = float(np.abs(model.score(x) - boosted.predict_proba(x)[:, 1]).max())
    checks = Checks()
    checks.expect(agreement < 1e-6, f"the exported trees score up to {agreement:.1e} away from scikit-learn")
    checks.raise_if_failed()  # a model that is not the one fitted must not ship
    return model


def served_rates(model: PairModel, datasets: list[vd5.Dataset], rarity: WordRarity, split: str,
                 grid: npt.NDArray[np.float64]) -> dict[str, npt.NDArray[np.float64]]:
    """Per language, at each score threshold of `grid`: the share of its negatives (all sources) served."""
    served: dict[str, npt.NDArray[np.float64]] = {}
    negatives: Counter[str] = Counter()
    for d in datasets:
        rows = d.rows(split)
        if not len(rows):
            continue
        x, labels, same = verified(d, rows, rarity)
        scores = np.where(same, 1.0, model.score(x)) if len(x) else np.zeros(0)
        negative_scores = np.sort(scores[~labels])
        count = len(negative_scores) - np.searchsorted(negative_scores, grid, side="left")
        served[d.language] = served.get(d.language, np.zeros(len(grid))) + count
        negatives[d.language] += int((~d.labels[rows]).sum())
    return {language: counts / max(negatives[language], 1) for language, counts in served.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=cv.DATA_OUT, help="where to write (default: the package data)")
    args = parser.parse_args()
    origin = provenance()
    log(f"at commit {origin['commit']}{' with uncommitted changes' if origin['dirty'] else ''}")
    datasets = vd5.load_all()
    checks = check_data(datasets)
    checks.raise_if_failed()
    rarity = fit_rarity(datasets)
    model = fit_model(datasets, rarity)
    grid = 1.0 / (1.0 + np.exp(-cv.CURVE_LOGITS))
    per_language = served_rates(model, datasets, rarity, "calibrate", grid)
    model = model.with_curve(grid, np.max(np.vstack(list(per_language.values())), axis=0), per_language)
    checks.expect(model.threshold_for(0.02) < 1.0, "the default budget (2 %) serves nothing")
    checks.raise_if_failed()
    for budget in (0.01, 0.02, 0.05):
        rates = []
        for lang, values in sorted(per_language.items()):
            threshold = model.threshold_for(budget, lang)
            rates.append(f"{lang} >= {threshold:.4f} ({values[int(np.searchsorted(grid, threshold))]:.1%})")
        log(f"budget {budget:.0%}: per language, score threshold (calibration false hits): {', '.join(rates)}")
    write(model, rarity, args.out)


def check_data(datasets: list[vd5.Dataset]) -> Checks:
    checks = Checks()
    for d in datasets:
        expected = vd5.EXPECTED_PAIRS[d.name]
        checks.expect(d.read == expected, f"{d.name}: {d.read} rows read, expected {expected}")
        if d.name.startswith("pawsx_"):
            checks.expect(d.matched >= MIN_MATCHED * len(d.labels),
                          f"{d.name}: only {d.matched} of {len(d.labels)} rows matched to a French translation")
        if d.language != "fi":
            checks.expect(len(d.rows("train")) > 0 and len(d.rows("calibrate")) > 0,
                          f"{d.name}: {len(d.rows('train'))} train and {len(d.rows('calibrate'))} calibrate pairs")
        else:
            checks.expect(set(d.splits.tolist()) == {"heldout"}, f"{d.name}: {set(d.splits.tolist())} splits, "
                          "expected held-out only")
    return checks


def write(model: PairModel, rarity: WordRarity, out: Path) -> None:
    model_file, idf_file = SPACE_FILES["e5"]
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / model_file)
    payload = json.dumps({"idf": rarity.idf, "unknown": rarity.unknown}, sort_keys=True, separators=(",", ":"))
    (out / idf_file).write_bytes(gzip.compress(payload.encode(), mtime=0))
    log(f"wrote {model_file} and {idf_file} to {out}")


if __name__ == "__main__":
    run_main(main)
