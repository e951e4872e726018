"""Loading settings: defaults < TOML file < SEMPROXY_* environment < CLI flags, merged and validated once."""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from semproxy.config.settings import ENV_PREFIX, Settings
from semproxy.config.upstreams import parse_upstreams
from semproxy.errors import ConfigError


def load_settings(
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge the four sources in order of precedence and validate the result."""
    environ = os.environ if environ is None else environ
    if config_file is None and environ.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(environ[ENV_PREFIX + "CONFIG"])
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(_from_toml(config_file))
        if "upstreams" in values:
            values["upstreams"] = parse_upstreams(values["upstreams"], environ=environ)
    values.update(_from_env(environ))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Settings(**values)
    except TypeError as exc:  # an unknown key slipped through
        raise ConfigError(str(exc)) from exc


def _fields() -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(Settings)}


def _from_toml(path: Path) -> dict[str, Any]:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    fields = _fields()
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown setting(s) in {path}: {', '.join(unknown)}")
    return {name: value if name == "upstreams" else _coerce(fields[name], value) for name, value in raw.items()}


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, field in _fields().items():
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None and name == "upstreams":
            raise ConfigError("upstreams can only be set in a TOML file ([[upstreams]] tables)")
        if raw is not None:
            values[name] = _coerce(field, raw)
    return values


def _coerce(field: dataclasses.Field[Any], value: Any) -> Any:
    """Turn a TOML or environment value into the field's type, with an error that names the setting."""
    kind = str(field.type)
    try:
        if "bool" in kind:
            return _to_bool(value)
        if kind.startswith("dict"):
            return json.loads(value) if isinstance(value, str) else dict(value)
        if kind.startswith("tuple[str"):  # a TOML list, or words separated by commas or spaces
            items = value.replace(",", " ").split() if isinstance(value, str) else value
            if not isinstance(items, list | tuple):
                raise TypeError("not a list")
            return tuple(str(item) for item in items)
        if kind.startswith("int"):
            return int(value)
        if kind.startswith("float"):
            return float(value)
        if "Path" in kind:
            return Path(value)
        if "None" in kind and value in ("", None):
            return None
        return str(value)
    except (TypeError, ValueError) as exc:  # json's JSONDecodeError is a ValueError
        raise ConfigError(f"setting {field.name!r}: cannot read {value!r} as {kind}") from exc


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)
