"""`semproxy serve --config` with [[upstreams]] tables, end to end: TOML, keys from the environment, routing."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from semproxy.cli import main
from tests.fakes import FakeOpenAI
from tests.servers import ThreadServer, semproxy_process

TABLES = """
allow_any_client = true  # the general upstream's key serves every client here

[[upstreams]]
name = "general"
url = "{general}"
api_key_env = "TEST_GENERAL_KEY"
models = ["mistral-*"]
aliases = {{ fast = "mistral-small-latest" }}

[[upstreams]]
name = "coder"
url = "{coder}"
models = ["codestral-*"]
"""


@pytest.mark.slow
def test_serve_routes_by_the_tables_in_the_config_file(tmp_path: Path) -> None:
    general, coder = FakeOpenAI(), FakeOpenAI()
    with ThreadServer(general, lifespan="off") as general_server, ThreadServer(coder, lifespan="off") as coder_server:
        config = tmp_path / "semproxy.toml"
        config.write_text(TABLES.format(general=general_server.url + "/v1", coder=coder_server.url + "/v1"))
        env = {"TEST_GENERAL_KEY": "sk-from-env", "SEMPROXY_SEMANTIC_ENABLED": "false"}
        with semproxy_process(tmp_path / "data", "http://ignored.test/v1", extra=("--config", str(config)),
                              env_extra=env) as process:
            url = process.url  # type: ignore[attr-defined]
            for model in ("fast", "codestral-latest"):
                body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
                response = httpx.post(url + "/v1/chat/completions", json=body, timeout=30,
                                      headers={"authorization": "Bearer sk-client"})
                assert response.status_code == 200
            unknown = httpx.post(url + "/v1/chat/completions", timeout=30,
                                 json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
            assert unknown.status_code == 404
    assert general.completions()[0].json()["model"] == "mistral-small-latest"
    assert general.completions()[0].headers["authorization"] == "Bearer sk-from-env"
    assert coder.completions()[0].headers["authorization"] == "Bearer sk-client"


def test_serve_refuses_to_start_without_the_named_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("TEST_GENERAL_KEY", raising=False)
    config = tmp_path / "semproxy.toml"
    config.write_text(TABLES.format(general="http://a.test/v1", coder="http://b.test/v1"))
    assert main(["serve", "--config", str(config), "--data-dir", str(tmp_path)]) == 2
    assert "TEST_GENERAL_KEY" in capsys.readouterr().err
