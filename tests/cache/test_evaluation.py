"""`semproxy eval`: reading labelled pairs and sweeping the hit policy's budget."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from semproxy.cache import evaluation
from semproxy.cache.evaluation import LabelledPair
from semproxy.cache.pair_model import WordRarity
from semproxy.cache.verifier import HitVerifier
from semproxy.errors import ConfigError
from tests.cache.test_verifier import tiny_model


def test_reads_jsonl_gzip_paws_and_stsb(tmp_path: Path) -> None:
    jsonl = tmp_path / "pairs.jsonl.gz"
    with gzip.open(jsonl, "wt") as f:
        f.write(json.dumps({"text_a": "a", "text_b": "b", "label": 1}) + "\n\n")
        f.write(json.dumps({"text_a": "c", "text_b": "d", "label": "0"}) + "\n")
    assert evaluation.read_pairs(jsonl) == [LabelledPair("a", "b", True), LabelledPair("c", "d", False)]

    paws = tmp_path / "paws.tsv"
    paws.write_text('id\tsentence1\tsentence2\tlabel\n1\tx "quoted\ty\t1\n2\tp\tq\t0\n')
    assert evaluation.read_pairs(paws) == [LabelledPair('x "quoted', "y", True), LabelledPair("p", "q", False)]

    stsb = tmp_path / "sts.tsv"
    stsb.write_text("g\tf\t2012\t1\t4.5\tA man runs.\tA man is running.\n"
                    "g\tf\t2012\t2\t3.0\tmiddle\tscores are skipped\n"
                    "g\tf\t2012\t3\t0.5\tA cat.\tA plane.\n")
    assert [p.same_meaning for p in evaluation.read_pairs(stsb)] == [True, False]
    assert len(evaluation.read_pairs(stsb, limit=1)) == 1


def test_bad_files_get_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        evaluation.read_pairs(tmp_path / "missing.jsonl")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text_a": "a", "label": 1}\n')
    with pytest.raises(ConfigError, match="line 1"):
        evaluation.read_pairs(broken)
    empty = tmp_path / "empty.tsv"
    empty.write_text("nothing here\n")
    with pytest.raises(ConfigError, match="no labelled pairs"):
        evaluation.read_pairs(empty)


def test_scores_follow_the_floor_the_rules_and_the_model() -> None:
    pairs = [
        LabelledPair("Convert 5 km to miles", "Convert 7 km to miles", False),  # a rule rejects it
        LabelledPair("how to bake bread", "how do I bake bread", True),  # high cosine: model says yes
        LabelledPair("how to bake bread", "history of bread", False),  # below the floor
    ]
    fixed = {"Convert 5 km to miles": [1, 0], "Convert 7 km to miles": [1, 0.01], "how to bake bread": [0, 1],
             "how do I bake bread": [0.05, 1], "history of bread": [1, 1]}

    def vectors_of(texts: list[str]) -> np.ndarray:
        return np.asarray([fixed[t] for t in texts], dtype=np.float32)

    verifier = HitVerifier(tiny_model(0.9), WordRarity({}, 5.0), max_false_hit_rate=0.05)
    cosines, scores = evaluation.policy_scores(pairs, vectors_of, verifier, floor=0.8)
    assert cosines[2] < 0.8 and scores[2] == evaluation.REJECTED
    assert scores[0] == evaluation.REJECTED  # the numbers rule, whatever the budget
    assert scores[1] > 0.5
    labels = np.asarray([p.same_meaning for p in pairs])
    routed = evaluation.RoutedScores(cosines, scores, ["model"] * len(pairs))
    points = evaluation.budget_sweep(routed, labels, {"model": verifier}, [0.05, 0.001])
    assert [p.served for p in points] == [0, 1]  # budget 0.001 serves nothing, 0.05 serves the rewording
    assert points[1].precision == 1.0 and points[1].recall == 1.0 and points[1].false_hit_rate == 0.0
