"""Labelled pairs for fitting and evaluating the hit verifier, split so evaluation never sees fitted data.

Every pair of every dataset lands in one of three splits by a hash of (dataset, row number), so the split
is the same on every machine and every run:

* ``train`` (30 %): the model's weights are fitted here;
* ``calibrate`` (20 %): the operating point for each error budget is read here;
* ``heldout`` (50 %): only the benchmarks (``bench/verifier_bench.py``) look at it.

The loaders and the embedding cache are those of ``bench/threshold_sweep.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import threshold_sweep as sweep

from semproxy.cache.text import PromptFacts, analyze

SPLITS = ("train", "calibrate", "heldout")


def split_of(dataset: str, row: int) -> str:
    bucket = int(hashlib.md5(f"{dataset}:{row}".encode()).hexdigest(), 16) % 10
    return "train" if bucket < 3 else "calibrate" if bucket < 5 else "heldout"


@dataclasses.dataclass
class Dataset:
    """One dataset's texts (with facts and unit vectors) and its pairs, with each pair's split."""

    name: str
    texts: list[str]
    facts: list[PromptFacts]
    vectors: npt.NDArray[np.float32]
    left: npt.NDArray[np.intp]
    right: npt.NDArray[np.intp]
    labels: npt.NDArray[np.bool_]
    splits: npt.NDArray[np.str_]

    def rows(self, split: str) -> npt.NDArray[np.intp]:
        return np.nonzero(self.splits == split)[0]

    def cosines(self, rows: npt.NDArray[np.intp]) -> npt.NDArray[np.float32]:
        return np.einsum("ij,ij->i", self.vectors[self.left[rows]], self.vectors[self.right[rows]])


def load_all(limit: int | None = None) -> list[Dataset]:
    """QQP, PAWS, STS-B and GPTCache's mock pairs, embedded with the default model (cached in bench/.cache)."""
    loader = sweep.ModelLoader()
    datasets = []
    for load in sweep.LOADERS:
        pairs = load(sweep.data_dir(), limit)
        vectors, _ = sweep.embed(pairs, loader, use_cache=True)
        datasets.append(Dataset(
            name=pairs.name,
            texts=pairs.texts,
            facts=[analyze(t) for t in pairs.texts],
            vectors=vectors.astype(np.float32),
            left=np.asarray(pairs.left, dtype=np.intp),
            right=np.asarray(pairs.right, dtype=np.intp),
            labels=np.asarray(pairs.labels, dtype=np.bool_),
            splits=np.asarray([split_of(pairs.name, i) for i in range(len(pairs.labels))]),
        ))
    return datasets
