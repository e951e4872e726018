"""The request log's writer thread (batches, never blocking, retention) and the report computed from it."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from semproxy.app import build_storage
from semproxy.config import Settings
from semproxy.errors import ConfigError
from semproxy.stats import report
from semproxy.stats.log import RequestLog
from semproxy.stats.prices import PriceTable
from semproxy.stats.record import Observed, RequestRecord
from semproxy.storage import Storage
from semproxy.storage.sqlite import SqliteStorage
from semproxy.types import RequestFacts


def _counter() -> Any:
    return lambda text, _model: len(text.split())


def _observed(ts: float, outcome: str, *, total_ms: float = 10.0, prompt: str = "hello world",
              model: str = "gpt-4o-mini", tenant: str = "t1", stream: bool = False, status: int = 200) -> Observed:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}]}).encode()
    answer = b'{"choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": 50}}'
    return Observed(started=ts, method="POST", endpoint="/v1/chat/completions", tenant=lambda: tenant,
                    request_body=[body], status=status,
                    content_type="text/event-stream" if stream else "application/json",
                    response_body=[] if stream else [answer], total_ms=total_ms, ttfb_ms=total_ms / 2,
                    facts=RequestFacts(cache=outcome), default_upstream="up")


def _log(storage: Storage, **options: Any) -> RequestLog:
    return RequestLog(storage, prices=PriceTable(), count=_counter, **options)


def test_records_are_written_in_batches_off_the_caller(tmp_path: Path) -> None:
    seen: list[RequestRecord] = []
    writers: set[str] = set()
    stuck, gate = threading.Event(), threading.Event()

    def stuck_counter() -> Any:
        stuck.set()
        gate.wait(30)  # the writer is busy for as long as the test says
        return _counter()

    def listener(record: RequestRecord) -> None:
        writers.add(threading.current_thread().name)
        seen.append(record)

    log = RequestLog(SqliteStorage(tmp_path), prices=PriceTable(), count=stuck_counter, listeners=[listener],
                     flush_seconds=5.0)
    for i in range(200):
        log.submit(_observed(1000.0 + i, "miss"))
    assert stuck.wait(30)
    # submitting is a queue put, whatever the writer does: all 200 went in while it could not take one
    assert not gate.is_set() and log.written == 0 and log.dropped == 0 and seen == []
    gate.set()
    assert log.flush()  # a flush does not wait for flush_seconds
    assert log.written == 200 and len(seen) == 200
    assert writers == {"semproxy-stats"}  # records were made on the writer's thread, not the caller's
    with sqlite3.connect(tmp_path / "stats.sqlite3") as db:
        assert db.execute("SELECT count(*), sum(prompt_tokens) FROM requests").fetchone() == (200, 20000)
    log.close()


def test_a_full_queue_drops_instead_of_blocking(tmp_path: Path) -> None:
    stuck, gate = threading.Event(), threading.Event()

    def slow_counter() -> Any:
        stuck.set()
        gate.wait(30)  # the writer is stuck opening: nothing leaves the queue
        return _counter()

    log = RequestLog(SqliteStorage(tmp_path), prices=PriceTable(), count=slow_counter, max_pending=5)
    for i in range(50):
        log.submit(_observed(float(i), "miss"))
    assert stuck.wait(30)
    # every submit returned while the writer was stuck: 5 queued, the other 45 dropped, none waited for room
    assert not gate.is_set() and log.written == 0 and log.dropped == 45
    gate.set()
    assert log.flush()
    assert log.written == 50 - log.dropped
    log.close()


def test_retention_deletes_old_rows_also_while_the_proxy_is_idle(tmp_path: Path) -> None:
    now = [10 * 86400.0]
    path = tmp_path / "stats.sqlite3"
    first = _log(SqliteStorage(tmp_path), retention_days=0)  # keeps everything
    for age_days in (0.5, 2, 5):
        first.submit(_observed(now[0] - age_days * 86400, "miss"))
    first.close()

    def rows() -> int:
        with sqlite3.connect(path) as db:
            return int(db.execute("SELECT count(*) FROM requests").fetchone()[0])

    log = _log(SqliteStorage(tmp_path), retention_days=1, clock=lambda: now[0], idle_seconds=0.1)
    log.start()  # the sweep runs when the writer starts
    assert log.flush() and rows() == 1
    now[0] += 86400  # a day later, and no request since: the last row ages past the retention all the same
    deadline = time.monotonic() + 5
    while rows():
        assert time.monotonic() < deadline and log._thread is not None
        time.sleep(0.05)
    log.submit(_observed(now[0], "exact"))
    assert log.flush() and log.written == 1 and rows() == 1
    log.close()


def test_without_a_retention_the_writer_retires_when_idle(tmp_path: Path) -> None:
    log = _log(SqliteStorage(tmp_path), retention_days=0, idle_seconds=0.1)
    log.submit(_observed(time.time(), "miss"))
    assert log.flush()
    deadline = time.monotonic() + 5
    while log._thread is not None:  # idle: the thread ends, and the next request starts another
        assert time.monotonic() < deadline
        time.sleep(0.05)
    log.submit(_observed(time.time(), "exact"))
    assert log.flush() and log.written == 2
    log.close()


def _fill(storage: Storage, now: float) -> None:
    log = _log(storage, retention_days=0, prompt_chars=20)
    for i in range(10):
        log.submit(_observed(now - 3000 + i, "miss", total_ms=100.0 + i, prompt=f"question {i % 3}"))
    for i in range(6):
        log.submit(_observed(now - 100 + i, "exact", total_ms=1.0 + i, prompt="question 0", tenant="t2"))
    log.submit(_observed(now - 50, "semantic", total_ms=20.0, prompt="question 1", model="my-own-model"))
    log.submit(_observed(now - 40, "bypass", status=502, stream=True))
    log.submit(_observed(now - 99999, "exact"))  # outside every window below
    log.close()


@pytest.fixture(params=["embedded", "postgres"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """Each backend's log: the report's SQL is written once for both."""
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    opened = build_storage(Settings(data_dir=tmp_path / "data", store=url))
    yield opened
    opened.close()


def test_the_report(storage: Storage) -> None:
    now = 1_000_000.0
    _fill(storage, now)
    figures = report.summarize(storage, since_seconds=3600, now=now, buckets=6, by="model")
    assert figures["requests"] == 18 and figures["errors"] == 1
    assert figures["outcomes"] == {"exact": 6, "semantic": 1, "miss": 10, "audit": 0, "bypass": 1}
    assert figures["hit_rate"] == round(7 / 17, 4)
    assert figures["hit_rate_by_tier"] == {"exact": round(6 / 17, 4), "semantic": round(1 / 17, 4)}
    assert figures["tokens"]["saved_by_cache"] == 7 * 150
    assert figures["tokens"]["saved_unpriced"] == 150  # the semantic hit of a model without a price
    assert figures["cost_saved_usd"]["cache"] == pytest.approx(6 * (100 * 0.15 + 50 * 0.60) / 1e6, abs=1e-6)
    assert figures["latency_ms"]["hit"] == {"count": 7, "p50": 4.0, "p95": 20.0, "p99": 20.0}
    assert figures["latency_ms"]["miss"]["p50"] == 104.0 and figures["latency_ms"]["miss"]["p99"] == 109.0
    assert figures["latency_ms"]["ttfb_stream"]["count"] == 1
    top = figures["top_prompts"][0]
    assert (top["text"], top["requests"], top["hits"]) == ("question 0", 10, 6)
    timeline = figures["timeline"]
    assert len(timeline) == 6 and sum(b["requests"] for b in timeline) == 18
    assert timeline[-1]["hit_rate"] == 1.0 and timeline[1]["hit_rate"] == 0.0 and timeline[0]["hit_rate"] is None
    assert timeline[-1]["hit_latency_ms"] is not None and timeline[2]["hit_rate"] is None
    groups = {row["key"]: row for row in figures["groups"]["rows"]}
    assert groups["gpt-4o-mini"]["requests"] == 17 and groups["my-own-model"]["hit_rate"] == 1.0
    by_tenant = report.summarize(storage, since_seconds=3600, now=now, by="tenant")["groups"]["rows"]
    assert [(r["key"], r["requests"]) for r in by_tenant] == [("t1", 12), ("t2", 6)]
    hidden = report.summarize(storage, since_seconds=3600, now=now, show_text=False)
    assert hidden["top_prompts"][0]["text"] is None and hidden["top_prompts"][0]["prompt_hash"]


def test_an_empty_or_missing_log_reports_zeros(tmp_path: Path) -> None:
    figures = report.summarize(SqliteStorage(tmp_path / "nothing"), buckets=4)
    assert not (tmp_path / "nothing").exists()  # a report creates no log
    assert figures["requests"] == 0 and figures["hit_rate"] is None and len(figures["timeline"]) == 4
    assert set(figures) == {"window", "requests", "errors", "outcomes", "hit_rate", "hit_rate_by_tier", "tokens",
                            "audits", "cost_saved_usd", "latency_ms", "top_prompts", "timeline"}
    assert figures["audits"]["audited"] == 0 and figures["audits"]["wrong_hit_rate"] is None


def test_durations_and_groups_are_checked() -> None:
    assert [report.parse_duration(t) for t in ("90", "15m", "24h", "7d", "1.5h")] == [90, 900, 86400, 604800, 5400]
    with pytest.raises(ConfigError):
        report.parse_duration("yesterday")
    with pytest.raises(ConfigError):
        report.summarize(SqliteStorage(Path("x")), by="colour")


def test_records_and_the_table_agree(storage: Storage) -> None:
    from semproxy.stats.log import COLUMNS

    storage.delete_requests_before(0.0)  # the log exists once it was written to
    assert [f.name for f in dataclasses.fields(RequestRecord)] == COLUMNS
    with storage.reading_log() as db:
        names = [d[0] for d in db.execute(storage.log.dialect.sql("SELECT * FROM {requests} LIMIT 0")).description]
    assert names == ["id", *COLUMNS]


def test_audits_give_a_weighted_wrong_hit_rate_their_cost_and_the_free_comparisons(storage: Storage) -> None:
    now = 1_000_000.0
    log = _log(storage, retention_days=0)
    # Drawn at p = 0.5 (weight 1) and p = 0.25 (weight 3), at p = 1 (weight 0), one not compared.
    for i, (wrong, weight) in enumerate([(True, 1.0), (False, 3.0), (False, 3.0), (True, 0.0), (None, None)]):
        observed = _observed(now - 100 + i, "audit", tenant="t-audited")
        observed.facts.audit_wrong, observed.facts.audit_weight = wrong, weight
        log.submit(observed)
    refused = _observed(now - 10, "miss")
    refused.facts.audit_wrong = False  # a refused candidate, compared for free: right
    log.submit(refused)
    log.submit(_observed(now - 5, "semantic"))
    log.close()
    figures = report.summarize(storage, since_seconds=3600, now=now, by="tenant")
    audits = figures["audits"]
    assert figures["outcomes"]["audit"] == 5 and figures["hit_rate"] == round(1 / 7, 4)  # audits are lookups
    assert (audits["audited"], audits["compared"], audits["wrong"]) == (5, 4, 2)
    assert audits["wrong_hit_rate"] == round(1 / 7, 4)  # 1 of the 7 served hits the weights stand for
    low, high = audits["interval"]
    assert 0 < low < 1 / 7 < high < 1
    assert (audits["refused_compared"], audits["refused_wrong"]) == (1, 0)
    assert audits["upstream_tokens"] == 5 * 150 and audits["upstream_cost_usd"] > 0  # gpt-4o-mini has a price
    rows = {row["key"]: row["audits"] for row in figures["groups"]["rows"]}
    assert rows["t-audited"]["wrong_hit_rate"] == round(1 / 7, 4) and rows["t1"]["audited"] == 0
