"""The figures of the request log, shared by `semproxy stats`, `GET /semproxy/api/stats` and the dashboard.

`summarize` returns plain JSON-ready data; its keys are documented in docs/statistics.md. The storage
computes the figures in its database (semproxy.storage.requests: the SQLite file in the data dir or, with a
shared store, every replica's requests in PostgreSQL); this module shapes them.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from semproxy.errors import ConfigError
from semproxy.storage.requests import LogQueries
from semproxy.types import CACHE_OUTCOMES as OUTCOMES

GROUPS = {"model": "model", "tenant": "tenant", "upstream": "upstream", "endpoint": "endpoint"}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in "90s", "15m", "24h", "7d", "2w" (a bare number is seconds)."""
    found = _DURATION.match(text.lower())
    if not found:
        raise ConfigError(f"cannot read {text!r} as a duration (examples: 15m, 24h, 7d)")
    return float(found.group(1)) * _UNITS[found.group(2)]


class LogSource(Protocol):
    """Where the report reads the log: a backend of semproxy.storage."""

    log: LogQueries

    def reading_log(self) -> AbstractContextManager[Any]:
        """A connection to read from, or None if there is no log yet."""
        ...


def summarize(source: LogSource, *, since_seconds: float = 86400, by: str | None = None, top: int = 10,
              buckets: int = 24, show_text: bool = True, now: float | None = None) -> dict[str, Any]:
    """Requests, hit rates, savings, latency percentiles, top prompts and a timeline for a time window."""
    if by is not None and by not in GROUPS:
        raise ConfigError(f"--by must be one of {', '.join(GROUPS)}")
    until = time.time() if now is None else now
    since = until - since_seconds
    report: dict[str, Any] = {"window": {"since": since, "until": until, "seconds": since_seconds}}
    queries = source.log
    with source.reading_log() as db:
        if db is None:
            return {**report, **_empty(buckets, since, since_seconds)}
        report.update(_shape(queries.totals(db, since)))
        report["latency_ms"] = {name: _percentiles(values) for name, values in queries.latencies(db, since).items()}
        report["top_prompts"] = [
            {"prompt_hash": h, "text": t if show_text else None, "requests": n, "hits": int(hits or 0),
             "tokens_saved": int(saved or 0)} for h, t, n, hits, saved in queries.top_prompts(db, since, top)]
        width = since_seconds / buckets
        found = queries.timeline(db, since, width)
        report["timeline"] = [_bucket(since + i * width, found.get(i, {})) for i in range(buckets)]
        if by is not None:
            report["groups"] = {"by": by, "rows": [{"key": key, **_shape(totals)}
                                                   for key, totals in queries.groups(db, since, GROUPS[by])]}
    return report


def _empty(buckets: int, since: float, seconds: float) -> dict[str, Any]:
    width = seconds / buckets
    return {**_shape({}), "latency_ms": {k: _percentiles([]) for k in ("hit", "miss", "ttfb_stream")},
            "top_prompts": [], "timeline": [_bucket(since + i * width, {}) for i in range(buckets)]}


def _shape(s: dict[str, Any]) -> dict[str, Any]:
    """The totals in the report's (documented) shape."""
    n = {k: int(s.get(k) or 0) for k in ("requests", *OUTCOMES, "errors")}
    lookups = n["exact"] + n["semantic"] + n["miss"] + n["audit"]
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
        "audits": _audits(n["audit"], s),
    }


def _audits(audited: int, s: dict[str, Any]) -> dict[str, Any]:
    """Audited hits: the served wrong-hit rate they measure, with its 95 % interval, and what they cost.

    An audit drawn with probability p stands for (1 - p) / p served hits, so the rate is a weighted share and
    its interval a Wilson interval on the weights' effective count, (sum w)^2 / sum w^2."""
    weight, weight_wrong = float(s.get("audit_weight") or 0), float(s.get("audit_weight_wrong") or 0)
    squared = float(s.get("audit_weight_squared") or 0)
    rate = weight_wrong / weight if weight > 0 else None
    interval = wilson(weight_wrong, weight, effective=weight * weight / squared) if squared > 0 else None
    return {
        "audited": audited, "compared": int(s.get("audits_compared") or 0),
        "wrong": int(s.get("audits_wrong") or 0),
        "wrong_hit_rate": None if rate is None else round(rate, 4),
        "interval": None if interval is None else [round(interval[0], 4), round(interval[1], 4)],
        "confidence": 0.95,
        "upstream_tokens": int(s.get("audit_tokens") or 0),
        "upstream_cost_usd": round(float(s.get("cost_audit") or 0), 6),
        "refused_compared": int(s.get("refused_compared") or 0),
        "refused_wrong": int(s.get("refused_wrong") or 0),
    }


def wilson(wrong: float, total: float, *, effective: float, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval of the share wrong / total, on `effective` trials (95 % by default)."""
    if total <= 0 or effective <= 0:
        return None
    share = wrong / total
    centre = (share + z * z / (2 * effective)) / (1 + z * z / effective)
    half = z * math.sqrt(share * (1 - share) / effective + z * z / (4 * effective ** 2)) / (1 + z * z / effective)
    return max(0.0, centre - half), min(1.0, centre + half)


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _percentiles(ordered: Sequence[float]) -> dict[str, Any]:
    """Nearest-rank percentiles of sorted values."""
    def rank(p: float) -> float | None:
        return round(ordered[max(0, math.ceil(p * len(ordered)) - 1)], 3) if ordered else None

    return {"count": len(ordered), "p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99)}


def _bucket(start: float, row: dict[str, Any]) -> dict[str, Any]:
    hits, misses = int(row.get("hits") or 0), int(row.get("misses") or 0)
    return {"start": start, "requests": int(row.get("requests") or 0), "hits": hits,
            "hit_rate": _ratio(hits, hits + misses), "tokens_saved": int(row.get("tokens_saved") or 0),
            "cost_saved_usd": round(float(row.get("cost_saved_usd") or 0), 6),
            "hit_latency_ms": _round(row.get("hit_ms")), "miss_latency_ms": _round(row.get("miss_ms"))}


def _round(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)
