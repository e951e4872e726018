"""The embedded backend's schema: its files, and every file's migrations in one list.

Each file records how many of its migrations ran in `PRAGMA user_version`. Version 1 of each file is the
schema older releases created with CREATE ... IF NOT EXISTS, so their files take it as a no-op and carry on.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator

CACHE, LOG, COMPRESSIONS = "cache.sqlite3", "stats.sqlite3", "compression.sqlite3"
FILES = (CACHE, LOG, COMPRESSIONS)


@dataclasses.dataclass(frozen=True)
class Migration:
    """One step of one file's schema. Never edit a released step: add one."""

    file: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(CACHE, """
        CREATE TABLE IF NOT EXISTS entries (
            id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, tenant TEXT NOT NULL, scope TEXT NOT NULL,
            model TEXT NOT NULL, prompt TEXT, vector BLOB, response BLOB NOT NULL, created_at REAL NOT NULL,
            expires_at REAL, last_used_at REAL NOT NULL
        );
        CREATE INDEX IF NOT EXISTS entries_tenant ON entries(tenant);
        CREATE INDEX IF NOT EXISTS entries_lru ON entries(last_used_at);
        CREATE INDEX IF NOT EXISTS entries_expiry ON entries(expires_at) WHERE expires_at IS NOT NULL;
        CREATE TABLE IF NOT EXISTS exact_keys (
            key TEXT PRIMARY KEY,
            entry_id INTEGER NOT NULL REFERENCES entries(id) ON DELETE CASCADE
        ) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS exact_keys_entry ON exact_keys(entry_id);
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """),
    Migration(LOG, """
        CREATE TABLE IF NOT EXISTS requests (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL, tenant TEXT, model TEXT, upstream TEXT, endpoint TEXT NOT NULL, method TEXT NOT NULL,
            status INTEGER NOT NULL, outcome TEXT NOT NULL, stream INTEGER NOT NULL, similarity REAL, verdict TEXT,
            attempts TEXT, total_ms REAL NOT NULL, ttfb_ms REAL, embed_ms REAL, search_ms REAL, upstream_ms REAL,
            prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
            compression_saved_tokens INTEGER NOT NULL, hit_saved_tokens INTEGER NOT NULL,
            cost_saved_hit REAL NOT NULL, cost_saved_compression REAL NOT NULL, priced INTEGER NOT NULL,
            prompt_hash TEXT, prompt_text TEXT
        );
        CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
        CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
    """),
    Migration(COMPRESSIONS, """
        CREATE TABLE IF NOT EXISTS compressions (key TEXT PRIMARY KEY, result TEXT NOT NULL, created_at REAL NOT NULL);
    """),
    # Each vector's space (model/language): entries from before have none and are re-embedded in the background.
    Migration(CACHE, """
        ALTER TABLE entries ADD COLUMN space TEXT;
    """),
    # Tenants erased lately (semproxy.storage.sql.ErasureQueries): in each file that holds their rows, so that
    # a write and the note that stops it are read in one transaction.
    Migration(CACHE, """
        CREATE TABLE IF NOT EXISTS erasures (tenant TEXT PRIMARY KEY, erased_at REAL NOT NULL) WITHOUT ROWID;
    """),
    Migration(LOG, """
        CREATE TABLE IF NOT EXISTS erasures (tenant TEXT PRIMARY KEY, erased_at REAL NOT NULL) WITHOUT ROWID;
    """),
    # The retention (cache_retention_days) deletes by age, whatever an entry's TTL.
    Migration(CACHE, """
        CREATE INDEX IF NOT EXISTS entries_created ON entries(created_at);
    """),
    # A stored compression no longer keeps the system prompt it came from (the request carries it), and goes
    # with the retention.
    Migration(COMPRESSIONS, """
        UPDATE compressions SET result = json_remove(result, '$.original');
        CREATE INDEX IF NOT EXISTS compressions_created ON compressions(created_at);
    """),
    # Audited hits (semproxy.cache.learning): each comparison of a cached answer with a fresh one, on each
    # entry the highest score at which it proved wrong, and which exact keys are a semantic hit's aliases.
    Migration(CACHE, """
        ALTER TABLE entries ADD COLUMN wrong_above REAL;
        ALTER TABLE exact_keys ADD COLUMN alias INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE IF NOT EXISTS audits (
            id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, scope TEXT NOT NULL, entry_id INTEGER NOT NULL,
            score REAL NOT NULL, wrong INTEGER NOT NULL, at REAL NOT NULL
        );
        CREATE INDEX IF NOT EXISTS audits_scope ON audits(scope, id);
        CREATE INDEX IF NOT EXISTS audits_at ON audits(at);
        CREATE INDEX IF NOT EXISTS audits_tenant ON audits(tenant);
    """),
    # What an audited request found (1 wrong, 0 right), its weight in the served wrong-hit rate, its cost.
    Migration(LOG, """
        ALTER TABLE requests ADD COLUMN audit_wrong INTEGER;
        ALTER TABLE requests ADD COLUMN audit_weight REAL;
        ALTER TABLE requests ADD COLUMN cost_audit REAL NOT NULL DEFAULT 0;
    """),
)


def migrate(db: sqlite3.Connection, file: str) -> tuple[int, int]:
    """Apply the file's migrations that have not run, in one transaction; (version before, version after).

    The version is read inside the transaction, so two processes opening a file at once take turns."""
    steps = [m for m in MIGRATIONS if m.file == file]
    db.execute("BEGIN IMMEDIATE")
    try:
        before = int(db.execute("PRAGMA user_version").fetchone()[0])
        for step in steps[before:]:
            for statement in _statements(step.sql):
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {max(before, len(steps))}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return before, max(before, len(steps))


def _statements(script: str) -> Iterator[str]:
    """The statements of a script (executescript would commit the transaction it runs in)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""
    if pending.strip():
        raise ValueError(f"an incomplete statement in a migration: {pending.strip()[:80]}")


