"""Upstream tables, the circuit breaker's states and the router's order, without any network."""

from __future__ import annotations

from pathlib import Path

import pytest

from semproxy.config import Settings, UpstreamConfig, load_settings
from semproxy.errors import ConfigError, ModelNotFound
from semproxy.upstream.breaker import CircuitBreaker
from semproxy.upstream.routing import Router, RoutingPolicy


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


TABLES = '''
[[upstreams]]
name = "mistral"
url = "https://api.mistral.ai/v1/"
api_key_env = "MISTRAL_KEY"
region = "eu"
models = ["mistral-*", "ministral-8b"]
aliases = { fast = "mistral-small-latest" }
headers = { "X-Team" = "search" }
priority = 1
read_timeout = 30

[[upstreams]]
name = "local"
url = "http://127.0.0.1:8000/v1"
'''


def test_upstream_tables_are_read_with_keys_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "s.toml"
    config.write_text(TABLES)
    settings = load_settings(config_file=config, environ={"MISTRAL_KEY": "sk-mistral"})
    mistral, local = settings.upstreams
    assert mistral.url == "https://api.mistral.ai/v1" and mistral.api_key == "sk-mistral"
    assert mistral.models == ("mistral-*", "ministral-8b") and mistral.patterns == ("mistral-*",)
    assert mistral.aliases == (("fast", "mistral-small-latest"),) and mistral.headers == (("X-Team", "search"),)
    assert (mistral.priority, mistral.read_timeout, mistral.connect_timeout, mistral.region) == (1, 30.0, None, "eu")
    assert local.serves_everything and local.api_key is None
    assert "sk-mistral" not in repr(settings)  # the key never shows up in logs of the settings


@pytest.mark.parametrize(("tables", "environ", "message"), [
    (TABLES, {}, "MISTRAL_KEY"),
    ('[[upstreams]]\nname = "a"\nurl = "http://a/v1"\napi_key = "sk-in-the-file"\n', {}, "api_key_env"),
    ('[[upstreams]]\nname = "a"\nurl = "http://a/v1"\ncolour = "red"\n', {}, "unknown setting.*colour"),
    ('[[upstreams]]\nname = "a"\n', {}, "name and url are required"),
    ('[[upstreams]]\nname = "a"\nurl = "ftp://a"\n', {}, "http"),
    ('[[upstreams]]\nname = "a"\nurl = "http://a"\n[[upstreams]]\nname = "a"\nurl = "http://b"\n', {}, "unique"),
    ('[[upstreams]]\nname = "a"\nurl = "http://a"\nmodels = "gpt-4"\n', {}, "models must be a list"),
    ('[[upstreams]]\nname = "a b"\nurl = "http://a"\n', {}, "name must be"),
    ('upstreams = "http://a"\n', {}, "list of tables"),
    ("failover_max_attempts = 0\n", {}, "failover_max_attempts"),
    ("latency_alpha = 1.5\n", {}, "latency_alpha"),
])
def test_bad_upstream_settings_are_reported_clearly(tmp_path: Path, tables: str, environ: dict[str, str],
                                                    message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(tables)
    with pytest.raises(ConfigError, match=message):
        load_settings(config_file=config, environ=environ)


def test_upstreams_cannot_come_from_an_environment_variable() -> None:
    with pytest.raises(ConfigError, match="TOML"):
        load_settings(environ={"SEMPROXY_UPSTREAMS": "http://a/v1"})


def test_matching_by_exact_name_pattern_and_alias() -> None:
    config = UpstreamConfig(name="m", url="http://m/v1", models=("mistral-*", "codestral-2405"),
                            aliases=(("fast", "mistral-small-latest"),))
    assert config.serves("mistral-large-latest") and config.serves("codestral-2405") and config.serves("fast")
    assert not config.serves("codestral-latest") and not config.serves("gpt-4o") and not config.serves("Mistral-x")
    assert config.upstream_model("fast") == "mistral-small-latest"
    assert config.upstream_model("mistral-tiny") == "mistral-tiny"


def test_breaker_opens_after_repeated_failures_and_probes_once_after_the_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=3, cooldown=30, clock=clock)
    for _ in range(2):
        assert breaker.acquire()
        breaker.failed()
    breaker.succeeded()  # a success resets the count: failures must come in a row
    for _ in range(3):
        assert breaker.acquire()
        breaker.failed()
    assert breaker.state == "open" and not breaker.acquire()
    assert breaker.retry_after() == 30
    clock.now += 29.5
    assert not breaker.acquire() and breaker.retry_after() == 0.5
    clock.now += 0.5
    assert breaker.state == "half_open"
    assert breaker.acquire()  # the probe
    assert not breaker.acquire()  # only one at a time
    breaker.failed()  # the probe failed: open again, for a full cooldown
    assert breaker.state == "open" and breaker.retry_after() == 30
    clock.now += 30
    assert breaker.acquire()
    breaker.release()  # the probe's client went away: someone else may probe
    assert breaker.acquire()
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.acquire() and breaker.acquire()


def _router(*configs: UpstreamConfig, clock: FakeClock | None = None, **policy: float) -> Router:
    return Router(configs, policy=RoutingPolicy(**policy),  # type: ignore[arg-type]
                  connect_timeout=1, read_timeout=5, clock=clock or FakeClock())


def test_order_is_priority_then_measured_latency_with_stale_figures_measured_again() -> None:
    clock = FakeClock()
    router = _router(UpstreamConfig(name="eu", url="http://eu/v1"), UpstreamConfig(name="us", url="http://us/v1"),
                     UpstreamConfig(name="backup", url="http://b/v1", priority=1), clock=clock,
                     latency_probe_interval=60)
    names = lambda: [u.name for u in router.candidates("any")]  # noqa: E731
    assert names() == ["eu", "us", "backup"]  # nothing measured: the order of the file
    eu, us, backup = router.upstreams
    for upstream, seconds in ((eu, 0.300), (us, 0.050), (backup, 0.001)):
        router.chosen(upstream)
        router.observe(upstream, seconds)
    assert names() == ["us", "eu", "backup"]  # the faster region first; priority still beats speed
    for _ in range(10):
        router.chosen(eu)
        router.observe(eu, 0.010)  # eu got faster: the moving average follows
    assert names() == ["eu", "us", "backup"]
    clock.now += 61  # nobody was chosen for a minute: figures are stale, measured again in file order
    router.chosen(eu)
    assert names() == ["us", "eu", "backup"]


def test_unknown_models_are_refused_only_when_model_lists_exist() -> None:
    router = _router(UpstreamConfig(name="m", url="http://m/v1", models=("mistral-*",)),
                     UpstreamConfig(name="o", url="http://o/v1", models=("gpt-*",)))
    with pytest.raises(ModelNotFound):
        router.candidates("llama-3")
    assert [u.name for u in router.candidates(None)] == ["m"]  # no model (files, uploads): the first upstream
    single = _router(UpstreamConfig(name="default", url="http://x/v1"))
    assert not single.needs_model and single.passthrough
    assert [u.name for u in single.candidates("anything-at-all")] == ["default"]


def test_settings_without_upstream_tables_keep_the_single_upstream_form() -> None:
    from semproxy.app import upstream_configs

    (only,) = upstream_configs(Settings(upstream="http://x/v1/", upstream_api_key="sk-up"))
    assert (only.name, only.url, only.api_key, only.serves_everything) == ("x", "http://x/v1", "sk-up", True)
