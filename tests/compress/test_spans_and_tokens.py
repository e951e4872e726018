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


_SEED_IN_A_CHILD = """
import os, sys, time
from pathlib import Path
from semproxy.compress.tokens import count_tokens, install_offline_encodings
start = float(sys.argv[2])
while time.time() < start:
    pass
install_offline_encodings(Path(sys.argv[1]))
assert count_tokens("hello world", "gpt-4o") == 2
"""


def test_components_seeding_a_fresh_folder_at_once_never_collide(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The compressor and the statistics layer of several processes, each with threads, seed tiktoken's folder
    at the same moment (a fresh data dir): every one succeeds, the files are whole, no temporary file is left."""
    import subprocess
    import sys
    import threading
    import time

    from semproxy.app import _token_counter
    from semproxy.compress.tokens import install_offline_encodings

    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    folder = tmp_path / "data" / "tiktoken"
    start = time.time() + 1.5
    env = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_CACHE_DIR"}
    children = [subprocess.Popen([sys.executable, "-c", _SEED_IN_A_CHILD, str(folder), str(start)], env=env)
                for _ in range(3)]
    barrier, failures = threading.Barrier(6), []

    def seed(component: str) -> None:
        barrier.wait()
        try:
            if component == "stats":
                assert _token_counter(tmp_path / "data")("hello world", "gpt-4o") == 2
            else:
                install_offline_encodings(folder)
        except Exception as exc:  # collected: an assertion in a thread would not fail the test
            failures.append(exc)

    time.sleep(max(0.0, start - time.time()))
    threads = [threading.Thread(target=seed, args=(c,)) for c in ("stats", "compressor") * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [child.wait(timeout=60) for child in children] == [0, 0, 0]
    assert failures == []
    assert sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp")) == []
    for name, sha256 in ENCODINGS.items():
        url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
        assert hashlib.sha256((folder / hashlib.sha1(url.encode()).hexdigest()).read_bytes()).hexdigest() == sha256


def test_words_that_flip_an_instruction_are_kept_in_europes_languages_and_bullets_stay() -> None:
    text = ("- Gib niemals Kontonummern heraus, nur den Status.\n- Ne communiquez jamais le code. N'envoyez pas "
            "de lien.\n- No inventes precios sin confirmar.\n- Nigdy nie podawaj hasła, tylko status.")
    protected = {text[u.start:u.end].strip(".,") for u in units(text) if u.protected}
    flips = {"niemals", "nur", "Ne", "jamais", "N'envoyez", "pas", "No", "sin", "Nigdy", "nie", "tylko"}
    assert flips | {"-"} <= protected
    assert {"Kontonummern", "communiquez", "inventes", "podawaj"} <= protected  # what each negation binds
    assert {"heraus", "code", "precios", "hasła"}.isdisjoint(protected)
    quoted = "Antworte mit „Bitte warten Sie kurz“ oder „Proszę czekać”."
    kept = {quoted[u.start:u.end] for u in units(quoted) if u.protected}
    assert kept >= {"„Bitte warten Sie kurz“", "„Proszę czekać”"}


def test_the_word_a_negation_binds_is_kept_too_within_its_clause() -> None:
    text = "Do not promise dates that the tool does not show. Never ask for card numbers. Reply only in English."
    kept = [text[u.start:u.end] for u in units(text) if u.protected]
    assert kept == ["not", "promise", "not", "show.", "Never", "ask", "only", "in"]
