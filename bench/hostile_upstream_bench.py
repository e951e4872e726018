"""Hostile upstream answers through a `semproxy serve` process: memory bounded, /healthz answering, nothing stored.

    bench/hostile_upstream.py (raw asyncio)  <-  semproxy serve (defaults, compression off)  <-  this script

One scenario at a time (see SCENARIOS in bench/hostile_upstream.py): streams whose chunks carry choice or
tool-call indexes of 10**9, -1, "7" or 1e300, 200,000 tiny deltas (with and without logprobs), one delta of
50 MB, endless streams the client leaves after --endless-mb MB, events that are not JSON, no [DONE]; JSON
answers of 100 MB, nested 100,000 levels, with 1,000,000 choices, with a wrong content-length. Each scenario
has its own API key (its own tenant), so no scenario can hit another's entries.

For each: what the client saw (status, bytes, [DONE], an error event or body), the X-Semproxy-Cache header of
the same request sent again (a hit means the hostile answer was stored), the proxy's peak resident memory
(VmRSS every 50 ms) against its memory just before, and /healthz polled every 100 ms with a 2 s timeout.
The request log's own work on the answer (its thread reads and counts it) is waited for inside the scenario.
At the end the cache's SQLite file is read: every entry must be a well-formed answer, which names itself.

Checked, as the outcome of each scenario (else nothing is written): the request was a cache miss, the
upstream sent the whole hostile answer (endless: the client read --endless-mb MB of it and hung up), the
same request again was answered. Checked, as findings (written, then FAIL and exit status 1): RSS growth at
most +200 MB, /healthz answering within 2 s throughout, the hostile answer not stored (but for
`tiny_deltas`, a well-formed 200,000-token answer that may be), no status of 500 or above except 502
`upstream_invalid_response`, streams and accepted JSON relayed byte for byte, a wrong content-length
refused with that 502, an endless upstream closed within 5 s of the client leaving, the proxy alive.

    .venv/bin/python bench/hostile_upstream_bench.py                    # writes bench/results/hostile_upstream.json
    .venv/bin/python bench/hostile_upstream_bench.py --only big_delta   # some scenarios; writes nothing
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import Checks, OutcomeError, process, provenance, pythonpath, run_main, write_results  # noqa: E402
from bench.hostile_upstream import MB, PROBE_HEADER, PROBE_ID, SCENARIOS, Scenario  # noqa: E402
from tests.servers import free_port, semproxy_process  # noqa: E402

RSS_LIMIT_MB = 200.0
HEALTH_TIMEOUT = 2.0
CLOSE_WITHIN = 5.0  # seconds from the client leaving an endless stream to the upstream connection closing
REFUSAL = "upstream_invalid_response"
ADMIN_TOKEN = secrets.token_urlsafe(24)  # the proxy's, so that the bench can read its request log
BLOCK_READ = 256 * 1024


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise OutcomeError(f"/proc/{pid}/status has no VmRSS")


class Sampler(threading.Thread):
    """Samples a process's VmRSS every 50 ms until stopped; keeps the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self._stop_event = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except (OSError, OutcomeError):  # the process is gone: the findings say so
                return
            self._stop_event.wait(0.05)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return self.peak


class HealthPoller(threading.Thread):
    """GET /healthz every 100 ms with a 2 s timeout until stopped: how many answered 200 in time, the slowest."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self._stop_event = url + "/healthz", threading.Event()
        self.polls, self.slowest_ms = 0, 0.0
        self.failures: list[str] = []

    def run(self) -> None:
        with httpx.Client(timeout=HEALTH_TIMEOUT) as client:
            while True:
                began = time.perf_counter()
                try:
                    status = client.get(self.url).status_code
                    if status != 200:
                        self.failures.append(f"status {status}")
                except httpx.HTTPError as exc:
                    self.failures.append(type(exc).__name__)
                elapsed = time.perf_counter() - began
                self.polls += 1
                self.slowest_ms = max(self.slowest_ms, elapsed * 1000)
                if self._stop_event.wait(max(0.0, 0.1 - elapsed)):
                    return

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


@dataclass
class Seen:
    """What the client got for one request."""

    status: int | None = None
    cache: str | None = None
    bytes: int = 0
    events: int = 0
    done: bool = False  # the stream's last event was [DONE]
    error_code: str | None = None  # of a 502 body or a stream's error event
    client_error: str | None = None  # the response could not be read to its end
    left_at: float | None = None  # time.time() when the client hung up on an endless stream
    seconds: float = 0.0


def chat(scenario: Scenario) -> dict[str, Any]:
    return {"model": f"hostile-{scenario.name}", "stream": scenario.stream, "temperature": 0,
            "messages": [{"role": "user", "content": f"Answer for the hostile scenario {scenario.name}."}]}


def send(client: httpx.Client, scenario: Scenario, headers: dict[str, str], *, leave_after: int | None) -> Seen:
    """Send the scenario's request and read the answer (for at most `leave_after` bytes, then hang up)."""
    seen, began, tail, carry = Seen(), time.perf_counter(), b"", b""
    try:
        with client.stream("POST", "/v1/chat/completions", json=chat(scenario), headers=headers) as response:
            seen.status, seen.cache = response.status_code, response.headers.get("x-semproxy-cache")
            for chunk in response.iter_raw(BLOCK_READ):
                seen.bytes += len(chunk)
                seen.events += (carry + chunk).count(b"\n\n")
                carry, tail = chunk[-1:], (tail + chunk)[-4096:]
                if leave_after is not None and seen.bytes >= leave_after:
                    seen.left_at = time.time()
                    break
    except httpx.HTTPError as exc:
        seen.client_error = type(exc).__name__
    seen.seconds = round(time.perf_counter() - began, 2)
    seen.done = tail.rstrip().endswith(b"data: [DONE]")
    seen.error_code = _error_code(tail, stream=scenario.stream)
    return seen


def _error_code(tail: bytes, *, stream: bool) -> str | None:
    """The code of an error in OpenAI's shape: the last event of a stream, or a (small) JSON body."""
    raw = tail.rstrip().rpartition(b"data: ")[2] if stream else tail
    try:
        error = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        return None
    return str(error.get("code")) if isinstance(error, dict) else None


def upstream_stats(url: str) -> dict[str, Any]:
    return dict(httpx.get(url + "/v1/stats", timeout=10).json())


def wait_logged(client: httpx.Client, count: int, *, timeout: float = 120) -> None:
    """Until the request log has written `count` requests (each GET of the figures flushes it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        figures = client.get("/semproxy/api/stats", params={"since": "1h"}, timeout=timeout,
                             headers={"x-semproxy-admin-token": ADMIN_TOKEN}).json()
        if figures["requests"] >= count:
            return
        time.sleep(0.2)
    raise OutcomeError(f"the request log never wrote {count} requests")


def run_scenario(proxy: subprocess.Popen[bytes], upstream: str, scenario: Scenario, *, endless_mb: int,
                 logged: int) -> dict[str, Any]:
    """One scenario, measured; `logged` requests were sent through the proxy before it."""
    url = proxy.url  # type: ignore[attr-defined]
    headers = {"authorization": f"Bearer sk-hostile-{scenario.name}"}
    leave_after = endless_mb * MB if scenario.name.startswith("endless") else None
    before = rss_mb(proxy.pid)
    sampler, health = Sampler(proxy.pid), HealthPoller(url)
    sampler.start()
    health.start()
    with httpx.Client(base_url=url, timeout=httpx.Timeout(120, connect=10)) as client:
        try:
            answer = send(client, scenario, headers, leave_after=leave_after)
            if leave_after is not None:
                time.sleep(CLOSE_WITHIN)  # the upstream must notice within this
            with contextlib.suppress(httpx.HTTPError):  # a proxy that died is the finding, not this wait
                wait_logged(client, logged + 1)  # the log reads the answer in its own thread: part of the scenario
        finally:
            health.stop()
            peak = sampler.stop()
        probe = send(client, scenario, {**headers, PROBE_HEADER.decode(): "1"}, leave_after=None)
    sent = upstream_stats(upstream).get(scenario.name, {})
    return {
        "scenario": scenario.name, "what": scenario.what, "stream": scenario.stream, "storable": scenario.storable,
        "answer": asdict(answer), "again": asdict(probe), "upstream": sent,
        "rss_mb": {"before": round(before, 1), "peak": round(peak, 1), "growth": round(peak - before, 1),
                   "after": round(rss_mb(proxy.pid), 1) if proxy.poll() is None else None},
        "healthz": {"polls": health.polls, "failures": health.failures, "slowest_ms": round(health.slowest_ms, 1)},
    }


WARM_UP = 4


def warm_up(url: str) -> None:
    """Two ordinary requests of each kind, so that first-use allocations are not charged to a scenario."""
    with httpx.Client(base_url=url, timeout=60) as client:
        for i in range(WARM_UP):
            body = {"model": "hostile-warm-up", "stream": i % 2 == 1, "temperature": 0,
                    "messages": [{"role": "user", "content": f"Warm-up question number {i}."}]}
            response = client.post("/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-warm"})
            if response.status_code != 200:
                raise OutcomeError(f"warm-up request {i} answered {response.status_code}: {response.text[:300]}")


def stored_entries(data: Path) -> list[dict[str, Any]]:
    """Every cache entry: its size and its answer's id (which names the scenario it came from)."""
    with sqlite3.connect(data / "cache.sqlite3") as db:
        rows = db.execute("SELECT length(response), substr(response, 1, 200) FROM entries").fetchall()
    entries = []
    for size, start in rows:
        found = re.search(rb'"id":\s*"([^"]*)"', bytes(start))
        entries.append({"bytes": size, "id": found.group(1).decode() if found else None})
    return entries


# ---------------------------------------------------------------------------------------------- checks


def produced(result: dict[str, Any], endless_mb: int) -> Checks:
    """Did the scenario happen as described? If not, its figures are about something else."""
    checks, name = Checks(), result["scenario"]
    answer, again, sent = result["answer"], result["again"], result["upstream"]
    checks.expect(answer["cache"] == "miss", f"{name}: the request was a cache {answer['cache']}, not a miss "
                  f"(status {answer['status']}, client error {answer['client_error']})")
    checks.expect(sent.get("requests", 0) >= 1, f"{name}: the upstream never got the request")
    if name.startswith("endless"):
        checks.expect(answer["left_at"] is not None, f"{name}: the client read {answer['bytes'] / MB:.1f} MB of "
                      f"{endless_mb} MB before the stream ended ({answer['client_error'] or 'cleanly'})")
    else:
        checks.expect(sent.get("whole", False), f"{name}: the upstream did not send its whole answer ({sent})")
    checks.expect(again["status"] == 200 and again["cache"] is not None,
                  f"{name}: the same request again answered {again['status']} ({again['client_error']})")
    return checks


def findings(results: list[dict[str, Any]], *, alive: bool, entries: list[dict[str, Any]]) -> Checks:
    checks = Checks()
    for result in results:
        _targets(checks, result)
    checks.expect(alive, "the proxy died during the run")
    allowed = {PROBE_ID, *(f"chatcmpl-hostile-{s.name}" for s in SCENARIOS if s.storable)}
    foreign = [e for e in entries if e["id"] not in allowed]
    checks.expect(not foreign, f"{len(foreign)} stored entries are hostile answers: "
                  f"{[(e['id'], e['bytes']) for e in foreign[:5]]}")
    return checks
MUST_REFUSE = {"length_over", "length_under"}  # a body cut short or padded is never a 200


def _targets(checks: Checks, result: dict[str, Any]) -> None:
    name, answer, sent = result["scenario"], result["answer"], result["upstream"]
    rss, health = result["rss_mb"], result["healthz"]
    checks.expect(rss["growth"] <= RSS_LIMIT_MB, f"{name}: RSS grew {rss['growth']:.0f} MB "
                  f"({rss['before']:.0f} -> {rss['peak']:.0f}), more than {RSS_LIMIT_MB:.0f}")
    checks.expect(health["polls"] > 0 and not health["failures"],
                  f"{name}: /healthz failed {len(health['failures'])} of {health['polls']} polls "
                  f"({sorted(set(health['failures']))}), slowest {health['slowest_ms']:.0f} ms")
    hit = result["again"]["cache"]
    checks.expect(result["storable"] or hit not in ("exact", "semantic"),
                  f"{name}: the hostile answer was stored (asked again: {hit} hit)")
    status, code = answer["status"], answer["error_code"]
    checks.expect(status is not None and (status < 500 or (status == 502 and code == REFUSAL)),
                  f"{name}: the client got status {status} ({code or answer['client_error']})")
    if name.startswith("endless"):
        stopped, left = sent.get("stopped_at"), answer["left_at"]
        checks.expect(stopped is not None and left is not None and stopped - left <= CLOSE_WITHIN,
                      f"{name}: the upstream was still sending {CLOSE_WITHIN:.0f} s after the client left")
    elif name in MUST_REFUSE:
        checks.expect(status == 502 and code == REFUSAL, f"{name}: status {status} ({code}), expected 502 {REFUSAL}")
    elif result["stream"] or status == 200:
        whole = status == 200 and answer["bytes"] == sent.get("body_bytes") and answer["client_error"] is None
        checks.expect(whole, f"{name}: status {status}, {answer['bytes']} of {sent.get('body_bytes')} bytes "
                      f"relayed ({answer['client_error'] or 'no client error'})")


# ---------------------------------------------------------------------------------------------- the run


def row(result: dict[str, Any]) -> str:
    answer, again, rss, health = result["answer"], result["again"], result["rss_mb"], result["healthz"]
    if answer["status"] is None:
        saw = f"no answer ({answer['client_error']})"
    else:
        saw = f"{answer['status']} {answer['bytes'] / MB:.1f} MB"
        saw += " [DONE]" if answer["done"] else ""
        saw += f" {answer['error_code']}" if answer["error_code"] else ""
        saw += f" {answer['client_error']}" if answer["client_error"] else ""
        saw += " (left)" if answer["left_at"] else ""
    stored = "no"
    if again["cache"] in ("exact", "semantic"):
        stored = "yes (ok)" if result["storable"] else "STORED"
    health_text = f"{health['polls'] - len(health['failures'])}/{health['polls']} max {health['slowest_ms']:.0f} ms"
    return (f"{result['scenario']:22} {saw:42} {stored:7} {rss['before']:6.0f} {rss['peak']:6.0f} "
            f"{rss['growth']:+7.0f} {health_text:22} {answer['seconds']:6.1f}")


HEADER = (f"{'scenario':22} {'client saw':42} {'stored':7} {'RSS MB':>6} {'peak':>6} {'growth':>7} "
          f"{'/healthz ok':22} {'s':>6}")


def measure(chosen: list[Scenario], endless_mb: int) -> tuple[list[dict[str, Any]], bool, list[dict[str, Any]]]:
    """(one result per scenario run, whether the proxy was alive at the end, the entries it stored)."""
    port = free_port()
    env = {"PYTHONPATH": pythonpath(REPO), "SEMPROXY_LOG_LEVEL": "warning", "SEMPROXY_ADMIN_TOKEN": ADMIN_TOKEN}
    results: list[dict[str, Any]] = []
    with process([sys.executable, str(REPO / "bench" / "hostile_upstream.py"), "--port", str(port)],
                 f"http://127.0.0.1:{port}/v1/models"), tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        with semproxy_process(data, f"http://127.0.0.1:{port}/v1", env_extra=env) as proxy:
            warm_up(proxy.url)  # type: ignore[attr-defined]
            print(HEADER, file=sys.stderr)
            for scenario in chosen:
                if proxy.poll() is not None:  # it died in the last scenario: that is the finding
                    break
                results.append(run_scenario(proxy, f"http://127.0.0.1:{port}", scenario, endless_mb=endless_mb,
                                            logged=WARM_UP + 2 * len(results)))
                print(row(results[-1]), file=sys.stderr)
            alive = proxy.poll() is None
            return results, alive, stored_entries(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated scenario names (a partial run writes nothing)")
    parser.add_argument("--endless-mb", type=int, default=300, help="MB the client reads of an endless stream")
    args = parser.parse_args()
    only = {name for name in args.only.split(",") if name}
    if only - {s.name for s in SCENARIOS}:
        parser.error(f"unknown scenarios {sorted(only - {s.name for s in SCENARIOS})}")
    origin, began = provenance(), time.monotonic()
    results, alive, entries = measure([s for s in SCENARIOS if not only or s.name in only], args.endless_mb)
    if alive:  # a proxy that died leaves its last scenario half done: the death is what gets reported
        outcome = Checks()
        for result in results:
            for message in produced(result, args.endless_mb).failed:
                outcome.expect(False, message)
        outcome.raise_if_failed()
    found = findings(results, alive=alive, entries=entries)
    summary = {"scenarios": results, "proxy_alive_at_end": alive, "entries_stored": len(entries), "entries": entries,
               "endless_mb": args.endless_mb, "seconds": round(time.monotonic() - began, 1),
               "targets": {"rss_growth_mb": RSS_LIMIT_MB, "healthz_timeout_s": HEALTH_TIMEOUT,
                           "endless_close_within_s": CLOSE_WITHIN}}
    print("\n" + HEADER + "\n" + "\n".join(row(r) for r in results))
    print(f"{found.summary()}; {len(entries)} entries stored; {summary['seconds']} s")
    if only:
        print("a partial run (--only): nothing written", file=sys.stderr)
    else:
        write_results(REPO / "bench" / "results" / "hostile_upstream.json", {**summary, "checks": found.record()},
                      origin)
    found.raise_if_failed()


if __name__ == "__main__":
    run_main(main)
