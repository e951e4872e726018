"""The command line: cache maintenance on a data dir, and serve's argument handling."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from semproxy.cache.keys import make_key, tenant_id
from semproxy.cli import main
from semproxy.config import default_data_dir
from semproxy.storage.records import NewEntry
from semproxy.storage.sqlite import SqliteStorage
from tests.servers import free_port, serve_process


def _fill(data_dir: Path) -> None:
    store = SqliteStorage(data_dir)
    for namespace in ("team-a", "team-b", None):
        tenant = tenant_id(api_key="sk-x", namespace=namespace, salt=store.tenant_salt())
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        key = make_key("chat", body, tenant=tenant)
        store.put_entry(NewEntry(key=key, response=b"{}", vector=np.ones(4, np.float32), ttl_seconds=0), now=1.0)


def test_cache_clear_by_namespace_then_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(tmp_path)
    assert main(["cache", "clear", "--data-dir", str(tmp_path), "--namespace", "team-a"]) == 0
    assert "removed 1 entries from namespace 'team-a'" in capsys.readouterr().out
    assert main(["cache", "info", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == [f"2 entries in {tmp_path / 'cache.sqlite3'}",
                                                         "  waiting to be embedded: 2"]
    assert main(["cache", "clear", "--data-dir", str(tmp_path)]) == 0
    assert "removed 2 entries" in capsys.readouterr().out


def test_bad_settings_exit_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--data-dir", str(tmp_path), "--port", "70000"]) == 2
    assert "port must be between" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_requires_no_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the environment says where it may write (the per-user data dir under a temporary home) and listen.
    for name in [name for name in os.environ if name.startswith("SEMPROXY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "home" / "data"))
    port = free_port()
    env = {**os.environ, "SEMPROXY_PORT": str(port), "SEMPROXY_COMPRESSION_ENABLED": "false",
           "SEMPROXY_SEMANTIC_ENABLED": "false", "SEMPROXY_LOG_LEVEL": "warning", "HF_HUB_OFFLINE": "1"}
    data_dir = default_data_dir()
    assert data_dir.is_relative_to(tmp_path) and not data_dir.exists()
    with serve_process((), env=env, port=port, cwd=tmp_path) as process:  # `semproxy serve`, nothing more
        assert process.args[-1] == "serve"
        assert (data_dir / "cache.sqlite3").is_file()  # the cache opened in the default data dir


def test_serve_documents_its_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--upstream", "--host", "--port", "--data-dir", "--config"):
        assert flag in out


def test_serve_caps_glibcs_malloc_arenas_unless_the_environment_says(monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    from semproxy.cli import _cap_malloc_arenas

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert _cap_malloc_arenas() is True  # glibc accepted M_ARENA_MAX = 2
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert _cap_malloc_arenas() is False  # the operator's own value stands
