"""Comparing a cached answer with the upstream's fresh one, for audited hits (semproxy.cache.learning).

Only reproducible requests are compared (temperature 0, or a seed): otherwise two answers to one prompt
differ anyway. Short answers (a label, a number, a name: at most SHORT_WORDS words) and structured ones (JSON,
code, tool calls) must be equal once case, spacing, punctuation and word order are set aside; JSON and tool
arguments are compared parsed. Longer prose counts as the same answer when its words match at RATIO or more
(difflib's ratio over the word sequences). That measure is lexical: two answers that say the same thing in
other words count as different, so the measured wrong-hit rate errs high, never low.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from typing import Any

from semproxy.openai import JSON, Kind

SHORT_WORDS = 12
RATIO = 0.8
MAX_WORDS = 2000  # prose is compared on its first words: difflib's time grows with the product of the lengths
_END_PUNCTUATION = re.compile(r"[\s.!?;:\u3002\uff01\uff1f]+$")  # and the ideographic full stop, "!" and "?"


def reproducible(body: JSON) -> bool:
    """Whether the request asks for a reproducible answer: temperature 0 or a seed."""
    temperature, seed = body.get("temperature"), body.get("seed")
    zero = isinstance(temperature, int | float) and not isinstance(temperature, bool) and temperature == 0
    return zero or (isinstance(seed, int) and not isinstance(seed, bool))


@dataclasses.dataclass(frozen=True)
class Answer:
    """What an answer says, reduced to what a comparison needs."""

    text: str
    structured: Any  # parsed JSON content, or the tool calls (with any text); None for prose


def same_answer(kind: Kind, cached: bytes, fresh: bytes) -> bool | None:
    """Whether the two completions give the same answer; None if either cannot be read."""
    first, second = read_answer(kind, cached), read_answer(kind, fresh)
    if first is None or second is None:
        return None
    if first.structured is not None or second.structured is not None:
        return bool(first.structured == second.structured)
    a, b = _plain(first.text), _plain(second.text)
    if a == b:
        return True
    words_a, words_b = a.split(), b.split()
    if min(len(words_a), len(words_b)) <= SHORT_WORDS or "```" in a or "```" in b:
        return _bag(words_a) == _bag(words_b)  # "Paris is the capital." / "The capital is Paris."
    return difflib.SequenceMatcher(None, words_a[:MAX_WORDS], words_b[:MAX_WORDS], autojunk=False).ratio() >= RATIO


def read_answer(kind: Kind, raw: bytes) -> Answer | None:
    """The first choice's text and structure, from a stored (non-stream) completion."""
    try:
        body = json.loads(raw)
        choice = body["choices"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if kind == "completion":
        text = choice.get("text") if isinstance(choice, dict) else None
        return Answer(text, _json(text)) if isinstance(text, str) else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        return None
    content = message.get("content")
    text = content if isinstance(content, str) else ""
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        return Answer(text, {"tool_calls": [_call(call) for call in calls], "content": _plain(text)})
    return Answer(text, _json(text))


def _call(call: Any) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        return call
    arguments = function.get("arguments")
    parsed = _json(arguments) if isinstance(arguments, str) else None
    return [function.get("name"), arguments if parsed is None else parsed]


def _json(text: str) -> Any:
    """The parsed value of a JSON object or array (a model asked for JSON may fence it), else None."""
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.strip("`").removeprefix("json").strip()
    if not stripped.startswith(("{", "[")):
        return None
    try:
        return json.loads(stripped)
    except ValueError:
        return None


def _bag(words: list[str]) -> list[str]:
    return sorted(word.strip(".,;:!?\"'()") for word in words)


def _plain(text: str) -> str:
    return _END_PUNCTUATION.sub("", " ".join(text.split()).casefold())
