"""One exception tree, and the OpenAI-shaped error bodies the proxy answers with.

    SemproxyError
    ├── ConfigError              bad settings; raised at start-up, never during a request
    ├── RequestError             the client's request is wrong: 4xx, nothing forwarded, nothing stored
    │   ├── Unauthorized         401: a client key this proxy does not serve (client_keys)
    │   ├── BodyTooLarge         413
    │   └── ModelNotFound        404: no configured upstream serves the requested model
    ├── UpstreamError            the upstream could not be reached or did not answer in time
    │   ├── UpstreamUnreachable  502
    │   ├── UpstreamTimeout      504
    │   └── NoUpstreamAvailable  503: every candidate's circuit breaker is open
    └── CacheFailure             an embedder, index or store failed; the request goes on uncached
"""

from __future__ import annotations

import json


class SemproxyError(Exception):
    """Base of every error semproxy raises on purpose."""


class ConfigError(SemproxyError):
    """The settings are invalid."""


class HTTPError(SemproxyError):
    """An error that becomes an HTTP answer in OpenAI's error shape."""

    status = 500
    error_type = "server_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param

    def body(self) -> bytes:
        """The JSON body OpenAI clients expect: {"error": {"message", "type", "param", "code"}}."""
        return error_body(self.message, error_type=self.error_type, code=self.code, param=self.param)


class RequestError(HTTPError):
    """The client's request cannot be served as sent."""

    status = 400
    error_type = "invalid_request_error"


class Unauthorized(RequestError):
    """The client's key is not one this proxy serves."""

    status = 401


class BodyTooLarge(RequestError):
    """The request body is larger than max_body_bytes."""

    status = 413


class ModelNotFound(RequestError):
    """Upstreams are configured with model lists and none of them serves the requested model."""

    status = 404


class UpstreamError(HTTPError):
    """The upstream failed before any byte of its answer was relayed."""

    status = 502
    error_type = "upstream_error"


class UpstreamUnreachable(UpstreamError):
    """Connection refused, DNS failure, TLS failure, or the connection dropped before an answer."""

    status = 502


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within the configured timeout."""

    status = 504


class NoUpstreamAvailable(UpstreamError):
    """Every upstream that serves the model is resting after repeated failures (circuit open)."""

    status = 503


class CacheFailure(SemproxyError):
    """A cache component failed; callers log it and serve the request uncached."""


def error_body(message: str, *, error_type: str, code: str | None = None, param: str | None = None) -> bytes:
    """Serialize an error in OpenAI's shape."""
    payload = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return json.dumps(payload).encode()
