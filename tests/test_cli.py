"""The command line: cache maintenance on a data dir, and serve's argument handling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semproxy.cache.keys import make_key, tenant_id
from semproxy.cli import main
from semproxy.storage.records import NewEntry
from semproxy.storage.sqlite import SqliteStorage


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
    assert capsys.readouterr().out.startswith("2 entries")
    assert main(["cache", "clear", "--data-dir", str(tmp_path)]) == 0
    assert "removed 2 entries" in capsys.readouterr().out


def test_bad_settings_exit_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--data-dir", str(tmp_path), "--port", "70000"]) == 2
    assert "port must be between" in capsys.readouterr().err


def test_serve_requires_no_arguments_and_documents_them(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--upstream", "--host", "--port", "--data-dir", "--config"):
        assert flag in out
