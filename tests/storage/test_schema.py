"""Each backend owns its schema: files and databases of older releases open and carry on, migrations run once,
and what is stored stays readable."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from semproxy.cli import main
from semproxy.storage.sqlite import SqliteStorage
from semproxy.storage.sqlite_schema import CACHE, LOG, MIGRATIONS, migrate

# What releases before the storage package created in cache.sqlite3 (CREATE ... IF NOT EXISTS, no version).
_OLD_CACHE = """
CREATE TABLE entries (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, tenant TEXT NOT NULL,
    scope TEXT NOT NULL, model TEXT NOT NULL, prompt TEXT, vector BLOB, response BLOB NOT NULL,
    created_at REAL NOT NULL, expires_at REAL, last_used_at REAL NOT NULL);
CREATE TABLE exact_keys (key TEXT PRIMARY KEY,
    entry_id INTEGER NOT NULL REFERENCES entries(id) ON DELETE CASCADE) WITHOUT ROWID;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('tenant_salt', '00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff');
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO entries VALUES (7, 'chat', 't', 's', 'm', 'p', NULL, CAST('{"choices": [1]}' AS BLOB), 1.0, NULL, 1.0);
INSERT INTO exact_keys VALUES ('old-key', 7);
"""


def test_a_data_dir_of_an_older_release_opens_with_its_entries_and_salt(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / CACHE) as db:
        db.executescript(_OLD_CACHE)
    storage = SqliteStorage(tmp_path)
    found = storage.get_entry("old-key")
    assert found is not None and found.id == 7 and found.response == b'{"choices": [1]}'
    assert storage.tenant_salt() == bytes.fromhex("00112233445566778899aabbccddeeff" * 2)
    with sqlite3.connect(tmp_path / CACHE) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (len([m for m in MIGRATIONS if m.file == CACHE]),)


def test_migrations_run_once_each_and_only_for_their_file(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "x.sqlite3", isolation_level=None)
    steps = [m for m in MIGRATIONS if m.file == LOG]
    assert migrate(db, LOG) == (0, len(steps))
    assert migrate(db, LOG) == (len(steps), len(steps))  # a no-op the second time
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "requests" in tables and "entries" not in tables


def test_files_are_made_only_for_what_is_used(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "data")
    with storage.reading_log() as log:
        assert log is None  # reading makes nothing
    assert not (tmp_path / "data").exists()
    storage.open()
    assert sorted(p.name for p in (tmp_path / "data").glob("*.sqlite3")) == [CACHE]


def test_a_database_of_a_newer_release_is_refused(pg_url: str) -> None:
    import psycopg

    from semproxy.errors import ConfigError
    from semproxy.storage.postgres_schema import SCHEMA_VERSION
    from semproxy.storage.postgres_schema import migrate as pg_migrate

    assert pg_migrate(pg_url) == (0, SCHEMA_VERSION)
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("INSERT INTO semproxy_schema_version (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(ConfigError, match="newer"):
        pg_migrate(pg_url)


def test_a_tenant_is_erased_from_the_shared_store_too(pg_url: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from semproxy.cache.keys import make_key, tenant_id
    from semproxy.storage.postgres import PostgresStorage
    from semproxy.storage.records import NewEntry

    storage = PostgresStorage(pg_url)
    try:
        salt = storage.tenant_salt()
        tenants = {who: tenant_id(api_key=who, namespace=None, salt=salt) for who in ("sk-bob", "sk-alice")}
        with storage.transaction() as db:
            for who, tenant in tenants.items():
                body = {"model": "m", "messages": [{"role": "user", "content": who}]}
                entry = NewEntry(key=make_key("chat", body, tenant=tenant), response=b"{}", vector=None,
                                 ttl_seconds=0)
                storage.entries.put(db, entry, now=1.0)
        storage.append_requests(["ts", "tenant", "endpoint", "method", "status", "outcome", "stream", "total_ms",
                                 "prompt_tokens", "completion_tokens", "compression_saved_tokens",
                                 "hit_saved_tokens", "cost_saved_hit", "cost_saved_compression", "priced"],
                                [(1.0, t, "/v1/chat/completions", "POST", 200, "miss", False, 1.0, 1, 1, 0, 0,
                                  0.0, 0.0, True) for t in tenants.values()])
    finally:
        storage.close()
    assert main(["cache", "clear", "--data-dir", str(tmp_path), "--store", pg_url, "--tenant", "sk-bob"]) == 0
    assert "removed 1 entries and 1 request-log rows" in capsys.readouterr().out
    storage = PostgresStorage(pg_url)
    try:
        assert storage.count_entries() == 1
        with storage.reading_log() as db:
            assert db.execute("SELECT tenant FROM semproxy_requests").fetchall() == [(tenants["sk-alice"],)]
    finally:
        storage.close()


def test_a_shared_store_of_the_first_schema_keeps_its_entries_for_re_embedding(pg_url: str) -> None:
    import psycopg

    from semproxy.storage.postgres_schema import MIGRATIONS as PG_MIGRATIONS
    from semproxy.storage.postgres_schema import SCHEMA_VERSION
    from semproxy.storage.postgres_schema import migrate as pg_migrate

    with psycopg.connect(pg_url, autocommit=True) as db:  # a database an older release made
        db.execute("CREATE EXTENSION IF NOT EXISTS vector")
        db.execute("CREATE TABLE semproxy_schema_version (version integer PRIMARY KEY, "
                   "applied_at timestamptz NOT NULL DEFAULT now())")
        db.execute(PG_MIGRATIONS[0])
        db.execute("INSERT INTO semproxy_schema_version (version) VALUES (1)")
        db.execute("INSERT INTO semproxy_entries (kind, tenant, scope, model, prompt, embedding, response, "
                   "created_at, last_used_at) VALUES ('chat', 't', 's', 'm', 'p', '[1,0,0]', '\\x7b7d', 1, 1)")
    assert pg_migrate(pg_url) == (1, SCHEMA_VERSION)
    with psycopg.connect(pg_url) as db:
        assert db.execute("SELECT prompt, space FROM semproxy_entries").fetchall() == [("p", None)]


def test_replicas_starting_together_on_a_fresh_database_all_migrate(pg_server: str) -> None:
    """Four replicas started at once on an empty database: `CREATE EXTENSION IF NOT EXISTS` is not safe
    concurrently (the loser gets a unique violation), so it must run under the migration lock too. Outside it,
    a replica's store did not open at start (issue 16's replica start-up failure)."""
    from semproxy.storage.postgres_schema import SCHEMA_VERSION
    from tests import pg

    for _ in range(8):  # the race is narrow: a few fresh databases
        with pg.database(pg_server) as url:
            assert _migrate_together(url, replicas=4) == [str(SCHEMA_VERSION)] * 4


def _migrate_together(url: str, *, replicas: int) -> list[str]:
    """Each replica's schema version after migrating at the same moment, or the error it died of."""
    import threading

    from semproxy.storage.postgres_schema import migrate as migrate_postgres

    start, outcomes = threading.Barrier(replicas), []

    def replica() -> None:
        start.wait()
        try:
            outcomes.append(str(migrate_postgres(url)[1]))
        except Exception as exc:
            outcomes.append(repr(exc))

    threads = [threading.Thread(target=replica) for _ in range(replicas)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes
