"""What semproxy costs and saves per request, measured side by side in one run.

Against an instant local upstream (bench/fake_upstream.py, its own process), at concurrency 1, the
scenarios are interleaved request by request (in a shuffled order each round, so no scenario always
follows the same one) so that machine drift hits all of them alike, with a short idle gap before each
(torch's OpenMP threads spin for a while after a forward pass; without the gap, one process's spinning
threads slow the next process's forward pass and the comparison measures that):

    direct        client -> upstream
    bypass        client -> semproxy (Cache-Control: no-store) -> upstream: pure proxy overhead
    miss          a new prompt: exact lookup + embedding + search + verifier + forward + store
    exact         a repeated prompt
    semantic      a reworded question (bench/rewordings.py), served through the hit verifier at its
                  default settings; each reworded prompt is sent once (a second time would be an exact hit)
    embed         one forward pass of full-precision MiniLM in this process on the semantic scenario's text
    embed_miss    the same on the miss scenario's text (real ShareGPT prompts, longer)
    embed_int8    the semantic scenario's text through the int8 ONNX MiniLM semproxy runs for English
    litellm_*     LiteLLM's proxy, pass-through and with its in-memory cache (if bench/rivals is installed)

Then throughput of semantic hits at concurrency 1 and 32 (micro-batching), and GPTCache's semantic lookup.
`targets` says which of the English path's targets this run met (ratios to the full-precision pass).

Every scenario is checked for the outcome it measures before anything is written: each request's
X-Semproxy-Cache header (exact, miss, bypass; semantic for at least 95 %), no error and no non-2xx answer
anywhere, and the throughput runs at least 95 % semantic hits. A run that fails a check prints FAIL, exits
with status 1 and leaves bench/results/proxy_bench.json as it was.

With `--baseline REF`, semproxy as it was at git commit REF (checked out into a temporary git worktree,
removed afterwards) runs beside the current one, with its own data dir and the same settings, and the
exact, semantic and miss scenarios are also sent to it, interleaved with the rest: the report gives both
p50s and the ratio current / baseline (is a refactor any slower?).

    .venv/bin/python bench/proxy_bench.py                  # ~4 minutes; --quick for a smoke run
    .venv/bin/python bench/proxy_bench.py --quick --baseline HEAD~3
    bash bench/rivals/install.sh                            # once, to include LiteLLM and GPTCache
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gzip
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
from bench.rewordings import QUESTIONS, semantic_requests  # noqa: E402
from bench.rivals import litellm_proxy  # noqa: E402

RESULTS = REPO / "bench" / "results" / "proxy_bench.json"
# The fake upstream's answer quotes its prompt, so an audit would find every rewording's answer "wrong" and the
# learned bars would refuse them all: this bench times what a hit costs, the audit bench measures the audits.
ENV = {"SEMPROXY_LOG_LEVEL": "warning", "SEMPROXY_AUDIT_RATE": "0", "SEMPROXY_LEARN_THRESHOLDS": "false"}
WARMUP = 20
SEMANTIC_SHARE = 0.95  # a reworded prompt the verifier rejects is a miss, not an error; a few may be
COMPARED = ("exact", "semantic", "miss")  # the hot paths timed against --baseline


def _chat(prompt: str) -> dict[str, Any]:
    return {"model": "bench-model", "messages": [{"role": "user", "content": prompt}], "temperature": 0}


def _key(tenant: int) -> dict[str, str]:
    return {"authorization": f"Bearer sk-bench-{tenant}"}


class Scenario:
    """One kind of request: how to make the i-th one, how long each took, and what the cache said."""

    def __init__(self, name: str, send: Callable[[int], str | None], expected: str,
                 at_least: float = 1.0) -> None:
        self.name, self.send = name, send
        self.expected, self.at_least = expected, at_least
        self.ms: list[float] = []
        self.outcomes: Counter[str] = Counter()

    def run(self, i: int, *, gap: float) -> None:
        time.sleep(gap)  # let the previous operation's threads go idle: no request starts on a busy CPU
        started = time.perf_counter()
        outcome = self.send(i)
        self.ms.append((time.perf_counter() - started) * 1000)
        self.outcomes[outcome or "-"] += 1

    def check(self, checks: Checks) -> None:
        checks.expect_share(f"{self.name} scenario", self.outcomes, self.expected, at_least=self.at_least)


class Proxy:
    """Requests to one semproxy process; the outcome of each is its X-Semproxy-Cache header."""

    def __init__(self, client: httpx.Client, base: str) -> None:
        self.client, self.base = client, base

    def post(self, prompt: str, *, tenant: int = 0, **headers: str) -> str | None:
        return _post(self.client, self.base, _chat(prompt), {**_key(tenant), **headers})


def _post(client: httpx.Client, base: str, body: dict[str, Any], headers: dict[str, str]) -> str | None:
    """The X-Semproxy-Cache header, or what went wrong ("http 502", "error ReadTimeout")."""
    try:
        response = client.post(base + "/chat/completions", json=body, headers=headers)
    except httpx.HTTPError as exc:
        return f"error {type(exc).__name__}"
    if not response.is_success:
        return f"http {response.status_code}"
    return response.headers.get("x-semproxy-cache")


def _scenarios(client: httpx.Client, upstream: str, proxy: Proxy, rivals: dict[str, str],
               embed: Passes, fresh: list[str], semantic: list[tuple[int, str]]) -> list[Scenario]:
    def question(i: int) -> str:
        return QUESTIONS[i % len(QUESTIONS)]

    scenarios = [
        Scenario("direct", lambda i: _post(client, upstream, _chat(question(i)), {}), "-"),
        Scenario("bypass", lambda i: proxy.post(question(i), **{"cache-control": "no-store"}), "bypass"),
        *_hot_paths(proxy, "", fresh, semantic),
        Scenario("embed", lambda i: embed.full(semantic[i][1]), "-"),  # the semantic scenario's text
        Scenario("embed_miss", lambda i: embed.full(fresh[i]), "-"),  # the miss scenario's text
        Scenario("embed_int8", lambda i: embed.int8(semantic[i][1]), "-"),  # the model semproxy runs for English
    ]
    for name, base in rivals.items():
        scenarios.append(Scenario(name, lambda i, base=base: _post(client, base, _chat(question(i)), {}), "-"))
    return scenarios


def _hot_paths(proxy: Proxy, prefix: str, fresh: list[str], semantic: list[tuple[int, str]]) -> list[Scenario]:
    """The miss, exact and semantic scenarios against one semproxy process."""
    return [
        Scenario(prefix + "miss", lambda i: proxy.post(fresh[i]), "miss"),
        Scenario(prefix + "exact", lambda i: proxy.post(QUESTIONS[i % len(QUESTIONS)]), "exact"),
        Scenario(prefix + "semantic", lambda i: proxy.post(semantic[i][1], tenant=semantic[i][0]), "semantic",
                 SEMANTIC_SHARE),
    ]


def _fresh_prompts() -> list[str]:
    """Real first turns of ShareGPT conversations (distinct, 40-300 characters) for misses."""
    folder = Path(os.environ.get("SEMPROXY_EVAL_DATA", REPO.parent / "shared" / "data"))
    with gzip.open(folder / "prompts" / "sharegpt_v3_first_turns.jsonl.gz", "rt") as lines:
        prompts = (json.loads(line)["prompt"].strip() for line in lines)
        return list(dict.fromkeys(p for p in prompts if 40 <= len(p) <= 300))


class Passes:
    """One forward pass of MiniLM in this process: full precision (torch, the yardstick of the targets) and
    the int8 ONNX graph semproxy runs for English prompts."""

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from semproxy.cache.embedder import SentenceTransformerEmbedder
        from semproxy.cache.onnx_minilm import OnnxMiniLM

        self._full, self._int8 = SentenceTransformerEmbedder(), OnnxMiniLM()

    def full(self, text: str) -> None:
        self._full.embed([text])

    def int8(self, text: str) -> None:
        self._int8.embed([text])


def _summary(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {"p50_ms": round(statistics.median(ordered), 3), "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 3),
            "mean_ms": round(statistics.fmean(ordered), 3), "n": len(ordered)}


async def _throughput(proxy: str, concurrency: int, requests: list[tuple[int, str]]) -> dict[str, Any]:
    """Semantic hits per second with `concurrency` clients; every prompt is new, so none is an exact hit."""
    outcomes: Counter[str] = Counter()
    queue = iter(requests)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def worker() -> None:
            for tenant, prompt in queue:
                try:
                    response = await client.post(proxy + "/chat/completions", json=_chat(prompt), headers=_key(tenant))
                except httpx.HTTPError as exc:
                    outcomes[f"error {type(exc).__name__}"] += 1
                    continue
                ok = response.is_success
                outcomes[response.headers.get("x-semproxy-cache", "-") if ok else f"http {response.status_code}"] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    errors = sum(n for name, n in outcomes.items() if name.startswith(("http ", "error ")))
    return {"concurrency": concurrency, "requests": len(requests), "seconds": round(elapsed, 3),
            "requests_per_second": round(len(requests) / elapsed, 1), "errors": errors, "outcomes": dict(outcomes)}


def _check_throughput(checks: Checks, run: dict[str, Any]) -> None:
    name = f"throughput at concurrency {run['concurrency']}"
    checks.expect(run["errors"] == 0, f"{name}: {run['errors']} of {run['requests']} requests failed "
                  f"({run['outcomes']}); expected none")
    checks.expect_share(name, run["outcomes"], "semantic", at_least=SEMANTIC_SHARE)


def _gptcache() -> dict[str, Any] | None:
    python = REPO / ".venv-rivals" / "bin" / "python"
    if not python.exists():
        return None
    output = subprocess.run([str(python), str(REPO / "bench" / "rivals" / "gptcache_lookup.py")],
                            capture_output=True, text=True, check=True).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="requests per scenario at concurrency 1")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--throughput-requests", type=int, default=1500)
    parser.add_argument("--gap", type=float, default=0.01, help="idle seconds before each timed request")
    parser.add_argument("--no-rivals", action="store_true")
    parser.add_argument("--baseline", metavar="REF", help="also time the hot paths of semproxy at this git commit")
    parser.add_argument("--quick", action="store_true", help="a smoke run with few requests")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.throughput_requests = 30, 200
    origin = provenance()
    checks = Checks()
    results = run(args, checks)
    _print(results)
    checks.raise_if_failed()  # a scenario that measured something else must not replace the figures
    write_results(RESULTS, {**results, "checks": checks.record()}, origin)


def run(args: argparse.Namespace, checks: Checks) -> dict[str, Any]:
    upstream_port, proxy_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}/v1"
    c1_total = max(100, args.throughput_requests // 8)
    semantic = semantic_requests(args.requests + WARMUP + c1_total + args.throughput_requests)
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        stack.enter_context(fake_upstream(upstream_port))
        stack.enter_context(serve(proxy_port, folder / "current", "--upstream", upstream, env=ENV))
        client = stack.enter_context(httpx.Client(timeout=60))
        proxy = Proxy(client, f"http://127.0.0.1:{proxy_port}/v1")
        _seed(checks, "current", proxy, tenants=semantic[-1][0] + 1)
        rivals = {} if args.no_rivals else _start_rivals(stack, upstream)
        fresh = _fresh_prompts()
        scenarios = _scenarios(client, upstream, proxy, rivals, Passes(), fresh, semantic)
        baseline = _start_baseline(stack, args.baseline, folder, upstream, client) if args.baseline else None
        if baseline is not None:  # only the interleaved scenarios run there, so fewer tenants may do
            _seed(checks, "baseline", baseline.proxy, tenants=semantic[args.requests + WARMUP - 1][0] + 1)
            scenarios += _hot_paths(baseline.proxy, "baseline_", fresh, semantic)
        _measure(scenarios, args)
        throughput = semantic[args.requests + WARMUP:]
        c1 = asyncio.run(_throughput(proxy.base, 1, throughput[:c1_total]))
        cn = asyncio.run(_throughput(proxy.base, args.concurrency, throughput[c1_total:]))
    for scenario in scenarios:
        scenario.check(checks)
    for result in (c1, cn):
        _check_throughput(checks, result)
    latency = {s.name: {**_summary(s.ms), "outcomes": dict(s.outcomes)} for s in scenarios}
    speedup = round(cn["requests_per_second"] / c1["requests_per_second"], 2)
    return {
        "date": datetime.date.today().isoformat(), "cpu_count": os.cpu_count(),
        "semantic_prompts": {"distinct": len(semantic), "tenants": semantic[-1][0] + 1,
                             "made_by": "bench/rewordings.py"},
        "latency": latency,
        "throughput": {"c1": c1, f"c{args.concurrency}": cn,
                       "speedup": speedup},
        "targets": _targets(latency, speedup),
        "gptcache_lookup": None if args.no_rivals else _gptcache(),
        **({"baseline": _compare(latency, baseline.ref, baseline.commit)} if baseline else {}),
    }


def _seed(checks: Checks, name: str, proxy: Proxy, *, tenants: int) -> None:
    """Store the questions the exact and semantic scenarios hit, for each tenant; each must be a miss."""
    health = httpx.get(proxy.base.removesuffix("/v1") + "/healthz", timeout=10).json()
    checks.expect(health.get("semantic") is True, f"{name} semproxy: semantic tier not ready ({health})")
    seeded = Counter(proxy.post(q, tenant=t) or "-" for t in range(tenants) for q in QUESTIONS)
    checks.expect_share(f"{name} seeding", seeded, "miss")


def _measure(scenarios: list[Scenario], args: argparse.Namespace) -> None:
    for i in range(WARMUP):  # warm-up: connections, caches, the model's first calls
        for scenario in scenarios:
            scenario.send(args.requests + i)  # indices the timed loop never uses
    shuffle = random.Random(5).shuffle
    for i in range(args.requests):
        order = list(scenarios)
        shuffle(order)  # a fixed order would favour whichever scenario follows a cheap one
        for scenario in order:
            scenario.run(i, gap=args.gap)


class Baseline:
    """semproxy at another commit, running beside the current one."""

    def __init__(self, ref: str, commit: str, proxy: Proxy) -> None:
        self.ref, self.commit, self.proxy = ref, commit, proxy


def _start_baseline(stack: contextlib.ExitStack, ref: str, folder: Path, upstream: str,
                    client: httpx.Client) -> Baseline:
    tree, commit = stack.enter_context(checkout(ref))
    port = free_port()
    stack.enter_context(serve(port, folder / "baseline", "--upstream", upstream, env=ENV, source=tree))
    return Baseline(ref, commit, Proxy(client, f"http://127.0.0.1:{port}/v1"))


def _compare(latency: dict[str, Any], ref: str, commit: str) -> dict[str, Any]:
    rows = {}
    for name in COMPARED:
        current, base = latency[name]["p50_ms"], latency["baseline_" + name]["p50_ms"]
        rows[name] = {"current_p50_ms": current, "baseline_p50_ms": base, "ratio": round(current / base, 3)}
    return {"ref": ref, "commit": commit, "p50": rows}


def _targets(latency: dict[str, Any], speedup: float) -> dict[str, Any]:
    """Issue 13's targets for the English path, each from figures of this one run: met or not, with the
    figures. "A full pass" is one forward pass of full-precision MiniLM in this process on the same text."""
    def p50(name: str) -> float:
        return float(latency[name]["p50_ms"])

    def row(value: float, limit: float, rule: str) -> dict[str, Any]:
        return {"value": round(value, 3), "limit": round(limit, 3), "rule": rule, "met": value <= limit}

    return {
        "semantic_hit": row(p50("semantic") / p50("embed"), 0.6, "semantic p50 / full pass p50 <= 0.6"),
        "miss_added_ms": row(p50("miss") - p50("direct"), 0.6 * p50("embed_miss") + 2.0,
                             "miss p50 - direct p50 <= 0.6 x full pass on the miss's text + 2 ms"),
        "exact_ms": row(p50("exact"), 2.0, "exact hit p50 <= 2 ms"),
        "pass_through_added_ms": row(p50("bypass") - p50("direct"), 2.0, "bypass p50 - direct p50 <= 2 ms"),
        "throughput": {"value": speedup, "limit": 2.0, "rule": "semantic hits/s at concurrency 32 >= 2x at 1",
                       "met": speedup >= 2.0},
    }


def _start_rivals(stack: contextlib.ExitStack, upstream: str) -> dict[str, str]:
    if not litellm_proxy.RIVALS_VENV.joinpath("bin", "litellm").exists():
        print("LiteLLM is not installed (bash bench/rivals/install.sh); skipping rivals", file=sys.stderr)
        return {}
    plain = stack.enter_context(litellm_proxy.run_litellm(upstream, port=free_port(), cache=False))
    cached = stack.enter_context(litellm_proxy.run_litellm(upstream, port=free_port(), cache=True))
    return {"litellm_passthrough": plain, "litellm_cache_hit": cached}


def _print(results: dict[str, Any]) -> None:
    latency = results["latency"]
    direct, embed = latency["direct"]["p50_ms"], latency["embed"]["p50_ms"]
    print(f"{'scenario':<22}{'p50 ms':>9}{'p95 ms':>9}{'p50 - direct':>14}{'p50 / embed':>13}")
    for name, row in latency.items():
        print(f"{name:<22}{row['p50_ms']:>9.2f}{row['p95_ms']:>9.2f}{row['p50_ms'] - direct:>14.2f}"
              f"{row['p50_ms'] / embed:>13.2f}  {row['outcomes']}")
    shown = ("throughput", "targets", "gptcache_lookup", "baseline")
    print(json.dumps({key: results[key] for key in shown if key in results}, indent=2))


if __name__ == "__main__":
    run_main(main)
