"""Per-request timings recorded by components that never see the request (the embedder's model thread).

The stats layer binds the request's info dict to a context variable; code running in that request's task
reads it with `current()` and hands it along to whatever thread does the work, which adds its timings.
"""

from __future__ import annotations

import contextvars
from typing import Any

_CURRENT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("semproxy_request", default=None)


def bind(info: dict[str, Any]) -> contextvars.Token[dict[str, Any] | None]:
    """Make `info` the current request's record for this task (undo with `unbind`)."""
    return _CURRENT.set(info)


def unbind(token: contextvars.Token[dict[str, Any] | None]) -> None:
    """Undo `bind`."""
    _CURRENT.reset(token)


def current() -> dict[str, Any] | None:
    """The current request's info dict, or None outside a request the stats layer watches."""
    return _CURRENT.get()


def add_ms(info: dict[str, Any] | None, name: str, seconds: float) -> None:
    """Add `seconds` (as milliseconds) to a timing; a request that looks up twice adds both."""
    if info is not None:
        info[name] = info.get(name, 0.0) + seconds * 1000.0
