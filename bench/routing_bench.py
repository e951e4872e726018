"""What routing costs: semproxy with three configured upstreams against the single-upstream form.

Against an instant local upstream (bench/fake_upstream.py, its own process), at concurrency 1, request by
request interleaved in a shuffled order (machine drift hits every scenario alike), with a short idle gap
before each. The cache and compression are off in every semproxy process, so the upstream layer is all
that differs:

    direct          client -> upstream
    single          semproxy --upstream URL: every model, no body parsing
    multi_pattern   three [[upstreams]] tables; the model matches a glob pattern (the body is parsed)
    multi_alias     the same; the model is an alias (the body is parsed and re-serialized)

All three upstream tables point at the same fake, so only semproxy's own work is measured. With
`--baseline REF`, a fifth scenario runs semproxy as it was at git commit REF (single-upstream form), to show
what the routing layer costs the simple case:

    baseline        semproxy at REF, --upstream URL

    .venv/bin/python bench/routing_bench.py [--baseline REF]   # ~1 minute; --quick for a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.proxy_bench import _free_port, _process  # noqa: E402

RESULTS = REPO / "bench" / "results" / "routing_bench.json"
ENV = {"HF_HUB_OFFLINE": "1", "SEMPROXY_LOG_LEVEL": "warning", "SEMPROXY_CACHE_ENABLED": "false",
       "SEMPROXY_COMPRESSION_ENABLED": "false", "SEMPROXY_SEMANTIC_ENABLED": "false"}


def _config(upstream: str) -> str:
    return f'''
[[upstreams]]
name = "mistral"
url = "{upstream}"
models = ["mistral-*", "open-mistral-*"]
aliases = {{ fast = "mistral-small-latest" }}

[[upstreams]]
name = "codestral"
url = "{upstream}"
models = ["codestral-*"]

[[upstreams]]
name = "openai"
url = "{upstream}"
models = ["gpt-*", "o1*", "text-embedding-*"]
'''


def _semproxy(port: int, data_dir: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "semproxy", "serve", "--port", str(port), "--data-dir", data_dir, *extra]


def run(args: argparse.Namespace) -> dict[str, Any]:
    ports = {name: _free_port() for name in ("upstream", "single", "multi")}
    base = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    upstream = base["upstream"] + "/v1"
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory())
        config = Path(folder) / "multi.toml"
        config.write_text(_config(upstream))
        stack.enter_context(_process([sys.executable, str(REPO / "bench" / "fake_upstream.py"), "--port",
                                      str(ports["upstream"])], upstream + "/models"))
        stack.enter_context(_process(_semproxy(ports["single"], folder + "/single", "--upstream", upstream),
                                     base["single"] + "/healthz", env=ENV))
        stack.enter_context(_process(_semproxy(ports["multi"], folder + "/multi", "--config", str(config)),
                                     base["multi"] + "/healthz", env=ENV))
        client = stack.enter_context(httpx.Client(timeout=30))
        scenarios = _scenarios(client, upstream, base["single"] + "/v1", base["multi"] + "/v1")
        if args.baseline:
            baseline = _baseline(stack, args.baseline, folder, upstream)
            scenarios["baseline"] = _poster(client, baseline, "mistral-small-latest", None)
        for _ in range(20):  # warm-up: connections, the first latency figures
            for send in scenarios.values():
                send()
        timings: dict[str, list[float]] = {name: [] for name in scenarios}
        shuffle = random.Random(6).shuffle
        for _ in range(args.requests):
            order = list(scenarios)
            shuffle(order)  # a fixed order would favour whichever request follows one to the same process
            for name in order:
                time.sleep(args.gap)
                started = time.perf_counter()
                scenarios[name]()
                timings[name].append((time.perf_counter() - started) * 1000)
    latency = {name: _summary(ms) for name, ms in timings.items()}
    single = latency["single"]["p50_ms"]
    return {
        "date": datetime.date.today().isoformat(), "cpu_count": os.cpu_count(), "requests": args.requests,
        "latency": latency,
        "p50_ratio_to_single": {name: round(row["p50_ms"] / single, 3) for name, row in latency.items()},
        "p50_minus_single_ms": {name: round(row["p50_ms"] - single, 3) for name, row in latency.items()},
    }


def _baseline(stack: contextlib.ExitStack, ref: str, folder: str, upstream: str) -> str:
    """Start semproxy as it was at git commit `ref` (exported into `folder`); its base URL."""
    source = Path(folder) / "baseline"
    source.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    port = _free_port()
    env = {**ENV, "PYTHONPATH": str(source)}
    command = _semproxy(port, folder + "/baseline-data", "--upstream", upstream)
    with contextlib.chdir(source):  # `python -m semproxy` must import the exported tree, not this one
        stack.enter_context(_process(command, f"http://127.0.0.1:{port}/healthz", env=env))
    return f"http://127.0.0.1:{port}/v1"


def _poster(client: httpx.Client, base: str, model: str, expect: str | None) -> Callable[[], None]:
    """A chat request for `model` to `base`, checking which upstream answered (if `expect`)."""
    body = {"model": model, "messages": [{"role": "user", "content": "What is the capital of France?"}]}

    def send() -> None:
        response = client.post(base + "/chat/completions", json=body)
        response.raise_for_status()
        assert expect is None or response.headers["x-semproxy-upstream"] == expect

    return send


def _scenarios(client: httpx.Client, upstream: str, single: str, multi: str) -> dict[str, Callable[[], None]]:
    return {
        "direct": _poster(client, upstream, "mistral-small-latest", None),
        "single": _poster(client, single, "mistral-small-latest", "default"),
        "multi_pattern": _poster(client, multi, "mistral-small-latest", "mistral"),
        "multi_alias": _poster(client, multi, "fast", "mistral"),
    }


def _summary(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {"p50_ms": round(statistics.median(ordered), 3), "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 3),
            "n": len(ordered)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="timed requests per scenario")
    parser.add_argument("--gap", type=float, default=0.005, help="idle seconds before each timed request")
    parser.add_argument("--quick", action="store_true", help="a smoke run with few requests")
    parser.add_argument("--baseline", metavar="REF", help="also time semproxy as it was at this git commit")
    args = parser.parse_args()
    if args.quick:
        args.requests = 30
    results = run(args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
