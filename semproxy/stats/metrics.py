"""Prometheus metrics, in a registry of their own (several apps in one process never collide).

Updated from the request log's thread as each record is finished; `render()` serves `GET /metrics`.
Label values that come from clients (the model name) are capped, so a client cannot blow up the series.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, exposition, generate_latest

from semproxy.stats.record import RequestRecord
from semproxy.stats.report import wilson

CONTENT_TYPE = exposition.CONTENT_TYPE_LATEST
MAX_LABEL_VALUES = 100
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """semproxy's Prometheus series."""

    def __init__(self, *, cache_entries: Callable[[], float] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("semproxy_requests", "Requests by cache outcome, model and upstream",
                                ["outcome", "model", "upstream"], registry=r)
        self.duration = Histogram("semproxy_request_duration_seconds", "Time to the last byte, by cache outcome",
                                  ["outcome"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttfb = Histogram("semproxy_time_to_first_byte_seconds", "Streams: time to the first body byte",
                              ["outcome"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage = Histogram("semproxy_stage_duration_seconds", "Time spent in embedding, search and upstream",
                               ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("semproxy_tokens", "Prompt and completion tokens of answered requests",
                              ["kind"], registry=r)
        self.saved_tokens = Counter("semproxy_tokens_saved", "Tokens not sent upstream, by what saved them",
                                    ["source"], registry=r)
        self.saved_cost = Counter("semproxy_cost_saved_usd", "Estimated money saved, by what saved it",
                                  ["source"], registry=r)
        self.compression_ratio = Gauge("semproxy_compression_ratio",
                                       "Prompt tokens sent / prompt tokens before compression, since start",
                                       registry=r)
        self.cache_entries = Gauge("semproxy_cache_entries", "Entries in the cache", registry=r)
        self.dropped = Gauge("semproxy_log_dropped_records", "Requests not logged: the log writer was too far behind",
                             registry=r)
        self.without_bodies = Gauge("semproxy_log_records_without_bodies",
                                    "Requests logged without token counts: bodies waiting for the log reached "
                                    "max_held_bytes", registry=r)
        self.held_bytes = Gauge("semproxy_held_bytes", "Bytes held for the request log, and answers held to be "
                                "checked before they are stored", ["purpose"], registry=r)
        self.audits = Counter("semproxy_audits", "Would-be semantic hits forwarded to be checked, by what the "
                              "comparison found (right, wrong, not_compared) and tenant", ["result", "tenant"],
                              registry=r)
        self.refused_compared = Counter("semproxy_refused_candidates_compared", "Candidates the learned bars "
                                        "refused, compared with the fresh answer for free", ["result"], registry=r)
        self.audit_cost = Counter("semproxy_audit_cost_usd", "Estimated money audits spent upstream", registry=r)
        self.wrong_hit_rate = Gauge("semproxy_served_wrong_hit_rate", "Share of served semantic hits that audits "
                                    "found wrong since start, with its 95 % interval, per tenant (namespace or "
                                    "key) and for all", ["tenant", "bound"], registry=r)
        if cache_entries is not None:
            self.cache_entries.set_function(cache_entries)
        # Per tenant label and "all": audits' weight, weight of the wrong ones, sum of squared weights
        self._weights: dict[str, list[float]] = {}
        self._labels: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._sent = self._before = 0

    def observe(self, record: RequestRecord) -> None:
        """Count one finished request."""
        model = self._label("model", record.model)
        upstream = "none" if record.hit else self._label("upstream", record.upstream)
        self.requests.labels(record.outcome, model, upstream).inc()
        self.duration.labels(record.outcome).observe(record.total_ms / 1000)
        if record.stream and record.ttfb_ms is not None:
            self.ttfb.labels(record.outcome).observe(record.ttfb_ms / 1000)
        for stage, value in (("embedding", record.embed_ms), ("search", record.search_ms),
                             ("upstream", record.upstream_ms)):
            if value is not None:
                self.stage.labels(stage).observe(value / 1000)
        self.tokens.labels("prompt").inc(record.prompt_tokens)
        self.tokens.labels("completion").inc(record.completion_tokens)
        self.saved_tokens.labels("cache").inc(record.hit_saved_tokens)
        self.saved_tokens.labels("compression").inc(record.compression_saved_tokens)
        self.saved_cost.labels("cache").inc(record.cost_saved_hit)
        self.saved_cost.labels("compression").inc(record.cost_saved_compression)
        if not record.hit and record.prompt_tokens:
            self._compression(record.prompt_tokens, record.compression_saved_tokens)
        if record.outcome == "audit":
            self._audit(record)
        elif record.audit_wrong is not None:
            self.refused_compared.labels("wrong" if record.audit_wrong else "right").inc()

    def _audit(self, record: RequestRecord) -> None:
        result = "not_compared" if record.audit_wrong is None else "wrong" if record.audit_wrong else "right"
        tenant = self._label("tenant", record.tenant)
        self.audits.labels(result, tenant).inc()
        self.audit_cost.inc(record.cost_audit)
        if record.audit_wrong is None or not record.audit_weight:
            return
        for label in (tenant, "all"):
            self._weigh(label, record.audit_weight, wrong=record.audit_wrong)

    def _weigh(self, label: str, weight: float, *, wrong: bool) -> None:
        with self._lock:
            w = self._weights.setdefault(label, [0.0, 0.0, 0.0])
            w[0], w[1], w[2] = w[0] + weight, w[1] + weight * wrong, w[2] + weight * weight
            rate, interval = w[1] / w[0], wilson(w[1], w[0], effective=w[0] ** 2 / w[2])
        self.wrong_hit_rate.labels(label, "estimate").set(rate)
        if interval is not None:
            self.wrong_hit_rate.labels(label, "low").set(interval[0])
            self.wrong_hit_rate.labels(label, "high").set(interval[1])

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)

    def _compression(self, sent: int, saved: int) -> None:
        with self._lock:
            self._sent += sent
            self._before += sent + saved
            self.compression_ratio.set(self._sent / self._before)

    def _label(self, name: str, value: str | None) -> str:
        value = value or "unknown"
        with self._lock:
            seen = self._labels.setdefault(name, set())
            if value in seen:
                return value
            if len(seen) >= MAX_LABEL_VALUES:
                return "other"
            seen.add(value)
            return value
