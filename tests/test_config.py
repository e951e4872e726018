"""Settings: defaults < TOML < SEMPROXY_* environment < flags, each validated with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from semproxy.config import DEFAULT_UPSTREAM, Settings, default_data_dir, load_settings
from semproxy.errors import ConfigError


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(environ={})
    assert settings.upstream == DEFAULT_UPSTREAM
    assert settings.data_dir == default_data_dir()
    assert settings.port == 8080 and settings.host == "127.0.0.1"


def test_precedence_toml_then_env_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "semproxy.toml"
    config.write_text('upstream = "http://toml/v1"\nport = 9000\nsimilarity_threshold = 0.9\n'
                      'semantic_enabled = false\nnamespace = "team"\n')
    environ = {"SEMPROXY_PORT": "9100", "SEMPROXY_SIMILARITY_THRESHOLD": "0.97"}
    settings = load_settings(config_file=config, environ=environ, overrides={"port": 9200, "host": None})
    assert settings.upstream == "http://toml/v1"  # only in the file
    assert settings.similarity_threshold == 0.97  # env beats the file
    assert settings.port == 9200  # the flag beats both
    assert settings.semantic_enabled is False and settings.namespace == "team"
    assert settings.host == "127.0.0.1"  # a flag left unset changes nothing


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("max_entries = 5\n")
    assert load_settings(environ={"SEMPROXY_CONFIG": str(config)}).max_entries == 5


@pytest.mark.parametrize(("text", "message"), [
    ("similarity_threshold = 1.5", "similarity_threshold"),
    ("port = 0", "port"),
    ("upstream = 'ftp://x'", "upstream"),
    ("colour = 'blue'", "unknown setting"),
    ("port = 'many'", "port"),
    ("semantic_enabled = 'perhaps'", "semantic_enabled"),
    ("this is not toml", "not valid TOML"),
    ("compression_languages = ['en', 'de-x']", "compression_languages"),
    ("compression_wait_seconds = 0", "compression_wait_seconds"),
])
def test_bad_settings_are_reported_clearly(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(config_file=config, environ={})


def test_the_compression_model_defaults_to_the_methods_own() -> None:
    assert Settings().compression_model == "bundled"  # the classifier in the package: nothing to install
    assert Settings(compression_method="llmlingua").compression_model == "SmolLM2-135M-Instruct"
    assert Settings(compression_method="llmlingua", compression_model="/models/x").compression_model == "/models/x"
    assert load_settings(environ={"SEMPROXY_COMPRESSION_LANGUAGES": "en, DE"}).compression_languages == ("en", "de")


def test_bad_environment_value() -> None:
    with pytest.raises(ConfigError, match="max_entries"):
        load_settings(environ={"SEMPROXY_MAX_ENTRIES": "lots"})


def test_upstream_trailing_slash_is_trimmed() -> None:
    assert Settings(upstream="http://x/v1/").upstream == "http://x/v1"


def test_the_annotated_example_config_is_valid_and_complete() -> None:
    import dataclasses
    import tomllib

    path = Path(__file__).resolve().parents[1] / "examples" / "semproxy.toml"
    settings = load_settings(config_file=path, environ={})
    text = path.read_text()
    settings_lines, tables = _commented_tables(text)
    commented = {line.lstrip("# ").split(" ")[0] for line in settings_lines
                 if line.startswith("# ") and " = " in line}
    documented = set(tomllib.loads(text)) | commented | set(tables)
    assert documented == {f.name for f in dataclasses.fields(Settings)}
    assert settings.similarity_threshold == Settings().similarity_threshold
    assert settings.upstreams == ()  # the multi-upstream example is commented out


def test_the_commented_upstreams_example_is_valid_and_complete(tmp_path: Path) -> None:
    import dataclasses

    from semproxy.config import UpstreamConfig

    text = (Path(__file__).resolve().parents[1] / "examples" / "semproxy.toml").read_text()
    _, tables = _commented_tables(text)
    config = tmp_path / "upstreams.toml"
    config.write_text("\n".join(tables["upstreams"]))
    environ = {"MISTRAL_API_KEY": "sk-m", "CODESTRAL_API_KEY": "sk-c", "OPENAI_API_KEY": "sk-o"}
    upstreams = load_settings(config_file=config, environ=environ).upstreams
    assert [u.name for u in upstreams] == ["mistral-eu", "mistral-us", "codestral", "openai"]
    written = {line.split(" ")[0] for line in tables["upstreams"] if " = " in line}
    assert written == {f.name for f in dataclasses.fields(UpstreamConfig)} - {"api_key"}
    assert upstreams[0].api_key == "sk-m" and upstreams[1].api_key is None


def _commented_tables(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """Lines outside commented-out [[table]] blocks, and each block's lines uncommented (a block runs from
    `# [[name]]` to the end of that run of comment lines)."""
    outside: list[str] = []
    tables: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("# [["):
            current = tables.setdefault(line.strip("# []"), [])
        elif not line.startswith("#"):
            current = None
        if current is None:
            outside.append(line)
        else:
            current.append(line[2:] if line.startswith("# ") else line.lstrip("#"))
    return outside, tables


def test_secrets_stay_out_of_a_logged_settings() -> None:
    settings = Settings(upstream_api_key="sk-operator-secret", admin_token="admin-secret-0123456789")
    assert "sk-operator-secret" not in repr(settings) and "admin-secret-0123456789" not in repr(settings)
    assert settings.upstream_api_key == "sk-operator-secret"  # still there for whoever needs it
