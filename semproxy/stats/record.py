"""One logged request: what the stats layer observed, and the record the log keeps of it.

`Observed` is collected on the request path and costs only references (body chunks are kept, not parsed).
`finish` runs on the log's own thread: it reads `usage` from the answer (JSON or the SSE stream's usage
chunk), falls back to counting with tiktoken, and prices what the cache and compression saved.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from semproxy.openai import BadJSON, loads_request
from semproxy.stats.prices import PriceTable
from semproxy.types import HIT_OUTCOMES, RequestFacts

_MODEL = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.){1,200})"')


@dataclasses.dataclass(kw_only=True)
class Observed:
    """The raw facts of one request, as the stats layer saw them."""

    started: float  # wall clock, seconds since the epoch
    method: str
    endpoint: str
    tenant: Callable[[], str | None]  # called on the log's thread: an HMAC is not free
    request_body: Sequence[bytes]
    status: int  # 0: no answer started (the client left, or the app failed)
    content_type: str
    response_body: Sequence[bytes]
    total_ms: float
    ttfb_ms: float | None
    facts: RequestFacts
    default_upstream: str
    held_bytes: int = 0  # what the body chunks hold against the log's byte budget, given back once written
    bodies_whole: bool = True  # False: the budget was spent, the bodies were not kept (no token counts)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RequestRecord:
    """One row of the request log."""

    ts: float
    tenant: str | None
    model: str | None
    upstream: str | None
    endpoint: str
    method: str
    status: int
    outcome: str  # exact | semantic | miss | audit | bypass
    stream: bool
    similarity: float | None
    verdict: str | None
    attempts: str | None  # JSON list of failover attempts, when routing reported them
    total_ms: float
    ttfb_ms: float | None
    embed_ms: float | None
    search_ms: float | None
    upstream_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    compression_saved_tokens: int  # prompt tokens compression removed before forwarding
    hit_saved_tokens: int  # prompt + completion tokens a cache hit kept from being sent and generated
    cost_saved_hit: float  # USD
    cost_saved_compression: float  # USD
    priced: bool  # whether the model had a price
    prompt_hash: str | None
    prompt_text: str | None
    audit_wrong: bool | None = None  # a compared candidate's answer was not the fresh one (None: not compared)
    audit_weight: float | None = None  # an audit's weight in the served wrong-hit rate
    cost_audit: float = 0.0  # USD an audit spent upstream

    @property
    def hit(self) -> bool:
        """Answered from the cache."""
        return self.outcome in HIT_OUTCOMES


Counter = Callable[[str, str], int]  # (text, model) -> tokens


# Characters counted exactly; a longer text is estimated from its start. tiktoken holds 10 to 50 bytes a
# character while it counts: the 8 MB of text an endless stream leaves for the log once took 400 MB.
COUNT_LIMIT = 1_000_000


def _count(count: Counter, text: str, model: str) -> int:
    if len(text) <= COUNT_LIMIT:
        return count(text, model)
    return round(count(text[:COUNT_LIMIT], model) * len(text) / COUNT_LIMIT)


def finish(observed: Observed, *, prices: PriceTable, count: Counter, hash_key: bytes,
           prompt_chars: int) -> RequestRecord:
    """Turn what was observed into a record: tokens, savings, the prompt's hash."""
    facts = observed.facts
    raw_request = b"".join(observed.request_body)
    request = _json_object(raw_request)
    model = str(request["model"]) if request and isinstance(request.get("model"), str) else _model(raw_request)
    stream = "text/event-stream" in observed.content_type
    usage, answer_text = _usage_and_text(b"".join(observed.response_body), stream=stream)
    prompt = _prompt(request)
    prompt_tokens = _int(usage.get("prompt_tokens"))
    if prompt_tokens is None:
        prompt_tokens = _count(count, prompt.full, model or "") + prompt.overhead if request else 0
    completion_tokens = _int(usage.get("completion_tokens"))
    if completion_tokens is None:
        completion_tokens = _count(count, answer_text, model or "") if answer_text else 0
    outcome = facts.cache or "bypass"
    hit = outcome in HIT_OUTCOMES and 200 <= observed.status < 300
    compressed = 0 if hit else facts.prompt_tokens_saved
    price = prices.get(model) if model else None
    cost_hit = price.cost(prompt_tokens, completion_tokens) if price and hit else 0.0
    attempts = [dataclasses.asdict(a) for a in facts.attempts]
    return RequestRecord(
        ts=observed.started, tenant=_tenant(observed), model=model,
        upstream=None if hit else facts.upstream or observed.default_upstream,
        endpoint=observed.endpoint, method=observed.method, status=observed.status, outcome=outcome, stream=stream,
        similarity=facts.similarity, verdict=None if facts.verdict is None else facts.verdict[:200],
        attempts=json.dumps(attempts) if attempts else None,
        total_ms=observed.total_ms, ttfb_ms=observed.ttfb_ms, embed_ms=facts.embed_ms,
        search_ms=facts.search_ms, upstream_ms=None if hit else facts.upstream_ms,
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
        compression_saved_tokens=compressed, hit_saved_tokens=prompt_tokens + completion_tokens if hit else 0,
        cost_saved_hit=cost_hit, cost_saved_compression=price.cost(compressed) if price else 0.0,
        priced=price is not None,
        prompt_hash=_hash(hash_key, prompt.last) if prompt.last else None,
        prompt_text=prompt.last[:prompt_chars] if prompt.last and prompt_chars else None,
        audit_wrong=facts.audit_wrong, audit_weight=facts.audit_weight,
        cost_audit=price.cost(prompt_tokens, completion_tokens) if price and outcome == "audit" else 0.0,
    )


@dataclasses.dataclass(frozen=True)
class _Prompt:
    full: str  # every text the model reads, for counting
    last: str  # the last user turn (or the prompt / input), for "top repeated prompts"
    overhead: int  # tokens OpenAI adds around chat messages


def _tenant(observed: Observed) -> str | None:
    try:
        return observed.tenant()
    except Exception:  # a malformed namespace header, a store not open yet: log the request anyway
        return None


def _prompt(request: dict[str, Any] | None) -> _Prompt:
    if not request:
        return _Prompt("", "", 0)
    messages = request.get("messages")
    if isinstance(messages, list):
        texts = [_text(m.get("content")) for m in messages if isinstance(m, dict)]
        users = [_text(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        # OpenAI's documented count: 3 tokens per message plus 3 to prime the answer.
        return _Prompt("\n".join(texts), users[-1] if users else "", 3 * len(texts) + 3)
    for field in ("prompt", "input"):
        value = request.get(field)
        if value is not None:
            text = _text(value)
            return _Prompt(text, text, 0)
    return _Prompt("", "", 0)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_text(p.get("text")) if isinstance(p, dict) else _text(p) for p in content)
    return ""


def _usage_and_text(body: bytes, *, stream: bool) -> tuple[dict[str, Any], str]:
    """The answer's `usage` (empty if absent) and its text (to count when there is no usage)."""
    if not stream:
        answer = _json_object(body)
        if answer is None:
            return {}, ""
        usage = answer.get("usage")
        return (usage if isinstance(usage, dict) else {}), _answer_text(answer.get("choices"), "message")
    usage, pieces = {}, []
    for line in body.split(b"\n"):
        if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
            continue
        event = _json_object(line[5:])
        if event is None:
            continue
        if isinstance(event.get("usage"), dict):
            usage = event["usage"]
        pieces.append(_answer_text(event.get("choices"), "delta"))
    return usage, "".join(pieces)


def _answer_text(choices: Any, field: str) -> str:
    if not isinstance(choices, list):
        return ""
    parts = []
    for choice in choices:
        if isinstance(choice, dict):
            message = choice.get(field)
            content = message.get("content") if isinstance(message, dict) else None
            parts.append(_text(content) if content is not None else _text(choice.get("text")))
    return "".join(parts)


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        # Every way the parse can fail, and strings that are not text (half a surrogate pair), which the
        # prompt's hash and the token counter would fail on: such a request is logged without them.
        value = loads_request(raw)
    except BadJSON:
        return None
    return value if isinstance(value, dict) else None


def _model(raw: bytes) -> str | None:
    """The model of a body that is not a whole JSON object (cut short, say): the first "model" string."""
    found = _MODEL.search(raw[:65536])
    return found.group(1).decode("utf-8", "replace") if found else None


def _hash(key: bytes, text: str) -> str:
    # Keyed: a plain hash of a short prompt could be reversed by hashing guesses.
    return hmac.new(key, text.strip().encode(), hashlib.sha256).hexdigest()[:16]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
