"""One configured upstream (a `[[upstreams]]` table), and how those tables are read and checked."""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import re
from collections.abc import Mapping
from typing import Any

from semproxy.errors import ConfigError

_GLOB_CHARS = frozenset("*?[")


@dataclasses.dataclass(frozen=True, kw_only=True)
class UpstreamConfig:
    """An OpenAI-compatible API semproxy may send requests to. See docs/routing.md."""

    name: str
    url: str
    api_key_env: str | None = None  # the environment variable that holds the key
    api_key: str | None = dataclasses.field(default=None, repr=False)  # read from api_key_env, never from a file
    region: str | None = None
    models: tuple[str, ...] = ()  # exact names and glob patterns; empty: every model
    aliases: tuple[tuple[str, str], ...] = ()  # (name the client asks for, name the upstream gets)
    headers: tuple[tuple[str, str], ...] = ()
    priority: int = 0  # lower is preferred; latency decides between equals
    connect_timeout: float | None = None  # None: the global upstream_connect_timeout
    read_timeout: float | None = None  # None: the global upstream_read_timeout

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", self.url.rstrip("/"))
        where = f"upstream {self.name!r}"
        _check(bool(self.name) and self.name.replace("-", "").replace("_", "").replace(".", "").isalnum(),
               f"{where}: name must be letters, digits, '-', '_' or '.'")
        _check(self.url.startswith(("http://", "https://")), f"{where}: url must be an http(s) URL")
        for timeout in (self.connect_timeout, self.read_timeout):
            _check(timeout is None or timeout > 0, f"{where}: timeouts must be > 0")

    @property
    def serves_everything(self) -> bool:
        """True if no model list restricts this upstream."""
        return not self.models

    @functools.cached_property
    def patterns(self) -> tuple[str, ...]:
        """The entries of `models` that are glob patterns."""
        return tuple(m for m in self.models if _GLOB_CHARS & set(m))

    @functools.cached_property
    def exact_models(self) -> tuple[str, ...]:
        """The entries of `models` that are plain names."""
        return tuple(m for m in self.models if not _GLOB_CHARS & set(m))

    @functools.cached_property
    def _names(self) -> frozenset[str]:
        return frozenset(self.exact_models) | {alias for alias, _ in self.aliases}

    @functools.cached_property
    def _pattern(self) -> re.Pattern[str] | None:
        return re.compile("|".join(fnmatch.translate(p) for p in self.patterns)) if self.patterns else None

    @functools.cached_property
    def _targets(self) -> dict[str, str]:
        return dict(self.aliases)

    def serves(self, model: str) -> bool:
        """Whether a request for `model` (the client's name) may go here."""
        if self.serves_everything or model in self._names:
            return True
        return self._pattern is not None and self._pattern.match(model) is not None

    def upstream_model(self, model: str) -> str:
        """The name this upstream knows `model` by (the alias target, or the name itself)."""
        return self._targets.get(model, model)


def parse_upstreams(raw: Any, *, environ: Mapping[str, str]) -> tuple[UpstreamConfig, ...]:
    """Read the `[[upstreams]]` tables of a TOML file; keys come from the environment variables they name."""
    if not isinstance(raw, list) or not all(isinstance(table, dict) for table in raw):
        raise ConfigError("upstreams must be a list of tables ([[upstreams]] in TOML)")
    upstreams = tuple(_one(table, environ) for table in raw)
    names = [u.name for u in upstreams]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    _check(not duplicates, f"upstream names must be unique: {', '.join(duplicates)}")
    return upstreams


def _one(table: dict[str, Any], environ: Mapping[str, str]) -> UpstreamConfig:
    name = str(table.get("name", ""))
    where = f"upstream {name!r}" if name else "an upstream"
    _check("api_key" not in table, f"{where}: put the key in an environment variable and name it in api_key_env")
    fields = {f.name for f in dataclasses.fields(UpstreamConfig)} - {"api_key"}
    unknown = sorted(set(table) - fields)
    _check(not unknown, f"{where}: unknown setting(s): {', '.join(unknown)}")
    _check("name" in table and "url" in table, f"{where}: name and url are required")
    values = dict(table)
    try:
        values["models"] = tuple(str(m) for m in _as_list(table.get("models", []), "models"))
        values["aliases"] = tuple((str(k), str(v)) for k, v in _as_table(table.get("aliases", {}), "aliases"))
        values["headers"] = tuple((str(k), str(v)) for k, v in _as_table(table.get("headers", {}), "headers"))
        for key in ("connect_timeout", "read_timeout"):
            if key in values:
                values[key] = float(values[key])
        values["priority"] = int(values.get("priority", 0))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    key_env = table.get("api_key_env")
    if key_env:
        _check(key_env in environ, f"{where}: environment variable {key_env} (api_key_env) is not set")
        values["api_key"] = environ[key_env]
    return UpstreamConfig(**values)


def _as_list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"{name} must be a list")
    return value


def _as_table(value: Any, name: str) -> list[tuple[Any, Any]]:
    if not isinstance(value, dict):
        raise TypeError(f"{name} must be a table")
    return list(value.items())


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
