"""How one client request goes to an upstream: its URL there, its headers, its body (an alias renamed).

`RequestFactory` is made once per client request and asked for an `httpx.Request` per attempt, so failover
can send the same request to another upstream without knowing how it is built.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import httpx

from semproxy.errors import RequestError
from semproxy.openai import BadJSON, loads_request
from semproxy.types import RawHeaders, Scope
from semproxy.upstream.relay import HOP_BY_HOP
from semproxy.upstream.routing import Upstream

Body = bytes | AsyncIterator[bytes] | None  # None: no body; an iterator: an upload too large to hold

_CLIENT_KEYS = frozenset({b"authorization", b"api-key", b"x-api-key"})
# Request headers never forwarded, by (keep the client's content-length?, does the upstream have its own key?)
_DROPPED = {(keep, own_key): HOP_BY_HOP | (set() if keep else {b"content-length"})
            | (_CLIENT_KEYS if own_key else set()) for keep in (True, False) for own_key in (True, False)}
_OBJECT_START = re.compile(rb"[ \t\r\n]*\{")  # without copying the body, as lstrip() would


def relative_path(scope: Scope, prefix: bytes) -> str:
    """The path below the prefix, with the client's percent-encoding (a file id with %2F stays one segment)."""
    path: bytes = scope.get("raw_path") or scope["path"].encode()
    root = scope.get("root_path", "").encode() + prefix
    return (path[len(root):] if path.startswith(root) else path).decode("latin-1")


def upstream_headers(raw: RawHeaders, upstream: Upstream, *, keep_length: bool) -> RawHeaders:
    """The client's headers as `upstream` gets them: its own key and extra headers replace the client's."""
    dropped = _DROPPED[keep_length, bool(upstream.api_key)]
    replaced = {k for k, _ in upstream.headers}
    headers = [(k, v) for k, v in raw if (name := k.lower()) not in dropped and name not in replaced
               and not name.startswith(b"x-semproxy-")]
    if upstream.api_key:
        headers.append((b"authorization", b"Bearer " + upstream.api_key.encode()))
    return headers + upstream.headers


class RequestFactory:
    """One client request, ready to be sent to any of its candidate upstreams."""

    def __init__(self, scope: Scope, body: Body, *, prefix: bytes, read_model: bool) -> None:
        self.scope = scope
        self.body = body
        self.method: str = scope["method"]
        self.path = relative_path(scope, prefix)
        query: bytes = scope.get("query_string", b"")
        self.query = "?" + query.decode("latin-1") if query else ""
        self.replayable = body is None or isinstance(body, bytes)  # an upload stream can be sent once only
        # Only routing by model needs the body parsed; with catch-all upstreams it never is.
        self.parsed = _json_object(body) if read_model and isinstance(body, bytes) else None
        model = self.parsed.get("model") if self.parsed is not None else None
        self.model = model if isinstance(model, str) else None

    def __call__(self, upstream: Upstream) -> httpx.Request:
        """The request as `upstream` gets it; RequestError if no upstream could be sent its URL."""
        content = self.body
        if self.parsed is not None and self.model is not None:
            target = upstream.config.upstream_model(self.model)
            if target != self.model:  # an alias: the only case where semproxy re-serializes the body
                content = json.dumps({**self.parsed, "model": target}, ensure_ascii=False).encode()
        # The client's content-length holds for its own bytes (and spares httpx a header insert); a new body
        # gets its length from httpx.
        headers = upstream_headers(self.scope["headers"], upstream, keep_length=content is self.body)
        if _climbs(self.path):
            raise RequestError("The request's path may not contain '.' or '..' segments.", code="invalid_url")
        try:
            url = httpx.URL(upstream.base_url + self.path + self.query)
        except httpx.InvalidURL as exc:  # longer than httpx sends (65,536 characters), or control characters
            raise RequestError(f"The request's URL cannot be forwarded: {exc}", code="invalid_url") from exc
        return httpx.Request(self.method, url, headers=headers, content=content,
                             extensions={"timeout": upstream.timeout})


def _climbs(path: str) -> bool:
    """Whether a path has dot segments: URL normalisation (httpx's included) would resolve them, so
    `/v1/../../admin` would leave the upstream's base path and reach any path on its host, with the operator's
    key attached. Encoded dots and slashes count too: some servers decode them before they resolve the path."""
    return any(segment in (".", "..") for segment in urllib.parse.unquote(path).replace("\\", "/").split("/"))


def _json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None (a body that is not JSON has no model to route by)."""
    if _OBJECT_START.match(body) is None:
        return None
    try:
        parsed = loads_request(body)  # an alias re-serializes it as UTF-8: a body that is not text has no model
    except BadJSON:
        return None
    return parsed if isinstance(parsed, dict) else None
