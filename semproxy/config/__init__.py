"""Configuration: one frozen `Settings` (the `[[upstreams]]` tables included), loaded as
defaults < TOML file < SEMPROXY_* environment < CLI flags. Imports nothing of semproxy's but `errors`."""

from semproxy.config.loading import load_settings
from semproxy.config.settings import DEFAULT_EMBEDDING_MODEL, DEFAULT_UPSTREAM, ENV_PREFIX, Settings, default_data_dir
from semproxy.config.upstreams import UpstreamConfig, parse_upstreams

__all__ = [
    "DEFAULT_EMBEDDING_MODEL", "DEFAULT_UPSTREAM", "ENV_PREFIX", "Settings", "UpstreamConfig", "default_data_dir",
    "load_settings", "parse_upstreams",
]
