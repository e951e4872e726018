"""The request log's SQL, written once for both backends: appending rows, retention, and the report's queries.

The report's figures are computed in the database (sums, counts, groups, time buckets) and handed to
`semproxy.stats.report` as plain rows, which shapes them into the documented JSON.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from semproxy.storage.sql import Connection, Dialect, ErasureQueries
from semproxy.types import CACHE_OUTCOMES

GROUP_COLUMNS = frozenset({"model", "tenant", "upstream", "endpoint"})
_HIT = "outcome IN ('exact', 'semantic')"
_HITS = f"sum(CASE WHEN {_HIT} THEN 1 ELSE 0 END)"
SUM_NAMES = ("requests", *CACHE_OUTCOMES, "prompt", "completion", "saved_by_cache", "saved_by_compression",
             "cost_cache", "cost_compression", "unpriced", "errors",
             "audits_compared", "audits_wrong", "audit_weight", "audit_weight_wrong", "audit_weight_squared",
             "cost_audit", "audit_tokens", "refused_compared", "refused_wrong")
_AUDITED = "outcome = 'audit' AND audit_wrong IS NOT NULL"
_REFUSED = "outcome <> 'audit' AND audit_wrong IS NOT NULL"
_SUMS = (
    "count(*), " + ", ".join(f"sum(CASE WHEN outcome = '{o}' THEN 1 ELSE 0 END)" for o in CACHE_OUTCOMES) + ", "
    "sum(prompt_tokens), sum(completion_tokens), sum(hit_saved_tokens), sum(compression_saved_tokens), "
    "sum(cost_saved_hit), sum(cost_saved_compression), "
    "sum(CASE WHEN priced <> 0 THEN 0 ELSE hit_saved_tokens + compression_saved_tokens END), "
    "sum(CASE WHEN status >= 400 OR status = 0 THEN 1 ELSE 0 END), "
    f"sum(CASE WHEN {_AUDITED} THEN 1 ELSE 0 END), sum(CASE WHEN {_AUDITED} THEN audit_wrong ELSE 0 END), "
    f"sum(CASE WHEN {_AUDITED} THEN audit_weight ELSE 0 END), "
    f"sum(CASE WHEN {_AUDITED} THEN audit_weight * audit_wrong ELSE 0 END), "
    f"sum(CASE WHEN {_AUDITED} THEN audit_weight * audit_weight ELSE 0 END), sum(cost_audit), "
    "sum(CASE WHEN outcome = 'audit' THEN prompt_tokens + completion_tokens ELSE 0 END), "
    f"sum(CASE WHEN {_REFUSED} THEN 1 ELSE 0 END), sum(CASE WHEN {_REFUSED} THEN audit_wrong ELSE 0 END)"
)
TIMELINE_NAMES = ("requests", "hits", "misses", "tokens_saved", "cost_saved_usd", "hit_ms", "miss_ms")


class LogQueries:
    """Rows in, figures out; every method takes an open connection."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = d = dialect
        self.erasures = ErasureQueries(d)
        self._delete_before = d.sql("DELETE FROM {requests} WHERE ts < {p}")
        self._totals = d.sql(f"SELECT {_SUMS} FROM {{requests}} WHERE ts >= {{p}}")
        self._latency = {
            "hit": d.sql(f"SELECT total_ms FROM {{requests}} WHERE ts >= {{p}} AND {_HIT} ORDER BY 1"),
            "miss": d.sql("SELECT total_ms FROM {requests} WHERE ts >= {p} AND outcome = 'miss' ORDER BY 1"),
            "ttfb_stream": d.sql("SELECT ttfb_ms FROM {requests} WHERE ts >= {p} AND stream <> 0 "
                                 "AND ttfb_ms IS NOT NULL ORDER BY 1"),
        }
        self._top = d.sql(
            f"SELECT prompt_hash, max(prompt_text), count(*), {_HITS}, sum(hit_saved_tokens) FROM {{requests}} "
            "WHERE ts >= {p} AND prompt_hash IS NOT NULL GROUP BY prompt_hash HAVING count(*) > 1 "
            "ORDER BY count(*) DESC, prompt_hash LIMIT {p}")
        bucket = d.floor.format("(ts - {p}) / {p}")
        self._timeline = d.sql(
            f"SELECT {bucket} AS b, count(*), {_HITS}, sum(CASE WHEN outcome = 'miss' THEN 1 ELSE 0 END), "
            "sum(hit_saved_tokens + compression_saved_tokens), sum(cost_saved_hit + cost_saved_compression), "
            f"avg(CASE WHEN {_HIT} THEN total_ms END), avg(CASE WHEN outcome = 'miss' THEN total_ms END) "
            "FROM {requests} WHERE ts >= {p} GROUP BY b")

    def insert(self, db: Connection, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> int:
        """Append rows (flags are integer columns in both databases), but none of a request that began before
        its tenant was erased (it was in flight, or its record queued, then); how many were written."""
        rows = self._not_erased(db, columns, rows)
        if not rows:
            return 0
        sql = self.dialect.sql("INSERT INTO {requests} ({names}) VALUES ({marks})", names=", ".join(columns),
                               marks=self.dialect.marks(len(columns)))
        values = [tuple(int(v) if isinstance(v, bool) else v for v in row) for row in rows]
        cursor = db.cursor()
        try:
            cursor.executemany(sql, values)
        finally:
            cursor.close()
        return len(values)

    def _not_erased(self, db: Connection, columns: Sequence[str],
                    rows: Sequence[tuple[Any, ...]]) -> Sequence[tuple[Any, ...]]:
        if "tenant" not in columns or "ts" not in columns:
            return rows
        tenant, ts = columns.index("tenant"), columns.index("ts")
        erased = self.erasures.times(db, {row[tenant] for row in rows if row[tenant] is not None})
        if not erased:
            return rows
        return [row for row in rows if row[tenant] not in erased or row[ts] > erased[row[tenant]]]

    def delete_before(self, db: Connection, ts: float) -> int:
        """Apply the retention; how many rows went."""
        return int(db.execute(self._delete_before, (ts,)).rowcount)

    def delete_tenants(self, db: Connection, tenants: Sequence[str]) -> int:
        """Erase these tenants' rows."""
        if not tenants:
            return 0
        sql = self.dialect.sql("DELETE FROM {requests} WHERE tenant IN ({marks})",
                               marks=self.dialect.marks(len(tenants)))
        return int(db.execute(sql, list(tenants)).rowcount)

    def erase_tenants(self, db: Connection, tenants: Collection[str], *, now: float) -> int:
        """Erase these tenants' rows, and keep records of their requests begun before `now` from coming back."""
        self.erasures.record(db, tenants, now=now)
        return self.delete_tenants(db, sorted(tenants))

    # ---------------------------------------------------------------- the report

    def totals(self, db: Connection, since: float) -> dict[str, Any]:
        """Counts by outcome, tokens, savings and errors since `since` (keys: SUM_NAMES)."""
        return dict(zip(SUM_NAMES, db.execute(self._totals, (since,)).fetchone(), strict=True))

    def groups(self, db: Connection, since: float, column: str) -> list[tuple[Any, dict[str, Any]]]:
        """The totals per value of a column: (value, totals), largest first."""
        if column not in GROUP_COLUMNS:
            raise ValueError(f"cannot group by {column!r}")
        # NULLS FIRST: what SQLite does unasked, so both backends order alike.
        sql = self.dialect.sql(f"SELECT {column}, {_SUMS} FROM {{requests}} WHERE ts >= {{p}} "
                               f"GROUP BY {column} ORDER BY 2 DESC, 1 NULLS FIRST")
        return [(row[0], dict(zip(SUM_NAMES, row[1:], strict=True))) for row in db.execute(sql, (since,))]

    def latencies(self, db: Connection, since: float) -> dict[str, list[float]]:
        """Sorted latencies of hits, misses and streams' first bytes."""
        return {name: [float(r[0]) for r in db.execute(sql, (since,))] for name, sql in self._latency.items()}

    def top_prompts(self, db: Connection, since: float, top: int) -> list[tuple[Any, ...]]:
        """(hash, text, requests, hits, tokens saved) of the prompts asked more than once, most asked first."""
        return [tuple(row) for row in db.execute(self._top, (since, top))]

    def timeline(self, db: Connection, since: float, width: float) -> dict[int, dict[str, Any]]:
        """Figures per time bucket of `width` seconds since `since` (keys: TIMELINE_NAMES), by bucket number."""
        rows = db.execute(self._timeline, (since, width, since))
        return {int(r[0]): dict(zip(TIMELINE_NAMES, r[1:], strict=True)) for r in rows}
