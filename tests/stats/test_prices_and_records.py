"""Prices by model family, and what a finished log record says about one request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from semproxy.compress.tokens import count_tokens
from semproxy.stats.prices import Price, PriceTable
from semproxy.stats.record import COUNT_LIMIT, Observed, RequestRecord, finish
from semproxy.types import Attempt, RequestFacts

pytestmark = pytest.mark.usefixtures("offline_encodings")


def test_longest_prefix_wins_and_overrides_replace_defaults() -> None:
    table = PriceTable({"gpt-4o": [1.0, 2.0], "My-Model": [0.5, 0.5]})
    assert table.get("gpt-4o-mini-2024-07-18") == Price(0.15, 0.60)  # "gpt-4o-mini" beats "gpt-4o"
    assert table.get("gpt-4o-2024-08-06") == Price(1.0, 2.0)  # overridden
    assert table.get("openai/GPT-4o") == Price(1.0, 2.0)  # provider prefix, any case
    assert table.get("my-model-v2") == Price(0.5, 0.5)
    assert table.get("deepseek-chat") == Price(0.27, 1.10)
    assert table.get("mistral-small-latest") == Price(0.10, 0.30)
    assert table.get("llama-3-70b") is None
    assert Price(2.0, 8.0).cost(1_000_000, 500_000) == pytest.approx(6.0)


def _observed(request: dict[str, Any], response: bytes, *, outcome: str = "miss", stream: bool = False,
              **info: Any) -> Observed:
    return Observed(started=1000.0, method="POST", endpoint="/v1/chat/completions", tenant=lambda: "t1",
                    request_body=[json.dumps(request).encode()], status=200,
                    content_type="text/event-stream" if stream else "application/json",
                    response_body=[response], total_ms=12.0, ttfb_ms=3.0, facts=RequestFacts(cache=outcome, **info),
                    default_upstream="api.example")


def _finish(observed: Observed, *, prompt_chars: int = 0) -> RequestRecord:
    return finish(observed, prices=PriceTable(), count=count_tokens, hash_key=b"k" * 32, prompt_chars=prompt_chars)


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "What is the capital of France?"}]}


def _completion(text: str, usage: dict[str, int] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"id": "c", "object": "chat.completion", "model": "gpt-4o-mini", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    if usage:
        body["usage"] = usage
    return body


def test_a_hit_saves_the_upstreams_own_usage_at_the_models_price() -> None:
    answer = _completion("Paris.", {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500})
    record = _finish(_observed(CHAT, json.dumps(answer).encode(), outcome="semantic", similarity=0.97,
                               verdict="accepted", embed_ms=4.0, search_ms=0.5))
    assert (record.prompt_tokens, record.completion_tokens, record.hit_saved_tokens) == (1000, 500, 1500)
    assert record.cost_saved_hit == pytest.approx((1000 * 0.15 + 500 * 0.60) / 1e6)
    assert record.outcome == "semantic" and record.similarity == 0.97 and record.verdict == "accepted"
    assert record.upstream is None and record.upstream_ms is None  # nothing went upstream
    assert (record.embed_ms, record.search_ms) == (4.0, 0.5)


def test_a_miss_counts_compression_savings_and_names_the_upstream() -> None:
    answer = _completion("Paris.", {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22})
    record = _finish(_observed(CHAT, json.dumps(answer).encode(), prompt_tokens_saved=300, upstream_ms=9.0,
                               attempts=[Attempt(upstream="a", outcome="timeout", ms=300.0),
                                         Attempt(upstream="b", outcome="ok", ms=5.0)],
                               upstream="b"))
    assert record.hit_saved_tokens == 0 and record.cost_saved_hit == 0
    assert record.compression_saved_tokens == 300
    assert record.cost_saved_compression == pytest.approx(300 * 0.15 / 1e6)
    assert record.upstream == "b" and record.upstream_ms == 9.0
    assert json.loads(record.attempts or "")[0] == {"upstream": "a", "outcome": "timeout", "ms": 300.0}


def test_without_usage_tokens_are_counted_with_tiktoken() -> None:
    record = _finish(_observed(CHAT, json.dumps(_completion("The capital of France is Paris.", None)).encode()))
    texts = "Be brief.\nWhat is the capital of France?"
    assert record.prompt_tokens == count_tokens(texts, "gpt-4o-mini") + 3 * 2 + 3
    assert record.completion_tokens == count_tokens("The capital of France is Paris.", "gpt-4o-mini")


def _sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"


def _stream_events(text: str, usage: dict[str, int] | None) -> Iterator[dict[str, Any]]:
    for piece in (text[:5], text[5:]):
        yield {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}}]}
    yield {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    if usage:
        yield {"object": "chat.completion.chunk", "choices": [], "usage": usage}


def test_streams_read_the_usage_chunk_or_count_the_text() -> None:
    with_usage = _finish(_observed(CHAT, _sse(list(_stream_events("Paris is it.", {
        "prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}))), stream=True))
    assert (with_usage.prompt_tokens, with_usage.completion_tokens, with_usage.stream) == (11, 4, True)
    counted = _finish(_observed(CHAT, _sse(list(_stream_events("Paris is it.", None))), stream=True))
    assert counted.completion_tokens == count_tokens("Paris is it.", "gpt-4o-mini")


def test_a_very_long_answer_is_counted_from_its_start_and_scaled() -> None:
    """tiktoken holds tens of bytes a character while it counts: 8 MB of text must not take 400 MB."""
    seen: list[int] = []

    def counting(text: str, model: str) -> int:
        seen.append(len(text))
        return count_tokens(text, model)

    text = "Paris is the capital of France. " * 100_000  # 3.2 M characters, no usage
    answer = json.dumps(_completion(text, None)).encode()
    record = finish(_observed(CHAT, answer), prices=PriceTable(), count=counting, hash_key=b"k" * 32,
                    prompt_chars=0)
    assert max(seen) == COUNT_LIMIT
    exact = count_tokens(text, "gpt-4o-mini")
    assert abs(record.completion_tokens - exact) / exact < 0.01


def test_prompts_are_logged_as_keyed_hashes_and_text_only_when_configured() -> None:
    answer = json.dumps(_completion("Paris.", None)).encode()
    hashed = _finish(_observed(CHAT, answer))
    assert hashed.prompt_text is None and hashed.prompt_hash and len(hashed.prompt_hash) == 16
    other_key = finish(_observed(CHAT, answer), prices=PriceTable(), count=count_tokens, hash_key=b"x" * 32,
                       prompt_chars=0)
    assert other_key.prompt_hash != hashed.prompt_hash  # keyed: not a plain hash anyone can recompute
    shown = _finish(_observed(CHAT, answer), prompt_chars=10)
    assert shown.prompt_text == "What is th" and shown.prompt_hash == hashed.prompt_hash


def test_an_unparseable_request_still_yields_a_record(tmp_path: Path) -> None:
    observed = _observed(CHAT, b"not json")
    observed.request_body = [b'{"model": "gpt-4o", "messages": [', b"...cut"]
    observed.status = 0
    record = _finish(observed)
    assert record.model == "gpt-4o" and record.prompt_tokens == 0 and record.status == 0


def test_price_and_admin_settings_are_read_and_checked(tmp_path: Path) -> None:
    from semproxy.config import load_settings
    from semproxy.errors import ConfigError

    config = tmp_path / "c.toml"
    config.write_text('stats_retention_days = 7\n[prices]\n"my-model" = [0.5, 1.5]\n')
    settings = load_settings(config_file=config, environ={"SEMPROXY_ADMIN_TOKEN": "t" * 16})
    assert settings.prices == {"my-model": [0.5, 1.5]} and settings.admin_token == "t" * 16
    assert settings.stats_retention_days == 7
    from_env = load_settings(environ={"SEMPROXY_PRICES": '{"x": [1, 2]}'})
    assert PriceTable(from_env.prices).get("x-large") == Price(1.0, 2.0)
    for environ, message in (({"SEMPROXY_PRICES": '{"x": [1]}'}, "prices"),
                             ({"SEMPROXY_PRICES": "[1, 2]"}, "prices"),
                             ({"SEMPROXY_PRICES": "{oops"}, "prices"),
                             ({"SEMPROXY_ADMIN_TOKEN": "short"}, "at least 16 characters"),
                             ({"SEMPROXY_CLIENT_KEYS": "sk-plain-key"}, "client_keys must list key hashes"),
                             ({"SEMPROXY_STATS_RETENTION_DAYS": "-1"}, "stats_retention_days")):
        with pytest.raises(ConfigError, match=message):
            load_settings(environ=environ)
