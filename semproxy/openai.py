"""OpenAI wire format: request validation, the text a request asks about, SSE parsing, assembly and replay."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from typing import Any, Literal

from semproxy.errors import RequestError

Kind = Literal["chat", "completion", "embedding"]
JSON = dict[str, Any]

_NUMBER = (int, float)
_FieldTypes = dict[str, tuple[type, ...]]
# Fields whose type we check because the cache reads them or because a wrong type would be stored as a key.
_COMMON_FIELDS: _FieldTypes = {
    "model": (str,),
    "stream": (bool,),
    "n": (int,),
    "temperature": _NUMBER,
    "top_p": _NUMBER,
    "max_tokens": (int,),
    "max_completion_tokens": (int,),
    "seed": (int,),
    "stop": (str, list),
    "presence_penalty": _NUMBER,
    "frequency_penalty": _NUMBER,
    "logit_bias": (dict,),
    "user": (str,),
    "stream_options": (dict,),
}
_CHAT_FIELDS: _FieldTypes = {
    "messages": (list,), "tools": (list,), "tool_choice": (str, dict), "response_format": (dict,),
}
_COMPLETION_FIELDS: _FieldTypes = {"prompt": (str, list)}
_EMBEDDING_FIELDS: _FieldTypes = {"input": (str, list), "encoding_format": (str,), "dimensions": (int,)}
_TYPE_NAMES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "an array",
               dict: "an object"}


class BadJSON(ValueError):
    """Bytes that are not JSON, or JSON Python cannot hold (nested too deeply, an integer too long)."""


def loads(raw: bytes | str) -> Any:
    """`json.loads` for bytes from the network: every way it can fail becomes `BadJSON`.

    Besides JSONDecodeError, the standard parser raises UnicodeDecodeError (invalid UTF-8), RecursionError
    (nesting deeper than the interpreter's recursion limit, about 1,000 levels) and a plain ValueError
    (an integer of more than 4,300 digits); each must end as a 400, not a 500.
    """
    try:
        return json.loads(raw)
    except RecursionError as exc:
        raise BadJSON("the JSON is nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
        raise BadJSON(str(exc)) from exc


# Only an escape can put a UTF-16 surrogate into parsed JSON (UTF-8 cannot encode one), and the parser joins a
# pair such as "\ud83d\ude00" into one character: a surrogate left in a string is half of a pair.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def loads_request(raw: bytes) -> Any:
    """`loads` for a request body, whose strings go on to embedders, databases and UTF-8 encoders: half of a
    surrogate pair ("\\ud800") is valid JSON but not text, and every one of them fails on it, so it is BadJSON."""
    value = loads(raw)
    if _SURROGATE_ESCAPE.search(raw) is not None:
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError as exc:
            raise BadJSON("a string holds half of a UTF-16 surrogate pair, which is not text") from exc
        except RecursionError as exc:
            raise BadJSON("the JSON is nested too deeply") from exc
    return value


def parse_body(kind: Kind, raw: bytes) -> JSON:
    """Decode and type-check a request body; raise RequestError (400) with OpenAI's wording if it is wrong."""
    try:
        body = loads_request(raw)
    except BadJSON as exc:
        raise RequestError(f"We could not parse the JSON body of your request: {exc}.", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.", code="invalid_json")
    specific = {"chat": _CHAT_FIELDS, "completion": _COMPLETION_FIELDS, "embedding": _EMBEDDING_FIELDS}[kind]
    fields = {**_COMMON_FIELDS, **specific}
    for name, types in fields.items():
        _check_type(body, name, types)
    _require(body, "model")
    if kind == "chat":
        _require(body, "messages")
        _check_messages(body["messages"])
    elif kind == "completion":
        _require(body, "prompt")
    else:
        _require(body, "input")
    _check_ranges(body)
    return body


def _require(body: JSON, name: str) -> None:
    if body.get(name) is None:
        raise RequestError(f"Missing required parameter: '{name}'.", code="missing_required_parameter", param=name)


def _check_type(body: JSON, name: str, types: tuple[type, ...]) -> None:
    value = body.get(name)
    if value is None:
        return
    # bool is an int in Python, but `"n": true` is not a valid count.
    if isinstance(value, types) and not (isinstance(value, bool) and bool not in types):
        return
    expected = " or ".join(_TYPE_NAMES[t] for t in types if t in _TYPE_NAMES)
    raise RequestError(
        f"Invalid type for '{name}': expected {expected}, but got {_describe(value)}.",
        code="invalid_type", param=name,
    )


def _describe(value: Any) -> str:
    for python_type, name in _TYPE_NAMES.items():
        if isinstance(value, python_type) and not (isinstance(value, bool) and python_type is not bool):
            return name
    return "null" if value is None else type(value).__name__


def _check_messages(messages: list[Any]) -> None:
    if not messages:
        raise RequestError("'messages' must contain at least one message.", code="invalid_value", param="messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestError(f"Invalid type for '{where}': expected an object.", code="invalid_type", param=where)
        if not isinstance(message.get("role"), str):
            raise RequestError(f"'{where}.role' must be a string.", code="invalid_type", param=f"{where}.role")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise RequestError(
                f"Invalid type for '{where}.content': expected a string or an array of content parts.",
                code="invalid_type", param=f"{where}.content",
            )
        if isinstance(content, list) and not all(isinstance(p, dict) for p in content):
            raise RequestError(f"'{where}.content' parts must be objects.", code="invalid_type",
                               param=f"{where}.content")


def _check_ranges(body: JSON) -> None:
    n = body.get("n")
    if n is not None and n < 1:
        raise RequestError("'n' must be at least 1.", code="invalid_value", param="n")
    temperature = body.get("temperature")
    if temperature is not None and temperature < 0:
        raise RequestError("'temperature' must be >= 0.", code="invalid_value", param="temperature")


def prompt_text(kind: Kind, body: JSON) -> str | None:
    """The text the semantic tier embeds: the last user turn, or a single text prompt; None if there is none."""
    if kind == "chat":
        last = body["messages"][-1]
        return _text_of(last.get("content")) if last.get("role") == "user" else None
    if kind == "completion":
        prompt = body["prompt"]
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        return prompt if isinstance(prompt, str) else None
    return None


def _text_of(content: Any) -> str | None:
    """Text of a message; None for images, audio or files, which a text embedder cannot compare."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and all(p.get("type") == "text" for p in content):
        return "\n".join(str(p.get("text", "")) for p in content)
    return None


def is_stream(body: JSON) -> bool:
    """Whether the client asked for server-sent events."""
    return body.get("stream") is True


def wants_usage_chunk(body: JSON) -> bool:
    """Whether a streamed answer must end with a usage chunk (stream_options.include_usage)."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


# ---------------------------------------------------------------- server-sent events


MAX_EVENT = 4 * 1024 * 1024  # bytes of one event's data the parser keeps (a whole answer in one event fits)
OVERSIZED = "\x00oversized event"  # what SSEParser yields in place of a larger event: the stream is not storable


class SSEParser:
    """Incremental parser: feed bytes as they arrive, get the `data` payload of each complete event.

    Linear in the bytes fed (only the new chunk is split into lines) and bounded: an event whose data outgrows
    `max_event` bytes is dropped as it arrives and OVERSIZED is yielded in its place, so one endless line or
    one 50 MB delta costs neither quadratic time nor unbounded memory.
    """

    def __init__(self, *, max_event: int = MAX_EVENT) -> None:
        self.max_event = max_event
        self._line: list[bytes] = []  # pieces of the line not yet ended
        self._line_size = 0
        self._skipping = False  # the line not yet ended was too long: its pieces are dropped
        self._data: list[bytes] = []  # data lines of the event not yet ended
        self._size = 0
        self._oversized = False  # the event not yet ended outgrew max_event
        self._cr = False  # the last chunk ended with \r: a \n opening the next one ends no line

    def feed(self, chunk: bytes) -> list[str]:
        """Return the data of every event completed by this chunk."""
        if not chunk:
            return []
        if self._cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._cr = chunk.endswith(b"\r")
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *ended, rest = chunk.split(b"\n")
        events: list[str] = []
        for number, line in enumerate(ended):
            self._take(self._completed(line) if number == 0 else line, events)
        self._hold(rest)
        return events

    def _completed(self, tail: bytes) -> bytes | None:
        """The line `tail` ends: the pieces held before it, joined once; None if it was too long to keep."""
        if self._skipping:
            self._skipping = False
            return None
        if not self._line:
            return tail
        line = b"".join([*self._line, tail])
        self._line, self._line_size = [], 0
        return line

    def _hold(self, rest: bytes) -> None:
        if self._skipping or not rest:
            return
        self._line.append(rest)
        self._line_size += len(rest)
        if self._size + self._line_size > self.max_event:
            self._line, self._line_size, self._skipping = [], 0, True
            self._data, self._oversized = [], True

    def _take(self, line: bytes | None, events: list[str]) -> None:
        if line == b"":  # a blank line ends the event
            if self._oversized:
                events.append(OVERSIZED)
            elif self._data:
                events.append(b"\n".join(self._data).decode("utf-8", errors="replace"))
            self._data, self._size, self._oversized = [], 0, False
        elif line is not None and not self._oversized and line.startswith(b"data:"):
            data = line[5:].removeprefix(b" ")
            self._size += len(data) + 1
            if self._size > self.max_event:
                self._data, self._oversized = [], True
            else:
                self._data.append(data)


def sse_event(payload: JSON | str) -> bytes:
    """Encode one SSE event."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


# ---------------------------------------------------------------- assembly: stream -> one completion


MAX_CHOICES = 128  # OpenAI's own limit on `n`
MAX_TOOL_CALLS = 128  # tool calls in one message; a stream naming index 10**9 is hostile, not large
# Bytes of Python objects an assembly may hold: twice a 128k-token answer (about 60 bytes a delta). A stream
# past it is relayed but not stored, and what was assembled is dropped (an endless stream must not grow).
MAX_ASSEMBLED = 16 * 1024 * 1024


class StreamAssembler:
    """Rebuilds the non-stream completion from a chat or text-completion SSE stream.

    Bounded by construction: choice and tool-call indexes beyond the limits above, or of the wrong type, an
    OVERSIZED event, or more than `max_held` bytes held mark the stream failed (it is relayed, never
    stored) and drop what it held. Text arrives as pieces joined once at the end and logprobs are extended in
    place, so a stream of many small deltas costs linear time, not quadratic.
    """

    def __init__(self, kind: Kind, *, max_held: int = MAX_ASSEMBLED) -> None:
        self.kind = kind
        self.max_held = max_held
        self.done = False
        self.failed = False
        self._head: JSON = {}
        self._choices: dict[int, JSON] = {}
        self._pieces: dict[tuple[int, ...], list[str]] = {}  # (choice, field[, call, name|arguments]) -> text
        self._usage: Any = None
        self._held = 0  # bytes of the pieces and logprobs kept so far

    def feed(self, data: str) -> None:
        """Take one event's data."""
        if data.strip() == "[DONE]":
            self.done = True
            return
        if self.failed:  # nothing of a failed stream is kept: its other events need no parsing
            return
        try:
            chunk = loads(data)
        except BadJSON:  # OVERSIZED included
            self._fail()
            return
        if not isinstance(chunk, dict) or "error" in chunk:
            self._fail()
            return
        try:
            self._take_head(chunk)
            for choice in chunk.get("choices") or []:
                self._take_choice(choice)
        except (ValueError, TypeError, AttributeError, KeyError):  # a chunk of the wrong shape, or too much
            self._fail()

    def _fail(self) -> None:
        self.failed = True
        self._choices, self._pieces, self._head, self._usage = {}, {}, {}, None

    def _charge(self, size: int) -> None:
        self._held += size
        if self._held > self.max_held:
            raise ValueError(f"more than {self.max_held} bytes to assemble")

    def _take_head(self, chunk: JSON) -> None:
        for field in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if chunk.get(field) is not None:
                self._head.setdefault(field, chunk[field])
        if chunk.get("usage"):
            self._usage = chunk["usage"]

    def _take_choice(self, choice: JSON) -> None:
        index = _bounded_index(choice.get("index", 0), MAX_CHOICES)
        state = self._choices.setdefault(index, {"index": index, "finish_reason": None, "logprobs": None})
        if self.kind == "chat":
            self._merge_delta(index, state.setdefault("message", {"role": "assistant", "content": None}),
                              choice.get("delta") or {})
        else:
            self._add((index, _TEXT), choice.get("text"))
        self._merge_logprobs(state, choice.get("logprobs"))
        if choice.get("finish_reason") is not None:
            state["finish_reason"] = choice["finish_reason"]

    def _merge_delta(self, choice: int, message: JSON, delta: JSON) -> None:
        if delta.get("role"):
            message["role"] = delta["role"]
        for number, field in enumerate(_MESSAGE_FIELDS):
            self._add((choice, number), delta.get(field))
        if delta.get("function_call"):
            message.setdefault("function_call", {"name": "", "arguments": ""})
            self._add_call((choice, _FUNCTION_CALL), delta["function_call"])
        for call in delta.get("tool_calls") or []:
            calls: list[JSON] = message.setdefault("tool_calls", [])
            index = _bounded_index(call.get("index", len(calls)), MAX_TOOL_CALLS)
            while len(calls) <= index:
                calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
            if call.get("id"):
                calls[index]["id"] = str(call["id"])
            if call.get("type"):
                calls[index]["type"] = str(call["type"])
            self._add_call((choice, _TOOL_CALLS, index), call.get("function") or {})

    def _add_call(self, key: tuple[int, ...], part: JSON) -> None:
        self._add((*key, 0), part.get("name"))
        self._add((*key, 1), part.get("arguments"))

    def _add(self, key: tuple[int, ...], text: Any) -> None:
        if text:
            piece = str(text)
            self._charge(sys.getsizeof(piece) + 8)
            self._pieces.setdefault(key, []).append(piece)

    def _merge_logprobs(self, state: JSON, logprobs: Any) -> None:
        if not isinstance(logprobs, dict):
            return
        merged = state["logprobs"] = state["logprobs"] or {}
        for field, value in logprobs.items():
            kept = merged.get(field)
            if isinstance(value, list):
                self._charge(_size_of(value))
                if isinstance(kept, list):
                    kept.extend(value)  # in place: a new list per chunk made many small chunks quadratic
                else:
                    merged[field] = list(value)
            elif field not in merged:
                self._charge(_size_of(value))
                merged[field] = value

    def result(self) -> JSON | None:
        """The assembled completion, or None if the stream was broken or incomplete."""
        complete = self._choices and all(c["finish_reason"] is not None for c in self._choices.values())
        if self.failed or not complete:
            return None
        result: JSON = {
            "id": self._head.get("id", ""),
            "object": "chat.completion" if self.kind == "chat" else "text_completion",
            "created": self._head.get("created", 0),
            "model": self._head.get("model", ""),
            "choices": [self._joined(i, self._choices[i]) for i in sorted(self._choices)],
        }
        for field in ("system_fingerprint", "service_tier"):
            if field in self._head:
                result[field] = self._head[field]
        if self._usage is not None:
            result["usage"] = self._usage
        return result

    def _joined(self, index: int, state: JSON) -> JSON:
        """A choice with its text pieces joined into place."""
        text = {key: "".join(pieces) for key, pieces in self._pieces.items() if key[0] == index}
        if self.kind != "chat":
            return {**state, "text": text.get((index, _TEXT), "")}
        message = dict(state["message"])
        for number, field in enumerate(_MESSAGE_FIELDS):
            if (index, number) in text:
                message[field] = text[(index, number)]
        if "function_call" in message:
            message["function_call"] = {"name": text.get((index, _FUNCTION_CALL, 0), ""),
                                        "arguments": text.get((index, _FUNCTION_CALL, 1), "")}
        if "tool_calls" in message:
            message["tool_calls"] = [
                {**call, "function": {"name": text.get((index, _TOOL_CALLS, n, 0), ""),
                                      "arguments": text.get((index, _TOOL_CALLS, n, 1), "")}}
                for n, call in enumerate(message["tool_calls"])]
        return {**state, "message": message}


_MESSAGE_FIELDS = ("content", "refusal", "reasoning_content")
_TEXT, _FUNCTION_CALL, _TOOL_CALLS = -1, -2, -3  # keys of the pieces that are not message fields


def _bounded_index(value: Any, limit: int) -> int:
    """An index from the upstream, refused (ValueError) unless it is an integer in [0, limit)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
        raise ValueError(f"index {value!r} out of range")
    return value


def _size_of(value: Any) -> int:
    """Bytes a parsed JSON value holds: its containers, their keys and the scalars in them."""
    size, stack = 0, [value]
    while stack:
        item = stack.pop()
        size += sys.getsizeof(item)
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return size


# ---------------------------------------------------------------- replay: one completion -> stream


def replay_stream(kind: Kind, completion: JSON, *, include_usage: bool) -> Iterator[bytes]:
    """A valid SSE stream carrying a stored completion: opening chunk(s), finish chunk, usage, [DONE]."""
    head: JSON = {field: completion[field] for field in ("id", "created", "model", "system_fingerprint")
                  if field in completion}
    head["object"] = "chat.completion.chunk" if kind == "chat" else "text_completion"
    extra = {"usage": None} if include_usage else {}
    for choice in completion.get("choices", []):
        for piece in _choice_pieces(kind, choice):
            yield sse_event({**head, "choices": [piece], **extra})
    if include_usage and completion.get("usage") is not None:
        yield sse_event({**head, "choices": [], "usage": completion["usage"]})
    yield sse_event("[DONE]")


def _choice_pieces(kind: Kind, choice: JSON) -> Iterator[JSON]:
    index = choice.get("index", 0)
    if kind == "chat":
        delta = {k: v for k, v in (choice.get("message") or {}).items() if v is not None}
        delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(delta.get("tool_calls", []))]
        if not delta["tool_calls"]:
            del delta["tool_calls"]
        yield {"index": index, "delta": delta, "logprobs": choice.get("logprobs"), "finish_reason": None}
        yield {"index": index, "delta": {}, "logprobs": None, "finish_reason": choice.get("finish_reason")}
    else:
        yield {"index": index, "text": choice.get("text", ""), "logprobs": choice.get("logprobs"),
               "finish_reason": None}
        yield {"index": index, "text": "", "logprobs": None, "finish_reason": choice.get("finish_reason")}


def is_complete_response(kind: Kind, response: Any) -> bool:
    """Whether a non-stream upstream answer is a whole, storable result."""
    if not isinstance(response, dict) or "error" in response:
        return False
    if kind == "embedding":
        return isinstance(response.get("data"), list)
    choices = response.get("choices")
    return isinstance(choices, list) and bool(choices)
