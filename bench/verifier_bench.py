"""Does the hit verifier keep wrong answers out? Held-out data only, side by side with plain cosine and GPTCache.

Protocols (the held-out split of ``bench/verifier_data.py``; nothing here was used to fit the verifier):

* **QQP retrieval**: every held-out ``text_a`` is stored in one namespace, every ``text_b`` is asked. A hit is
  correct only if it returns the entry of its own pair and the pair is labelled duplicate. Precision =
  correct hits / hits; recall = correct hits / duplicate pairs.
* **PAWS**: each pair on its own (store sentence1, ask sentence2); false-hit rate = different-meaning pairs
  served / different-meaning pairs.
* **Swaps**: held-out paraphrase pairs (QQP duplicates and GPTCache's mock pairs) are changed in one place:
  a number, a negation, the direction of two names, a name, the programming language or the language the
  prompt is written in (a hand-written multilingual set). False hits = swapped pairs served / swapped pairs;
  the unchanged rewordings must still hit.

Policies compared: semproxy (candidate floor + rules + model at the configured budget), plain cosine at
several thresholds (nearest candidate), and GPTCache's default set-up with the same model (the real package,
run in ``.venv-rivals`` by ``bench/rivals/gptcache_protocol.py``; skipped if that environment is missing).
On the pairwise sets (PAWS, STS-B) GPTCache's default is applied as the cosine threshold it amounts to
(0.6); the retrieval runs check that equivalence against the package's own answers.

QQP's strict protocol counts a hit on another stored question as wrong even when that question asks the
same thing (QQP has many near-identical questions in different pairs, and only the pair's own label is
known). So the report adds a "judged" precision that leaves out hits whose (asked, served) pair carries no
label anywhere in the file, and lists the hit categories.

It also times the verifier against one embedding forward pass, interleaved, medians and ratio.

Checked before anything is written: every dataset has held-out pairs of both kinds (and, in a full run,
exactly the pairs the loaders should read), every swap kind and the rewordings were asked, every policy
was measured. ``--only`` keeps the other policies of the previous results only if they were measured at
this same commit. A run that fails a check prints FAIL, exits with status 1 and writes nothing.

Run from the repository root (a few minutes)::

    .venv/bin/python bench/verifier_bench.py
    .venv/bin/python bench/verifier_bench.py --quick    # a smoke run: 2,000 pairs a dataset, no GPTCache
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import swap_set
import verifier_data as vd

from bench.common import Checks, OutcomeError, provenance, run_main, write_results
from semproxy.cache.text import PromptFacts, analyze
from semproxy.cache.verifier import Candidate, HitVerifier

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_PATH = BENCH_DIR / "results" / "verifier_bench.json"
RIVALS_PYTHON = BENCH_DIR.parent / ".venv-rivals" / "bin" / "python"
FLOOR = 0.80
TOP_K = 4
COSINE_THRESHOLDS = (0.80, 0.85, 0.90, 0.95, 0.97)
BUDGETS = (0.01, 0.02, 0.05)
GPTCACHE_COSINE = 0.6  # GPTCache's default: L2 distance^2 <= 4 * (1 - 0.8) between unit vectors = cosine >= 0.6
SWAP_BASES = 3000
LATENCY_ROUNDS = 300
QUICK_PAIRS, QUICK_SWAP_BASES, QUICK_LATENCY_ROUNDS = 2000, 300, 50


def log(message: str) -> None:
    print(f"[verifier-bench] {message}", file=sys.stderr, flush=True)


@dataclass
class Outcome:
    hits: int
    correct: int
    positives: int
    negatives_served: int
    negatives: int
    correct_positive: int | None = None  # correct hits on positive pairs (default: all correct hits)

    def as_dict(self) -> dict[str, float]:
        found = self.correct if self.correct_positive is None else self.correct_positive
        return {
            "hits": self.hits, "correct_hits": self.correct,
            "precision": self.correct / self.hits if self.hits else 1.0,
            "recall": found / self.positives if self.positives else 0.0,
            "false_hit_rate": self.negatives_served / self.negatives if self.negatives else 0.0,
        }


# ------------------------------------------------------------------------------------ retrieval


@dataclass
class Retrieval:
    """A store-then-ask run: which stored text (index into `stored`) each asked text got, or None."""

    stored: list[str]
    stored_vectors: npt.NDArray[np.float32]
    asked: list[str]
    asked_vectors: npt.NDArray[np.float32]

    def nearest(self) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
        ids, sims = [], []
        for start in range(0, len(self.asked), 2048):
            block = self.asked_vectors[start:start + 2048] @ self.stored_vectors.T
            top = np.argsort(-block, axis=1)[:, :TOP_K]
            ids.append(top)
            sims.append(np.take_along_axis(block, top, axis=1))
        return np.vstack(ids), np.vstack(sims)

    def answers(self, verifier: HitVerifier | None, threshold: float) -> list[int | None]:
        ids, sims = self.nearest()
        stored_facts = {}
        out: list[int | None] = []
        for k, text in enumerate(self.asked):
            keep = sims[k] >= threshold
            found, scores = ids[k][keep], sims[k][keep]
            if not len(found):
                out.append(None)
                continue
            if verifier is None:
                out.append(int(found[0]))
                continue
            candidates = []
            for i, s in zip(found, scores, strict=True):
                if i not in stored_facts:
                    stored_facts[i] = analyze(self.stored[i])
                candidates.append(Candidate(facts=stored_facts[i], vector=self.stored_vectors[i], similarity=float(s)))
            best, _ = verifier.choose(analyze(text), self.asked_vectors[k], candidates)
            out.append(None if best is None else int(found[best]))
        return out

    def gptcache(self) -> list[int | None] | None:
        """GPTCache's own answers (the package, default set-up), or None without the rivals' venv."""
        if not RIVALS_PYTHON.exists():
            log("no .venv-rivals: skipping GPTCache (bash bench/rivals/install.sh)")
            return None
        with tempfile.TemporaryDirectory() as folder:
            source, target = Path(folder) / "in.npz", Path(folder) / "out.json"
            np.savez(source, stored_texts=np.asarray(self.stored), stored_vectors=self.stored_vectors,
                     asked_texts=np.asarray(self.asked), asked_vectors=self.asked_vectors)
            subprocess.run([str(RIVALS_PYTHON), str(BENCH_DIR / "rivals" / "gptcache_protocol.py"), str(source),
                            str(target)], check=True)
            answers: list[int | None] = json.loads(target.read_text())["answers"]
            return answers


def qqp_setup(d: vd.Dataset) -> tuple[Retrieval, npt.NDArray[np.intp]]:
    rows = d.rows("heldout")
    stored_ids = np.unique(d.left[rows])
    retrieval = Retrieval([d.texts[i] for i in stored_ids], d.vectors[stored_ids],
                          [d.texts[d.right[r]] for r in rows], d.vectors[d.right[rows]])
    return retrieval, rows


def qqp_outcome(d: vd.Dataset, rows: npt.NDArray[np.intp], retrieval: Retrieval,
                answers: list[int | None]) -> dict[str, object]:
    """Strict protocol figures, the judged precision, and the hit categories."""
    labelled = {frozenset((d.texts[a], d.texts[b])): bool(y) for a, b, y in zip(d.left, d.right, d.labels,
                                                                                  strict=True)}
    kinds: Counter[str] = Counter()
    for row, answer in zip(rows, answers, strict=True):
        if answer is None:
            continue
        served, asked, own = retrieval.stored[answer], d.texts[d.right[row]], d.texts[d.left[row]]
        if served == asked:
            kinds["verbatim"] += 1
        elif served == own:
            kinds["own_duplicate" if d.labels[row] else "own_not_duplicate"] += 1
        else:
            label = labelled.get(frozenset((served, asked)))
            kinds["other_unlabelled" if label is None else "other_duplicate" if label else "other_not_duplicate"] += 1
    hits = sum(kinds.values())
    correct = kinds["own_duplicate"] + kinds["verbatim"]
    judged = hits - kinds["other_unlabelled"]
    positives = int(d.labels[rows].sum())
    found = kinds["own_duplicate"] + sum(1 for row, a in zip(rows, answers, strict=True) if a is not None
                                         and d.labels[row] and retrieval.stored[a] == d.texts[d.right[row]])
    return {
        "hits": hits, "precision": correct / hits if hits else 1.0, "recall": found / positives,
        "judged_precision": (correct + kinds["other_duplicate"]) / judged if judged else 1.0,
        "categories": dict(kinds),
    }


# ------------------------------------------------------------------------------------ pairwise


def pairwise(d: vd.Dataset, verifier: HitVerifier | None, threshold: float) -> Outcome:
    rows = d.rows("heldout")
    served = np.zeros(len(rows), dtype=np.bool_)
    for k, row in enumerate(rows):
        similarity = float(d.vectors[d.left[row]] @ d.vectors[d.right[row]])
        if similarity < threshold:
            continue
        if verifier is None:
            served[k] = True
            continue
        candidate = Candidate(facts=d.facts[d.left[row]], vector=d.vectors[d.left[row]], similarity=similarity)
        served[k] = verifier.choose(d.facts[d.right[row]], d.vectors[d.right[row]], [candidate])[0] is not None
    labels = d.labels[rows]
    return Outcome(int(served.sum()), int((served & labels).sum()), int(labels.sum()),
                   int((served & ~labels).sum()), int((~labels).sum()))


# ------------------------------------------------------------------------------------ swaps


def swap_setup(datasets: dict[str, vd.Dataset],
               bases_kept: int = SWAP_BASES) -> tuple[Retrieval, list[swap_set.Variant]]:
    """Held-out prompts (QQP questions, GPTCache origins) with their swaps and rewordings, plus the
    hand-written pairs; every stored prompt goes into one namespace."""
    qqp, mock = datasets["qqp"], datasets["gptcache_mock"]
    bases = sorted({qqp.texts[qqp.left[r]] for r in qqp.rows("heldout")})
    random.Random(0).shuffle(bases)
    bases = bases[:bases_kept] + sorted({mock.texts[mock.left[r]] for r in mock.rows("heldout")})
    variants = swap_set.generate(bases) + swap_set.HANDWRITTEN
    stored = sorted({v.stored for v in variants})
    asked = [v.asked for v in variants]
    vectors = embed_texts("swaps", stored + asked)
    return Retrieval(stored, vectors[:len(stored)], asked, vectors[len(stored):]), variants


def embed_texts(name: str, texts: list[str]) -> npt.NDArray[np.float32]:
    pairs = vd.sweep.PairSet(name, [])
    for text in texts:
        pairs._text_id(text)
    vectors, _ = vd.sweep.embed(pairs, vd.sweep.ModelLoader(), use_cache=True)
    position = {t: i for i, t in enumerate(pairs.texts)}
    return vectors.astype(np.float32)[[position[t] for t in texts]]


def swap_outcome(retrieval: Retrieval, variants: list[swap_set.Variant],
                 answers: list[int | None]) -> dict[str, dict[str, float]]:
    """Per kind: how many asked, and the share served (swaps: any answer; rewordings: their own)."""
    asked: Counter[str] = Counter()
    served: Counter[str] = Counter()
    for variant, answer in zip(variants, answers, strict=True):
        kind = variant.kind
        asked[kind] += 1
        if answer is not None and (variant.swap or retrieval.stored[answer] == variant.stored):
            served[kind] += 1
    swaps = [k for k in asked if k != "rewording"]
    result = {k: {"asked": asked[k], "served": served[k] / asked[k]} for k in sorted(asked)}
    total = sum(asked[k] for k in swaps)
    result["all_swaps"] = {"asked": total, "served": sum(served[k] for k in swaps) / total}
    return result


# ------------------------------------------------------------------------------------ latency


def verifier_latency(retrieval: Retrieval, verifier: HitVerifier, rounds: int = LATENCY_ROUNDS) -> dict[str, float]:
    """One lookup's whole verification, as the proxy runs it (the asked prompt's facts, then up to `TOP_K`
    candidates at or above the floor: rules, trees and, for English, the pair encoder), against one forward
    pass of the full-precision embedder (sentence-transformers, torch) and of the int8 one the proxy runs,
    interleaved. The lookups are real ones: held-out
    Quora questions asked against every stored question, those with at least one candidate."""
    from semproxy.cache.embedder import SentenceTransformerEmbedder
    full, int8 = SentenceTransformerEmbedder(), vd.sweep.ModelLoader().get()  # torch fp32; the proxy's int8
    ids, sims = retrieval.nearest()
    lookups = [k for k in range(len(retrieval.asked)) if sims[k][0] >= FLOOR][:rounds]
    stored_facts: dict[int, PromptFacts] = {}
    verify_ms, embed_ms, int8_ms, candidates_seen = [], [], [], []
    for k in lookups:
        text = retrieval.asked[k]
        started = time.perf_counter()
        full.embed([text])
        embed_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        int8.encode([text])
        int8_ms.append((time.perf_counter() - started) * 1000)
        keep = [(int(i), float(s)) for i, s in zip(ids[k], sims[k], strict=True) if s >= FLOOR]
        for i, _ in keep:
            if i not in stored_facts:
                stored_facts[i] = analyze(retrieval.stored[i])  # the proxy caches stored prompts' facts too
        candidates = [Candidate(facts=stored_facts[i], vector=retrieval.stored_vectors[i], similarity=s)
                      for i, s in keep]
        started = time.perf_counter()
        verifier.choose(analyze(text), retrieval.asked_vectors[k], candidates)  # as the proxy calls it
        verify_ms.append((time.perf_counter() - started) * 1000)
        candidates_seen.append(len(candidates))
    return {"lookups": len(lookups), "candidates_per_lookup_mean": statistics.mean(candidates_seen),
            "verify_lookup_ms_p50": statistics.median(verify_ms),
            "verify_lookup_ms_p90": float(np.percentile(verify_ms, 90)),
            "full_precision_pass_ms_p50": statistics.median(embed_ms),
            "int8_pass_ms_p50": statistics.median(int8_ms),
            "ratio": statistics.median(verify_ms) / statistics.median(embed_ms),
            "ratio_to_int8": statistics.median(verify_ms) / statistics.median(int8_ms)}


# ------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-gptcache", action="store_true", help="skip the GPTCache runs")
    parser.add_argument("--only", nargs="*", help="run only these policies (names as printed) and the latency "
                        "check, keeping the other results of the previous run (measured at this commit)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2,000 pairs a dataset, no GPTCache")
    args = parser.parse_args()
    limit = QUICK_PAIRS if args.quick else None
    origin = provenance()
    previous = _previous(origin) if args.only else {}
    datasets = {d.name: d for d in vd.load_all(limit)}
    results: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.machine(),
        "floor": FLOOR, "top_k": TOP_K, "limit": limit, "policies": previous.get("policies", {}),
    }
    qqp_retrieval, qqp_rows = qqp_setup(datasets["qqp"])
    swaps, variants = swap_setup(datasets, QUICK_SWAP_BASES if args.quick else SWAP_BASES)
    for name, verifier, threshold in _policies():
        if args.only and name not in args.only:
            continue
        no_gptcache = args.no_gptcache or args.quick
        results["policies"][name] = _measure(  # type: ignore[index]
            name, verifier, threshold, datasets, (qqp_retrieval, qqp_rows), (swaps, variants), no_gptcache)
    rounds = QUICK_LATENCY_ROUNDS if args.quick else LATENCY_ROUNDS
    verifier = HitVerifier.packaged(max_false_hit_rate=0.02)
    results["latency"] = verifier_latency(qqp_retrieval, verifier, rounds)
    results["latency_trees_only"] = verifier_latency(
        qqp_retrieval, HitVerifier(verifier.model, verifier.rarity, max_false_hit_rate=0.02), rounds)
    log(f"latency: {results['latency']}; trees only: {results['latency_trees_only']}")
    checks = _check(datasets, variants, results, limit)
    checks.raise_if_failed()
    write_results(RESULTS_PATH, {**results, "checks": checks.record()}, origin)


def _policies() -> list[tuple[str, HitVerifier | None, float]]:
    policies: list[tuple[str, HitVerifier | None, float]] = [
        (f"semproxy budget {b:.0%}", HitVerifier.packaged(max_false_hit_rate=b), FLOOR) for b in BUDGETS]
    trees = HitVerifier.packaged(max_false_hit_rate=0.02)
    policies.append(("semproxy budget 2%, trees only", HitVerifier(trees.model, trees.rarity, max_false_hit_rate=0.02),
                     FLOOR))  # without the pair encoder: what reading the pair adds
    policies += [(f"cosine >= {t:.2f}", None, t) for t in COSINE_THRESHOLDS]
    policies.append(("GPTCache default", None, GPTCACHE_COSINE))
    return policies


def _previous(origin: dict[str, object]) -> dict[str, object]:
    """The previous results, whose other policies --only keeps: only if measured at this same code."""
    if not RESULTS_PATH.exists():
        return {}
    previous: dict[str, object] = json.loads(RESULTS_PATH.read_text())
    earlier = previous.get("provenance") or {}
    same = isinstance(earlier, dict) and earlier.get("commit") == origin["commit"] and not earlier.get("dirty")
    if not same or origin["dirty"]:
        raise OutcomeError("--only would keep policies measured at other code "
                           f"({earlier.get('commit') if isinstance(earlier, dict) else None}); run every policy")
    return previous


def _measure(name: str, verifier: HitVerifier | None, threshold: float, datasets: dict[str, vd.Dataset],
             qqp: tuple[Retrieval, npt.NDArray[np.intp]], swap: tuple[Retrieval, list[swap_set.Variant]],
             no_gptcache: bool) -> dict[str, object]:
    """Every protocol for one policy."""
    (qqp_retrieval, qqp_rows), (swaps, variants) = qqp, swap
    started = time.perf_counter()
    qqp_answers = qqp_retrieval.answers(verifier, threshold)
    swap_answers = swaps.answers(verifier, threshold)
    entry: dict[str, object] = {}
    if name == "GPTCache default" and not no_gptcache:
        package_qqp, package_swaps = qqp_retrieval.gptcache(), swaps.gptcache()
        if package_qqp is not None and package_swaps is not None:
            entry["agreement_with_cosine_0.6"] = float(np.mean(
                [a == b for a, b in zip(package_qqp + package_swaps, qqp_answers + swap_answers, strict=True)]))
            qqp_answers, swap_answers = package_qqp, package_swaps
    entry["qqp_retrieval"] = qqp_outcome(datasets["qqp"], qqp_rows, qqp_retrieval, qqp_answers)
    entry["qqp_pairs"] = pairwise(datasets["qqp"], verifier, threshold).as_dict()
    entry["paws"] = pairwise(datasets["paws_wiki"], verifier, threshold).as_dict()
    entry["stsb"] = pairwise(datasets["stsb"], verifier, threshold).as_dict()
    entry["swaps"] = swap_outcome(swaps, variants, swap_answers)
    q, p, s = entry["qqp_retrieval"], entry["paws"], entry["swaps"]
    log(f"{name:22s} QQP precision {q['precision']:.3f} (judged {q['judged_precision']:.3f}) "  # type: ignore[index]
        f"recall {q['recall']:.3f} | PAWS false hits {p['false_hit_rate']:.1%} | "  # type: ignore[index]
        f"swaps served {s['all_swaps']['served']:.1%}, rewordings {s['rewording']['served']:.1%} "  # type: ignore[index]
        f"({time.perf_counter() - started:.0f} s)")
    return entry


def _check(datasets: dict[str, vd.Dataset], variants: list[swap_set.Variant], results: dict[str, object],
           limit: int | None) -> Checks:
    """The data is what the figures claim to be measured on, and every policy was measured."""
    checks = Checks()
    for name, d in datasets.items():
        held = d.labels[d.rows("heldout")]
        checks.expect(held.any() and (~held).any(), f"{name}: held-out pairs {held.sum()} positive, "
                      f"{(~held).sum()} negative; expected both")
        if limit is None:
            expected = vd.sweep.EXPECTED_PAIRS.get(name)
            checks.expect(len(d.labels) == expected, f"{name}: {len(d.labels)} pairs, expected {expected}")
    asked = {v.kind for v in variants}
    expected_kinds = {"number", "negation", "direction", "name", "programming", "written_in", "rewording"}
    checks.expect(expected_kinds <= asked, f"swaps: kinds never asked: {sorted(expected_kinds - asked)}")
    measured = set(results["policies"])  # type: ignore[arg-type]
    wanted = {name for name, _, _ in _policies()}
    checks.expect(measured == wanted, f"policies: {sorted(wanted ^ measured)} missing or unexpected")
    return checks


if __name__ == "__main__":
    run_main(main)
