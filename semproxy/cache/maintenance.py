"""Maintenance of the embedded data dir: the integrity check (`semproxy cache check`, which also rebuilds the
vector index the way start-up does) and the tenant hashes an erasure request names. Both work while a proxy
runs."""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from semproxy.cache.index import FaissIndex
from semproxy.cache.keys import tenant_id
from semproxy.storage.sqlite import SqliteStorage
from semproxy.storage.sqlite_check import entry_problems, integrity, stored_vectors
from semproxy.storage.sqlite_schema import CACHE

TENANT_HASH = re.compile(r"[0-9a-f]{32}")
SELF_SEARCH_SAMPLE = 2000  # entries whose vector is searched for in the rebuilt index


@dataclasses.dataclass
class CheckReport:
    """What `semproxy cache check` found: figures, and problems (none means the data dir is sound)."""

    entries: int = 0
    exact_keys: int = 0
    vectors: int = 0
    indexed: int = 0
    searched: int = 0
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # file -> integrity_check verdict
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong."""
        return not self.problems


def check(storage: SqliteStorage, *, large_scope_entries: int) -> CheckReport:
    """Every SQLite file passes integrity_check; every entry is whole (an exact key, a complete answer, a
    unit vector of the common size); the index rebuilt from the store holds every vector and finds each."""
    report = CheckReport(files=integrity(storage))
    report.problems += [f"{name}: {verdict}" for name, verdict in report.files.items() if verdict != "ok"]
    if CACHE not in report.files or report.problems:
        return report
    report.entries, report.exact_keys, problems = entry_problems(storage)
    report.problems += problems
    _check_index(storage, large_scope_entries, report)
    return report


def _check_index(storage: SqliteStorage, large_scope_entries: int, report: CheckReport) -> None:
    rows, problems = stored_vectors(storage)
    report.problems += problems
    if not rows:
        return
    index = FaissIndex(len(rows[0][2]), large_scope_entries=large_scope_entries)
    report.vectors = len(rows)
    for entry_id, scope, vector in rows:
        norm = float(np.linalg.norm(vector))
        if not np.all(np.isfinite(vector)) or abs(norm - 1.0) > 1e-3:
            report.problems.append(f"entry {entry_id}: its vector is not a finite unit vector (norm {norm:.4f})")
            continue
        index.add(scope, [entry_id], vector.reshape(1, -1))
    report.indexed = len(index)
    if report.indexed != report.vectors and not report.problems:
        report.problems.append(f"the index holds {report.indexed} of {report.vectors} vectors")
    step = max(1, len(rows) // SELF_SEARCH_SAMPLE)
    for entry_id, scope, vector in rows[::step]:
        found = index.search(scope, vector, 8)
        report.searched += 1
        # Identical prompts in one scope share a vector: any of them may come first.
        if entry_id not in {i for i, _ in found} and not (found and found[-1][1] >= 0.9999):
            report.problems.append(f"entry {entry_id}: the index does not find it in its own scope")


# ---------------------------------------------------------------- erasure


def tenant_hashes(who: str, salt: bytes) -> set[str]:
    """The tenant hashes `who` may name: the hash of it as an API key, and `who` itself if it is a hash."""
    hashes = {tenant_id(api_key=who, namespace=None, salt=salt)}
    if TENANT_HASH.fullmatch(who):
        hashes.add(who)
    return hashes
