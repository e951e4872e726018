"""The shared backend's schema: numbered migrations in one list, applied in order, each in one transaction.

`semproxy_schema_version` records what ran. Replicas starting together take turns (an advisory lock), and a
database migrated by a newer semproxy is refused. Migrations run on a connection of their own, before the
pool opens: the pool's connections register the `vector` type, which the first migration's extension makes.
"""

from __future__ import annotations

from typing import Any

from semproxy.errors import ConfigError

MIGRATION_LOCK = 0x53454D50  # advisory lock id ("SEMP"): replicas starting together migrate one at a time
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE semproxy_meta (key text PRIMARY KEY, value text NOT NULL);
    CREATE TABLE semproxy_entries (
        id bigserial PRIMARY KEY,
        kind text NOT NULL,
        tenant text NOT NULL,
        scope text NOT NULL,
        model text NOT NULL,
        prompt text,
        embedding vector,
        response bytea NOT NULL,
        created_at double precision NOT NULL,
        expires_at double precision,
        last_used_at double precision NOT NULL
    );
    CREATE INDEX semproxy_entries_scope ON semproxy_entries (scope);
    CREATE INDEX semproxy_entries_tenant ON semproxy_entries (tenant);
    CREATE INDEX semproxy_entries_lru ON semproxy_entries (last_used_at, id);
    CREATE INDEX semproxy_entries_expiry ON semproxy_entries (expires_at) WHERE expires_at IS NOT NULL;
    CREATE TABLE semproxy_exact_keys (
        key text PRIMARY KEY,
        entry_id bigint NOT NULL REFERENCES semproxy_entries (id) ON DELETE CASCADE
    );
    CREATE INDEX semproxy_exact_keys_entry ON semproxy_exact_keys (entry_id);
    CREATE TABLE semproxy_requests (
        id bigserial PRIMARY KEY,
        ts double precision NOT NULL, tenant text, model text, upstream text, endpoint text NOT NULL,
        method text NOT NULL, status integer NOT NULL, outcome text NOT NULL, stream integer NOT NULL,
        similarity double precision, verdict text, attempts text, total_ms double precision NOT NULL,
        ttfb_ms double precision, embed_ms double precision, search_ms double precision,
        upstream_ms double precision, prompt_tokens integer NOT NULL, completion_tokens integer NOT NULL,
        compression_saved_tokens integer NOT NULL, hit_saved_tokens integer NOT NULL,
        cost_saved_hit double precision NOT NULL, cost_saved_compression double precision NOT NULL,
        priced integer NOT NULL, prompt_hash text, prompt_text text
    );
    CREATE INDEX semproxy_requests_ts ON semproxy_requests (ts);
    """,
    # Each vector's space (model/language): entries from before have none and are re-embedded in the background.
    """
    ALTER TABLE semproxy_entries ADD COLUMN space text;
    DROP INDEX semproxy_entries_scope;
    CREATE INDEX semproxy_entries_scope ON semproxy_entries (scope, space);
    """,
    # Tenants erased lately (semproxy.storage.sql.ErasureQueries).
    """
    CREATE TABLE semproxy_erasures (tenant text PRIMARY KEY, erased_at double precision NOT NULL);
    """,
    # The retention (cache_retention_days) deletes by age, whatever an entry's TTL.
    """
    CREATE INDEX semproxy_entries_created ON semproxy_entries (created_at);
    """,
    # Audited hits (semproxy.cache.learning) and what the request log keeps of them.
    """
    ALTER TABLE semproxy_entries ADD COLUMN wrong_above double precision;
    ALTER TABLE semproxy_exact_keys ADD COLUMN alias integer NOT NULL DEFAULT 0;
    CREATE TABLE semproxy_audits (
        id bigserial PRIMARY KEY, tenant text NOT NULL, scope text NOT NULL, entry_id bigint NOT NULL,
        score double precision NOT NULL, wrong integer NOT NULL, at double precision NOT NULL
    );
    CREATE INDEX semproxy_audits_scope ON semproxy_audits (scope, id);
    CREATE INDEX semproxy_audits_at ON semproxy_audits (at);
    CREATE INDEX semproxy_audits_tenant ON semproxy_audits (tenant);
    ALTER TABLE semproxy_requests ADD COLUMN audit_wrong integer;
    ALTER TABLE semproxy_requests ADD COLUMN audit_weight double precision;
    ALTER TABLE semproxy_requests ADD COLUMN cost_audit double precision NOT NULL DEFAULT 0;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(url: str, *, connect_timeout: float = 10.0) -> tuple[int, int]:
    """Create or upgrade semproxy's tables; (version before, version after). Safe to run concurrently."""
    import psycopg

    connection = psycopg.connect(url, autocommit=True, connect_timeout=max(1, round(connect_timeout)))
    with connection as db, db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        # Under the lock: two replicas starting together on a fresh database both ran it, and `IF NOT EXISTS`
        # is not safe concurrently (the loser's store did not open: a unique violation on pg_extension).
        db.execute("CREATE EXTENSION IF NOT EXISTS vector")
        db.execute("CREATE TABLE IF NOT EXISTS semproxy_schema_version ("
                   "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        before = _version(db)
        if before > SCHEMA_VERSION:
            raise ConfigError(f"the database's semproxy schema is version {before}, newer than this "
                              f"semproxy's ({SCHEMA_VERSION}): upgrade semproxy")
        for version in range(before + 1, SCHEMA_VERSION + 1):
            db.execute(MIGRATIONS[version - 1])
            db.execute("INSERT INTO semproxy_schema_version (version) VALUES (%s)", (version,))
    return before, SCHEMA_VERSION


def _version(db: Any) -> int:
    return int(db.execute("SELECT coalesce(max(version), 0) FROM semproxy_schema_version").fetchone()[0])
