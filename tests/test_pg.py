"""The PostgreSQL test helper: a server that cannot start fails the tests that need it, unless the environment
asks explicitly for them to be skipped; either way the reason is given."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import pg

REASON = r"PostgreSQL (could not start here: FileNotFoundError|tests need the postgres extra)"
OUTCOMES = (pytest.fail.Exception, pytest.skip.Exception)  # caught both ways, so a wrong one is seen, not obeyed


def test_a_server_that_cannot_start_fails_the_test_with_the_reason(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(pg.SKIP_VARIABLE, raising=False)
    with pytest.raises(OUTCOMES, match=REASON) as failed:
        pg.start_server(tmp_path / "no such folder" / "data")  # its parent is missing: it cannot start
    assert failed.type is pytest.fail.Exception
    assert f"set {pg.SKIP_VARIABLE}=1 to skip" in str(failed.value)


def test_skip_postgres_skips_them_with_the_reason_instead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pg.SKIP_VARIABLE, "1")
    with pytest.raises(OUTCOMES, match=REASON) as skipped:
        pg.start_server(tmp_path / "no such folder" / "data")
    assert skipped.type is pytest.skip.Exception
    assert f"({pg.SKIP_VARIABLE}=1)" in str(skipped.value)
