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
`--baseline REF`, a fifth scenario runs semproxy as it was at git commit REF (checked out into a temporary
git worktree, removed afterwards), in its single-upstream form, to show
what the routing layer costs the simple case:

    baseline        semproxy at REF, --upstream URL

Over HTTP, the machine's noise is larger than what routing costs; so the same variants are also timed
in-process: UpstreamProxy alone, called as an ASGI app over an in-memory httpx transport, microseconds per
request (each variant in its own process, several rounds in a shuffled order, median of the rounds).

Every timed request is checked: a 200, and (where the header exists) from the upstream the scenario names;
the in-process rounds must each give a figure. A run that fails a check prints FAIL, exits with status 1
and leaves bench/results/routing_bench.json as it was.

    .venv/bin/python bench/routing_bench.py [--baseline REF]   # ~2 minutes; --quick for a smoke run
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
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import (  # noqa: E402
    Checks,
    checkout,
    fake_upstream,
    free_port,
    provenance,
    run_main,
    serve,
    write_results,
)

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


def run(args: argparse.Namespace, checks: Checks) -> dict[str, Any]:
    ports = {name: free_port() for name in ("upstream", "single", "multi")}
    base = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    upstream = base["upstream"] + "/v1"
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory())
        config = Path(folder) / "multi.toml"
        config.write_text(_config(upstream))
        stack.enter_context(fake_upstream(ports["upstream"]))
        stack.enter_context(serve(ports["single"], folder + "/single", "--upstream", upstream, env=ENV))
        stack.enter_context(serve(ports["multi"], folder + "/multi", "--config", str(config), env=ENV))
        client = stack.enter_context(httpx.Client(timeout=30))
        scenarios = _scenarios(client, upstream, base["single"] + "/v1", base["multi"] + "/v1")
        source, commit = stack.enter_context(checkout(args.baseline)) if args.baseline else (None, None)
        if source is not None:
            baseline = _baseline(stack, source, folder, upstream)
            scenarios["baseline"] = _poster(client, baseline, "mistral-small-latest", None)
        for _ in range(20):  # warm-up: connections, the first latency figures
            for send in scenarios.values():
                send()
        outcomes: dict[str, Counter[str]] = {name: Counter() for name in scenarios}
        timings: dict[str, list[float]] = {name: [] for name in scenarios}
        shuffle = random.Random(6).shuffle
        for _ in range(args.requests):
            order = list(scenarios)
            shuffle(order)  # a fixed order would favour whichever request follows one to the same process
            for name in order:
                time.sleep(args.gap)
                started = time.perf_counter()
                outcome = scenarios[name]()
                timings[name].append((time.perf_counter() - started) * 1000)
                outcomes[name][outcome] += 1
        in_process = inprocess(args, config, source)
    for name, seen in outcomes.items():
        checks.expect_share(f"{name} scenario", seen, "ok")
    _check_inprocess(checks, in_process, args.rounds)
    latency = {name: {**_summary(ms), "outcomes": dict(outcomes[name])} for name, ms in timings.items()}
    single = latency["single"]["p50_ms"]
    return {
        "date": datetime.date.today().isoformat(), "cpu_count": os.cpu_count(), "requests": args.requests,
        "latency": latency,
        "p50_ratio_to_single": {name: round(row["p50_ms"] / single, 3) for name, row in latency.items()},
        "p50_minus_single_ms": {name: round(row["p50_ms"] - single, 3) for name, row in latency.items()},
        "in_process": in_process,
        **({"baseline": {"ref": args.baseline, "commit": commit}} if args.baseline else {}),
    }


INPROCESS = """
import asyncio, json, sys, time
from pathlib import Path
import httpx
variant, count = sys.argv[1], int(sys.argv[2])
body = json.dumps({"model": "fast" if variant == "multi_alias" else "mistral-small-latest",
                   "messages": [{"role": "user", "content": "What is the capital of France?"}]}).encode()
answer = b'{"id": "chatcmpl-bench", "object": "chat.completion", "choices": []}'

async def chunks():
    yield answer

async def handler(request):
    await request.aread()
    return httpx.Response(200, headers={"content-type": "application/json"}, content=chunks())

transport = httpx.MockTransport(handler)
try:
    from semproxy.app import build_upstream
    from semproxy.config import load_settings
except ImportError:  # a baseline from before routing, whose UpstreamProxy took the upstream itself
    from semproxy.upstream.proxy import UpstreamProxy
    app = UpstreamProxy(transport, base_url="http://u/v1", timeout=httpx.Timeout(600, connect=10))
else:
    config = None if variant in ("single", "baseline") else Path(sys.argv[3])
    settings = load_settings(config_file=config, environ={}, overrides={"upstream": "http://u/v1"})
    app = build_upstream(settings, transport)
headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           (b"authorization", b"Bearer sk-bench")]
scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
         "query_string": b"", "root_path": "", "headers": headers}

async def one():
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    async def receive():
        if messages:
            return messages.pop()
        await asyncio.sleep(3600)
    async def send(message):
        pass
    await app(dict(scope), receive, send)

async def main():
    for _ in range(count // 10):
        await one()
    started = time.perf_counter()
    for _ in range(count):
        await one()
    print(json.dumps((time.perf_counter() - started) / count * 1e6))

asyncio.run(main())
"""


def inprocess(args: argparse.Namespace, config: Path, baseline: Path | None) -> dict[str, Any]:
    """Microseconds per request through UpstreamProxy alone, per variant: median of shuffled rounds."""
    variants = ["single", "multi_pattern", "multi_alias", *(["baseline"] if baseline else [])]
    rounds: dict[str, list[float]] = {name: [] for name in variants}
    shuffle = random.Random(7).shuffle
    for _ in range(args.rounds):
        shuffle(variants)
        for name in variants:
            source = baseline if name == "baseline" else REPO
            command = [sys.executable, "-c", INPROCESS, name, str(args.inprocess_requests), str(config)]
            done = subprocess.run(command, cwd=source, env={**os.environ, "PYTHONPATH": str(source)},
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"in-process variant {name} failed:\n{done.stderr}")
            rounds[name].append(float(done.stdout.strip().splitlines()[-1]))
    medians = {name: round(statistics.median(values), 2) for name, values in rounds.items()}
    return {"us_per_request": medians, "rounds": rounds,
            "minus_single_us": {name: round(us - medians["single"], 2) for name, us in medians.items()}}


def _baseline(stack: contextlib.ExitStack, source: Path, folder: str, upstream: str) -> str:
    """Start semproxy from the exported tree `source`; its base URL."""
    port = free_port()
    stack.enter_context(serve(port, folder + "/baseline-data", "--upstream", upstream, env=ENV, source=source))
    return f"http://127.0.0.1:{port}/v1"


def _poster(client: httpx.Client, base: str, model: str, expect: str | None) -> Callable[[], str]:
    """A chat request for `model` to `base`: "ok" if it was answered with a 200 by the upstream `expect`
    names (when it names one), else what was seen."""
    body = {"model": model, "messages": [{"role": "user", "content": "What is the capital of France?"}]}

    def send() -> str:
        try:
            response = client.post(base + "/chat/completions", json=body)
        except httpx.HTTPError as exc:
            return f"error {type(exc).__name__}"
        answered_by = response.headers.get("x-semproxy-upstream")
        if response.status_code != 200 or (expect is not None and answered_by != expect):
            return f"http {response.status_code} from upstream {answered_by}"
        return "ok"

    return send


def _check_inprocess(checks: Checks, in_process: dict[str, Any], rounds: int) -> None:
    for name, values in in_process["rounds"].items():
        checks.expect(len(values) == rounds and all(v > 0 for v in values),
                      f"in-process {name}: {len(values)} of {rounds} rounds gave a time ({values})")


def _scenarios(client: httpx.Client, upstream: str, single: str, multi: str) -> dict[str, Callable[[], str]]:
    return {
        "direct": _poster(client, upstream, "mistral-small-latest", None),
        "single": _poster(client, single, "mistral-small-latest", httpx.URL(upstream).host),  # named by host
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
    parser.add_argument("--rounds", type=int, default=7, help="in-process rounds per variant")
    parser.add_argument("--inprocess-requests", type=int, default=5000, help="timed requests per in-process round")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds, args.inprocess_requests = 30, 2, 500
    origin = provenance()
    checks = Checks()
    results = run(args, checks)
    print(json.dumps(results, indent=2))
    checks.raise_if_failed()
    write_results(RESULTS, {**results, "checks": checks.record()}, origin)


if __name__ == "__main__":
    run_main(main)
