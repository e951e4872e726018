"""`semproxy stats`: the terminal report and its --json twin, read from a data dir's request log."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from semproxy.cli import main
from semproxy.stats.terminal import chart
from semproxy.storage.sqlite import SqliteStorage
from tests.stats.test_log_and_report import _fill


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    _fill(SqliteStorage(tmp_path), time.time())
    return tmp_path


def test_json_output_has_the_documented_keys(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--data-dir", str(data_dir), "--since", "2h", "--by", "model", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["requests"] == 18 and figures["outcomes"]["exact"] == 6
    assert set(figures["latency_ms"]) == {"hit", "miss", "ttfb_stream"}
    assert figures["groups"]["by"] == "model" and len(figures["timeline"]) == 24
    assert figures["top_prompts"][0]["text"] == "question 0"
    assert main(["stats", "--data-dir", str(data_dir), "--since", "2h", "--json", "--hashes", "--top", "1"]) == 0
    top = json.loads(capsys.readouterr().out)["top_prompts"]
    assert len(top) == 1 and top[0]["text"] is None and top[0]["prompt_hash"]
    assert main(["stats", "--data-dir", str(data_dir), "--since", "30s", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["requests"] == 0


def test_terminal_report(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--data-dir", str(data_dir), "--since", "2h", "--by", "tenant", "--buckets", "12"]) == 0
    out = capsys.readouterr().out
    for heading in ("hit rate (hits / lookups)", "41.2%", "latency", "by tenant", "top repeated prompts",
                    "question 0", "hit rate over time", "money saved, total"):
        assert heading in out


def test_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--data-dir", str(tmp_path), "--since", "lately"]) == 2
    assert "duration" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["stats", "--by", "colour"])


def test_the_chart_draws_rates_as_columns() -> None:
    rows = [line.plain for line in chart([0.0, 0.5, 1.0, None], height=2)]
    assert rows == ["  █  100%", " ██· 0%"]  # 0.5 of two rows fills the lower one


def test_the_terminal_report_shows_audits_when_there_are_some(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from tests.stats.test_log_and_report import _log, _observed

    log = _log(SqliteStorage(tmp_path), retention_days=0)
    for wrong in (True, False, False, False):
        observed = _observed(time.time() - 60, "audit")
        observed.facts.audit_wrong, observed.facts.audit_weight = wrong, 1.0
        log.submit(observed)
    log.close()
    assert main(["stats", "--data-dir", str(tmp_path), "--since", "1h", "--by", "tenant"]) == 0
    out = capsys.readouterr().out
    for line in ("wrong semantic hits served (audited)", "25.0%", "audits: compared / wrong", "4 / 1",
                 "audits' upstream cost", "wrong hits"):
        assert line in out
