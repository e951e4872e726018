"""1,000 upstream faults against a `semproxy serve` process: clear answers, nothing stored, nothing leaked.

The faults of tests/fault_upstream.py (resets before and mid-answer, bodies that are not JSON or not a
completion, streams without [DONE] or with broken events, a hang, a byte-per-second trickle, a refused
connection), each followed by the same request, which must reach the upstream again. File descriptors and
sockets of the semproxy process are counted from /proc/PID/fd after a warm-up round and at the end.

What it promises is checked: no wrong answer, the proxy alive, no descriptor, socket or upstream
connection more at the end than after the warm-up, no entry stored from a fault and every retry stored. A
broken promise is the finding: the results are written (with the checks) and the run prints FAIL and exits
with status 1. A run that did not inject every kind of fault, as many as asked, writes nothing.

    .venv/bin/python bench/fault_bench.py --faults 1000     # writes bench/results/fault_bench.json
    .venv/bin/python bench/fault_bench.py --quick           # a smoke run: one round of each fault
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import Checks, provenance, pythonpath, run_main, write_results  # noqa: E402
from tests.fault_upstream import EXPECTED, FaultUpstream, run_faults  # noqa: E402
from tests.servers import free_port, semproxy_process  # noqa: E402


def descriptors(pid: int) -> tuple[int, int]:
    """(file descriptors, of which sockets) held by a process."""
    names = os.listdir(f"/proc/{pid}/fd")
    sockets = 0
    for name in names:
        with contextlib.suppress(OSError):
            sockets += os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:")
    return len(names), sockets


def config(path: Path, fault_url: str) -> Path:
    path.write_text(f"""semantic_enabled = false
compression_enabled = false
breaker_failures = 1000000

[[upstreams]]
name = "fault"
url = "{fault_url}"
models = ["fault-*"]
read_timeout = 0.3

[[upstreams]]
name = "dead"
url = "http://127.0.0.1:{free_port()}/v1"
models = ["refused-*"]
""")
    return path


def settle(pid: int) -> tuple[int, int]:
    """The descriptor counts once they stopped moving (closed connections take a moment)."""
    last = descriptors(pid)
    for _ in range(25):
        time.sleep(0.2)
        now = descriptors(pid)
        if now == last:
            return now
        last = now
    return last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--faults", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="a smoke run: one round of each fault")
    args = parser.parse_args()
    if args.quick:
        args.faults = len(EXPECTED)
    origin = provenance()
    rounds = math.ceil(args.faults / len(EXPECTED))
    with tempfile.TemporaryDirectory() as tmp, FaultUpstream() as upstream:
        data = Path(tmp) / "data"
        toml = config(Path(tmp) / "semproxy.toml", upstream.url)
        # Logs go to a pipe nobody reads: warnings for 1,000 faults would fill it and block the proxy.
        with semproxy_process(data, "http://unused.invalid/v1", extra=("--config", str(toml)),
                              env_extra={"SEMPROXY_LOG_LEVEL": "error", "PYTHONPATH": pythonpath(REPO)}) as proxy:
            url = proxy.url  # type: ignore[attr-defined]
            warm = run_faults(url, upstream, rounds=1, tag="warm-up")
            before = settle(proxy.pid)
            upstream_before = upstream.open_connections
            started = time.monotonic()
            report = run_faults(url, upstream, rounds=rounds, tag="bench")
            seconds = time.monotonic() - started
            after = settle(proxy.pid)
            time.sleep(1.5)  # a trickling handler notices the proxy hung up only when it writes its next byte
            upstream_after = upstream.open_connections
            alive = proxy.poll() is None
        with sqlite3.connect(data / "cache.sqlite3") as db:
            stored = [bytes(r[0]) for r in db.execute("SELECT response FROM entries")]
    result = {
        "faults": report.faults, "by_fault": report.by_fault, "failures": warm.failures + report.failures,
        "seconds": round(seconds, 1), "proxy_alive_at_end": alive,
        "fds_before": before[0], "fds_after": after[0], "sockets_before": before[1], "sockets_after": after[1],
        "upstream_connections_before": upstream_before, "upstream_connections_after": upstream_after,
        "entries_stored": len(stored), "entries_of_a_fault": sum(b"answer #0 " in r for r in stored),
        "retries_expected_stored": (rounds + 1) * (len(EXPECTED) - 2),
    }
    print(json.dumps(result, indent=2))
    scenario = Checks()  # did the run inject what it claims? If not, its figures describe nothing
    scenario.expect(report.faults >= args.faults, f"faults: {report.faults} injected, {args.faults} asked for")
    missing = sorted({fault for fault, _ in EXPECTED} - {fault for fault, n in report.by_fault.items() if n})
    scenario.expect(not missing, f"faults: kinds not exercised: {missing}")
    scenario.raise_if_failed()
    findings = _findings(result)
    write_results(REPO / "bench" / "results" / "fault_bench.json", {**result, "checks": findings.record()}, origin)
    findings.raise_if_failed()


def _findings(result: dict[str, Any]) -> Checks:
    checks = Checks()
    checks.expect(not result["failures"], f"{len(result['failures'])} wrong answers: {result['failures'][:5]}")
    checks.expect(result["proxy_alive_at_end"], "the proxy died during the run")
    for name in ("fds", "sockets", "upstream_connections"):
        before, after = result[f"{name}_before"], result[f"{name}_after"]
        checks.expect(after <= before, f"{name.replace('_', ' ')}: {before} after the warm-up, {after} at the end")
    checks.expect(result["entries_of_a_fault"] == 0, f"{result['entries_of_a_fault']} entries stored from a fault")
    checks.expect(result["entries_stored"] == result["retries_expected_stored"],
                  f"{result['entries_stored']} entries stored, {result['retries_expected_stored']} retries expected")
    return checks


if __name__ == "__main__":
    run_main(main)
