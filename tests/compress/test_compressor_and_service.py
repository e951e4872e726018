"""The span-safe compressor with a deterministic scorer, and the service's caching and scheduling."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from semproxy.compress.compressor import SpanSafeCompressor
from semproxy.compress.service import CompressionPolicy, CompressionService
from semproxy.compress.spans import Unit, units
from semproxy.compress.tokens import count_tokens
from semproxy.storage.sqlite import SqliteStorage
from tests.compress.test_spans_and_tokens import MUST_SURVIVE, PROMPT
from tests.fakes import FailingScorer, FakeScorer

MARKERS = ("<keep>", "</keep>")
WARM_UP = 1  # the service compresses a warm-up text once its compressor has loaded
VOCABULARY = ["please", "answer", "the", "question", "politely", "and", "briefly", "using", "simple", "words",
              "for", "every", "customer", "who", "writes", "to", "our", "team", "about", "orders"]


def test_compression_meets_the_rate_and_keeps_every_protected_span() -> None:
    result = SpanSafeCompressor(FakeScorer(), keep_markers=MARKERS).compress(PROMPT, rate=0.4)
    for span in MUST_SURVIVE:
        assert span in result.compressed
    original, compressed = result.tokens["cl100k_base"]
    assert original == count_tokens(PROMPT) and compressed < original
    assert result.saved("o200k_base") > 0


@pytest.mark.parametrize("seed", range(20))
def test_random_prompts_never_lose_a_protected_span(seed: int) -> None:
    rng = random.Random(seed)
    spans = ["{user}", "{{ticket}}", "42", "3.14%", "https://x.example/a?b=1", '"exact phrase"', "`code()`",
             "not", "<keep>keep me</keep>", "v2.1", "never"]
    words = [rng.choice(VOCABULARY + spans) for _ in range(rng.randint(30, 120))]
    text = " ".join(words) + "\n" + rng.choice(["```\nx = 1\n```", '{"a": [1, 2]}', "| a | b |"])
    result = SpanSafeCompressor(FakeScorer(), keep_markers=MARKERS).compress(text, rate=rng.uniform(0.1, 0.9))
    protected = [text[u.start:u.end] for u in units(text, keep_markers=MARKERS) if u.protected]
    cursor = 0
    for span in protected:  # every one of them, in order
        cursor = result.compressed.index(span, cursor) + len(span)


def test_a_scorer_that_drops_everything_falls_back_to_the_original() -> None:
    class DropAll:
        """Every unit is worthless: at rate 0 nothing is kept, and the prompt has no protected span."""

        calls = 0

        def score(self, text: str, pieces: Sequence[Unit], *, rate: float) -> list[float]:
            self.calls += 1
            return [0.0] * len(pieces)

    text = "\n  Please answer\tpolitely,  and briefly.\n\n" + "plain words here, " * 30 + "\n"
    assert not [unit for unit in units(text) if unit.protected]  # else the output would keep them
    scorer = DropAll()
    result = SpanSafeCompressor(scorer).compress(text, rate=0.0)
    assert scorer.calls == 1  # the scorer was asked, and its cut left nothing
    assert result.compressed == result.original == text  # the prompt as it was, byte for byte
    assert result.tokens == {"cl100k_base": (count_tokens(text, "gpt-4"),) * 2,
                             "o200k_base": (count_tokens(text, "gpt-4o"),) * 2}
    assert result.saved("cl100k_base") == result.saved("o200k_base") == 0


def _service(tmp_path: Path, scorer: object, **policy: object) -> CompressionService:
    return CompressionService(load_compressor=lambda: SpanSafeCompressor(scorer, keep_markers=MARKERS),  # type: ignore[arg-type]
                              results=SqliteStorage(tmp_path),
                              policy=CompressionPolicy(rate=0.5, min_tokens=50, **policy))  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_background_mode_forwards_the_first_and_stores_for_the_next(tmp_path: Path) -> None:
    scorer = FakeScorer()
    service = _service(tmp_path, scorer, wait=False)
    service.start()
    assert await service.compressed(PROMPT) is None  # the first request goes out as it is
    service.drain()
    result = await service.compressed(PROMPT)
    assert result is not None and result.compressed != PROMPT
    assert await service.compressed(PROMPT) == result
    assert scorer.calls == WARM_UP + 1  # compressed once, then reused
    await service.close()

    again = _service(tmp_path, FakeScorer(), wait=False)  # a restart finds the stored result
    again.start()
    assert await again.compressed(PROMPT) is None
    again.drain()
    assert await again.compressed(PROMPT) == result
    await again.close()


@pytest.mark.anyio
async def test_stored_compressions_keep_no_prompt_and_follow_the_retention(tmp_path: Path) -> None:
    import sqlite3

    service = _service(tmp_path, FakeScorer(), wait=False, max_age_seconds=3600)
    service.start()
    await service.compressed(PROMPT)
    service.drain()
    await service.close()
    with sqlite3.connect(tmp_path / "compression.sqlite3") as db:
        [(result,)] = db.execute("SELECT result FROM compressions").fetchall()
        assert PROMPT not in result and "original" not in result
        db.execute("UPDATE compressions SET created_at = created_at - 7200")  # two hours old
    again = _service(tmp_path, FakeScorer(), wait=False, max_age_seconds=3600)
    again.start()  # deletes what is past the retention as it loads
    again.drain()
    with sqlite3.connect(tmp_path / "compression.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM compressions").fetchone() == (0,)
    await again.close()


@pytest.mark.anyio
async def test_wait_mode_compresses_before_answering(tmp_path: Path) -> None:
    service = _service(tmp_path, FakeScorer(), wait=True)
    service.start()
    service.drain()  # the compressor is loaded
    result = await service.compressed(PROMPT)
    assert result is not None and result.compressed != PROMPT
    await service.close()


class SlowScorer(FakeScorer):
    """Takes `seconds` per prompt: a compressor slower than the wait."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def score(self, text: str, units: Sequence[Unit], *, rate: float) -> list[float]:
        time.sleep(self.seconds)
        return super().score(text, units, rate=rate)


@pytest.mark.anyio
async def test_the_wait_is_bounded_and_a_late_compression_still_serves_the_next_request(tmp_path: Path) -> None:
    scorer = SlowScorer(0.6)
    service = _service(tmp_path, scorer, wait=True, wait_seconds=0.1)
    service.start()
    service.drain()
    started = time.monotonic()
    assert await service.compressed(PROMPT) is None  # not ready within the wait: forwarded as it is
    assert time.monotonic() - started < 0.5
    service.drain()
    result = await service.compressed(PROMPT)  # finished in the background all the same
    assert result is not None and result.compressed != PROMPT and scorer.calls == WARM_UP + 1
    await service.close()


@pytest.mark.anyio
async def test_concurrent_requests_for_a_new_prompt_compress_it_once(tmp_path: Path) -> None:
    scorer = SlowScorer(0.2)
    service = _service(tmp_path, scorer, wait=True, wait_seconds=5.0)
    service.start()
    service.drain()
    results = await asyncio.gather(*(service.compressed(PROMPT) for _ in range(8)))
    assert scorer.calls == WARM_UP + 1
    assert all(r is not None and r == results[0] for r in results)
    await service.close()


@pytest.mark.anyio
async def test_languages_the_compressor_does_not_handle_are_left_alone(tmp_path: Path) -> None:
    scorer = FakeScorer()
    german = "Du bist ein Kundendienst-Assistent. Gib niemals interne Notizen heraus. " * 12
    service = CompressionService(
        load_compressor=lambda: SpanSafeCompressor(scorer, keep_markers=MARKERS), results=SqliteStorage(tmp_path),
        policy=CompressionPolicy(rate=0.5, min_tokens=50, languages=frozenset({"en"})),
        language_of=lambda text: "de" if "Kundendienst" in text else "en")
    service.start()
    service.drain()
    assert await service.compressed(german) is None
    assert scorer.calls == WARM_UP
    english = await service.compressed(PROMPT)
    assert english is not None and english.compressed != PROMPT and scorer.calls == WARM_UP + 1
    await service.close()


@pytest.mark.anyio
async def test_short_prompts_are_left_alone(tmp_path: Path) -> None:
    scorer = FakeScorer()
    service = _service(tmp_path, scorer)
    service.start()
    short = "You are a helpful assistant."  # fewer bytes than min_tokens: decided without counting
    longer = "You are a helpful assistant who answers in English. " * 3  # more bytes, fewer tokens: counted
    for text in (short, longer):
        await service.compressed(text)
        service.drain()
        assert await service.compressed(text) is None
    assert scorer.calls == WARM_UP
    await service.close()


@pytest.mark.anyio
async def test_failures_leave_prompts_uncompressed(tmp_path: Path) -> None:
    failing = _service(tmp_path, FailingScorer())
    failing.start()
    await failing.compressed(PROMPT)
    failing.drain()
    assert await failing.compressed(PROMPT) is None

    def cannot_load() -> SpanSafeCompressor:
        raise OSError("model folder missing")

    broken = CompressionService(load_compressor=cannot_load, results=SqliteStorage(tmp_path / "c2"),
                                policy=CompressionPolicy())
    broken.start()
    broken.drain()
    assert broken.problem == "OSError: model folder missing"
    assert await broken.compressed(PROMPT) is None
    await broken.close()
    await failing.close()
