"""Crash safety: mixed traffic against `semproxy serve`, killed with SIGKILL at random moments, restarted.

After every kill, `semproxy cache check` must pass on the data dir as the crash left it (SQLite integrity,
no half-written entry, the vector index rebuilt from the store finds every entry), and after every restart
each answer a client received in full must still be served, as an exact hit, byte for byte the same text.
Requests in flight at the kill may be missing, but never half there. The real embedding model runs, so
every entry carries a vector.

What it promises is checked: every check of the data dir passed, no acknowledged answer lost or changed, no
wrong answer while the proxy ran. A broken promise is the finding: the results are written (with the
checks), then the run prints FAIL and exits with status 1. A run that did not kill as often as asked, or in
which no traffic was acknowledged, measured nothing and writes nothing.

    .venv/bin/python bench/crash_bench.py --kills 20      # writes bench/results/crash_bench.json
    .venv/bin/python bench/crash_bench.py --quick         # a smoke run: 3 kills
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import Checks, provenance, pythonpath, run_main, write_results  # noqa: E402
from tests.fakes import FakeOpenAI  # noqa: E402
from tests.servers import ThreadServer, semproxy_process  # noqa: E402

# The prompts differ in numbers, which cosine similarity cannot tell apart: stored requests ask for
# identical-vector matches only (and are still embedded and indexed).
EXACT_ONLY = {"x-semproxy-threshold": "1.0"}
TENANTS = ["sk-crash-a", "sk-crash-b", "sk-crash-c"]


def ask(client: httpx.Client, url: str, prompt: str, *, key: str, stream: bool,
        headers: dict[str, str] | None = None) -> tuple[str, str]:
    """(cache outcome, answer text); raises unless the whole answer arrived."""
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": prompt}], "stream": stream}
    response = client.post(url + "/v1/chat/completions", json=body,
                           headers={"authorization": f"Bearer {key}", **EXACT_ONLY, **(headers or {})})
    response.raise_for_status()
    if stream:
        if not response.text.rstrip().endswith("data: [DONE]"):
            raise ValueError("stream without [DONE]")
        chunks = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
        text = "".join(str(c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])
    else:
        text = str(response.json()["choices"][0]["message"]["content"])
    return response.headers["x-semproxy-cache"], text


class Traffic:
    """Worker threads sending a mix: new prompts (JSON and streams), repeats, no-store, bad requests."""

    def __init__(self, url: str, name: str, seed: int) -> None:
        self.url, self.name = url, name
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.acknowledged: dict[tuple[str, str], str] = {}  # (key, prompt) -> answer text
        self.sent: set[tuple[str, str]] = set()
        self.requests = 0
        self.failures: list[str] = []  # wrong answers seen while the proxy ran (a repeat that missed, ...)

    def run(self, workers: int) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._worker, args=(w,), daemon=True) for w in range(workers)]
        for thread in threads:
            thread.start()
        return threads

    def _worker(self, number: int) -> None:
        rng = random.Random(self.rng.random())
        with httpx.Client(timeout=30) as client:
            for i in range(100_000):
                if self.stop.is_set():
                    return
                try:
                    self._one(client, rng, f"{self.name}w{number}i{i}")
                except (httpx.HTTPError, ValueError, KeyError):
                    return  # the server died mid-request: that answer was never acknowledged
                except AssertionError as exc:
                    self.failures.append(f"{self.name}w{number}i{i}: {exc!r}")

    def _one(self, client: httpx.Client, rng: random.Random, tag: str) -> None:
        key = rng.choice(TENANTS)
        roll = rng.random()
        self.requests += 1
        if roll < 0.1:  # a bad request: 400, nothing stored
            response = client.post(self.url + "/v1/chat/completions", content=b'{"model": "m", "messages": 3}',
                                   headers={"authorization": f"Bearer {key}"})
            assert response.status_code == 400, response.status_code
            return
        if roll < 0.2 and self.acknowledged:  # a repeat: must hit
            (key, prompt), answer = rng.choice(list(self.acknowledged.items()))
            seen = ask(client, self.url, prompt, key=key, stream=rng.random() < 0.5)
            assert seen == ("exact", answer), seen
            return
        prompt = f"question {tag}: what is {rng.randint(1, 10**6)} times {rng.randint(1, 999)}?"
        no_store = roll < 0.3
        if not no_store:
            self.sent.add((key, prompt))
        _, answer = ask(client, self.url, prompt, key=key, stream=rng.random() < 0.5,
                        headers={"cache-control": "no-store"} if no_store else None)
        if not no_store:
            self.acknowledged[(key, prompt)] = answer


def verify(url: str, acknowledged: dict[tuple[str, str], str], in_flight: set[tuple[str, str]]) -> dict[str, int]:
    """Every acknowledged answer is an exact hit with the same text; in-flight ones are whole or missing."""
    lost = wrong = whole = missing = 0
    with httpx.Client(timeout=30) as client:
        for (key, prompt), answer in acknowledged.items():
            outcome, text = ask(client, url, prompt, key=key, stream=False)
            lost += outcome != "exact"
            wrong += text != answer
        for key, prompt in in_flight:
            outcome, text = ask(client, url, prompt, key=key, stream=False)
            if outcome == "exact":
                whole += 1
                wrong += not text.endswith(f"to: {prompt}")
            else:
                missing += 1
    return {"lost": lost, "wrong": wrong, "in_flight_whole": whole, "in_flight_missing": missing}


def cache_check(data_dir: Path) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-m", "semproxy", "cache", "check", "--json", "--data-dir",
                             str(data_dir)], capture_output=True, text=True, timeout=300, cwd=REPO,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": pythonpath(REPO)})
    report: dict[str, Any] = json.loads(result.stdout)
    report["exit_code"] = result.returncode
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 kills")
    args = parser.parse_args()
    if args.quick:
        args.kills = 3
    origin = provenance()
    rng = random.Random(args.seed)
    upstream = FakeOpenAI()
    upstream.chunk_delay = 0.002
    acknowledged: dict[tuple[str, str], str] = {}
    rounds: list[dict[str, Any]] = []
    env = {"SEMPROXY_LOG_LEVEL": "error", "PYTHONPATH": pythonpath(REPO)}
    with tempfile.TemporaryDirectory() as tmp, ThreadServer(upstream, lifespan="off") as server:
        data_dir = Path(tmp) / "data"
        in_flight: set[tuple[str, str]] = set()
        for kill in range(args.kills + 1):
            with semproxy_process(data_dir, server.url + "/v1", env_extra=env) as proxy:
                url = proxy.url  # type: ignore[attr-defined]
                checked = verify(url, acknowledged, in_flight)
                if kill == args.kills:
                    rounds.append({"final": True, **checked})
                    break
                traffic = Traffic(url, f"k{kill}", rng.randint(0, 10**9))
                threads = traffic.run(args.workers)
                delay = rng.uniform(0.5, 4.0)
                time.sleep(delay)
                proxy.send_signal(signal.SIGKILL)
                proxy.wait()
                traffic.stop.set()
                for thread in threads:
                    thread.join(30)
            acknowledged.update(traffic.acknowledged)
            in_flight = traffic.sent - set(traffic.acknowledged)
            report = cache_check(data_dir)
            rounds.append({"kill": kill + 1, "killed_after_s": round(delay, 2), "requests": traffic.requests,
                           "acknowledged_total": len(acknowledged), "check_ok": report["ok"],
                           "check_exit_code": report["exit_code"], "entries": report["entries"],
                           "problems": report["problems"], "failures_while_running": traffic.failures,
                           "before_this_kill": checked})
            print(json.dumps(rounds[-1]), flush=True)
    verdicts = [r for r in rounds if "kill" in r]
    result = {
        "kills": len(verdicts), "checks_passed": sum(r["check_ok"] for r in verdicts),
        "requests": sum(r["requests"] for r in verdicts), "acknowledged_entries": len(acknowledged),
        "entries_lost": sum(r["before_this_kill"]["lost"] for r in verdicts) + rounds[-1]["lost"],
        "answers_wrong": sum(r["before_this_kill"]["wrong"] for r in verdicts) + rounds[-1]["wrong"],
        "failures_while_running": sum(len(r["failures_while_running"]) for r in verdicts),
        "in_flight_whole": sum(r["before_this_kill"]["in_flight_whole"] for r in verdicts[1:])
        + rounds[-1]["in_flight_whole"],
        "in_flight_missing": sum(r["before_this_kill"]["in_flight_missing"] for r in verdicts[1:])
        + rounds[-1]["in_flight_missing"],
        "rounds": rounds,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))
    scenario = Checks()  # did the run crash the proxy under traffic as often as it claims?
    scenario.expect(result["kills"] == args.kills, f"kills: {result['kills']} of {args.kills} asked for")
    scenario.expect(result["acknowledged_entries"] > 0, "no answer was acknowledged: there was nothing to lose")
    scenario.raise_if_failed()
    findings = _findings(result)
    write_results(REPO / "bench" / "results" / "crash_bench.json", {**result, "checks": findings.record()}, origin)
    findings.raise_if_failed()


def _findings(result: dict[str, Any]) -> Checks:
    checks = Checks()
    checks.expect(result["checks_passed"] == result["kills"],
                  f"`semproxy cache check` passed after {result['checks_passed']} of {result['kills']} kills")
    for name in ("entries_lost", "answers_wrong", "failures_while_running"):
        checks.expect(result[name] == 0, f"{name.replace('_', ' ')}: {result[name]}, expected 0")
    return checks


if __name__ == "__main__":
    run_main(main)
