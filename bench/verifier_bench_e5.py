"""Does the e5 hit verifier keep wrong answers out in other languages? Held-out pairs only, beside today's MiniLM.

Each held-out pair of ``bench/verifier_data_e5.py`` (nothing fitted or calibrated on it; Finnish never seen at
all) is asked on its own: store ``text_a``, ask ``text_b``. Policies:

* **e5 + verifier** (the multilingual tier): both sides must be detected as the same language (otherwise
  they live in different partitions and never meet: a miss for a same-meaning pair, a refusal otherwise),
  e5 cosine >= the floor, then the rules and the e5 pair model at the budget's operating point;
* **e5 cosine only**: the same, without rules or model (what the floor alone would serve);
* **MiniLM + verifier** (today's set-up for every prompt): all-MiniLM-L6-v2 vectors, cosine >= the floor,
  the packaged English verifier at the budget; no language partition.

Per language, all its sources together (STS translations, SICK-NL, PAWS-X word swaps, Turku): the share of
same-meaning pairs served ("accepted_same", PAWS-X's left out: keeping the meaning through a word swap is no
recall target) and of different-meaning pairs served ("accepted_different", PAWS-X's included), PAWS-X's
pairs also on their own. Per source too.

Checked before anything is written: every source read all its rows and has held-out pairs of both kinds,
and every policy was measured on every language. A run that fails a check prints FAIL, exits with status 1
and writes nothing. Run from the repository root (a minute or two once the embeddings are cached)::

    .venv/bin/python bench/verifier_bench_e5.py
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import threshold_sweep as sweep
import verifier_data_e5 as vd5

from bench.common import Checks, provenance, run_main, write_results
from semproxy.cache.verifier import Candidate, HitVerifier

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "verifier_bench_e5.json"
FLOOR = 0.80
BUDGETS = (0.01, 0.02, 0.05)
DEFAULT_BUDGET = 0.02
TARGETS = {"accepted_same_at_least": 0.50, "accepted_different_at_most": 0.05}  # per fitted language, at 2 %
FITTED_LANGUAGES = ("de", "es", "fr", "it", "nl", "pl", "pt")


def log(message: str) -> None:
    print(f"[verifier-bench-e5] {message}", file=sys.stderr, flush=True)


def served(d: vd5.Dataset, rows: npt.NDArray[np.intp], vectors: npt.NDArray[np.float32],
           verifier: HitVerifier | None, *, partitioned: bool) -> npt.NDArray[np.bool_]:
    """Which of the pairs `rows` the policy serves (store left, ask right)."""
    out = np.zeros(len(rows), dtype=np.bool_)
    meets = d.same_language(rows) if partitioned else np.ones(len(rows), dtype=np.bool_)
    for k, row in enumerate(rows):
        stored, asked = d.left[row], d.right[row]
        similarity = float(vectors[stored] @ vectors[asked])
        if not meets[k] or similarity < FLOOR:
            continue
        if verifier is None:
            out[k] = True
            continue
        candidate = Candidate(facts=d.facts[stored], vector=vectors[stored], similarity=similarity)
        out[k] = verifier.choose(d.facts[asked], vectors[asked], [candidate])[0] is not None
    return out


def minilm_vectors(d: vd5.Dataset, rows: npt.NDArray[np.intp], loader: sweep.ModelLoader) -> npt.NDArray[np.float32]:
    """All-MiniLM-L6-v2 vectors of the texts of `rows` (others stay zero), cached like the English benches."""
    ids = np.unique(np.concatenate([d.left[rows], d.right[rows]]))
    pairs = sweep.PairSet(f"{d.name}-heldout", [])
    for i in ids:
        pairs._text_id(d.texts[i])
    vectors = np.zeros((len(d.texts), 384), dtype=np.float32)
    vectors[ids] = sweep.embed(pairs, loader, use_cache=True)[0].astype(np.float32)
    return vectors


def figures(outcomes: list[tuple[vd5.Dataset, npt.NDArray[np.intp], npt.NDArray[np.bool_]]]) -> dict[str, object]:
    """Shares served. PAWS-X's same-meaning pairs (word swaps that keep the meaning) are no recall target and
    are counted on their own; every different-meaning pair, PAWS-X's included, counts in accepted_different."""
    labels = np.concatenate([d.labels[rows] for d, rows, _ in outcomes])
    hits = np.concatenate([s for _, _, s in outcomes])
    paws = np.concatenate([np.full(len(rows), d.name.startswith("pawsx_")) for d, rows, _ in outcomes])
    same = labels & ~paws
    result: dict[str, object] = {
        "same_pairs": int(same.sum()), "different_pairs": int((~labels).sum()),
        "accepted_same": float(hits[same].mean()) if same.any() else None,
        "accepted_different": float(hits[~labels].mean()) if (~labels).any() else None,
    }
    if paws.any():
        result["pawsx_same_pairs"] = int((labels & paws).sum())
        result["pawsx_accepted_same"] = float(hits[labels & paws].mean())
        result["pawsx_different_pairs"] = int((~labels & paws).sum())
        result["pawsx_accepted_different"] = float(hits[~labels & paws].mean())
    return result


def measure(datasets: list[vd5.Dataset], policy: str, verifier: HitVerifier | None,
            minilm: dict[str, npt.NDArray[np.float32]]) -> dict[str, object]:
    by_language: dict[str, list[tuple[vd5.Dataset, npt.NDArray[np.intp], npt.NDArray[np.bool_]]]] = defaultdict(list)
    per_source = {}
    for d in datasets:
        rows = d.rows("heldout")
        if policy.startswith("minilm"):
            hits = served(d, rows, minilm[d.name], verifier, partitioned=False)
        else:
            hits = served(d, rows, d.vectors, verifier, partitioned=True)
        by_language[d.language].append((d, rows, hits))
        per_source[d.name] = figures([(d, rows, hits)])
    languages = {language: figures(outcomes) for language, outcomes in sorted(by_language.items())}
    return {"languages": languages, "sources": per_source}


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    origin = provenance()
    datasets = vd5.load_all()
    loader = sweep.ModelLoader()
    minilm = {d.name: minilm_vectors(d, d.rows("heldout"), loader) for d in datasets}
    policies: list[tuple[str, HitVerifier | None]] = [
        *((f"e5 + verifier, budget {b:.0%}", HitVerifier.packaged(max_false_hit_rate=b, space="e5")) for b in BUDGETS),
        ("e5 cosine only", None),
        (f"minilm + verifier, budget {DEFAULT_BUDGET:.0%}", HitVerifier.packaged(max_false_hit_rate=DEFAULT_BUDGET)),
        ("minilm cosine only", None),
    ]
    results: dict[str, object] = {
        "floor": FLOOR, "targets": TARGETS,
        "operating_points": {f"{b:.0%}": HitVerifier.packaged(max_false_hit_rate=b, space="e5").threshold
                             for b in BUDGETS},
        "split_by_detection": _split_by_detection(datasets),
        "policies": {},
    }
    for name, verifier in policies:
        results["policies"][name] = measure(datasets, name, verifier, minilm)  # type: ignore[index]
        _show(name, results["policies"][name])  # type: ignore[index]
    results["targets_met"] = _targets_met(results["policies"][f"e5 + verifier, budget {DEFAULT_BUDGET:.0%}"])  # type: ignore[index]
    log(f"targets met at the default budget: {results['targets_met']}")
    checks = _check(datasets, results)
    checks.raise_if_failed()
    write_results(RESULTS_PATH, {**results, "checks": checks.record()}, origin)


def _split_by_detection(datasets: list[vd5.Dataset]) -> dict[str, dict[str, int]]:
    """Per source, held-out pairs whose sides were detected as different languages (never compared), and as
    a language other than the source's."""
    out = {}
    for d in datasets:
        rows = d.rows("heldout")
        same = d.same_language(rows)
        other = same & (d.detected[d.left[rows]] != d.language)
        out[d.name] = {"pairs": len(rows), "sides_differ": int((~same).sum()), "both_other_language": int(other.sum())}
    return out


def _targets_met(entry: dict[str, object]) -> dict[str, bool]:
    languages: dict[str, dict[str, float]] = entry["languages"]  # type: ignore[assignment]
    return {lang: languages[lang]["accepted_same"] >= TARGETS["accepted_same_at_least"]
            and languages[lang]["accepted_different"] <= TARGETS["accepted_different_at_most"]
            for lang in FITTED_LANGUAGES}


def _show(name: str, entry: dict[str, object]) -> None:
    languages: dict[str, dict[str, float]] = entry["languages"]  # type: ignore[assignment]
    line = " ".join(f"{lang} {f['accepted_same']:.0%}/{f['accepted_different']:.1%}"
                    + (f"(paws {f['pawsx_accepted_different']:.1%})" if "pawsx_accepted_different" in f else "")
                    for lang, f in languages.items())
    log(f"{name:28s} same/different served: {line}")


def _check(datasets: list[vd5.Dataset], results: dict[str, object]) -> Checks:
    checks = Checks()
    for d in datasets:
        checks.expect(d.read == vd5.EXPECTED_PAIRS[d.name], f"{d.name}: {d.read} rows read, "
                      f"expected {vd5.EXPECTED_PAIRS[d.name]}")
        held = d.labels[d.rows("heldout")]
        checks.expect(held.any() and (~held).any(), f"{d.name}: held-out pairs {held.sum()} positive, "
                      f"{(~held).sum()} negative; expected both")
    languages = {d.language for d in datasets}
    for name, entry in results["policies"].items():  # type: ignore[attr-defined]
        checks.expect(set(entry["languages"]) == languages, f"{name}: languages {sorted(entry['languages'])}")
    return checks


if __name__ == "__main__":
    run_main(main)
