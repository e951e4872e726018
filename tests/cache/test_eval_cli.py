"""`semproxy eval` end to end, with the real embedding model and the shipped verifier."""

import json
from pathlib import Path

import pytest

from semproxy.cli import main

pytestmark = pytest.mark.slow

PAIRS = [
    ("How do I make my phone battery last longer?", "How can I make my phone's battery last longer?", 1),
    ("What is the best way to learn to cook?", "What's the best way to learn cooking?", 1),
    ("Convert 100 EUR to USD", "Convert 100 USD to EUR", 0),
    ("How many miles is 5 km?", "How many miles is 8 km?", 0),
    ("Is it safe to eat raw eggs?", "Is it not safe to eat raw eggs?", 0),
    ("How do I reverse a list in Python?", "How do I reverse a list in Java?", 0),
]


def test_eval_prints_the_sweep_and_draws_the_curve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"text_a": a, "text_b": b, "label": y}) + "\n" for a, b, y in PAIRS))
    plot = tmp_path / "curve.png"
    assert main(["eval", str(pairs), "--data-dir", str(tmp_path), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "6 pairs, 2 with the same meaning" in out
    configured = next(line for line in out.splitlines() if line.endswith("<- configured"))
    assert configured.startswith("budget 0.02")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(["eval", str(pairs), "--data-dir", str(tmp_path), "--json", "--max-false-hit-rate", "0.05"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["configured"]["label"] == "budget 0.05"
    assert figures["configured"]["false_hit_rate"] == 0.0  # every swap above is rejected by a rule
    assert figures["cosine_alone"]["false_hit_rate"] > 0.0  # ... which cosine alone would have served
    assert {p["label"] for p in figures["sweep"]} >= {"budget 0.01", "budget 0.05", "budget 0.2"}


def test_eval_reports_a_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(tmp_path / "nope.jsonl"), "--data-dir", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
