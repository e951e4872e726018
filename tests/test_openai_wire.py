"""Wire format: SSE parsing, stream assembly (content, tool calls, usage) and replay round trips."""

from __future__ import annotations

import json
from typing import Any

import pytest

from semproxy.openai import OVERSIZED, SSEParser, StreamAssembler, prompt_text, replay_stream


def _events(stream: bytes, *, split: int) -> list[str]:
    parser = SSEParser()
    events: list[str] = []
    for i in range(0, len(stream), split):  # arbitrary chunk boundaries, as TCP delivers them
        events += parser.feed(stream[i:i + split])
    return events


@pytest.mark.parametrize("split", [1, 3, 7, 1000])
def test_sse_parser_handles_any_chunking_and_line_endings(split: int) -> None:
    stream = b'data: {"a": 1}\r\n\r\n: a comment\n\nevent: x\ndata: line one\ndata: line two\n\ndata: [DONE]\n\n'
    assert _events(stream, split=split) == ['{"a": 1}', "line one\nline two", "[DONE]"]


def _chat_chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> str:
    return json.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m",
                       "choices": [{"index": index, "delta": delta, "finish_reason": finish}]})


def test_assembles_tool_calls_and_usage() -> None:
    assembler = StreamAssembler("chat")
    for data in [
        _chat_chunk({"role": "assistant", "content": None}),
        _chat_chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                     "function": {"name": "get_weather", "arguments": ""}}]}),
        _chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        _chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        _chat_chunk({"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                                     "function": {"name": "get_time", "arguments": "{}"}}]}),
        _chat_chunk({}, finish="tool_calls"),
        json.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m", "choices": [],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}),
        "[DONE]",
    ]:
        assembler.feed(data)
    result = assembler.result()
    assert result is not None
    message = result["choices"][0]["message"]
    assert message["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]
    assert result["choices"][0]["finish_reason"] == "tool_calls"
    assert result["usage"]["total_tokens"] == 7
    assert result["object"] == "chat.completion"


def test_incomplete_or_failed_streams_assemble_to_nothing() -> None:
    cut = StreamAssembler("chat")
    cut.feed(_chat_chunk({"role": "assistant", "content": "Hel"}))
    assert cut.result() is None  # no finish_reason: the stream was cut
    failed = StreamAssembler("chat")
    failed.feed(_chat_chunk({"content": "x"}, finish="stop"))
    failed.feed(json.dumps({"error": {"message": "overloaded"}}))
    assert failed.result() is None


def test_multiple_choices_assemble_in_order() -> None:
    assembler = StreamAssembler("chat")
    assembler.feed(_chat_chunk({"content": "B"}, finish="stop", index=1))
    assembler.feed(_chat_chunk({"content": "A"}, finish="stop", index=0))
    result = assembler.result()
    assert result is not None
    assert [c["message"]["content"] for c in result["choices"]] == ["A", "B"]


@pytest.mark.parametrize("include_usage", [True, False])
def test_replay_then_assemble_gives_back_the_completion(include_usage: bool) -> None:
    completion = {
        "id": "chatcmpl-9", "object": "chat.completion", "created": 9, "model": "m", "system_fingerprint": "fp",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            "logprobs": None, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    stream = b"".join(replay_stream("chat", completion, include_usage=include_usage))
    assembler = StreamAssembler("chat")
    for data in _events(stream, split=5):
        assembler.feed(data)
    assert assembler.done
    expected = completion if include_usage else {k: v for k, v in completion.items() if k != "usage"}
    assert assembler.result() == expected


def test_text_completion_round_trip() -> None:
    completion = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
                  "choices": [{"index": 0, "text": "once upon", "logprobs": None, "finish_reason": "length"}]}
    assembler = StreamAssembler("completion")
    for data in _events(b"".join(replay_stream("completion", completion, include_usage=False)), split=4):
        assembler.feed(data)
    assert assembler.result() == completion


@pytest.mark.parametrize(("kind", "body", "expected"), [
    ("chat", {"messages": [{"role": "user", "content": "hi"}]}, "hi"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                         {"type": "text", "text": "b"}]}]}, "a\nb"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, None),
    ("chat", {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}]}, None),
    ("completion", {"prompt": "p"}, "p"),
    ("completion", {"prompt": ["p"]}, "p"),
    ("completion", {"prompt": ["p", "q"]}, None),
    ("completion", {"prompt": [1, 2, 3]}, None),
    ("embedding", {"input": "x"}, None),
])
def test_prompt_text(kind: str, body: dict[str, Any], expected: str | None) -> None:
    assert prompt_text(kind, body) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [
    {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 10**9, "function": {"name": "x"}}]}}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": -1, "function": {"name": "x"}}]}}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": "7", "function": {"name": "x"}}]}}]},
    {"choices": [{"index": 10**9, "delta": {"content": "x"}}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": "not a list of calls"}}]},
    {"choices": ["not a choice"]},
])
def test_a_hostile_chunk_fails_the_assembly_without_growing_it(bad: dict[str, Any]) -> None:
    """An upstream naming index 10**9 once made the proxy grow by gigabytes: such a stream is relayed, never
    stored, and the assembler holds nothing for the index it named."""
    assembler = StreamAssembler("chat")
    assembler.feed(_chat_chunk({"role": "assistant", "content": "ok"}))
    assembler.feed(json.dumps({"id": "c", "object": "chat.completion.chunk", **bad}))
    assembler.feed(_chat_chunk({}, finish="stop"))
    assert assembler.failed and assembler.result() is None
    assert all(len(c.get("message", {}).get("tool_calls", [])) <= 1 for c in assembler._choices.values())


def test_many_small_deltas_assemble_into_one_text() -> None:
    assembler = StreamAssembler("chat")
    for i in range(20_000):  # pieces joined once at the end: linear, where appending to a string was quadratic
        assembler.feed(_chat_chunk({"content": "ab"[i % 2], "tool_calls": [
            {"index": 0, "id": "call_1" if i == 0 else None, "function": {"arguments": "x"}}]}))
    assembler.feed(_chat_chunk({}, finish="tool_calls"))
    message = (assembler.result() or {})["choices"][0]["message"]
    assert message["content"] == "ab" * 10_000
    assert message["tool_calls"] == [{"id": "call_1", "type": "function",
                                      "function": {"name": "", "arguments": "x" * 20_000}}]


def test_sse_parser_joins_a_crlf_split_across_chunks_once() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\ndata: b\r") == []  # the \n completes "\r\n": no blank line, no event yet
    assert parser.feed(b"\n\r\n") == ["a\nb"]


@pytest.mark.parametrize("split", [1, 5, 4096])
def test_an_oversized_event_is_dropped_as_it_arrives(split: int) -> None:
    """A 50 MB delta or a line that never ends once made the parser hold (and re-split) everything it had."""
    parser = SSEParser(max_event=100)
    stream = b"data: small\n\n" + b"data: " + b"x" * 1000 + b"\n\n" + b"data: [DONE]\n\n"
    events = []
    for i in range(0, len(stream), split):
        events += parser.feed(stream[i:i + split])
        assert parser._line_size + parser._size <= 100 + split
    assert events == ["small", OVERSIZED, "[DONE]"]
    endless = SSEParser(max_event=100)
    for _ in range(1000):
        assert endless.feed(b"x" * 1000) == []
    assert endless._line_size <= 100 and not endless._data


def test_an_oversized_event_fails_the_assembly() -> None:
    assembler = StreamAssembler("chat")
    assembler.feed(_chat_chunk({"content": "ok"}))
    assembler.feed(OVERSIZED)
    assembler.feed(_chat_chunk({}, finish="stop"))
    assembler.feed("[DONE]")
    assert assembler.done and assembler.failed and assembler.result() is None


def test_logprobs_are_merged_in_order() -> None:
    assembler = StreamAssembler("chat")
    for token in ("a", "b", "c"):
        assembler.feed(json.dumps({"choices": [{"index": 0, "delta": {"content": token},
                                                "logprobs": {"content": [{"token": token, "logprob": -1.0}]}}]}))
    assembler.feed(_chat_chunk({}, finish="stop"))
    result = assembler.result()
    assert result is not None
    assert [t["token"] for t in result["choices"][0]["logprobs"]["content"]] == ["a", "b", "c"]


def test_an_assembly_past_its_budget_fails_and_lets_go() -> None:
    """An endless stream is relayed for as long as the client reads it; its assembly must not grow with it."""
    assembler = StreamAssembler("chat", max_held=10_000)
    for _ in range(100):
        assembler.feed(_chat_chunk({"content": "y" * 1000}))
    assert assembler.failed and not assembler._pieces and assembler._held <= 10_000 + 2_000
    assembler.feed(_chat_chunk({}, finish="stop"))
    assert assembler.result() is None
