"""What semproxy costs and saves per request, measured side by side in one run.

Against an instant local upstream (bench/fake_upstream.py, its own process), at concurrency 1, the
scenarios are interleaved request by request so that machine drift hits all of them alike, with a short
idle gap before each (torch's OpenMP threads spin for a while after a forward pass; without the gap, one
process's spinning threads slow the next process's forward pass and the comparison measures that):

    direct        client -> upstream
    bypass        client -> semproxy (Cache-Control: no-store) -> upstream: pure proxy overhead
    miss          a new prompt: exact lookup + embedding + search + forward + store
    exact         a repeated prompt
    semantic      a reworded prompt (threshold lowered by header, so every variant is a semantic hit)
    embed         one forward pass of the same model in this process on the semantic scenario's text
    embed_miss    the same on the miss scenario's text (real ShareGPT prompts, longer)
    litellm_*     LiteLLM's proxy, pass-through and with its in-memory cache (if bench/rivals is installed)

Then throughput of semantic hits at concurrency 1 and 32 (micro-batching), and GPTCache's semantic lookup.

    .venv/bin/python bench/proxy_bench.py                  # ~3 minutes; --quick for a smoke run
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
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.rivals import litellm_proxy  # noqa: E402

RESULTS = REPO / "bench" / "results" / "proxy_bench.json"
QUESTIONS = [
    "How do I reverse a linked list in Python?", "What is the difference between TCP and UDP?",
    "Explain how a hash map handles collisions.", "What causes inflation in an economy?",
    "How does photosynthesis work in plants?", "What is the capital of Australia and why?",
    "How can I improve my sleep quality?", "What are the main causes of the French Revolution?",
    "How do vaccines train the immune system?", "What is a good way to learn a new language?",
    "How do I center a div with CSS flexbox?", "Why is the sky blue during the day?",
]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(url: str, process: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited early with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} never became ready")


@contextlib.contextmanager
def _process(command: list[str], ready_url: str, env: dict[str, str] | None = None) -> Iterator[None]:
    process = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        _wait(ready_url, process)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def _chat(prompt: str) -> dict[str, Any]:
    return {"model": "bench-model", "messages": [{"role": "user", "content": prompt}], "temperature": 0}


class Scenario:
    """One kind of request: how to make the i-th one, how long each took, and what the cache said."""

    def __init__(self, name: str, send: Callable[[int], str | None]) -> None:
        self.name, self.send = name, send
        self.ms: list[float] = []
        self.outcomes: Counter[str] = Counter()

    def run(self, i: int, *, gap: float) -> None:
        time.sleep(gap)  # let the previous operation's threads go idle: no request starts on a busy CPU
        started = time.perf_counter()
        outcome = self.send(i)
        self.ms.append((time.perf_counter() - started) * 1000)
        self.outcomes[outcome or "-"] += 1


def _scenarios(client: httpx.Client, upstream: str, proxy: str, rivals: dict[str, str],
               embed: Callable[[str], None]) -> list[Scenario]:
    def post(base: str, body: dict[str, Any], **headers: str) -> str | None:
        response = client.post(base + "/chat/completions", json=body, headers=headers)
        response.raise_for_status()
        return response.headers.get("x-semproxy-cache")

    fresh = _fresh_prompts()
    loose = {"x-semproxy-threshold": "0.5"}
    scenarios = [
        Scenario("direct", lambda i: post(upstream, _chat(QUESTIONS[i % 12]))),
        Scenario("bypass", lambda i: post(proxy, _chat(QUESTIONS[i % 12]), **{"cache-control": "no-store"})),
        Scenario("miss", lambda i: post(proxy, _chat(fresh[i]))),
        Scenario("exact", lambda i: post(proxy, _chat(QUESTIONS[i % 12]))),
        Scenario("semantic", lambda i: post(proxy, _chat(f"{QUESTIONS[i % 12]} Variant {i}."), **loose)),
        Scenario("embed", lambda i: embed(f"{QUESTIONS[i % 12]} Variant {i}.")),  # the semantic scenario's text
        Scenario("embed_miss", lambda i: embed(fresh[i])),  # the miss scenario's text
    ]
    for name, base in rivals.items():
        scenarios.append(Scenario(name, lambda i, base=base: post(base, _chat(QUESTIONS[i % 12]))))
    return scenarios


def _fresh_prompts() -> list[str]:
    """Real first turns of ShareGPT conversations (distinct, 40-300 characters) for misses."""
    folder = Path(os.environ.get("SEMPROXY_EVAL_DATA", REPO.parent / "shared" / "data"))
    with gzip.open(folder / "prompts" / "sharegpt_v3_first_turns.jsonl.gz", "rt") as lines:
        prompts = (json.loads(line)["prompt"].strip() for line in lines)
        return list(dict.fromkeys(p for p in prompts if 40 <= len(p) <= 300))


def _load_embedder() -> Callable[[str], None]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from semproxy.cache.embedder import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder()

    def embed(text: str) -> None:
        embedder.embed([text])

    return embed


def _summary(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {"p50_ms": round(statistics.median(ordered), 3), "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 3),
            "mean_ms": round(statistics.fmean(ordered), 3), "n": len(ordered)}


async def _throughput(proxy: str, concurrency: int, total: int, offset: int) -> dict[str, float]:
    """Semantic hits per second with `concurrency` clients; every prompt is new, so none is an exact hit."""
    errors = 0
    counter = iter(range(offset, offset + total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def worker() -> None:
            nonlocal errors
            for i in counter:
                body = _chat(f"{QUESTIONS[i % 12]} Throughput variant {i}.")
                response = await client.post(proxy + "/chat/completions", json=body,
                                             headers={"x-semproxy-threshold": "0.5"})
                if response.status_code != 200 or response.headers.get("x-semproxy-cache") != "semantic":
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"concurrency": concurrency, "requests": total, "seconds": round(elapsed, 3),
            "requests_per_second": round(total / elapsed, 1), "errors": errors}


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
    parser.add_argument("--quick", action="store_true", help="a smoke run with few requests")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.throughput_requests = 30, 200
    results = run(args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    _print(results)


def run(args: argparse.Namespace) -> dict[str, Any]:
    upstream_port, proxy_port = _free_port(), _free_port()
    upstream = f"http://127.0.0.1:{upstream_port}/v1"
    proxy = f"http://127.0.0.1:{proxy_port}/v1"
    with contextlib.ExitStack() as stack:
        data_dir = stack.enter_context(tempfile.TemporaryDirectory())
        stack.enter_context(_process([sys.executable, str(REPO / "bench" / "fake_upstream.py"), "--port",
                                      str(upstream_port)], upstream + "/models"))
        stack.enter_context(_process(
            [sys.executable, "-m", "semproxy", "serve", "--port", str(proxy_port), "--upstream", upstream,
             "--data-dir", data_dir], f"http://127.0.0.1:{proxy_port}/healthz",
            env={"HF_HUB_OFFLINE": "1", "SEMPROXY_LOG_LEVEL": "warning"}))
        rivals = {} if args.no_rivals else _start_rivals(stack, upstream)
        client = stack.enter_context(httpx.Client(timeout=60))
        for question in QUESTIONS:  # seed the entries the exact and semantic scenarios hit
            client.post(proxy + "/chat/completions", json=_chat(question))
        scenarios = _scenarios(client, upstream, proxy, rivals, _load_embedder())
        for i in range(20):  # warm-up: connections, caches, the model's first calls
            for scenario in scenarios:
                scenario.send(args.requests + i)  # indices the timed loop never uses
        for i in range(args.requests):
            for scenario in scenarios:
                scenario.run(i, gap=args.gap)
        c1 = asyncio.run(_throughput(proxy, 1, max(100, args.throughput_requests // 8), 100_000))
        cn = asyncio.run(_throughput(proxy, args.concurrency, args.throughput_requests, 200_000))
    return {
        "date": datetime.date.today().isoformat(), "cpu_count": os.cpu_count(),
        "latency": {s.name: {**_summary(s.ms), "outcomes": dict(s.outcomes)} for s in scenarios},
        "throughput": {"c1": c1, f"c{args.concurrency}": cn,
                       "speedup": round(cn["requests_per_second"] / c1["requests_per_second"], 2)},
        "gptcache_lookup": None if args.no_rivals else _gptcache(),
    }


def _start_rivals(stack: contextlib.ExitStack, upstream: str) -> dict[str, str]:
    if not litellm_proxy.litellm_executable().exists():
        print("LiteLLM is not installed (bash bench/rivals/install.sh); skipping rivals", file=sys.stderr)
        return {}
    plain = stack.enter_context(litellm_proxy.run_litellm(upstream, port=_free_port(), cache=False))
    cached = stack.enter_context(litellm_proxy.run_litellm(upstream, port=_free_port(), cache=True))
    return {"litellm_passthrough": plain, "litellm_cache_hit": cached}


def _print(results: dict[str, Any]) -> None:
    latency = results["latency"]
    direct, embed = latency["direct"]["p50_ms"], latency["embed"]["p50_ms"]
    print(f"{'scenario':<22}{'p50 ms':>9}{'p95 ms':>9}{'p50 - direct':>14}{'p50 / embed':>13}")
    for name, row in latency.items():
        print(f"{name:<22}{row['p50_ms']:>9.2f}{row['p95_ms']:>9.2f}{row['p50_ms'] - direct:>14.2f}"
              f"{row['p50_ms'] / embed:>13.2f}  {row['outcomes']}")
    print(json.dumps({"throughput": results["throughput"], "gptcache_lookup": results["gptcache_lookup"]}, indent=2))


if __name__ == "__main__":
    main()
