"""Comparing a cached answer with a fresh one (audited hits)."""

from __future__ import annotations

import json

import pytest

from semproxy.cache.answers import reproducible, same_answer


def chat(content: str | None = None, *, tool_calls: list[dict[str, object]] | None = None) -> bytes:
    message: dict[str, object] = {"role": "assistant", "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return json.dumps({"choices": [{"index": 0, "message": message}]}).encode()


def call(name: str, arguments: str) -> dict[str, object]:
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}


@pytest.mark.parametrize(("body", "expected"), [
    ({"temperature": 0}, True), ({"temperature": 0.0}, True), ({"seed": 7}, True), ({"temperature": 0.2}, False),
    ({}, False), ({"temperature": False}, False), ({"seed": "7"}, False), ({"seed": True}, False),
])
def test_only_reproducible_requests_are_compared(body: dict[str, object], expected: bool) -> None:
    assert reproducible(body) is expected


def test_short_answers_must_be_equal_but_for_case_spacing_and_end_punctuation() -> None:
    assert same_answer("chat", chat("Yes."), chat(" yes"))
    assert same_answer("chat", chat("Positive!"), chat("positive"))
    assert not same_answer("chat", chat("Yes."), chat("No."))
    assert not same_answer("chat", chat("42"), chat("41"))
    assert not same_answer("chat", chat("The answer is yes"), chat("The answer is no"))
    assert same_answer("chat", chat("The capital of France is Paris."), chat("Paris is the capital of France"))
    assert not same_answer("chat", chat("The capital of France is Paris."), chat("Paris."))


def test_json_and_tool_calls_are_compared_parsed() -> None:
    assert same_answer("chat", chat('{"label": "yes", "score": 1}'), chat('{ "score": 1,  "label": "yes" }'))
    assert same_answer("chat", chat('```json\n{"a": 1}\n```'), chat('{"a": 1}'))
    assert not same_answer("chat", chat('{"label": "yes"}'), chat('{"label": "no"}'))
    assert same_answer("chat", chat(tool_calls=[call("refund", '{"order": 7, "full": true}')]),
                       chat(tool_calls=[call("refund", '{"full": true, "order": 7}')]))
    assert not same_answer("chat", chat(tool_calls=[call("refund", '{"order": 7}')]),
                           chat(tool_calls=[call("refund", '{"order": 8}')]))
    assert not same_answer("chat", chat(tool_calls=[call("refund", "{}")]), chat("I refunded it."))


def test_prose_counts_as_the_same_when_its_words_mostly_match() -> None:
    base = ("To reset your password open the settings page, choose security, then press the reset button and "
            "follow the link we send to your email address.")
    reworded = base.replace("press", "click").replace("address.", "address within an hour.")
    other = ("Passwords cannot be reset from the app; write to our support team and they will send a new "
             "temporary password to the phone number on your account.")
    assert same_answer("chat", chat(base), chat(reworded))
    assert not same_answer("chat", chat(base), chat(other))
    assert same_answer("completion", json.dumps({"choices": [{"text": base}]}).encode(),
                       json.dumps({"choices": [{"text": base + " "}]}).encode())


def test_an_answer_that_cannot_be_read_is_not_compared() -> None:
    assert same_answer("chat", b"not json", chat("yes")) is None
    assert same_answer("chat", json.dumps({"choices": []}).encode(), chat("yes")) is None
