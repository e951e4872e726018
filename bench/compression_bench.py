"""System-prompt compression: ratio, speed, what survives, and what it adds to a request.

1. Quality and speed of semproxy's compressor at its defaults (SmolLM2-135M, LLMLingua scoring, rate 0.5) on
   the GSM8K chain-of-thought prompt and on the awesome-chatgpt-prompts of 200 tokens or more: ratio, time per
   1,000 tokens, share of protected spans kept byte-identical.
2. Faithfulness on GSM8K without a hosted LLM: for each of the 1,319 test questions, the request semproxy
   would send (compressed worked examples + the untouched question) still holds every number of the prompt
   and of the question; how much of the worked-example text survives; and llmlingua's own compress_prompt
   with the same model and rate, for comparison (it does not protect numbers).
3. Added latency: two semproxy processes side by side, compression on (prompt already compressed) and off,
   the same request interleaved (Cache-Control: no-store so the cache does not answer).

Checked before anything is written: every protected span intact and the compressed text shorter (GSM8K
at each rate; the awesome prompts taken together, since a prompt whose cut lost a protected span is sent
as it was, which `prompts_shortened` counts), every GSM8K request still holding every number, and in the
latency test every answer a 200, each from the compressing proxy saying it saved tokens and none from the
other. A run that fails a check prints FAIL, exits with status 1 and leaves the results file as it was.

    .venv/bin/python bench/compression_bench.py          # about 10 minutes on 2 cores
    .venv/bin/python bench/compression_bench.py --quick  # a smoke run: 5 awesome prompts, 30 requests a side
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import Checks, fake_upstream, free_port, provenance, run_main, serve, write_results  # noqa: E402
from semproxy.app import load_compressor  # noqa: E402
from semproxy.compress.compressor import Compressor, protected_spans_intact  # noqa: E402
from semproxy.compress.spans import units  # noqa: E402
from semproxy.compress.tokens import count_tokens  # noqa: E402
from semproxy.config import Settings  # noqa: E402

DATA = Path(os.environ.get("SEMPROXY_EVAL_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "bench" / "results" / "compression_bench.json"
WORK = REPO / "bench" / ".cache" / "compression-data"  # the converted model is reused between runs
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
MARKERS = ("<keep>", "</keep>")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per side for the latency test")
    parser.add_argument("--max-prompts", type=int, default=60, help="awesome-chatgpt-prompts to compress")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 5 awesome prompts, 30 requests a side")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.max_prompts = 30, 5
    origin = provenance()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = Settings(data_dir=WORK)
    compressor = load_compressor(settings)
    gsm8k = (DATA / "compression" / "gsm8k_cot_prompt_hardest.txt").read_text()
    report: dict[str, Any] = {"date": datetime.date.today().isoformat(), "settings": {
        "method": settings.compression_method, "model": settings.compression_model, "rate": settings.compression_rate}}
    report["gsm8k"] = _measure(compressor, gsm8k, settings.compression_rate)
    report["gsm8k_rates"] = {str(rate): _measure(compressor, gsm8k, rate) for rate in (0.3, 0.7)}
    report["awesome_prompts"] = _awesome(compressor, settings.compression_rate, args.max_prompts)
    compressed = compressor.compress(gsm8k, rate=settings.compression_rate).compressed
    report["faithfulness"] = _faithfulness(gsm8k, compressed)
    report["llmlingua_itself"] = _llmlingua_itself(compressor, gsm8k, settings.compression_rate)
    report["latency"] = _latency(settings, gsm8k, args.requests)
    print(json.dumps(report, indent=2))
    checks = _check(report)
    checks.raise_if_failed()
    write_results(RESULTS, {**report, "checks": checks.record()}, origin)


def _check(report: dict[str, Any]) -> Checks:
    checks = Checks()
    measured = {"gsm8k": report["gsm8k"], **{f"gsm8k at rate {r}": m for r, m in report["gsm8k_rates"].items()}}
    for name, row in measured.items():
        checks.expect(row["protected_spans_intact"], f"{name}: a protected span was changed or dropped")
        checks.expect(row["compressed_tokens"] < row["tokens"],
                      f"{name}: {row['tokens']} tokens became {row['compressed_tokens']}, expected fewer")
    awesome = report["awesome_prompts"]
    checks.expect(0 < awesome["prompts_with_spans_intact"] == awesome["measured"],
                  f"awesome prompts: spans intact in {awesome['prompts_with_spans_intact']} of {awesome['measured']}")
    # A prompt whose cut lost a protected span is sent as it was (fail-safe): a figure, not a failure.
    checks.expect(awesome["compressed_tokens"] < awesome["tokens"],
                  f"awesome prompts: {awesome['tokens']} tokens became {awesome['compressed_tokens']}, expected fewer")
    faithful = report["faithfulness"]
    checks.expect(0 < faithful["requests_with_every_number"] == faithful["questions"],
                  f"GSM8K: {faithful['requests_with_every_number']} of {faithful['questions']} requests hold "
                  "every number, expected all")
    for side, outcomes in report["latency"]["outcomes"].items():
        checks.expect_share(f"latency, {side}", outcomes, "compressed" if side == "compression_on" else "as sent")
    return checks


def _measure(compressor: Compressor, text: str, rate: float) -> dict[str, Any]:
    started = time.perf_counter()
    result = compressor.compress(text, rate=rate)
    seconds = time.perf_counter() - started
    original, compressed = result.tokens["cl100k_base"]
    pieces = units(text, keep_markers=MARKERS)
    return {"tokens": original, "compressed_tokens": compressed, "ratio": round(original / compressed, 2),
            "seconds": round(seconds, 2), "seconds_per_1000_tokens": round(1000 * seconds / original, 2),
            "protected_spans": sum(u.protected for u in pieces),
            "protected_spans_intact": protected_spans_intact(text, pieces, result.compressed)}


def _awesome(compressor: Compressor, rate: float, limit: int) -> dict[str, Any]:
    csv.field_size_limit(10_000_000)
    with (DATA / "prompts" / "awesome_chatgpt_prompts.csv").open(newline="") as handle:
        prompts = [row["prompt"] for row in csv.DictReader(handle)]
    eligible = sorted({p for p in prompts if count_tokens(p) >= 200}, key=len)
    long = eligible[:: max(1, len(eligible) // limit)][:limit]  # spread over the lengths
    rows = [_measure(compressor, p, rate) for p in long]
    original = sum(r["tokens"] for r in rows)
    kept = sum(r["compressed_tokens"] for r in rows)
    seconds = sum(r["seconds"] for r in rows)
    return {"prompts_over_200_tokens": len(eligible), "measured": len(rows),
            "prompts_with_spans_intact": sum(r["protected_spans_intact"] for r in rows),
            "prompts_shortened": sum(r["compressed_tokens"] < r["tokens"] for r in rows),
            "tokens": original, "compressed_tokens": kept, "ratio": round(original / kept, 2),
            "ratio_median": round(statistics.median(r["ratio"] for r in rows), 2),
            "seconds_per_1000_tokens": round(1000 * seconds / original, 2),
            "all_protected_spans_intact": all(r["protected_spans_intact"] for r in rows)}


def _faithfulness(prompt: str, compressed: str) -> dict[str, Any]:
    with (DATA / "compression" / "gsm8k_test.jsonl").open() as handle:
        questions = [json.loads(line)["question"] for line in handle]
    numbers = NUMBER.findall(prompt)
    kept_all = sum(all(n in compressed + "\n" + q for n in numbers + NUMBER.findall(q)) for q in questions)
    words = re.findall(r"\S+", prompt)
    surviving = sum(1 for unit in units(prompt, keep_markers=MARKERS) if not unit.protected)
    kept_words = len(re.findall(r"\S+", compressed))
    return {"questions": len(questions), "requests_with_every_number": kept_all,
            "prompt_numbers": len(numbers), "prompt_words": len(words), "compressible_words": surviving,
            "words_kept": kept_words, "share_of_words_kept": round(kept_words / len(words), 3),
            "llmlingua_published": "2,366 -> 174 tokens (13.6x) at 78.24% GSM8K accuracy with gpt-3.5-turbo"}


def _llmlingua_itself(compressor: Compressor, prompt: str, rate: float) -> dict[str, Any]:
    """llmlingua's own compress_prompt with the same model, for what protection costs and buys."""
    prompt_compressor = compressor._scorer._compressor  # type: ignore[attr-defined]
    numbers = NUMBER.findall(prompt)
    out: dict[str, Any] = {}
    for name, options in {"defaults": {}, "token_level_only": {
            "use_context_level_filter": False, "use_sentence_level_filter": False, "iterative_size": 100}}.items():
        started = time.perf_counter()
        try:
            result = prompt_compressor.compress_prompt([prompt], rate=rate, **options)
        except Exception as exc:  # reported as found: llmlingua's iterative path and transformers 5's KV cache
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        text = result["compressed_prompt"]
        out[name] = {"tokens": result["origin_tokens"], "compressed_tokens": result["compressed_tokens"],
                     "seconds": round(time.perf_counter() - started, 2),
                     "numbers_kept": round(sum(n in text for n in numbers) / len(numbers), 3)}
    return out


def _latency(settings: Settings, prompt: str, requests: int) -> dict[str, Any]:
    upstream_port, on_port, off_port = free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}/v1"
    model = str(settings.data_dir / "models" / settings.compression_model)  # converted already, above
    env = {"HF_HUB_OFFLINE": "1", "SEMPROXY_LOG_LEVEL": "warning", "SEMPROXY_SEMANTIC_ENABLED": "false"}
    with contextlib.ExitStack() as stack:
        stack.enter_context(fake_upstream(upstream_port))
        for port, enabled in ((on_port, "true"), (off_port, "false")):
            data = stack.enter_context(tempfile.TemporaryDirectory())
            stack.enter_context(serve(port, data, "--upstream", upstream, env={
                **env, "SEMPROXY_COMPRESSION_ENABLED": enabled, "SEMPROXY_COMPRESSION_MODEL": model}))
        client = stack.enter_context(httpx.Client(timeout=120))
        body = {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": prompt},
                                                     {"role": "user", "content": "What is 2 + 2?"}]}
        on, off = f"http://127.0.0.1:{on_port}/v1", f"http://127.0.0.1:{off_port}/v1"
        _wait_until_compressed(client, on, body)
        timings: dict[str, list[float]] = {"compression_on": [], "compression_off": []}
        outcomes: dict[str, Counter[str]] = {name: Counter() for name in timings}
        for _ in range(requests):
            for name, base in (("compression_on", on), ("compression_off", off)):
                time.sleep(0.01)
                started = time.perf_counter()
                response = client.post(base + "/chat/completions", json=body, headers={"cache-control": "no-store"})
                timings[name].append((time.perf_counter() - started) * 1000)
                outcomes[name][_outcome(response)] += 1
    p50 = {name: round(statistics.median(values), 3) for name, values in timings.items()}
    return {"p50_ms": p50, "added_p50_ms": round(p50["compression_on"] - p50["compression_off"], 3),
            "requests_per_side": requests, "outcomes": {name: dict(seen) for name, seen in outcomes.items()}}


def _outcome(response: httpx.Response) -> str:
    """What one request saw: "compressed" or "as sent" (a 200 whose prompt semproxy did or did not shorten)."""
    if response.status_code != 200:
        return f"http {response.status_code}"
    saved = int(response.headers.get("x-semproxy-prompt-tokens-saved", "0"))
    return "compressed" if saved > 0 else "as sent"


def _wait_until_compressed(client: httpx.Client, base: str, body: dict[str, Any]) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        response = client.post(base + "/chat/completions", json=body, headers={"cache-control": "no-store"})
        if int(response.headers.get("x-semproxy-prompt-tokens-saved", "0")) > 0:
            return
        time.sleep(1)
    raise RuntimeError("the prompt was never compressed")


if __name__ == "__main__":
    run_main(main)
