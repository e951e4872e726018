"""The figures of the request log, shared by `semproxy stats`, `GET /semproxy/api/stats` and the dashboard.

`summarize` returns plain JSON-ready data; its keys are documented in the README ("Statistics"). The log is
the SQLite file in the data dir or, with a shared store, the `semproxy_requests` table in PostgreSQL (every
replica's requests together): the queries are written in the SQL both understand.
"""

from __future__ import annotations

import math
import re
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from semproxy.errors import ConfigError

GROUPS = {"model": "model", "tenant": "tenant", "upstream": "upstream", "endpoint": "endpoint"}
OUTCOMES = ("exact", "semantic", "miss", "bypass")
_HIT = "outcome IN ('exact', 'semantic')"
_HITS = f"sum(CASE WHEN {_HIT} THEN 1 ELSE 0 END)"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in "90s", "15m", "24h", "7d", "2w" (a bare number is seconds)."""
    found = _DURATION.match(text.lower())
    if not found:
        raise ConfigError(f"cannot read {text!r} as a duration (examples: 15m, 24h, 7d)")
    return float(found.group(1)) * _UNITS[found.group(2)]


class LogReader:
    """Read-only queries on the request log, written with `?` placeholders and the table name `requests`."""

    def __init__(self, db: Any, *, postgres: bool) -> None:
        self.db, self.postgres = db, postgres

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.postgres:
            sql = re.sub(r"\bFROM requests\b", "FROM semproxy_requests", sql).replace("?", "%s")
        return self.db.execute(sql, params)

    def bucket(self, expression: str) -> str:
        """The whole number below a non-negative expression (PostgreSQL's CAST would round it)."""
        return f"floor({expression})" if self.postgres else f"CAST({expression} AS INTEGER)"

    def has_log(self) -> bool:
        if self.postgres:
            return self.db.execute("SELECT to_regclass('semproxy_requests')").fetchone()[0] is not None
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'requests'").fetchone() is not None


def _open(location: Path | str) -> LogReader | None:
    if isinstance(location, str):
        import psycopg

        return LogReader(psycopg.connect(location, autocommit=True, connect_timeout=10), postgres=True)
    if not location.exists():
        return None
    return LogReader(sqlite3.connect(f"file:{location}?mode=ro", uri=True, timeout=30), postgres=False)


def summarize(path: Path | str, *, since_seconds: float = 86400, by: str | None = None, top: int = 10,
              buckets: int = 24, show_text: bool = True, now: float | None = None) -> dict[str, Any]:
    """Requests, hit rates, savings, latency percentiles, top prompts and a timeline for a time window."""
    if by is not None and by not in GROUPS:
        raise ConfigError(f"--by must be one of {', '.join(GROUPS)}")
    until = time.time() if now is None else now
    since = until - since_seconds
    report: dict[str, Any] = {"window": {"since": since, "until": until, "seconds": since_seconds}}
    db = _open(path)
    if db is None:
        return {**report, **_empty(buckets, since, since_seconds)}
    try:
        if not db.has_log():
            return {**report, **_empty(buckets, since, since_seconds)}
        report.update(_totals(db, since))
        report["latency_ms"] = _latencies(db, since)
        report["top_prompts"] = _top_prompts(db, since, top, show_text=show_text)
        report["timeline"] = _timeline(db, since, since_seconds, buckets)
        if by is not None:
            report["groups"] = {"by": by, "rows": _groups(db, since, GROUPS[by])}
    finally:
        db.db.close()
    return report


def _empty(buckets: int, since: float, seconds: float) -> dict[str, Any]:
    width = seconds / buckets
    return {**_shape({}), "latency_ms": {k: _percentiles([]) for k in ("hit", "miss", "ttfb_stream")},
            "top_prompts": [], "timeline": [_bucket(since + i * width, {}) for i in range(buckets)]}


_SUMS = (
    "SELECT count(*), " + ", ".join(f"sum(CASE WHEN outcome = '{o}' THEN 1 ELSE 0 END)" for o in OUTCOMES) + ", "
    "sum(prompt_tokens), sum(completion_tokens), sum(hit_saved_tokens), sum(compression_saved_tokens), "
    "sum(cost_saved_hit), sum(cost_saved_compression), "
    "sum(CASE WHEN priced <> 0 THEN 0 ELSE hit_saved_tokens + compression_saved_tokens END), "
    "sum(CASE WHEN status >= 400 OR status = 0 THEN 1 ELSE 0 END) FROM requests WHERE ts >= ? {extra}"
)


def _totals(db: LogReader, since: float) -> dict[str, Any]:
    row = db.execute(_SUMS.format(extra=""), (since,)).fetchone()
    return _shape(dict(zip(_SUM_NAMES, row, strict=True)))


_SUM_NAMES = ("requests", *OUTCOMES, "prompt", "completion", "saved_by_cache", "saved_by_compression", "cost_cache",
              "cost_compression", "unpriced", "errors")


def _shape(s: dict[str, Any]) -> dict[str, Any]:
    """The totals in the report's (documented) shape."""
    n = {k: int(s.get(k) or 0) for k in ("requests", *OUTCOMES, "errors")}
    lookups = n["exact"] + n["semantic"] + n["miss"]
    cost_cache, cost_compression = float(s.get("cost_cache") or 0), float(s.get("cost_compression") or 0)
    return {
        "requests": n["requests"], "errors": n["errors"],
        "outcomes": {o: n[o] for o in OUTCOMES},
        "hit_rate": _ratio(n["exact"] + n["semantic"], lookups),
        "hit_rate_by_tier": {"exact": _ratio(n["exact"], lookups), "semantic": _ratio(n["semantic"], lookups)},
        "tokens": {"prompt": int(s.get("prompt") or 0), "completion": int(s.get("completion") or 0),
                   "saved_by_cache": int(s.get("saved_by_cache") or 0),
                   "saved_by_compression": int(s.get("saved_by_compression") or 0),
                   "saved_unpriced": int(s.get("unpriced") or 0)},
        "cost_saved_usd": {"cache": round(cost_cache, 6), "compression": round(cost_compression, 6),
                           "total": round(cost_cache + cost_compression, 6)},
    }


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _latencies(db: LogReader, since: float) -> dict[str, Any]:
    def column(sql: str) -> list[float]:
        return [r[0] for r in db.execute(sql + " ORDER BY 1", (since,))]

    return {
        "hit": _percentiles(column(f"SELECT total_ms FROM requests WHERE ts >= ? AND {_HIT}")),
        "miss": _percentiles(column("SELECT total_ms FROM requests WHERE ts >= ? AND outcome = 'miss'")),
        "ttfb_stream": _percentiles(column(
            "SELECT ttfb_ms FROM requests WHERE ts >= ? AND stream <> 0 AND ttfb_ms IS NOT NULL")),
    }


def _percentiles(ordered: Sequence[float]) -> dict[str, Any]:
    """Nearest-rank percentiles of sorted values."""
    def rank(p: float) -> float | None:
        return round(ordered[max(0, math.ceil(p * len(ordered)) - 1)], 3) if ordered else None

    return {"count": len(ordered), "p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99)}


def _top_prompts(db: LogReader, since: float, top: int, *, show_text: bool) -> list[dict[str, Any]]:
    rows = db.execute(
        f"SELECT prompt_hash, max(prompt_text), count(*), {_HITS}, sum(hit_saved_tokens) FROM requests "
        "WHERE ts >= ? AND prompt_hash IS NOT NULL GROUP BY prompt_hash HAVING count(*) > 1 "
        "ORDER BY count(*) DESC, prompt_hash LIMIT ?", (since, top))
    return [{"prompt_hash": h, "text": t if show_text else None, "requests": n, "hits": int(hits or 0),
             "tokens_saved": int(saved or 0)} for h, t, n, hits, saved in rows]


def _timeline(db: LogReader, since: float, seconds: float, buckets: int) -> list[dict[str, Any]]:
    width = seconds / buckets
    rows = db.execute(
        f"SELECT {db.bucket('(ts - ?) / ?')} AS b, count(*), {_HITS}, "
        "sum(CASE WHEN outcome = 'miss' THEN 1 ELSE 0 END), "
        "sum(hit_saved_tokens + compression_saved_tokens), sum(cost_saved_hit + cost_saved_compression), "
        f"avg(CASE WHEN {_HIT} THEN total_ms END), avg(CASE WHEN outcome = 'miss' THEN total_ms END) "
        "FROM requests WHERE ts >= ? GROUP BY b", (since, width, since))
    names = ("requests", "hits", "misses", "tokens_saved", "cost_saved_usd", "hit_ms", "miss_ms")
    found = {int(r[0]): dict(zip(names, r[1:], strict=True)) for r in rows}
    return [_bucket(since + i * width, found.get(i, {})) for i in range(buckets)]


def _bucket(start: float, row: dict[str, Any]) -> dict[str, Any]:
    hits, misses = int(row.get("hits") or 0), int(row.get("misses") or 0)
    return {"start": start, "requests": int(row.get("requests") or 0), "hits": hits,
            "hit_rate": _ratio(hits, hits + misses), "tokens_saved": int(row.get("tokens_saved") or 0),
            "cost_saved_usd": round(float(row.get("cost_saved_usd") or 0), 6),
            "hit_latency_ms": _round(row.get("hit_ms")), "miss_latency_ms": _round(row.get("miss_ms"))}


def _round(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


def _groups(db: LogReader, since: float, column: str) -> list[dict[str, Any]]:
    order = f"GROUP BY {column} ORDER BY 2 DESC, 1 NULLS FIRST"  # NULLS FIRST: what SQLite does unasked
    sql = _SUMS.replace("SELECT ", f"SELECT {column}, ", 1).format(extra=order)
    return [{"key": row[0], **_shape(dict(zip(_SUM_NAMES, row[1:], strict=True)))}
            for row in db.execute(sql, (since,))]
