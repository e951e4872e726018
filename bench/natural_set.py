"""Natural rewordings and minimal swaps, hand-written the way people type prompts: the hit verifier's broadest
test of "does one answer serve both?".

Two files in ``bench/data/`` (written for this project; nothing in them is generated from templates):

* ``natural_pairs_en.jsonl``: 640 English pairs: 320 rewordings of one request (kinds: instruction, possessive,
  synonym, quantity, idiom, reorder, register, contraction, mixed) and 320 swaps that need another answer
  (number, negation, antonym, direction, role, entity, language, format, scope);
* ``natural_pairs_eu.jsonl``: 420 pairs in German, French, Spanish, Italian, Dutch, Polish and Portuguese,
  30 rewordings and 30 swaps each.

Each pair goes to a split by a hash of its stored prompt (so a rewording and a swap of one request stay
together): ``dev`` (40 %) may be looked at while tuning rules and operating points; ``heldout`` (60 %) only by
the benchmarks. Neither is ever trained on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
FILES = {"en": "natural_pairs_en.jsonl", "eu": "natural_pairs_eu.jsonl"}


@dataclasses.dataclass(frozen=True)
class NaturalPair:
    stored: str
    asked: str
    kind: str
    same: bool
    language: str
    split: str


def split_of(stored: str) -> str:
    bucket = int(hashlib.md5(stored.strip().lower().encode()).hexdigest(), 16) % 10
    return "dev" if bucket < 4 else "heldout"


def load(which: str = "en", split: str | None = None) -> list[NaturalPair]:
    """The pairs of one file ("en" or "eu"), of one split or both."""
    pairs = []
    with (DATA / FILES[which]).open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            pair = NaturalPair(row["stored"], row["asked"], row["kind"], bool(row["same"]), row.get("lang", "en"),
                               split_of(row["stored"]))
            if split is None or pair.split == split:
                pairs.append(pair)
    return pairs
