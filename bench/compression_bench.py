"""System-prompt compression: the bundled classifier (the default) side by side with LLMLingua's SmolLM2 scorer.

1. Quality and speed of both compressors at rate 0.5, on the same prompts: the GSM8K chain-of-thought prompt,
   the held-out half of the awesome-chatgpt-prompts of 200 tokens or more (the classifier was distilled on the
   other half), and hand-written system prompts in German, French, Spanish and Polish
   (`bench/data/system_prompts_eu.jsonl`): ratio, time, tokens per second, protected spans kept, the words that
   bind an instruction kept, and which words go: the share of dropped words that are among the language's
   60 most frequent words (counted on STS-B's machine-translated train sentences: function words), and that
   share over their share of all compressible words (the lift: 1 means the compressor does not tell them apart).
   The classifier's throughput is measured over every held-out awesome prompt.
2. Faithfulness on GSM8K without a hosted LLM: for each of the 1,319 test questions, the request semproxy
   would send (compressed worked examples + the untouched question) still holds every number of the prompt
   and of the question.
3. Through the real proxy, at the defaults of a plain install (two `semproxy serve` processes side by side,
   compression on and off, the same requests interleaved, `Cache-Control: no-store`):
   - first-seen system prompts of about 600 tokens, each different (a name and a date change on every call),
     echoed back by the fake upstream: how much later the answer comes, whether the prompt went out
     compressed, its protected spans intact, and the share of its words sent;
   - a prompt already seen: the latency of a compressed request against an uncompressed one.

Checked before anything is written: spans intact everywhere, every binding word kept, every GSM8K request holding
every number, and every first-seen and seen request on the compressing side a 200 that went out compressed.
A run that fails a check prints FAIL, exits with status 1 and leaves the results file as it was.

    .venv/bin/python bench/compression_bench.py          # about 10 minutes on 2 cores
    .venv/bin/python bench/compression_bench.py --quick  # a smoke run
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import gzip
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import Checks, fake_upstream, free_port, provenance, run_main, serve, write_results  # noqa: E402
from bench.fake_upstream import ECHO_SYSTEM  # noqa: E402
from bench.train_token_classifier import awesome_prompts, half  # noqa: E402
from semproxy.app import load_compressor  # noqa: E402
from semproxy.compress.compressor import protected_spans_intact  # noqa: E402
from semproxy.compress.spans import units  # noqa: E402
from semproxy.compress.tokens import count_tokens, install_offline_encodings  # noqa: E402
from semproxy.config import Settings  # noqa: E402

DATA = Path(os.environ.get("SEMPROXY_EVAL_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "bench" / "results" / "compression_bench.json"
WORK = REPO / "bench" / ".cache" / "compression-data"  # the converted SmolLM2 is reused between runs
EU_PROMPTS = REPO / "bench" / "data" / "system_prompts_eu.jsonl"
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
MARKERS = ("<keep>", "</keep>")
RATE = 0.5
FUNCTION_WORDS = 60  # the language's most frequent words, as counted on its STS-B train sentences
NAMES = ["Anna Schmidt", "Luca Rossi", "Marie Dubois", "Jan Kowalski", "Sofia García", "Pieter de Vries",
         "Emma Johnson", "Mateus Silva", "Aino Virtanen", "Oliver Brown"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per side for the seen-prompt test")
    parser.add_argument("--first-seen", type=int, default=60, help="first-seen prompts through the proxy")
    parser.add_argument("--max-prompts", type=int, default=60, help="awesome prompts compressed by both")
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.first_seen, args.max_prompts = 20, 8, 5
    origin = provenance()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    install_offline_encodings(WORK / "tiktoken")
    settings = Settings(data_dir=WORK)
    compressors = {"classifier": load_compressor(settings),
                   "smollm2": load_compressor(Settings(data_dir=WORK, compression_method="llmlingua"))}
    gsm8k = (DATA / "compression" / "gsm8k_cot_prompt_hardest.txt").read_text()
    heldout = sorted({p for p in awesome_prompts() if half(p) == "heldout" and count_tokens(p) >= 200}, key=len)
    sample = heldout[:: max(1, len(heldout) // args.max_prompts)][: args.max_prompts]  # spread over the lengths
    report: dict[str, Any] = {"date": datetime.date.today().isoformat(), "settings": {
        "method": settings.compression_method, "model": settings.compression_model, "rate": RATE,
        "wait_seconds": settings.compression_wait_seconds, "languages": list(settings.compression_languages)}}
    report["gsm8k"] = {name: _measure(c, gsm8k, RATE) for name, c in compressors.items()}
    report["gsm8k_rates"] = {str(rate): _measure(compressors["classifier"], gsm8k, rate) for rate in (0.3, 0.7)}
    report["awesome_prompts"] = {"heldout_over_200_tokens": len(heldout), "measured": len(sample),
                                 **{name: _corpus(c, sample, "en") for name, c in compressors.items()}}
    report["awesome_prompts"]["kept_word_overlap"] = _overlap(compressors, sample)
    report["throughput"] = _throughput(compressors["classifier"], heldout if not args.quick else sample)
    report["faithfulness"] = {name: _faithfulness(gsm8k, c.compress(gsm8k, rate=RATE).compressed)
                              for name, c in compressors.items()}
    report["languages"] = _languages(compressors)
    report["proxy"] = _through_the_proxy(args.first_seen, args.requests, heldout, gsm8k)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    checks = _check(report)
    checks.raise_if_failed()
    write_results(RESULTS, {**report, "checks": checks.record()}, origin)


# ------------------------------------------------------------------------------------------------ in process

_CUTS: dict[tuple[int, str, float], tuple[str, float, list[str], list[str]]] = {}


def _cut(compressor: Any, text: str, rate: float) -> tuple[str, float, list[str], list[str]]:
    """The compressed text, the seconds it took, and the compressible words kept and dropped (a word of the
    prompt is kept as many times as it occurs in the output). Each prompt is compressed once per compressor."""
    key = (id(compressor), text, rate)
    if key not in _CUTS:
        _CUTS[key] = _compress(compressor, text, rate)
    return _CUTS[key]


def _compress(compressor: Any, text: str, rate: float) -> tuple[str, float, list[str], list[str]]:
    started = time.perf_counter()
    compressed = compressor.compress(text, rate=rate).compressed
    seconds = time.perf_counter() - started
    words = [text[u.start:u.end] for u in units(text, keep_markers=MARKERS) if not u.protected]
    sent = collections.Counter(compressed.split())
    kept, dropped = [], []
    for word in words:
        (kept if sent[word] > 0 else dropped).append(word)
        sent[word] -= 1
    return compressed, seconds, kept, dropped


def _measure(compressor: Any, text: str, rate: float) -> dict[str, Any]:
    compressed, seconds, _, _ = _cut(compressor, text, rate)
    original, kept = count_tokens(text), count_tokens(compressed)
    pieces = units(text, keep_markers=MARKERS)
    return {"tokens": original, "compressed_tokens": kept, "ratio": round(original / kept, 2),
            "seconds": round(seconds, 3), "tokens_per_second": round(original / seconds),
            "protected_spans": sum(u.protected for u in pieces),
            "protected_spans_intact": protected_spans_intact(text, pieces, compressed)}


def _corpus(compressor: Any, texts: list[str], language: str,
            must_keep: list[list[str]] | None = None) -> dict[str, Any]:
    """Ratio, speed, spans, binding words and function-word share of the drops over `texts`."""
    frequent = _frequent_words(language)
    tokens = kept_tokens = 0
    seconds, intact, dropped, ratios, binding_lost = 0.0, 0, collections.Counter[str](), [], []
    compressible = collections.Counter[str]()
    for i, text in enumerate(texts):
        compressed, took, stayed, gone = _cut(compressor, text, RATE)
        compressible.update(_bare(w) for w in [*stayed, *gone])
        before, after = count_tokens(text), count_tokens(compressed)
        tokens, kept_tokens, seconds = tokens + before, kept_tokens + after, seconds + took
        ratios.append(before / after)
        intact += protected_spans_intact(text, units(text, keep_markers=MARKERS), compressed)
        dropped.update(_bare(w) for w in gone)
        for word in (must_keep[i] if must_keep else []):
            if _occurrences(word, compressed) < _occurrences(word, text):
                binding_lost.append(word)
    drops, words = sum(dropped.values()), sum(compressible.values())
    dropped_share = sum(n for w, n in dropped.items() if w in frequent) / drops
    word_share = sum(n for w, n in compressible.items() if w in frequent) / words
    return {"prompts": len(texts), "tokens": tokens, "compressed_tokens": kept_tokens,
            "ratio": round(tokens / kept_tokens, 2), "ratio_median": round(statistics.median(ratios), 2),
            "tokens_per_second": round(tokens / seconds), "prompts_with_spans_intact": intact,
            "prompts_unchanged": sum(r == 1.0 for r in ratios),  # all protected (a JSON spec), or nothing to cut
            "dropped_words": drops, "dropped_function_word_share": round(dropped_share, 3),
            # how much likelier a function word is to go than any compressible word: 1 = blind to them
            "function_word_drop_lift": round(dropped_share / word_share, 2),
            **({"binding_words_lost": binding_lost} if must_keep is not None else {})}


def _overlap(compressors: dict[str, Any], texts: list[str]) -> float:
    """Of the words SmolLM2's LLMLingua keeps, the share the classifier keeps too (the rate is the same)."""
    both = teacher = 0
    for text in texts:
        mine = collections.Counter(_cut(compressors["classifier"], text, RATE)[2])
        theirs = collections.Counter(_cut(compressors["smollm2"], text, RATE)[2])
        both += sum((mine & theirs).values())
        teacher += sum(theirs.values())
    return round(both / teacher, 3)


def _throughput(compressor: Any, texts: list[str]) -> dict[str, Any]:
    compressor.compress(texts[0], rate=RATE)  # warm
    started, tokens, kept = time.perf_counter(), 0, 0
    for text in texts:
        kept += compressor.compress(text, rate=RATE).tokens["cl100k_base"][1]
        tokens += count_tokens(text)
    seconds = time.perf_counter() - started
    return {"prompts": len(texts), "tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_second": round(tokens / seconds), "ratio": round(tokens / kept, 2)}


def _faithfulness(prompt: str, compressed: str) -> dict[str, Any]:
    with (DATA / "compression" / "gsm8k_test.jsonl").open() as handle:
        questions = [json.loads(line)["question"] for line in handle]
    numbers = NUMBER.findall(prompt)
    kept_all = sum(all(n in compressed + "\n" + q for n in numbers + NUMBER.findall(q)) for q in questions)
    words, kept_words = len(prompt.split()), len(compressed.split())
    return {"questions": len(questions), "requests_with_every_number": kept_all, "prompt_numbers": len(numbers),
            "prompt_words": words, "words_kept": kept_words, "share_of_words_kept": round(kept_words / words, 3)}


def _languages(compressors: dict[str, Any]) -> dict[str, Any]:
    rows = [json.loads(line) for line in EU_PROMPTS.open(encoding="utf-8")]
    out: dict[str, Any] = {}
    for language in sorted({r["lang"] for r in rows}, key=["de", "fr", "es", "pl"].index):
        mine = [r for r in rows if r["lang"] == language]
        out[language] = {name: _corpus(c, [r["prompt"] for r in mine], language, [r["must_keep"] for r in mine])
                         for name, c in compressors.items()}
    return out


def _frequent_words(language: str) -> frozenset[str]:
    counts = collections.Counter[str]()
    with gzip.open(DATA / "multilingual" / f"stsb_mt_{language}_train.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            counts.update(_bare(w) for w in (row["text_a"] + " " + row["text_b"]).split())
    return frozenset(w for w, _ in counts.most_common(FUNCTION_WORDS))


def _bare(word: str) -> str:
    return word.strip(".,;:!?()[]\"'“”‘’«»„*_-").lower()  # noqa: RUF001 (typographic quotes)


def _occurrences(word: str, text: str) -> int:
    return len(re.findall(rf"(?<!\w){re.escape(word)}(?!\w)", text, flags=re.IGNORECASE))


# ------------------------------------------------------------------------------------------------ the proxy

def _first_seen_prompts(count: int, heldout: list[str]) -> list[str]:
    """About 600-token system prompts, each different: a persona and its rules from the held-out awesome prompts,
    and a first line that changes on every call, as a name and today's date do."""
    rng = random.Random(7)
    prompts = []
    for i in range(count):
        parts: list[str] = []
        while count_tokens("\n\n".join(parts)) < 600:
            parts.append(rng.choice(heldout))
        body = _first_tokens("\n\n".join(parts), 600)
        day = datetime.date(2026, 1, 1) + datetime.timedelta(days=i)
        prompts.append(f"You are talking to {NAMES[i % len(NAMES)]}. Today is {day:%A, %d %B %Y}.\n\n{body}")
    return prompts


def _first_tokens(text: str, tokens: int) -> str:
    """About the first `tokens` tokens of `text`, ending at a sentence or line end."""
    ends = [m.end() for m in re.finditer(r"[.!?:]\s|\n", text)]
    fitting = [end for end in ends if count_tokens(text[:end]) <= tokens]
    return text[: fitting[-1]].rstrip() if fitting else text


def _through_the_proxy(first_seen: int, requests: int, heldout: list[str], seen_prompt: str) -> dict[str, Any]:
    upstream_port, on_port, off_port = free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}/v1"
    env = {"HF_HUB_OFFLINE": "1", "SEMPROXY_LOG_LEVEL": "warning", "SEMPROXY_SEMANTIC_ENABLED": "false"}
    with contextlib.ExitStack() as stack:
        stack.enter_context(fake_upstream(upstream_port))
        for port, enabled in ((on_port, "true"), (off_port, "false")):
            data = stack.enter_context(tempfile.TemporaryDirectory())
            stack.enter_context(serve(port, data, "--upstream", upstream,
                                      env={**env, "SEMPROXY_COMPRESSION_ENABLED": enabled}))
        client = stack.enter_context(httpx.Client(timeout=120))
        on, off = f"http://127.0.0.1:{on_port}", f"http://127.0.0.1:{off_port}"
        _wait_until_ready(client, on)
        return {"first_seen": _first_seen(client, on, off, _first_seen_prompts(first_seen, heldout)),
                "seen": _seen(client, on, off, seen_prompt, requests)}


def _chat(system: str, user: str) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": system},
                                                 {"role": "user", "content": user}]}


def _post(client: httpx.Client, base: str, body: dict[str, Any]) -> tuple[float, httpx.Response]:
    time.sleep(0.01)
    started = time.perf_counter()
    response = client.post(base + "/v1/chat/completions", json=body, headers={"cache-control": "no-store"})
    return (time.perf_counter() - started) * 1000, response


def _first_seen(client: httpx.Client, on: str, off: str, prompts: list[str]) -> dict[str, Any]:
    timings: dict[str, list[float]] = {"compression_on": [], "compression_off": []}
    outcomes: dict[str, collections.Counter[str]] = {name: collections.Counter() for name in timings}
    shares, intact = [], 0
    for prompt in prompts:
        body = _chat(prompt, ECHO_SYSTEM)
        for name, base in (("compression_on", on), ("compression_off", off)):
            took, response = _post(client, base, body)
            timings[name].append(took)
            outcomes[name][_outcome(response)] += 1
            if name == "compression_on" and response.status_code == 200:
                sent = response.json()["choices"][0]["message"]["content"]
                shares.append(len(sent.split()) / len(prompt.split()))
                intact += protected_spans_intact(prompt, units(prompt, keep_markers=MARKERS), sent)
    added = [a - b for a, b in zip(timings["compression_on"], timings["compression_off"], strict=True)]
    return {"prompts": len(prompts), "tokens_median": statistics.median(count_tokens(p) for p in prompts),
            **_latencies(timings), "added_ms_p90": round(_quantile(added, 0.9), 1),
            "added_ms_max": round(max(added), 1), "spans_intact": intact,
            "words_sent_share_median": round(statistics.median(shares), 3) if shares else None,
            "words_sent_share_max": round(max(shares), 3) if shares else None,
            "prompts_with_at_most_80pct_of_words_sent": sum(share <= 0.8 for share in shares),
            "outcomes": {name: dict(seen) for name, seen in outcomes.items()}}


def _seen(client: httpx.Client, on: str, off: str, prompt: str, requests: int) -> dict[str, Any]:
    body = _chat(prompt, "What is 2 + 2?")
    _post(client, on, body)  # first sight: compressed and stored
    timings: dict[str, list[float]] = {"compression_on": [], "compression_off": []}
    outcomes: dict[str, collections.Counter[str]] = {name: collections.Counter() for name in timings}
    for _ in range(requests):
        for name, base in (("compression_on", on), ("compression_off", off)):
            took, response = _post(client, base, body)
            timings[name].append(took)
            outcomes[name][_outcome(response)] += 1
    return {"requests_per_side": requests, **_latencies(timings),
            "outcomes": {name: dict(seen) for name, seen in outcomes.items()}}


def _latencies(timings: dict[str, list[float]]) -> dict[str, Any]:
    p50 = {name: round(statistics.median(values), 2) for name, values in timings.items()}
    return {"p50_ms": p50, "added_p50_ms": round(p50["compression_on"] - p50["compression_off"], 2),
            "ratio_p50": round(p50["compression_on"] / p50["compression_off"], 3)}


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _outcome(response: httpx.Response) -> str:
    """"compressed" or "as sent": a 200 whose system prompt semproxy did or did not shorten."""
    if response.status_code != 200:
        return f"http {response.status_code}"
    return "compressed" if int(response.headers.get("x-semproxy-prompt-tokens-saved", "0")) > 0 else "as sent"


def _wait_until_ready(client: httpx.Client, base: str) -> None:
    deadline = time.monotonic() + 300
    while (state := client.get(base + "/healthz").json().get("compression")) != "ready":
        if time.monotonic() > deadline or str(state).startswith("failed"):
            raise RuntimeError(f"compression never came up: {state}")
        client.post(base + "/v1/chat/completions", json=_chat("warm up", "hi"), headers={"cache-control": "no-store"})
        time.sleep(0.5)


# ------------------------------------------------------------------------------------------------ checks

def _check(report: dict[str, Any]) -> Checks:
    checks = Checks()
    for name, row in [*report["gsm8k"].items(), *(("classifier at " + r, m) for r, m in report["gsm8k_rates"].items())]:
        checks.expect(row["protected_spans_intact"], f"GSM8K, {name}: a protected span was changed or dropped")
        checks.expect(row["compressed_tokens"] < row["tokens"], f"GSM8K, {name}: not shortened")
    corpora = {f"awesome, {n}": report["awesome_prompts"][n] for n in ("classifier", "smollm2")}
    corpora |= {f"{lang}, {n}": row for lang, rows in report["languages"].items() for n, row in rows.items()}
    for name, row in corpora.items():
        checks.expect(row["prompts_with_spans_intact"] == row["prompts"],
                      f"{name}: spans intact in {row['prompts_with_spans_intact']} of {row['prompts']} prompts")
        checks.expect(row["compressed_tokens"] < row["tokens"], f"{name}: not shortened")
        lost = row.get("binding_words_lost")
        checks.expect(not lost, f"{name}: binding words dropped: {lost}")
    for name, faithful in report["faithfulness"].items():
        checks.expect(faithful["requests_with_every_number"] == faithful["questions"],
                      f"GSM8K, {name}: {faithful['requests_with_every_number']} of {faithful['questions']} requests "
                      "hold every number, expected all")
    for language, rows in report["languages"].items():
        if language in report["settings"]["languages"]:  # compressed by default: it must still earn it
            mine, theirs = rows["classifier"]["function_word_drop_lift"], rows["smollm2"]["function_word_drop_lift"]
            checks.expect(mine > 1.0 and mine >= theirs, f"{language}: compressed by default, but function words "
                          f"go {mine}x as readily as others (SmolLM2: {theirs}x)")
    first, seen = report["proxy"]["first_seen"], report["proxy"]["seen"]
    checks.expect_share("first-seen prompts, compression on", first["outcomes"]["compression_on"], "compressed")
    checks.expect_share("first-seen prompts, compression off", first["outcomes"]["compression_off"], "as sent")
    checks.expect(first["spans_intact"] == first["prompts"],
                  f"first-seen prompts: spans intact in {first['spans_intact']} of {first['prompts']}")
    checks.expect_share("seen prompt, compression on", seen["outcomes"]["compression_on"], "compressed")
    checks.expect_share("seen prompt, compression off", seen["outcomes"]["compression_off"], "as sent")
    return checks


if __name__ == "__main__":
    run_main(main)
