"""`semproxy eval`: replay labelled prompt pairs through the proxy's hit policy and sweep its error budget.

Each pair is judged the way the proxy judges a semantic candidate: the first prompt is the stored one, the
second is asked; it is served when the cosine similarity reaches `similarity_threshold` and the hit verifier
accepts it. A pair's verdict is reduced to one number, the score the verifier would compare with its
threshold (-1 when the floor or a rule rejects it), so every budget is evaluated from one pass.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from semproxy.cache.spaces import Spaces
from semproxy.cache.text import NEGATIONS_BY_LANGUAGE, analyze
from semproxy.cache.verifier import Verifier
from semproxy.errors import ConfigError

STSB_POSITIVE_MIN, STSB_NEGATIVE_MAX = 4.0, 2.0
BUDGETS = (0.005, 0.01, 0.02, 0.05, 0.10, 0.20)
REJECTED = -1.0


@dataclasses.dataclass(frozen=True)
class LabelledPair:
    stored: str
    asked: str
    same_meaning: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class OperatingPoint:
    """What a policy does on the pairs: `served` of them, how many rightly, and the rates."""

    label: str
    threshold: float
    served: int
    precision: float
    recall: float
    false_hit_rate: float  # different-meaning pairs served / different-meaning pairs
    hit_rate: float  # pairs served / pairs


# --------------------------------------------------------------------------------------------- reading


def read_pairs(path: Path, *, limit: int | None = None) -> list[LabelledPair]:
    """Pairs from jsonl (`text_a`, `text_b`, `label`), PAWS TSV (with header) or STS-B TSV (7+ columns)."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    opener: Callable[..., IO[str]] = gzip.open if path.suffix == ".gz" else open
    name = path.name.removesuffix(".gz")
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        rows = _jsonl(f) if name.endswith((".jsonl", ".json")) else _tsv(f)
        pairs = []
        for pair in rows:
            pairs.append(pair)
            if limit is not None and len(pairs) >= limit:
                break
    if not pairs:
        raise ConfigError(f"{path}: no labelled pairs found (expected jsonl text_a/text_b/label, PAWS or STS-B TSV)")
    return pairs


def _jsonl(f: IO[str]) -> Iterator[LabelledPair]:
    for number, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            yield LabelledPair(str(row["text_a"]), str(row["text_b"]), _label(row["label"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"line {number}: expected text_a, text_b and label ({exc})") from None


def _label(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("0", "1", "true", "false"):
        return value.strip().lower() in ("1", "true")
    raise ValueError(f"label must be 0/1 or true/false, not {value!r}")


def _tsv(f: IO[str]) -> Iterator[LabelledPair]:
    rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
    for row in rows:
        if len(row) == 4 and row[3] in ("0", "1"):  # PAWS: id, sentence1, sentence2, label (header skipped)
            yield LabelledPair(row[1], row[2], row[3] == "1")
        elif len(row) >= 7:  # STS-B: genre, file, year, id, score, sentence1, sentence2
            try:
                score = float(row[4])
            except ValueError:
                continue
            if score >= STSB_POSITIVE_MIN or score <= STSB_NEGATIVE_MAX:
                yield LabelledPair(row[5], row[6], score >= STSB_POSITIVE_MIN)


# --------------------------------------------------------------------------------------------- scoring


@dataclasses.dataclass(frozen=True)
class RoutedScores:
    """Per pair: cosine, score (REJECTED when not served at any budget) and the embedder that judged it."""

    cosines: NDArray[np.float64]
    scores: NDArray[np.float64]
    models: list[str | None]  # None: the two prompts landed in different spaces, or in none
    languages: list[str | None] | None = None  # the language of each pair's space (for per-language thresholds)


def routed_scores(pairs: Sequence[LabelledPair], spaces: Spaces, verifiers: dict[str, Verifier | None], *,
                  floor: float) -> RoutedScores:
    """Judge each pair as the proxy would: both prompts placed in one space (model and language), then
    that model's vectors and verifier. Pairs placed apart are never compared, so never served."""
    cosines, scores = np.zeros(len(pairs)), np.full(len(pairs), REJECTED)
    models: list[str | None] = [None] * len(pairs)
    languages: list[str] = [""] * len(pairs)
    for k, pair in enumerate(pairs):
        stored, asked = spaces.place(pair.stored), spaces.place(pair.asked)
        if stored is not None and stored == asked:
            models[k], languages[k] = stored.model, stored.language
    for model, embedder in spaces.embedders.items():
        for language in sorted({languages[k] for k, m in enumerate(models) if m == model}):
            rows = [k for k, m in enumerate(models) if m == model and languages[k] == language]
            cos, sc = policy_scores([pairs[k] for k in rows], embedder.embed, verifiers.get(model), floor=floor,
                                    language=language)
            cosines[rows], scores[rows] = cos, sc
    return RoutedScores(cosines, scores, models, [lang or None for lang in languages])


def policy_scores(pairs: Sequence[LabelledPair], vectors_of: Callable[[list[str]], NDArray[np.float32]],
                  verifier: Verifier | None, *, floor: float,
                  language: str | None = None) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per pair: the cosine similarity, and the verifier's score (REJECTED below the floor or by a rule)."""
    texts = list(dict.fromkeys([p.stored for p in pairs] + [p.asked for p in pairs]))
    position = {t: i for i, t in enumerate(texts)}
    vectors = vectors_of(texts)
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    cosines = np.asarray([float(vectors[position[p.stored]] @ vectors[position[p.asked]]) for p in pairs])
    scores = np.full(len(pairs), REJECTED)
    for k, pair in enumerate(pairs):
        if cosines[k] < floor:
            continue
        if verifier is None:
            scores[k] = 1.0
            continue
        stored, asked = analyze(pair.stored, language), analyze(pair.asked, language)
        verdict = verifier.verify(asked, vectors[position[pair.asked]], stored, vectors[position[pair.stored]],
                                  float(cosines[k]))
        if verdict.accepted or not verdict.by_rule:  # a rule's rejection holds at every budget
            scores[k] = verdict.score
    return cosines, scores


def operating_point(label: str, served: NDArray[np.bool_], labels: NDArray[np.bool_],
                    threshold: float) -> OperatingPoint:
    right = int((served & labels).sum())
    count = int(served.sum())
    negatives = int((~labels).sum())
    return OperatingPoint(
        label=label, threshold=threshold, served=count,
        precision=right / count if count else 1.0,
        recall=right / int(labels.sum()) if labels.any() else 0.0,
        false_hit_rate=int((served & ~labels).sum()) / negatives if negatives else 0.0,
        hit_rate=count / len(labels) if len(labels) else 0.0,
    )


def budget_sweep(routed: RoutedScores, labels: NDArray[np.bool_], verifiers: dict[str, Verifier | None],
                 budgets: Sequence[float]) -> list[OperatingPoint]:
    """What the proxy would serve at each error budget (the thresholds each model's calibration gives).
    The threshold shown is the first model's (the English one by default)."""
    points = []
    for budget in sorted(set(budgets)):
        at = {m: (0.0 if v is None else v.threshold_at(budget)) for m, v in verifiers.items()}
        languages = routed.languages or [None] * len(routed.models)
        needed = np.asarray([np.inf if m is None else _threshold(verifiers.get(m), budget, lang)
                             for m, lang in zip(routed.models, languages, strict=True)])
        served = (routed.scores > REJECTED) & (routed.scores >= needed)
        points.append(operating_point(f"budget {budget:g}", served, labels, next(iter(at.values()), 0.0)))
    return points


def _threshold(verifier: Verifier | None, budget: float, language: str | None) -> float:
    return 0.0 if verifier is None else verifier.threshold_at(budget, _facts_language(language))


def _facts_language(language: str | None) -> str | None:
    """The language the verifier's facts carry for a space's language (see text.analyze)."""
    return language if language in NEGATIONS_BY_LANGUAGE else None


def precision_recall_curve(scores: NDArray[np.float64],
                           labels: NDArray[np.bool_]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Precision and recall at every distinct score threshold (for the plot), in one sorted pass."""
    kept = scores > REJECTED
    order = np.argsort(-scores[kept], kind="stable")
    ranked, right = scores[kept][order], labels[kept][order]
    last_of_each = np.r_[ranked[1:] != ranked[:-1], True]  # serving at a threshold serves every tie
    served = np.arange(1, len(ranked) + 1)[last_of_each]
    correct = np.cumsum(right)[last_of_each]
    positives = max(int(labels.sum()), 1)
    return correct / served, correct / positives


def plot(path: Path, curve: tuple[NDArray[np.float64], NDArray[np.float64]], configured: OperatingPoint,
         cosine_curve: tuple[NDArray[np.float64], NDArray[np.float64]], title: str) -> None:
    """Draw the precision/recall curve with the configured point marked (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'semproxy[eval]'") from None
    figure, axes = plt.subplots(figsize=(6.4, 4.8))
    axes.plot(curve[1], curve[0], label="semproxy (floor + rules + model)")
    axes.plot(cosine_curve[1], cosine_curve[0], linestyle="--", label="cosine similarity alone")
    axes.scatter([configured.recall], [configured.precision], color="red", zorder=3,
                 label=f"configured: {configured.label}")
    axes.set_xlabel("recall (same-meaning pairs served)")
    axes.set_ylabel("precision (served pairs that were right)")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    axes.set_title(title)
    axes.legend(loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
