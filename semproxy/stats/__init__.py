"""Statistics: the request log, token and money accounting, reports, Prometheus metrics and the dashboard.

    StatsMiddleware (semproxy.middleware.stats) --observed request--> RequestLog (own thread)
        -> finish(): usage / tiktoken counts, prices -> RequestRecord -> the storage (batched) + Metrics
    report.summarize(): the figures behind `semproxy stats`, /semproxy/api/stats and the dashboard
"""

from semproxy.stats.log import RequestLog
from semproxy.stats.metrics import Metrics
from semproxy.stats.prices import DEFAULT_PRICES, Price, PriceTable
from semproxy.stats.record import Observed, RequestRecord

__all__ = ["DEFAULT_PRICES", "Metrics", "Observed", "Price", "PriceTable", "RequestLog", "RequestRecord"]
