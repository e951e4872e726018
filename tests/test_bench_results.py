"""Every results file the docs quote says which commit it was measured at, on a clean tree, and that the run
produced the outcomes it measures (bench/common.py writes both; bench/stale.py compares them with HEAD)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

RESULTS = sorted((Path(__file__).resolve().parents[1] / "bench" / "results").glob("*.json"))


def test_there_are_results() -> None:
    assert len(RESULTS) >= 12


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.name)
def test_a_results_file_records_its_commit_and_its_checks(path: Path) -> None:
    record = json.loads(path.read_text(encoding="utf-8"))
    origin = record.get("provenance") or {}
    assert re.fullmatch(r"[0-9a-f]{40}", str(origin.get("commit"))), "no commit recorded: measure it again"
    assert origin.get("dirty") is False, "measured with uncommitted changes"
    assert origin.get("script", "").startswith("bench/")
    assert record.get("checks", {}).get("ok") is True, record.get("checks")
