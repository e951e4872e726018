"""Cache keys: the tenant, the exact key of a request, and the scope its semantic search runs in."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from semproxy.openai import JSON, Kind, prompt_text
from semproxy.storage.records import CacheKey

# Fields that change how an answer is delivered or logged upstream, never what it says.
DELIVERY_FIELDS = frozenset({
    "stream", "stream_options", "user", "metadata", "store", "service_tier", "safety_identifier",
    "prompt_cache_key", "prompt_cache_retention",
})
ANONYMOUS = "anonymous"


def tenant_id(*, api_key: str | None, namespace: str | None, salt: bytes) -> str:
    """A salted hash naming the tenant: the shared namespace if one is named, else the API key.

    Only this hash is ever stored, so the data dir never holds a key. Namespaces and keys hash into
    different domains, so no key can collide with a namespace name.
    """
    if namespace:
        material = b"namespace\0" + namespace.encode()
    elif api_key:
        material = b"key\0" + api_key.encode()
    else:
        return ANONYMOUS
    return hmac.new(salt, material, hashlib.sha256).hexdigest()[:32]


def make_key(kind: Kind, body: JSON, *, tenant: str) -> CacheKey:
    """Build the exact key and the scope of a validated request body."""
    answer_fields = {k: v for k, v in body.items() if k not in DELIVERY_FIELDS}
    prompt = prompt_text(kind, body)
    if prompt is not None:
        prompt = prompt.strip()
    exact = _digest(kind, tenant, "exact", _with_prompt(kind, answer_fields, prompt))
    scope = _digest(kind, tenant, "scope", _without_prompt(kind, answer_fields))
    return CacheKey(kind=kind, tenant=tenant, scope=scope, exact=exact, model=str(body.get("model", "")),
                    prompt=prompt if kind != "embedding" else None)


def _with_prompt(kind: Kind, fields: JSON, prompt: str | None) -> JSON:
    """The request with a plain-text prompt trimmed: surrounding white space never changes an answer."""
    if prompt is None:
        return fields
    if kind == "chat" and isinstance(fields["messages"][-1].get("content"), str):
        last = {**fields["messages"][-1], "content": prompt}
        return {**fields, "messages": [*fields["messages"][:-1], last]}
    if kind == "completion" and isinstance(fields.get("prompt"), str):
        return {**fields, "prompt": prompt}
    return fields


def _without_prompt(kind: Kind, fields: JSON) -> JSON:
    """Everything but the prompt text: model, system prompt, earlier turns, tools, sampling parameters."""
    if kind == "chat":
        last = {k: v for k, v in fields["messages"][-1].items() if k != "content"}
        return {**fields, "messages": [*fields["messages"][:-1], last]}
    if kind == "completion":
        return {k: v for k, v in fields.items() if k != "prompt"}
    return fields


def _digest(kind: Kind, tenant: str, role: str, fields: JSON) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    material = f"{kind}\0{tenant}\0{role}\0".encode() + canonical.encode()
    return hashlib.sha256(material).hexdigest()


def uncacheable_reason(body: JSON, *, max_temperature: float) -> str | None:
    """Why a request must not be cached, or None. A missing temperature counts as OpenAI's default, 1."""
    n: Any = body.get("n")
    if isinstance(n, int) and n > 1:
        return "n>1"
    temperature = body.get("temperature")
    try:
        hot = (1.0 if temperature is None else float(temperature)) > max_temperature
    except OverflowError:  # an integer too large for a float is hot enough
        hot = True
    return "temperature" if hot else None
