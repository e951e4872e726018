"""`semproxy cache check` finds what a crash or a bug could leave behind; `cache clear --tenant` erases one
tenant's entries and request-log rows so that not even their bytes stay on disk."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from semproxy.cli import main
from tests.conftest import Proxy

pytestmark = pytest.mark.anyio


async def _traffic(proxy: Proxy) -> None:
    for who in ("alice", "bob"):
        for question in ("what is the secret plan", "when is the merger", "how tall is the tower"):
            response = await proxy.chat(f"{who} asks {question}", headers={"authorization": f"Bearer sk-{who}"})
            assert response.status_code == 200
    proxy.app.log.flush()  # type: ignore[attr-defined]


def _check(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["cache", "check", "--data-dir", str(data_dir)])
    return code, capsys.readouterr().out


async def test_check_passes_on_a_sound_data_dir_and_names_each_kind_of_damage(
        make_proxy, settings, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    proxy = await make_proxy()
    await _traffic(proxy)
    data_dir = settings.data_dir
    code, out = _check(data_dir, capsys)
    assert code == 0, out
    assert "6 entries, 6 exact keys, 6 vectors, 6 indexed, 6 found again by search" in out
    assert "cache.sqlite3: integrity ok" in out and "stats.sqlite3: integrity ok" in out

    with sqlite3.connect(data_dir / "cache.sqlite3") as db:
        db.execute("INSERT INTO entries(kind, tenant, scope, model, prompt, vector, response, created_at, "
                   "last_used_at) VALUES ('chat', 't', 's', 'm', 'p', ?, '{\"choices\": []}', 0, 0)",
                   (np.full(64, 0.5, np.float32).tobytes(),))
    code, out = _check(data_dir, capsys)
    assert code == 1
    assert "1 entries have no exact key (half-written)" in out
    assert "not a complete chat response" in out
    assert "not a finite unit vector" in out


async def test_clear_tenant_erases_entries_and_log_rows_down_to_the_bytes(
        make_proxy, settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    proxy = await make_proxy()
    await _traffic(proxy)
    data_dir = settings.data_dir
    bob = proxy.cache.tenant(api_key="sk-bob", namespace=None)
    assert any(b"bob asks" in path.read_bytes() for path in data_dir.iterdir() if path.is_file())

    assert main(["cache", "clear", "--data-dir", str(data_dir), "--tenant", "sk-bob"]) == 0
    assert "removed 3 entries and 3 request-log rows" in capsys.readouterr().out
    with sqlite3.connect(data_dir / "cache.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM entries WHERE tenant = ?", (bob,)).fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM entries").fetchone()[0] == 3  # alice's stay
    with sqlite3.connect(data_dir / "stats.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM requests WHERE tenant = ?", (bob,)).fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM requests").fetchone()[0] == 3
    for path in data_dir.iterdir():  # secure_delete and a WAL checkpoint: no page keeps bob's prompts
        if path.is_file():
            assert b"bob asks" not in path.read_bytes(), path.name
    # The running proxy no longer serves bob's answers, and a hash erases as well as the key.
    again = await proxy.chat("bob asks what is the secret plan", headers={"authorization": "Bearer sk-bob"})
    assert again.headers["x-semproxy-cache"] == "miss"
    proxy.app.log.flush()  # type: ignore[attr-defined]
    monkeypatch.setattr("sys.stdin", io.StringIO(bob + "\n"))  # out of the shell's history and `ps`
    assert main(["cache", "clear", "--data-dir", str(data_dir), "--tenant", "-"]) == 0
    assert "removed 1 entries and 1 request-log rows" in capsys.readouterr().out
    code, out = _check(data_dir, capsys)
    assert code == 0, out
