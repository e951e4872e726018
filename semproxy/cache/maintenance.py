"""Offline maintenance of the data dir: the integrity check (`semproxy cache check`) and the erasure of one
tenant (`semproxy cache clear --tenant`). Both open the SQLite files themselves and work while a proxy runs.
"""

from __future__ import annotations

import dataclasses
import re
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from semproxy.cache.index import FaissIndex
from semproxy.cache.keys import tenant_id
from semproxy.config import Settings
from semproxy.openai import BadJSON, is_complete_response, loads

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


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.execute("PRAGMA busy_timeout=30000")
    return db


def _integrity(path: Path, report: CheckReport) -> None:
    if not path.exists():
        return
    db = _connect(path)
    try:
        verdict = "; ".join(str(row[0]) for row in db.execute("PRAGMA integrity_check"))
        if db.execute("PRAGMA foreign_key_check").fetchone() is not None:
            verdict += "; foreign key violations"
    except sqlite3.DatabaseError as exc:
        verdict = f"unreadable: {exc}"
    finally:
        db.close()
    report.files[path.name] = verdict
    if verdict != "ok":
        report.problems.append(f"{path.name}: {verdict}")


def check(settings: Settings) -> CheckReport:
    """Every SQLite file passes integrity_check; every entry is whole (an exact key, a complete answer, a
    unit vector of the common size); the index rebuilt from the store holds every vector and finds each."""
    report = CheckReport()
    for name in (settings.db_path, settings.stats_path, settings.data_dir / "compression.sqlite3"):
        _integrity(name, report)
    if not settings.db_path.exists() or report.problems:
        return report
    db = _connect(settings.db_path)
    try:
        _check_entries(db, report)
        _check_index(db, settings, report)
    finally:
        db.close()
    return report


def _check_entries(db: sqlite3.Connection, report: CheckReport) -> None:
    report.entries = int(db.execute("SELECT count(*) FROM entries").fetchone()[0])
    report.exact_keys = int(db.execute("SELECT count(*) FROM exact_keys").fetchone()[0])
    orphans = db.execute("SELECT count(*) FROM entries e WHERE NOT EXISTS "
                         "(SELECT 1 FROM exact_keys k WHERE k.entry_id = e.id)").fetchone()[0]
    if orphans:
        report.problems.append(f"{orphans} entries have no exact key (half-written)")
    dangling = db.execute("SELECT count(*) FROM exact_keys k WHERE NOT EXISTS "
                          "(SELECT 1 FROM entries e WHERE e.id = k.entry_id)").fetchone()[0]
    if dangling:
        report.problems.append(f"{dangling} exact keys point to no entry")
    for entry_id, kind, response in db.execute("SELECT id, kind, response FROM entries"):
        try:
            complete = is_complete_response(kind, loads(response if isinstance(response, str) else bytes(response)))
        except BadJSON:
            complete = False
        if not complete:
            report.problems.append(f"entry {entry_id}: its answer is not a complete {kind} response")


def _check_index(db: sqlite3.Connection, settings: Settings, report: CheckReport) -> None:
    sizes = {int(row[0]) for row in db.execute(
        "SELECT DISTINCT length(vector) FROM entries WHERE vector IS NOT NULL")}
    if not sizes:
        return
    if len(sizes) > 1 or next(iter(sizes)) % 4:
        report.problems.append(f"vectors of different or impossible sizes: {sorted(sizes)} bytes")
        return
    index = FaissIndex(next(iter(sizes)) // 4, large_scope_entries=settings.large_scope_entries)
    rows = db.execute("SELECT id, scope, vector FROM entries WHERE vector IS NOT NULL ORDER BY id").fetchall()
    report.vectors = len(rows)
    for entry_id, scope, blob in rows:
        vector = np.frombuffer(blob, dtype=np.float32)
        norm = float(np.linalg.norm(vector))
        if not np.all(np.isfinite(vector)) or abs(norm - 1.0) > 1e-3:
            report.problems.append(f"entry {entry_id}: its vector is not a finite unit vector (norm {norm:.4f})")
            continue
        index.add(scope, [entry_id], vector.reshape(1, -1))
    report.indexed = len(index)
    if report.indexed != report.vectors and not report.problems:
        report.problems.append(f"the index holds {report.indexed} of {report.vectors} vectors")
    step = max(1, len(rows) // SELF_SEARCH_SAMPLE)
    for entry_id, scope, blob in rows[::step]:
        found = index.search(scope, np.frombuffer(blob, dtype=np.float32), 8)
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


def erase(path: Path, table: str, tenants: Iterable[str]) -> int:
    """Delete a table's rows of these tenants, overwrite the freed pages, and fold the WAL into the file,
    so the deleted rows are not left readable on disk. Returns how many rows went."""
    if not path.exists():
        return 0
    names = sorted(tenants)
    db = _connect(path)
    try:
        db.execute("PRAGMA foreign_keys=ON")  # entries' exact keys go with them
        db.execute("PRAGMA secure_delete=ON")
        marks = ",".join("?" * len(names))
        cursor: Any = db.execute(f"DELETE FROM {table} WHERE tenant IN ({marks})", names)
        removed = int(cursor.rowcount)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return removed
