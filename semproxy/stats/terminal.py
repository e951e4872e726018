"""`semproxy stats` in a terminal: rich tables and a small hit-rate chart drawn with block characters."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

BLOCKS = " ▁▂▃▄▅▆▇█"


def render(report: dict[str, Any], console: Console) -> None:
    """Print the report's tables and chart."""
    console.print(_overview(report))
    console.print(_latency(report["latency_ms"]))
    if report.get("groups"):
        console.print(_groups(report["groups"]))
    if report["top_prompts"]:
        console.print(_top(report["top_prompts"]))
    console.print(Panel(Group(*chart([b["hit_rate"] for b in report["timeline"]]),
                              Text(_axis(report["timeline"]), style="dim")),
                        title="hit rate over time", expand=False))


def _overview(report: dict[str, Any]) -> Table:
    window = report["window"]
    table = Table(title=f"semproxy: {_when(window['since'])} to {_when(window['until'])}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    outcomes, tokens, money = report["outcomes"], report["tokens"], report["cost_saved_usd"]
    rows = [
        ("requests", f"{report['requests']:,}"),
        ("  exact / semantic / miss / audit / bypass",
         " / ".join(f"{outcomes[o]:,}" for o in ("exact", "semantic", "miss", "audit", "bypass"))),
        ("  errors (status >= 400, or no answer)", f"{report['errors']:,}"),
        ("hit rate (hits / lookups)", _percent(report["hit_rate"])),
        ("  exact tier / semantic tier", " / ".join(_percent(report["hit_rate_by_tier"][t])
                                                    for t in ("exact", "semantic"))),
        ("tokens: prompt / completion", f"{tokens['prompt']:,} / {tokens['completion']:,}"),
        ("tokens saved by the cache", f"{tokens['saved_by_cache']:,}"),
        ("tokens saved by compression", f"{tokens['saved_by_compression']:,}"),
        ("money saved by the cache (est.)", _usd(money["cache"])),
        ("money saved by compression (est.)", _usd(money["compression"])),
        ("money saved, total (est.)", _usd(money["total"])),
    ]
    if tokens["saved_unpriced"]:
        rows.append(("  saved tokens of models without a price", f"{tokens['saved_unpriced']:,}"))
    rows.extend(_audit_rows(report["audits"]))
    for name, value in rows:
        table.add_row(name, value)
    return table


def _audit_rows(audits: dict[str, Any]) -> list[tuple[str, str]]:
    if not audits["audited"] and not audits["refused_compared"]:
        return []
    rate, interval = audits["wrong_hit_rate"], audits["interval"]
    measured = "-" if rate is None else f"{_percent(rate)} (95 %: {_percent(interval[0])} to {_percent(interval[1])})"
    return [
        ("wrong semantic hits served (audited)", measured),
        ("  audits: compared / wrong", f"{audits['compared']:,} / {audits['wrong']:,}"),
        ("  audits' upstream cost (est.)",
         f"{_usd(audits['upstream_cost_usd'])} ({audits['upstream_tokens']:,} tokens)"),
        ("  refused by learned bars: compared / wrong",
         f"{audits['refused_compared']:,} / {audits['refused_wrong']:,}"),
    ]


def _latency(latency: dict[str, Any]) -> Table:
    table = Table(title="latency (ms, total time to the last byte)")
    for name in ("", "requests", "p50", "p95", "p99"):
        table.add_column(name, justify="right" if name else "left")
    for name, label in (("hit", "hits"), ("miss", "misses"), ("ttfb_stream", "streams: first byte")):
        row = latency[name]
        table.add_row(label, f"{row['count']:,}", *(_ms(row[p]) for p in ("p50", "p95", "p99")))
    return table


def _groups(groups: dict[str, Any]) -> Table:
    table = Table(title=f"by {groups['by']}")
    for name in (groups["by"], "requests", "hit rate", "tokens saved", "saved (est.)", "wrong hits (audited)"):
        table.add_column(name, justify="left" if name == groups["by"] else "right")
    for row in groups["rows"]:
        saved = row["tokens"]["saved_by_cache"] + row["tokens"]["saved_by_compression"]
        table.add_row(str(row["key"] or "-"), f"{row['requests']:,}", _percent(row["hit_rate"]), f"{saved:,}",
                      _usd(row["cost_saved_usd"]["total"]), _percent(row["audits"]["wrong_hit_rate"]))
    return table


def _top(prompts: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="top repeated prompts")
    for name in ("prompt", "requests", "hits", "tokens saved"):
        table.add_column(name, justify="left" if name == "prompt" else "right")
    for row in prompts:
        table.add_row(Text(row["text"] or row["prompt_hash"]), f"{row['requests']:,}", f"{row['hits']:,}",
                      f"{row['tokens_saved']:,}")
    return table


def chart(rates: Sequence[float | None], *, height: int = 5) -> list[Text]:
    """Rows of a column chart of values in [0, 1], top row first; a missing value is a dotted column."""
    rows = []
    for level in range(height - 1, -1, -1):
        line = Text()
        for rate in rates:
            if rate is None:
                line.append("·" if level == 0 else " ", style="dim")
                continue
            eighths = round(rate * height * 8) - level * 8
            line.append(BLOCKS[max(0, min(8, eighths))], style="green")
        label = {height - 1: " 100%", 0: " 0%"}.get(level, "")
        rows.append(line + Text(label, style="dim"))
    return rows


def _axis(timeline: Sequence[dict[str, Any]]) -> str:
    if not timeline:
        return ""
    short = timeline[-1]["start"] - timeline[0]["start"] < 86400
    first, last = (_when(timeline[i]["start"], short=short) for i in (0, -1))
    return first + last.rjust(max(len(last) + 1, len(timeline) - len(first)))


def _when(ts: float, *, short: bool = False) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%H:%M" if short else "%Y-%m-%d %H:%M")


def _usd(value: float) -> str:
    return f"${value:,.2f}" if value >= 1 else f"${value:.6f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"
