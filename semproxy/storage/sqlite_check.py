"""Integrity checks of the embedded files, for `semproxy cache check` (which also rebuilds the vector index
from them, in semproxy.cache.maintenance). Read-only; they work while a proxy runs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from semproxy.openai import BadJSON, is_complete_response, loads
from semproxy.storage.records import Vector, partition
from semproxy.storage.sqlite import SqliteStorage, connect
from semproxy.storage.sqlite_schema import CACHE, FILES


def integrity(storage: SqliteStorage) -> dict[str, str]:
    """`integrity_check` and `foreign_key_check` of every file that exists: file name -> "ok" or what is wrong."""
    verdicts: dict[str, str] = {}
    for file in FILES:
        path = storage.path(file)
        if path.exists():
            verdicts[file] = _verdict(path)
    return verdicts


def _verdict(path: Path) -> str:
    try:
        db = connect(path, read_only=True)
    except sqlite3.DatabaseError as exc:
        return f"unreadable: {exc}"
    try:
        verdict = "; ".join(str(row[0]) for row in db.execute("PRAGMA integrity_check"))
        if db.execute("PRAGMA foreign_key_check").fetchone() is not None:
            verdict += "; foreign key violations"
        return verdict
    except sqlite3.DatabaseError as exc:
        return f"unreadable: {exc}"
    finally:
        db.close()


def entry_problems(storage: SqliteStorage) -> tuple[int, int, list[str]]:
    """(entries, exact keys, problems): every entry has an exact key, every key an entry, every answer is whole."""
    db = connect(storage.path(CACHE), read_only=True)
    try:
        entries = int(db.execute("SELECT count(*) FROM entries").fetchone()[0])
        keys = int(db.execute("SELECT count(*) FROM exact_keys").fetchone()[0])
        problems = _orphans(db) + _incomplete(db)
    finally:
        db.close()
    return entries, keys, problems


def _orphans(db: sqlite3.Connection) -> list[str]:
    problems = []
    orphans = db.execute("SELECT count(*) FROM entries e WHERE NOT EXISTS "
                         "(SELECT 1 FROM exact_keys k WHERE k.entry_id = e.id)").fetchone()[0]
    if orphans:
        problems.append(f"{orphans} entries have no exact key (half-written)")
    dangling = db.execute("SELECT count(*) FROM exact_keys k WHERE NOT EXISTS "
                          "(SELECT 1 FROM entries e WHERE e.id = k.entry_id)").fetchone()[0]
    if dangling:
        problems.append(f"{dangling} exact keys point to no entry")
    return problems


def _incomplete(db: sqlite3.Connection) -> list[str]:
    problems = []
    for entry_id, kind, response in db.execute("SELECT id, kind, response FROM entries"):
        try:
            complete = is_complete_response(kind, loads(response if isinstance(response, str) else bytes(response)))
        except BadJSON:
            complete = False
        if not complete:
            problems.append(f"entry {entry_id}: its answer is not a complete {kind} response")
    return problems


def stored_vectors(storage: SqliteStorage) -> tuple[list[tuple[int, str, Vector]], list[str]]:
    """Every entry's (id, partition, vector), in id order, unless their sizes differ or are impossible; problems."""
    db = connect(storage.path(CACHE), read_only=True)
    try:
        sizes = sorted(int(row[0]) for row in db.execute(
            "SELECT DISTINCT length(vector) FROM entries WHERE vector IS NOT NULL"))
        if len(sizes) > 1 or any(size % 4 for size in sizes):
            return [], [f"vectors of different or impossible sizes: {sizes} bytes"]
        rows = db.execute("SELECT id, scope, space, vector FROM entries WHERE vector IS NOT NULL "
                          "ORDER BY id").fetchall()
    finally:
        db.close()
    return [(int(i), partition(scope, space), np.frombuffer(blob, dtype=np.float32))
            for i, scope, space, blob in rows], []
