"""The SQL both backends share, written once: the dialect differences, and the cache entries' statements.

SQLite and PostgreSQL differ here only in table names (the embedded files predate the shared store, whose
tables carry a `semproxy_` prefix so the database can hold other things), the parameter mark, the column of
the embedding, a two-argument maximum and how a vector is written and read. Each backend passes its
`Dialect`; the statements are formatted from it once, when a backend is made. Every method takes an open
connection, inside a transaction the caller holds.

Erasing a tenant (`semproxy cache clear --tenant`) also leaves a note, kept `ERASURE_HOLD` seconds: a request
of the tenant that began before the erasure may still be upstream, and its log record may still wait on a
replica's queue. Whatever such a request writes later is dropped, in the transaction that would write it,
so nothing of a request older than the erasure comes back. Requests after it are new data (revoke the key
to refuse them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from semproxy.storage.records import CacheEntry, NewEntry, Observation, Relocation, Removed, Unplaced, Vector

Connection = Any  # a DB-API connection: sqlite3's or psycopg's (both have .execute and .cursor)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Dialect:
    """What differs between the two backends in the SQL they share."""

    entries: str
    exact_keys: str
    requests: str
    erasures: str  # tenants erased lately, and when (one such table in each file that holds their rows)
    audits: str  # comparisons of cached answers with fresh ones (semproxy.cache.learning)
    vector: str  # the column that holds an entry's embedding
    mark: str  # the parameter placeholder
    greatest: str  # the two-argument maximum
    floor: str  # the whole number below a non-negative expression, "{}" standing for the expression
    to_vector: Callable[[Vector], object]  # a vector as the driver writes it
    from_vector: Callable[[Any], Vector]  # ... and back

    def sql(self, template: str, **extra: str) -> str:
        """A statement with `{entries}`, `{p}` (the parameter mark) etc. filled in."""
        names = {f.name: value for f in dataclasses.fields(self) if isinstance(value := getattr(self, f.name), str)}
        return template.format(p=self.mark, **names, **extra)

    def marks(self, count: int) -> str:
        """`count` parameter marks, for an IN list."""
        return ", ".join([self.mark] * count)


# Longer than any request is in flight or any log record queued: a note older than this can stop nothing.
ERASURE_HOLD = 24 * 3600.0


class ErasureQueries:
    """The notes erasures leave: which tenants were erased lately, and when."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = d = dialect
        self._record = d.sql("INSERT INTO {erasures} (tenant, erased_at) VALUES ({p}, {p}) ON CONFLICT (tenant) "
                             "DO UPDATE SET erased_at = {greatest}({erasures}.erased_at, excluded.erased_at)")
        self._prune = d.sql("DELETE FROM {erasures} WHERE erased_at < {p}")
        self._after = d.sql("SELECT 1 FROM {erasures} WHERE tenant = {p} AND erased_at >= {p}")

    def record(self, db: Connection, tenants: Collection[str], *, now: float) -> None:
        """Note that these tenants were erased at `now` (and forget notes past their hold)."""
        self.prune(db, now=now)
        cursor = db.cursor()
        try:
            cursor.executemany(self._record, [(tenant, now) for tenant in sorted(tenants)])
        finally:
            cursor.close()

    def prune(self, db: Connection, *, now: float) -> None:
        """Forget the notes older than ERASURE_HOLD."""
        db.execute(self._prune, (now - ERASURE_HOLD,))

    def erased_after(self, db: Connection, tenant: str, at: float) -> bool:
        """Whether the tenant was erased at or after `at`."""
        return db.execute(self._after, (tenant, at)).fetchone() is not None

    def times(self, db: Connection, tenants: Collection[str]) -> dict[str, float]:
        """When each of these tenants was last erased, for those erased lately."""
        if not tenants:
            return {}
        sql = self.dialect.sql("SELECT tenant, erased_at FROM {erasures} WHERE tenant IN ({marks})",
                               marks=self.dialect.marks(len(tenants)))
        return {str(row[0]): float(row[1]) for row in db.execute(sql, sorted(tenants)).fetchall()}


ENTRY_COLUMNS = ("e.id, e.kind, e.tenant, e.scope, e.model, e.prompt, e.response, e.created_at, e.expires_at, "
                 "e.space, e.wrong_above")


class EntryQueries:
    """The cache entries: exact keys (and the aliases semantic hits create), LRU times, TTL, eviction."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = d = dialect
        self.erasures = ErasureQueries(d)
        self._get_exact = d.sql("SELECT {columns} FROM {exact_keys} k JOIN {entries} e ON e.id = k.entry_id "
                                "WHERE k.key = {p}", columns=ENTRY_COLUMNS)
        self._delete_key = d.sql("DELETE FROM {entries} WHERE id IN (SELECT entry_id FROM {exact_keys} "
                                 "WHERE key = {p}) RETURNING id, scope, space")
        self._insert = d.sql("INSERT INTO {entries} (kind, tenant, scope, model, prompt, {vector}, response, "
                             "created_at, expires_at, last_used_at, space) VALUES ({marks}) RETURNING id",
                             marks=d.marks(11))
        self._insert_key = d.sql("INSERT INTO {exact_keys} (key, entry_id) VALUES ({p}, {p})")
        # An alias of an entry that is gone points nowhere: the SELECT finds no row and nothing is written.
        self._alias = d.sql("INSERT INTO {exact_keys} (key, entry_id, alias) SELECT {p}, id, 1 FROM {entries} "
                            "WHERE id = {p} ON CONFLICT (key) DO UPDATE SET entry_id = excluded.entry_id, alias = 1")
        self._touch = d.sql("UPDATE {entries} SET last_used_at = {greatest}(last_used_at, {p}) WHERE id = {p}")
        self._born_before = d.sql("DELETE FROM {entries} WHERE created_at < {p} RETURNING id, scope, space")
        self._expired = d.sql("DELETE FROM {entries} WHERE expires_at IS NOT NULL AND expires_at <= {p} "
                              "RETURNING id, scope, space")
        self._count = d.sql("SELECT count(*) FROM {entries}")
        self._least_used = d.sql("DELETE FROM {entries} WHERE id IN (SELECT id FROM {entries} "
                                 "ORDER BY last_used_at, id LIMIT {p}) RETURNING id, scope, space")

    # ---------------------------------------------------------------- reads

    def get_exact(self, db: Connection, key: str) -> CacheEntry | None:
        """The entry an exact key points to, expired or not."""
        row = db.execute(self._get_exact, (key,)).fetchone()
        return None if row is None else self.entry(row)

    def get_many(self, db: Connection, ids: Sequence[int]) -> list[CacheEntry]:
        """The entries with these ids that still exist, with their vectors (for the hit verifier)."""
        if not ids:
            return []
        sql = self.dialect.sql("SELECT {columns}, e.{vector} FROM {entries} e WHERE e.id IN ({marks})",
                               columns=ENTRY_COLUMNS, marks=self.dialect.marks(len(ids)))
        return [self.entry(row) for row in db.execute(sql, list(ids)).fetchall()]

    def count(self, db: Connection) -> int:
        """How many entries exist."""
        return int(db.execute(self._count).fetchone()[0])

    def count_by_space(self, db: Connection) -> dict[str | None, int]:
        """Entries per space ("": exact hits only; None: not embedded yet)."""
        sql = self.dialect.sql("SELECT space, count(*) FROM {entries} GROUP BY space")
        return {row[0]: int(row[1]) for row in db.execute(sql).fetchall()}

    def entry(self, row: Sequence[Any]) -> CacheEntry:
        """A row of ENTRY_COLUMNS, with the vector as a twelfth column if it was selected."""
        vector = row[11] if len(row) > 11 else None
        return CacheEntry(
            id=int(row[0]), kind=row[1], tenant=row[2], scope=row[3], model=row[4], prompt=row[5],
            response=bytes(row[6]), created_at=float(row[7]), expires_at=None if row[8] is None else float(row[8]),
            space=row[9], vector=None if vector is None else self.dialect.from_vector(vector),
            wrong_above=None if row[10] is None else float(row[10]),
        )

    # ---------------------------------------------------------------- writes

    def put(self, db: Connection, entry: NewEntry, *, now: float) -> tuple[int | None, Removed]:
        """Store an entry under its exact key, replacing whatever that key named; (its id, what went). The id
        is None, and nothing is written, if its tenant was erased after its request began."""
        key = entry.key
        if entry.asked_at is not None and self.erasures.erased_after(db, key.tenant, entry.asked_at):
            return None, []
        removed = _removed(db.execute(self._delete_key, (key.exact,)))
        expires = now + entry.ttl_seconds if entry.ttl_seconds > 0 else None
        vector = None if entry.vector is None else self.dialect.to_vector(entry.vector)
        entry_id = int(db.execute(self._insert, (key.kind, key.tenant, key.scope, key.model, key.prompt, vector,
                                                 entry.response, now, expires, now, entry.space)).fetchone()[0])
        db.execute(self._insert_key, (key.exact, entry_id))
        return entry_id, removed

    def alias(self, db: Connection, key: str, entry_id: int) -> None:
        """Point another exact key at an entry (a semantic hit becomes an exact hit next time)."""
        db.execute(self._alias, (key, entry_id))

    def touch(self, db: Connection, used: Mapping[int, float]) -> None:
        """Record when entries were last served (for LRU eviction)."""
        cursor = db.cursor()
        try:
            cursor.executemany(self._touch, [(at, entry_id) for entry_id, at in used.items()])
        finally:
            cursor.close()

    def delete_expired(self, db: Connection, *, now: float) -> Removed:
        """Remove entries whose TTL ran out."""
        return _removed(db.execute(self._expired, (now,)))

    def sweep(self, db: Connection, *, now: float, keep: int, used: Mapping[int, float],
              born_after: float | None = None) -> tuple[Removed, int]:
        """Record LRU times, drop expired entries and those created before `born_after` (the retention),
        evict the least recently used beyond `keep`; (what went, how many are left). One count: once the cache
        is full this runs with every store."""
        self.erasures.prune(db, now=now)
        if used:
            self.touch(db, used)
        removed = self.delete_expired(db, now=now)
        if born_after is not None:
            removed += _removed(db.execute(self._born_before, (born_after,)))
            db.execute(self.dialect.sql("DELETE FROM {audits} WHERE at < {p}"), (born_after,))
        count = self.count(db)
        if count > keep:
            evicted = _removed(db.execute(self._least_used, (count - keep,)))
            removed, count = removed + evicted, count - len(evicted)
        return removed, count

    def delete_tenants(self, db: Connection, tenants: Collection[str] | None) -> Removed:
        """Remove every entry (None), or those of these tenants."""
        if tenants is None:
            db.execute(self.dialect.sql("DELETE FROM {audits}"))
            return _removed(db.execute(self.dialect.sql("DELETE FROM {entries} RETURNING id, scope, space")))
        if not tenants:
            return []
        db.execute(self.dialect.sql("DELETE FROM {audits} WHERE tenant IN ({marks})",
                                    marks=self.dialect.marks(len(tenants))), sorted(tenants))
        sql = self.dialect.sql("DELETE FROM {entries} WHERE tenant IN ({marks}) RETURNING id, scope, space",
                               marks=self.dialect.marks(len(tenants)))
        return _removed(db.execute(sql, sorted(tenants)))

    def erase_tenants(self, db: Connection, tenants: Collection[str], *, now: float) -> Removed:
        """Remove these tenants' entries, and keep any request of theirs begun before `now` from storing one."""
        self.erasures.record(db, tenants, now=now)
        return self.delete_tenants(db, tenants)

    # ---------------------------------------------------------------- what audits learned

    def record(self, db: Connection, observation: Observation) -> None:
        """Keep a comparison, unless its tenant was erased meanwhile; a wrong one raises its entry's bar and
        drops its aliases."""
        o = observation
        if self.erasures.erased_after(db, o.tenant, o.at):
            return
        db.execute(self.dialect.sql("INSERT INTO {audits} (tenant, scope, entry_id, score, wrong, at) "
                                    "VALUES ({marks})", marks=self.dialect.marks(6)),
                   (o.tenant, o.scope, o.entry_id, o.score, int(o.wrong), o.at))
        if o.wrong:
            db.execute(self.dialect.sql("UPDATE {entries} SET wrong_above = {greatest}(coalesce(wrong_above, {p}), "
                                        "{p}) WHERE id = {p}"), (o.score, o.score, o.entry_id))
            # The prompts it was served for as a semantic hit would get it again as exact hits, never audited:
            # they go back through the semantic tier, where the bars now apply.
            db.execute(self.dialect.sql("DELETE FROM {exact_keys} WHERE entry_id = {p} AND alias = 1"), (o.entry_id,))

    def history(self, db: Connection, scope: str, limit: int) -> list[tuple[float, bool]]:
        """The scope's latest comparisons, (score, wrong), newest first."""
        sql = self.dialect.sql("SELECT score, wrong FROM {audits} WHERE scope = {p} ORDER BY id DESC LIMIT {p}")
        return [(float(row[0]), bool(row[1])) for row in db.execute(sql, (scope, limit)).fetchall()]

    # ---------------------------------------------------------------- re-embedding

    def unplaced(self, db: Connection, is_current: Callable[[str], bool], *, after: int,
                 limit: int) -> list[Unplaced]:
        """Up to `limit` entries past id `after` with a prompt but no current space (stored before spaces
        existed, or under a model or route no longer configured): (id, prompt, space), in id order."""
        spaces = [row[0] for row in db.execute(self.dialect.sql(
            "SELECT DISTINCT space FROM {entries} WHERE space IS NOT NULL")).fetchall()]
        stale = sorted(s for s in spaces if s != "" and not is_current(s))
        condition = "space IS NULL" + (f" OR space IN ({self.dialect.marks(len(stale))})" if stale else "")
        sql = self.dialect.sql("SELECT id, prompt, space FROM {entries} WHERE id > {p} AND prompt IS NOT NULL "
                               "AND (" + condition + ") ORDER BY id LIMIT {p}")
        return [(int(r[0]), str(r[1]), r[2]) for r in db.execute(sql, [after, *stale, limit]).fetchall()]

    def relocate(self, db: Connection, moves: Sequence[Relocation]) -> None:
        """Give re-embedded entries their new space and vector ("" and no vector: exact hits only)."""
        sql = self.dialect.sql("UPDATE {entries} SET space = {p}, {vector} = {p} WHERE id = {p}")
        cursor = db.cursor()
        try:
            cursor.executemany(sql, [(m.space, None if m.vector is None else self.dialect.to_vector(m.vector), m.id)
                                     for m in moves])
        finally:
            cursor.close()


def _removed(cursor: Any) -> Removed:
    return [(int(row[0]), str(row[1]), row[2]) for row in cursor.fetchall()]
