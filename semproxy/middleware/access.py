"""ClientAccess: which clients the proxy serves at all, before the cache can answer them.

With an operator key (semproxy sends its own key upstream), anyone who reaches the port would spend it, and
read the answers cached for others in a shared namespace. So the operator lists the client keys it serves,
by their SHA-256 (`client_keys`, made by `semproxy hash-key`: the list holds no usable secret), or opens the
proxy to every client on a trusted network (`allow_any_client`). Other clients get a 401 in OpenAI's shape
and nothing is forwarded, served or stored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection

from semproxy.errors import Unauthorized
from semproxy.middleware import controls
from semproxy.types import JSON_HEADERS, ASGIApp, Receive, Scope, Send, send_response

PREFIX = "sha256:"


def key_hash(key: str) -> str:
    """How a client key appears in `client_keys`."""
    return PREFIX + hashlib.sha256(key.encode()).hexdigest()


class ClientAccess:
    """Refuses `guarded` requests whose key's hash is not in `allowed` (an empty `allowed` serves no one)."""

    def __init__(self, app: ASGIApp, *, allowed: Collection[str], guarded: Callable[[Scope], bool]) -> None:
        self.app, self.allowed, self.guarded = app, frozenset(allowed), guarded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.guarded(scope):
            refusal = self._refusal(controls.api_key(scope))
            if refusal is not None:
                await send_response(send, refusal.status, refusal.body(), JSON_HEADERS)
                return
        await self.app(scope, receive, send)

    def _refusal(self, key: str | None) -> Unauthorized | None:
        if not self.allowed:
            return Unauthorized("This proxy sends its own upstream key, and its operator has not listed the client "
                                "keys that may use it (client_keys, or allow_any_client on a trusted network).",
                                code="invalid_api_key")
        if key is None:
            return Unauthorized("This proxy serves known client keys only: send yours as Authorization: Bearer.",
                                code="missing_api_key")
        if key_hash(key) not in self.allowed:
            return Unauthorized("This proxy does not serve this API key (it is not among the proxy's client_keys).",
                                code="invalid_api_key")
        return None
