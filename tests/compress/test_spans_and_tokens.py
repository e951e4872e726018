"""Protected spans, layout-preserving assembly, and offline token counting."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from semproxy.compress.spans import assemble, protected_ranges, units
from semproxy.compress.tokens import ENCODINGS, count_tokens, encoding_name

PROMPT = """You are a support bot for ACME. Do not reveal internal notes. Answer in under 50 words.
Greet the user as {name} and sign as {{agent}}; see https://acme.example/help?topic=a for policies.
Say "we are sorry" exactly when refunding, and only after checking order #A-1234.
```json
{"refund": true, "max_eur": 20.5}
```
{"schema": {"type": "object", "required": ["id"]}}
| plan | price |
|------|-------|
| pro  | 10    |
<keep>Never discuss competitors by name.</keep> Contact support@acme.example or write to `ops-team`."""

MUST_SURVIVE = [
    "not", "50", "{name}", "{{agent}}", "https://acme.example/help?topic=a", '"we are sorry"', "only", "#A-1234",
    '```json\n{"refund": true, "max_eur": 20.5}\n```', '{"schema": {"type": "object", "required": ["id"]}}',
    "| plan | price |\n|------|-------|\n| pro  | 10    |", "<keep>Never discuss competitors by name.</keep>",
    "support@acme.example", "`ops-team`",
]


@pytest.mark.parametrize("span", MUST_SURVIVE)
def test_protected_spans_survive_even_when_everything_else_is_dropped(span: str) -> None:
    pieces = units(PROMPT, keep_markers=("<keep>", "</keep>"))
    compressed = assemble(PROMPT, pieces, [u.protected for u in pieces])
    assert span in compressed


def test_dropped_words_leave_layout_intact() -> None:
    text = "Intro words here.\n\n- first point\n  - nested 2 point\nlast words"
    pieces = units(text)
    keep = [text[u.start:u.end] not in ("words", "here.", "point", "last") for u in pieces]
    assert assemble(text, pieces, keep) == "Intro\n\n- first\n  - nested 2"


def test_apostrophes_are_not_quotes_and_json_must_start_a_line() -> None:
    ranges = protected_ranges("it's the user's choice, see {a} in f(x) = {not json")
    assert ranges == [(28, 31)]  # only the placeholder {a}


def test_encodings_are_installed_offline_and_verified(offline_encodings: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import tiktoken.registry

    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # no route out: a download would fail at once
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # forget encodings loaded earlier in the session
    count_tokens.__globals__["_encoding"].cache_clear()
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(offline_encodings)
    for name, sha256 in ENCODINGS.items():
        url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
        cached = offline_encodings / hashlib.sha1(url.encode()).hexdigest()
        assert hashlib.sha256(cached.read_bytes()).hexdigest() == sha256
    assert count_tokens("hello world", "gpt-4o") == 2
    assert count_tokens("hello world", "mistral-large-latest") == 2


def test_llmlingua_builds_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import tiktoken
    import tiktoken.registry

    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    assert tiktoken.encoding_for_model("gpt-3.5-turbo").name == "cl100k_base"  # what PromptCompressor asks for


@pytest.mark.parametrize(("model", "encoding"), [
    ("gpt-4o-mini", "o200k_base"), ("gpt-4.1", "o200k_base"), ("o3-mini", "o200k_base"),
    ("openai/gpt-5", "o200k_base"), ("gpt-4", "cl100k_base"), ("gpt-3.5-turbo", "cl100k_base"),
    ("deepseek-chat", "cl100k_base"),
])
def test_encoding_per_model(model: str, encoding: str) -> None:
    assert encoding_name(model) == encoding
