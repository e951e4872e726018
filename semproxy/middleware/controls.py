"""Per-request cache controls, read from request headers."""

from __future__ import annotations

from semproxy.cache.records import Controls
from semproxy.errors import RequestError
from semproxy.types import Scope, header

MAX_NAMESPACE_LENGTH = 256
MAX_TTL_SECONDS = 10**10


def read_controls(scope: Scope) -> Controls:
    """Cache-Control no-cache / no-store, X-Semproxy-Threshold and X-Semproxy-TTL; 400 if a value is wrong."""
    directives = {d.strip().lower() for d in (header(scope, b"cache-control") or "").split(",")}
    no_store = "no-store" in directives
    return Controls(
        lookup=not no_store and "no-cache" not in directives,
        store=not no_store,
        threshold=_threshold(header(scope, b"x-semproxy-threshold")),
        ttl_seconds=_ttl(header(scope, b"x-semproxy-ttl")),
    )


def _threshold(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise RequestError("X-Semproxy-Threshold must be a number between 0 and 1.", code="invalid_header",
                           param="X-Semproxy-Threshold")
    return value


def _ttl(raw: str | None) -> int | None:
    if raw is None:
        return None
    raw = raw.strip()
    # ASCII digits only ("²".isdigit() is true, int("²") fails), and at most about 300 years. A longer value is
    # refused before int() sees it: int() raises ValueError past 4,300 digits.
    digits = raw.isascii() and raw.isdigit() and len(raw) <= len(str(MAX_TTL_SECONDS))
    if not digits or not 0 < int(raw) <= MAX_TTL_SECONDS:
        raise RequestError(f"X-Semproxy-TTL must be a whole number of seconds from 1 to {MAX_TTL_SECONDS}.",
                           code="invalid_header", param="X-Semproxy-TTL")
    return int(raw)


def api_key(scope: Scope) -> str | None:
    """The client's API key: `Authorization: Bearer`, or the `api-key` / `x-api-key` headers some SDKs send."""
    authorization = header(scope, b"authorization")
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        return credentials.strip() if scheme.lower() == "bearer" else authorization.strip()
    return header(scope, b"api-key") or header(scope, b"x-api-key")


def namespace(scope: Scope, *, configured: str | None, header_allowed: bool) -> str | None:
    """The shared namespace named by the request header (if allowed) or by configuration."""
    requested = header(scope, b"x-semproxy-namespace") if header_allowed else None
    if requested is not None:
        requested = requested.strip()
        if not requested or len(requested) > MAX_NAMESPACE_LENGTH:
            raise RequestError(f"X-Semproxy-Namespace must be 1 to {MAX_NAMESPACE_LENGTH} characters.",
                               code="invalid_header", param="X-Semproxy-Namespace")
        return requested
    return configured
