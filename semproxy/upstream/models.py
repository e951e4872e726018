"""`GET /v1/models` with several upstreams: the union of what is routable.

Configured names are listed as they are: every exact name in a `models` list and every alias. Upstreams that
serve model names by glob pattern (or every model) are asked for their own `/v1/models`, and the ids their
patterns match are added. An upstream that does not answer within `LISTING_TIMEOUT` seconds, or whose
circuit is open, is left out of the listing rather than failing it.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from semproxy.upstream.routing import Router, Upstream

log = logging.getLogger("semproxy.upstream")

LISTING_TIMEOUT = 10.0
Fetch = Callable[[Upstream], Awaitable[list[dict[str, Any]]]]


async def union_of_models(router: Router, fetch: Fetch) -> dict[str, Any]:
    """An OpenAI model list: configured names first, then what pattern-matched upstreams report."""
    fetched = await _fetch_listings(router, fetch)
    entries: dict[str, dict[str, Any]] = {}
    for upstream in router.upstreams:
        config = upstream.config
        for model_id in (*config.exact_models, *(alias for alias, _ in config.aliases)):
            entries.setdefault(model_id, {"id": model_id, "object": "model", "created": 0, "owned_by": upstream.name})
        for entry in fetched.get(upstream.name, []):
            entries.setdefault(entry["id"], entry)
    return {"object": "list", "data": list(entries.values())}


async def _fetch_listings(router: Router, fetch: Fetch) -> dict[str, list[dict[str, Any]]]:
    asked = [u for u in router.upstreams
             if (u.config.serves_everything or u.config.patterns) and u.breaker.state != "open"]
    results = await asyncio.gather(*(asyncio.wait_for(fetch(u), LISTING_TIMEOUT) for u in asked),
                                   return_exceptions=True)
    listings: dict[str, list[dict[str, Any]]] = {}
    for upstream, result in zip(asked, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("upstream %s: model list unavailable (%s)", upstream.name, type(result).__name__)
            continue
        patterns = upstream.config.patterns
        listings[upstream.name] = [entry for entry in result if upstream.config.serves_everything
                                   or any(fnmatch.fnmatchcase(entry["id"], p) for p in patterns)]
    return listings
