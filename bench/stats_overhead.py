"""What the request log and metrics cost per request: two proxies, statistics on and off, side by side.

Two `semproxy serve` processes against the same instant upstream (bench/fake_upstream.py), one with
`stats_enabled = true` (the default) and one with it off; the semantic tier is off in both (no model, so
the two processes do not fight over the CPU with spinning torch threads; the exact-hit path is the same).
Requests are interleaved one by one (on, off, on, off, ...) with a short idle gap, so drift hits both alike:

    exact      a repeated prompt: the cache answers, the log records a hit
    bypass     Cache-Control: no-store: forwarded upstream and recorded (usage read from the answer)

Checked before anything is written: every answer a 200 with the outcome its scenario names (exact, bypass)
in both processes, and the statistics process logged exactly the requests sent to it, with the outcomes its
clients saw. A run that fails a check prints FAIL, exits with status 1 and leaves the results file as it was.

    .venv/bin/python bench/stats_overhead.py            # ~30 s; --requests N to change the sample
    .venv/bin/python bench/stats_overhead.py --quick    # a smoke run: 50 requests per scenario and setting
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import Checks, fake_upstream, free_port, provenance, run_main, serve, write_results  # noqa: E402
from bench.proxy_bench import _chat, _summary  # noqa: E402

RESULTS = REPO / "bench" / "results" / "stats_overhead.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500, help="timed requests per scenario and setting")
    parser.add_argument("--gap", type=float, default=0.005, help="idle seconds before each request")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 50 requests per scenario and setting")
    args = parser.parse_args()
    if args.quick:
        args.requests = 50
    origin = provenance()
    checks = Checks()
    results = run(args, checks)
    for scenario, figures in results["scenarios"].items():
        on, off = figures["stats_on"], figures["stats_off"]
        print(f"{scenario:7s} p50 on {on['p50_ms']:.3f} ms, off {off['p50_ms']:.3f} ms: "
              f"+{figures['p50_difference_ms']:.3f} ms, ratio {figures['p50_ratio']:.3f}; "
              f"p95 on {on['p95_ms']:.3f}, off {off['p95_ms']:.3f}")
    print(f"log rows written: {results['rows_logged']}")
    checks.raise_if_failed()
    write_results(RESULTS, {**results, "checks": checks.record()}, origin)


def run(args: argparse.Namespace, checks: Checks) -> dict[str, Any]:
    upstream_port = free_port()
    upstream = f"http://127.0.0.1:{upstream_port}/v1"
    proxies = {"stats_on": f"http://127.0.0.1:{free_port()}", "stats_off": f"http://127.0.0.1:{free_port()}"}
    env = {"HF_HUB_OFFLINE": "1", "SEMPROXY_LOG_LEVEL": "warning", "SEMPROXY_SEMANTIC_ENABLED": "false",
           "SEMPROXY_COMPRESSION_ENABLED": "false", "SEMPROXY_ADMIN_OPEN": "true"}
    with contextlib.ExitStack() as stack:
        stack.enter_context(fake_upstream(upstream_port))
        for name, url in proxies.items():
            data_dir = stack.enter_context(tempfile.TemporaryDirectory())
            stack.enter_context(serve(int(url.rsplit(":", 1)[1]), data_dir, "--upstream", upstream, env={
                **env, "SEMPROXY_STATS_ENABLED": "true" if name == "stats_on" else "false"}))
        client = stack.enter_context(httpx.Client(timeout=60))
        timings: dict[tuple[str, str], list[float]] = {}
        seen: dict[tuple[str, str], Counter[str]] = {}  # every request's outcome, warm-up included
        sends = {
            "exact": lambda url, i: client.post(url + "/v1/chat/completions", json=_chat("What is a monad?")),
            "bypass": lambda url, i: client.post(url + "/v1/chat/completions", json=_chat(f"question {i}"),
                                                 headers={"cache-control": "no-store"}),
        }
        for i in range(-30, args.requests):  # the negative indices warm up connections and caches
            for scenario, send in sends.items():
                for name, url in proxies.items():
                    time.sleep(args.gap)
                    started = time.perf_counter()
                    response = send(url, i)
                    elapsed = (time.perf_counter() - started) * 1000
                    outcome = response.headers.get("x-semproxy-cache", "-") if response.status_code == 200 \
                        else f"http {response.status_code}"
                    seen.setdefault((scenario, name), Counter())[outcome] += 1
                    if i >= 0:
                        timings.setdefault((scenario, name), []).append(elapsed)
        logged = _logged(proxies["stats_on"], sum(sum(seen[(s, "stats_on")].values()) for s in sends))
    _check(checks, seen, logged)
    scenarios = {}
    for scenario in sends:
        on, off = timings[(scenario, "stats_on")], timings[(scenario, "stats_off")]
        scenarios[scenario] = {
            "stats_on": _summary(on), "stats_off": _summary(off),
            "p50_difference_ms": round(statistics.median(on) - statistics.median(off), 3),
            "p50_ratio": round(statistics.median(on) / statistics.median(off), 3),
        }
    return {"date": datetime.date.today().isoformat(), "cpu_count": os.cpu_count(), "requests": args.requests,
            "gap_s": args.gap, "scenarios": scenarios, "rows_logged": logged["requests"],
            "outcomes_logged": logged["outcomes"]}


def _logged(base: str, sent: int) -> dict[str, Any]:
    """The request log's totals, once it holds `sent` rows (the writer commits in batches) or 10 s passed."""
    deadline = time.monotonic() + 10
    while True:
        report: dict[str, Any] = httpx.get(base + "/semproxy/api/stats?since=1h", timeout=10).json()
        if report["requests"] >= sent or time.monotonic() > deadline:
            return report
        time.sleep(0.2)


def _check(checks: Checks, seen: dict[tuple[str, str], Counter[str]], logged: dict[str, Any]) -> None:
    for (scenario, name), outcomes in seen.items():
        timed = outcomes - Counter({"miss": 1}) if scenario == "exact" else outcomes  # the first one stores it
        checks.expect_share(f"{scenario} scenario, {name}", timed, scenario)
    sent = sum((outcomes for (_, name), outcomes in seen.items() if name == "stats_on"), Counter())
    total = sum(sent.values())
    checks.expect(logged["requests"] == total, f"request log: {logged['requests']} rows for {total} requests sent")
    logged_outcomes = {k: n for k, n in logged["outcomes"].items() if n}
    checks.expect(logged_outcomes == dict(sent), f"request log: outcomes {logged_outcomes}, clients saw {dict(sent)}")
    checks.expect(logged["errors"] == 0, f"request log: {logged['errors']} errors")


if __name__ == "__main__":
    run_main(main)
