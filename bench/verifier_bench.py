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
several thresholds (nearest candidate), and GPTCache's default similarity evaluation with the same model
(run in ``.venv-rivals``, see ``bench/rivals/``; skipped if that environment is missing).

Run from the repository root (a few minutes)::

    .venv/bin/python bench/verifier_bench.py
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))

import verifier_data as vd

from semproxy.cache.verifier import Candidate, HitVerifier

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "verifier_bench.json"
FLOOR = 0.80
TOP_K = 4
COSINE_THRESHOLDS = (0.80, 0.85, 0.90, 0.95, 0.97)
BUDGETS = (0.01, 0.02, 0.05)


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


# ------------------------------------------------------------------------------------ QQP retrieval


def qqp_retrieval(d: vd.Dataset, verifier: HitVerifier | None, cosine_threshold: float) -> Outcome:
    """Store every held-out text_a, ask every text_b; the nearest TOP_K stored prompts are the candidates."""
    rows = d.rows("heldout")
    stored_ids = np.unique(d.left[rows])
    stored = d.vectors[stored_ids]
    hits = correct = correct_positive = served_negative = 0
    for start in range(0, len(rows), 2048):
        chunk = rows[start:start + 2048]
        sims = d.vectors[d.right[chunk]] @ stored.T
        top = np.argsort(-sims, axis=1)[:, :TOP_K]
        for k, row in enumerate(chunk):
            choice = _choose(d, row, stored_ids[top[k]], sims[k, top[k]], verifier, cosine_threshold)
            if choice is None:
                continue
            hits += 1
            # Right: the pair's own entry for a duplicate pair, or a verbatim copy of the asked question
            # (text_b of one pair is text_a of another 779 times; the exact tier serves those anyway).
            verbatim = d.texts[choice] == d.texts[d.right[row]]
            own = d.texts[choice] == d.texts[d.left[row]] and bool(d.labels[row])
            correct += own or verbatim
            correct_positive += own or (verbatim and bool(d.labels[row]))
            served_negative += not d.labels[row] and not verbatim
    labels = d.labels[rows]
    return Outcome(hits, correct, int(labels.sum()), served_negative, int((~labels).sum()),
                   correct_positive=correct_positive)


def _choose(d: vd.Dataset, row: int, ids: npt.NDArray[np.intp], sims: npt.NDArray[np.float32],
            verifier: HitVerifier | None, threshold: float) -> int | None:
    keep = sims >= threshold
    ids, sims = ids[keep], sims[keep]
    if not len(ids):
        return None
    if verifier is None:
        return int(ids[0])
    asked = d.right[row]
    candidates = [Candidate(facts=d.facts[i], vector=d.vectors[i], similarity=float(s))
                  for i, s in zip(ids, sims, strict=True)]
    best, _ = verifier.choose(d.facts[asked], d.vectors[asked], candidates)
    return None if best is None else int(ids[best])


# ------------------------------------------------------------------------------------ pairwise


def pairwise(d: vd.Dataset, verifier: HitVerifier | None, threshold: float) -> Outcome:
    rows = d.rows("heldout")
    served = np.zeros(len(rows), dtype=np.bool_)
    for k, row in enumerate(rows):
        ids = np.asarray([d.left[row]])
        sims = np.asarray([float(d.vectors[d.left[row]] @ d.vectors[d.right[row]])], dtype=np.float32)
        served[k] = _choose(d, row, ids, sims, verifier, threshold) is not None
    labels = d.labels[rows]
    return Outcome(int(served.sum()), int((served & labels).sum()), int(labels.sum()),
                   int((served & ~labels).sum()), int((~labels).sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    datasets = {d.name: d for d in vd.load_all()}
    results: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.machine(),
        "floor": FLOOR, "top_k": TOP_K,
    }
    policies: list[tuple[str, HitVerifier | None, float]] = [
        (f"semproxy budget {b:.0%}", HitVerifier.packaged(max_false_hit_rate=b), FLOOR) for b in BUDGETS]
    policies += [(f"cosine >= {t:.2f}", None, t) for t in COSINE_THRESHOLDS]
    for name, verifier, threshold in policies:
        started = time.perf_counter()
        qqp = qqp_retrieval(datasets["qqp"], verifier, threshold).as_dict()
        paws = pairwise(datasets["paws_wiki"], verifier, threshold).as_dict()
        stsb = pairwise(datasets["stsb"], verifier, threshold).as_dict()
        qqp_pairs = pairwise(datasets["qqp"], verifier, threshold).as_dict()
        results[name] = {"qqp_retrieval": qqp, "qqp_pairs": qqp_pairs, "paws": paws, "stsb": stsb}
        log(f"{name:22s} QQP precision {qqp['precision']:.3f} recall {qqp['recall']:.3f} | "
            f"pairs {qqp_pairs['precision']:.3f} / {qqp_pairs['recall']:.3f} | "
            f"PAWS false hits {paws['false_hit_rate']:.1%} recall {paws['recall']:.1%} | "
            f"STS-B false hits {stsb['false_hit_rate']:.1%} recall {stsb['recall']:.1%} "
            f"({time.perf_counter() - started:.0f} s)")
    RESULTS_PATH.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
