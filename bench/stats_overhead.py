"""What the request log and metrics cost per request: two proxies, statistics on and off, side by side.

Two `semproxy serve` processes against the same instant upstream (bench/fake_upstream.py), one with
`stats_enabled = true` (the default) and one with it off; the semantic tier is off in both (no model, so
the two processes do not fight over the CPU with spinning torch threads; the exact-hit path is the same).
Requests are interleaved one by one (on, off, on, off, ...) with a short idle gap, so drift hits both alike:

    exact      a repeated prompt: the cache answers, the log records a hit
    bypass     Cache-Control: no-store: forwarded upstream and recorded (usage read from the answer)

    .venv/bin/python bench/stats_overhead.py            # ~30 s; --requests N to change the sample
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import free_port as _free_port  # noqa: E402
from bench.common import process as _process  # noqa: E402
from bench.proxy_bench import _chat, _summary  # noqa: E402

RESULTS = REPO / "bench" / "results" / "stats_overhead.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500, help="timed requests per scenario and setting")
    parser.add_argument("--gap", type=float, default=0.005, help="idle seconds before each request")
    args = parser.parse_args()
    results = run(args)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    for scenario, figures in results["scenarios"].items():
        on, off = figures["stats_on"], figures["stats_off"]
        print(f"{scenario:7s} p50 on {on['p50_ms']:.3f} ms, off {off['p50_ms']:.3f} ms: "
              f"+{figures['p50_difference_ms']:.3f} ms, ratio {figures['p50_ratio']:.3f}; "
              f"p95 on {on['p95_ms']:.3f}, off {off['p95_ms']:.3f}")
    print(f"log rows written: {results['rows_logged']}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    upstream_port = _free_port()
    upstream = f"http://127.0.0.1:{upstream_port}/v1"
    proxies = {"stats_on": f"http://127.0.0.1:{_free_port()}", "stats_off": f"http://127.0.0.1:{_free_port()}"}
    env = {"HF_HUB_OFFLINE": "1", "SEMPROXY_LOG_LEVEL": "warning", "SEMPROXY_SEMANTIC_ENABLED": "false",
           "SEMPROXY_COMPRESSION_ENABLED": "false"}
    with contextlib.ExitStack() as stack:
        stack.enter_context(_process([sys.executable, str(REPO / "bench" / "fake_upstream.py"), "--port",
                                      str(upstream_port)], upstream + "/models"))
        data_dirs = {}
        for name, url in proxies.items():
            data_dirs[name] = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            stack.enter_context(_process(
                [sys.executable, "-m", "semproxy", "serve", "--port", url.rsplit(":", 1)[1], "--upstream", upstream,
                 "--data-dir", str(data_dirs[name])], url + "/healthz",
                env={**env, "SEMPROXY_STATS_ENABLED": "true" if name == "stats_on" else "false"}))
        client = stack.enter_context(httpx.Client(timeout=60))
        timings: dict[tuple[str, str], list[float]] = {}
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
                    assert response.status_code == 200, response.text
                    if i >= 0:
                        timings.setdefault((scenario, name), []).append(elapsed)
        time.sleep(1.0)  # let the writer commit its last batch
        rows = httpx.get(proxies["stats_on"] + "/semproxy/api/stats?since=1h").json()["requests"]
    scenarios = {}
    for scenario in sends:
        on, off = timings[(scenario, "stats_on")], timings[(scenario, "stats_off")]
        scenarios[scenario] = {
            "stats_on": _summary(on), "stats_off": _summary(off),
            "p50_difference_ms": round(statistics.median(on) - statistics.median(off), 3),
            "p50_ratio": round(statistics.median(on) / statistics.median(off), 3),
        }
    return {"date": datetime.date.today().isoformat(), "cpu_count": os.cpu_count(), "requests": args.requests,
            "gap_s": args.gap, "scenarios": scenarios, "rows_logged": rows}


if __name__ == "__main__":
    main()
