"""CompressionMiddleware: shortens long system prompts before a request goes upstream.

It sits inside the cache layer, so cache keys are made from the original prompt and turning compression on
or off never mixes entries. Only system and developer messages (and the Responses API's `instructions`)
are touched; user and assistant turns never are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from semproxy.compress.service import CompressionService
from semproxy.compress.tokens import encoding_name
from semproxy.errors import HTTPError
from semproxy.openai import BadJSON, loads_request
from semproxy.types import (
    JSON_HEADERS,
    ASGIApp,
    Receive,
    Scope,
    Send,
    facts,
    header,
    lifespan_hooks,
    read_body,
    replay,
    route_path,
    send_response,
    with_response_headers,
)

DEFAULT_ROUTES: Mapping[str, str] = {"/v1/chat/completions": "chat", "/v1/responses": "responses"}
PREAMBLE_ROLES = frozenset({"system", "developer"})
_PREAMBLE_MARKERS = (b'"system"', b'"developer"', b'"instructions"')


class CompressionMiddleware:
    """Replaces long system prompts with their stored compressions; schedules the ones not seen yet."""

    def __init__(self, app: ASGIApp, *, service: CompressionService, max_body_bytes: int = 8 * 1024 * 1024,
                 routes: Mapping[str, str] = DEFAULT_ROUTES) -> None:
        self.app = app
        self.service = service
        self.max_body_bytes = max_body_bytes
        self.routes = dict(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, lifespan_hooks(receive, on_startup=self.service.start,
                                                 on_shutdown=self.service.close), send)
            return
        kind = self.routes.get(route_path(scope)) if scope["type"] == "http" else None
        if kind is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        self.service.start()
        if (header(scope, b"x-semproxy-compress") or "").strip().lower() == "off":
            await self.app(scope, receive, _with_saved_header(send, 0))
            return
        try:
            raw = await read_body(receive, limit=self.max_body_bytes, declared=header(scope, b"content-length"))
        except HTTPError as exc:  # 413: a body this layer cannot hold is refused, not passed on half-read
            await send_response(send, exc.status, exc.body(), JSON_HEADERS)
            return
        await self._compressed(scope, receive, send, kind, raw)

    async def _compressed(self, scope: Scope, receive: Receive, send: Send, kind: str, raw: bytes) -> None:
        # Most requests carry no preamble at all: a substring test spares them a JSON round trip.
        body = _json_object(raw) if any(marker in raw for marker in _PREAMBLE_MARKERS) else None
        saved = 0
        if body is not None:
            model = str(body.get("model", ""))
            found = [await self.service.compressed(text) for text in _preambles(kind, body)]
            results = [r for r in found if r is not None and r.compressed != r.original]
            if results:
                raw = json.dumps(_replace(kind, body, {r.original: r.compressed for r in results}),
                                 ensure_ascii=False).encode()
                scope = _with_length(scope, len(raw))
                encoding = encoding_name(model)
                saved = sum(r.saved(encoding) for r in results)
        facts(scope).prompt_tokens_saved = saved
        await self.app(scope, replay(raw, receive), _with_saved_header(send, saved))


def _json_object(raw: bytes) -> dict[str, Any] | None:
    """The body if it is a JSON object; anything else goes on untouched (the upstream will judge it)."""
    try:
        body = loads_request(raw)
    except BadJSON:
        return None
    return body if isinstance(body, dict) else None


def _preambles(kind: str, body: dict[str, Any]) -> list[str]:
    """The texts that may be compressed: system/developer message texts, or `instructions`."""
    if kind == "responses":
        instructions = body.get("instructions")
        return [instructions] if isinstance(instructions, str) else []
    messages = body.get("messages")
    if not isinstance(messages, list):  # the upstream judges a body of the wrong shape (the cache may be off)
        return []
    texts: list[str] = []
    for message in messages:
        if isinstance(message, dict) and message.get("role") in PREAMBLE_ROLES:
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                texts += [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return texts


def _replace(kind: str, body: dict[str, Any], replacements: dict[str, str]) -> dict[str, Any]:
    if kind == "responses":
        return {**body, "instructions": replacements.get(body["instructions"], body["instructions"])}
    return {**body, "messages": [_replace_message(m, replacements) for m in body["messages"]]}


def _replace_message(message: Any, replacements: dict[str, str]) -> Any:
    if not isinstance(message, dict) or message.get("role") not in PREAMBLE_ROLES:
        return message
    content = message.get("content")
    if isinstance(content, str):
        return {**message, "content": replacements.get(content, content)}
    if isinstance(content, list):
        parts = [{**p, "text": replacements.get(p["text"], p["text"])}
                 if isinstance(p, dict) and isinstance(p.get("text"), str) else p for p in content]
        return {**message, "content": parts}
    return message


def _with_length(scope: Scope, length: int) -> Scope:
    """The body changed: its content-length must change with it."""
    headers = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"content-length", b"transfer-encoding")]
    return {**scope, "headers": [*headers, (b"content-length", str(length).encode())]}


def _with_saved_header(send: Send, saved: int) -> Send:
    return with_response_headers(send, [(b"x-semproxy-prompt-tokens-saved", str(saved).encode())])
