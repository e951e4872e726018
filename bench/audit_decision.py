"""What audits and learned bars add to a semantic hit that is not audited, timed in-process, side by side.

Through the proxy (bench/audit_bench.py) the difference is lost in the noise of a 30 ms request on a busy
2-core machine, and the two processes' caches differ (the learning one stored the audited prompts' answers
too). Here the code itself is timed: `SemanticCache._judged`, the step a verified semantic hit passes through
after the verifier, with `learn_thresholds` on and `audit_rate` 0.05 against both off, on the same hit, plus
`reproducible` (whether the request can be compared). The learning cache's scope holds a full record (2,000
comparisons, all right, so its bar is open and the hit is served) and the draw never audits, so every timed
call is the path of a hit that is served. Calls alternate in blocks of 200 between the two caches; the
figure is the median over blocks of the time per call. Also timed: re-reading a scope's record (2,000
comparisons from SQLite, then the walk), which a lookup pays once per scope every 5 s.

Checked: both caches serve the hit on every timed call (none audited, none refused), the learning cache's
scope record is open and backed by 2,000 comparisons.

    .venv/bin/python bench/audit_decision.py            # ~20 s; bench/results/audit_decision.json
    .venv/bin/python bench/audit_decision.py --quick    # a smoke run, writes nothing unless --out
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import Checks, provenance, run_main, write_results  # noqa: E402
from semproxy.app import build_cache, build_storage  # noqa: E402
from semproxy.cache.answers import reproducible  # noqa: E402
from semproxy.cache.keys import make_key  # noqa: E402
from semproxy.cache.learning import HISTORY  # noqa: E402
from semproxy.cache.records import CacheHit, Verdict  # noqa: E402
from semproxy.config import Settings  # noqa: E402
from semproxy.storage.records import CacheEntry, Observation  # noqa: E402
from tests.fakes import HashingEmbedder  # noqa: E402

RESULTS = REPO / "bench" / "results" / "audit_decision.json"
BLOCK = 200
TARGET_MS = 0.1
BODY = {"model": "gpt-4o-mini", "temperature": 0,
        "messages": [{"role": "user", "content": "Is this review positive? The battery lasts all day."}]}


async def measure(blocks: int, checks: Checks) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        learning = await _cache(Path(folder) / "on", audit_rate=0.05, learn=True)
        fixed = await _cache(Path(folder) / "off", audit_rate=0.0, learn=False)
        key = make_key("chat", BODY, tenant=learning.tenant(api_key="sk-bench", namespace=None))
        _fill(learning, key.scope)
        hit = _hit(key.scope, key.tenant)
        record = learning.learner.record(key.scope)
        checks.expect(record.bar == float("-inf") and record.above == HISTORY,
                      f"the learning scope is open with {HISTORY} comparisons (bar {record.bar}, {record.above})")
        times: dict[str, list[float]] = {"learning": [], "fixed": []}
        served = {"learning": 0, "fixed": 0}
        for block in range(blocks):
            order = (("learning", learning), ("fixed", fixed)) if block % 2 == 0 else (("fixed", fixed),
                                                                                          ("learning", learning))
            for name, cache in order:
                started = time.perf_counter()
                for _ in range(BLOCK):
                    judged = cache._judged(key, reproducible(BODY), hit, None)
                times[name].append((time.perf_counter() - started) / BLOCK * 1000)
                served[name] += BLOCK if judged[0] is hit and judged[2] is None else 0
        refresh = _refresh_ms(learning, key.scope)
        for cache in (learning, fixed):
            await cache.close()
    calls = blocks * BLOCK
    checks.expect(served == {"learning": calls, "fixed": calls}, f"every timed call served the hit: {served}")
    on, off = statistics.median(times["learning"]), statistics.median(times["fixed"])
    return {"calls_per_setting": calls, "block": BLOCK,
            "per_call_ms": {"learning": round(on, 6), "fixed": round(off, 6)},
            "difference_ms": round(on - off, 6),
            "record_refresh_ms": {"median": round(statistics.median(refresh), 3), "max": round(max(refresh), 3),
                                  "comparisons": HISTORY, "every_seconds_per_scope": 5.0}}


async def _cache(folder: Path, *, audit_rate: float, learn: bool) -> Any:
    settings = Settings(data_dir=folder, upstream="http://upstream.test/v1", compression_enabled=False,
                        verify_hits=False, audit_rate=audit_rate, learn_thresholds=learn)
    embedder = HashingEmbedder()
    cache = build_cache(settings, storage=build_storage(settings), load_embedder=lambda: embedder,
                        draw=lambda: 0.999)
    await cache.start()
    return cache


def _fill(cache: Any, scope: str) -> None:
    store = cache._store
    now = time.time()
    for i in range(HISTORY):
        store.record(Observation(tenant="t", scope=scope, entry_id=1, score=0.9 + i / (20 * HISTORY), wrong=False,
                                 at=now))


def _hit(scope: str, tenant: str) -> CacheHit:
    entry = CacheEntry(id=1, kind="chat", tenant=tenant, scope=scope, model="gpt-4o-mini", prompt="stored",
                       response=b"{}", created_at=time.time(), expires_at=None, space="hashing/en")
    verdict = Verdict(accepted=True, score=0.97, reason="read: score >= 0.906")
    return dataclasses.replace(CacheHit(entry=entry, tier="semantic", similarity=0.96), verdict=verdict)


def _refresh_ms(cache: Any, scope: str, *, times: int = 20) -> list[float]:
    spent = []
    for _ in range(times):
        cache.learner.forget(scope)
        started = time.perf_counter()
        cache.learner.record(scope)
        spent.append((time.perf_counter() - started) * 1000)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=400, help=f"blocks of {BLOCK} calls per setting")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 blocks, nothing written")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    origin, checks = provenance(), Checks()
    figures = asyncio.run(measure(20 if args.quick else args.blocks, checks))
    targets = {"decision_overhead": {"rule": f"a served semantic hit: at most {TARGET_MS} ms more with audits and "
                                             "learning on", "difference_ms": figures["difference_ms"],
                                     "met": figures["difference_ms"] <= TARGET_MS}}
    print(f"per call: learning {figures['per_call_ms']['learning'] * 1000:.2f} us, fixed "
          f"{figures['per_call_ms']['fixed'] * 1000:.2f} us; difference {figures['difference_ms'] * 1000:.2f} us; "
          f"a scope's record re-read in {figures['record_refresh_ms']['median']} ms (every 5 s)")
    checks.raise_if_failed()
    if args.out or not args.quick:
        write_results(args.out or RESULTS, {**figures, "targets": targets, "checks": checks.record()}, origin)


if __name__ == "__main__":
    run_main(main)
