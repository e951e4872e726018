"""The hit verifier's rules, its tree model and its operating point, without an embedding model."""

import numpy as np
import pytest

from semproxy.cache.pair_model import PairModel, WordRarity, hand_features
from semproxy.cache.rules import reversed_direction, rule_rejection
from semproxy.cache.text import analyze
from semproxy.cache.verifier import Candidate, HitVerifier


def rejection(asked: str, stored: str) -> str | None:
    return rule_rejection(analyze(asked), analyze(stored))


@pytest.mark.parametrize(("asked", "stored", "reason"), [
    ("Convert 5 km to miles", "Convert 7 km to miles", "numbers"),
    ("Is it safe to drink tap water?", "Is it not safe to drink tap water?", "negation"),
    ("Convert EUR to USD", "Convert USD to EUR", "direction"),
    ("Is Python faster than Java?", "Is Java faster than Python?", "direction"),
    ("What is the capital of France?", "What is the capital of Germany?", "name"),
    ("How do I reverse a list in Python?", "How do I reverse a list in Rust?", "names"),
    ("Quelle est la capitale de la France ?", "What is the capital of France?", "written in"),
    ("Money sent by India to Pakistan, and how Pakistan used it", "Money sent by Pakistan to India, and how "
     "Pakistan used it", "direction"),  # a name that appears twice
    ("Amazon SageMaker works with Adobe SageMaker", "Amazon SageMaker works with Amazon SageMaker", "name"),
    ("Run 5 km every day", "Run 5 miles every day", "numbers"),
    ("Is it legal to record a phone call?", "Is it illegal to record a phone call?", "opposites"),
    ("What are the advantages of remote work?", "What are the disadvantages of remote work?", "opposites"),
    ("How do I install numpy?", "How do I uninstall numpy?", "opposites"),
    ("How do I encrypt a file?", "How do I decrypt a file?", "opposites"),
    ("Is it a nonprofit company?", "Is it a profit company?", "opposites"),
    ("Is this product useful?", "Is this product useless?", "opposites"),
    ("Wie kann ich Aktien kaufen?", "Wie kann ich Aktien verkaufen?", "opposites"),
    ("What does a dog think of its owner?", "What does an owner think of its dog?", "roles exchanged"),
    ("How do cleaner fish help sharks?", "How do sharks help cleaner fish?", "roles exchanged"),
    ("Explain TCP in one sentence", "Explain TCP in detail", "answer shape"),
    ("Explain TCP", "Explain TCP briefly", "answer shape"),
    ("Give me the data as JSON", "Give me the data as a table", "answer shape"),
])
def test_rules_reject_swaps_with_a_reason(asked: str, stored: str, reason: str) -> None:
    why = rejection(asked, stored)
    assert why is not None and why.startswith(reason)


@pytest.mark.parametrize(("asked", "stored"), [
    ("What's the capital of France?", "What is the capital city of France?"),
    ("Which is better, computer science vs computer engineering?", "Computer engineering vs computer science?"),
    ("Do women like chocolate? Why or why not?", "Do women like chocolate?"),
    ("How do I learn Python quickly?", "What is the fastest way to learn python?"),
    ("What is the population of Canada?", "What's Canada's population?"),
    ("Plan a 2 hour workout", "Plan a workout of 120 minutes"),
    ("Should I add salt and pepper?", "Should I add pepper and salt?"),  # "and" makes the order free
    ("Why don't my cookies spread?", "Why do my cookies not spread?"),
    ("How do I display hidden files?", "How can I display hidden files?"),  # "display" is no "not play"
    ("Is a non-profit taxed?", "Is a nonprofit taxed?"),
    ("Un uomo accarezza un serpente.", "L'uomo accarezza il serpente."),  # "un" is the article, not a prefix
    ("Summarise the Associated Press article on the vote", "Summarize the vote article"),  # no press release
])
def test_rules_let_rewordings_through(asked: str, stored: str) -> None:
    assert rejection(asked, stored) is None


def test_direction_needs_a_direction_word_between_the_names() -> None:
    assert reversed_direction(["flights", "from", "paris", "to", "rome"], ["flights", "from", "rome", "to", "paris"])
    assert reversed_direction(["paris", "and", "rome", "trip"], ["rome", "and", "paris", "trip"]) is None


def tiny_model(threshold: float) -> PairModel:
    """Two stumps on feature 0 (cosine): +2 above `threshold`, -2 below; and a constant tree."""
    return PairModel(
        feature=np.array([[0, 0, 0], [0, 0, 0]], dtype=np.int32),
        threshold=np.array([[threshold, np.inf, np.inf], [np.inf, np.inf, np.inf]]),
        left=np.array([[1, 1, 2], [0, 1, 2]], dtype=np.int32),
        right=np.array([[2, 1, 2], [0, 1, 2]], dtype=np.int32),
        value=np.array([[0.0, -2.0, 2.0], [0.5, 0.0, 0.0]]),
        baseline=0.0, depth=2,
        curve_scores=np.array([0.2, 0.5, 0.8, 0.95]),
        curve_false_hit_rates=np.array([0.30, 0.10, 0.04, 0.01]),
    )


def test_the_tree_walk_sums_leaf_values() -> None:
    model = tiny_model(0.9)
    rows = np.array([[0.95, 0.0], [0.5, 0.0]], dtype=np.float32)
    expected = 1 / (1 + np.exp(-np.array([2.5, -1.5])))
    np.testing.assert_allclose(model.score(rows), expected)


def test_the_operating_point_is_the_lowest_threshold_within_budget(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model(0.9)
    assert model.threshold_for(0.05) == 0.8
    assert model.threshold_for(0.10) == 0.5
    assert model.threshold_for(0.001) == 1.0  # nothing is within budget: serve nothing
    model.save(tmp_path / "m.npz")
    assert PairModel.load(tmp_path / "m.npz").threshold_for(0.05) == 0.8


def test_a_language_with_its_own_curve_gets_its_own_operating_point(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model(0.9).with_curve(np.array([0.2, 0.5, 0.8, 0.95]), np.array([0.30, 0.10, 0.04, 0.01]),
                                       {"pt": np.array([0.04, 0.02, 0.01, 0.0]), "de": np.array([0.5, 0.3, 0.1, 0.05])})
    assert model.threshold_for(0.05, "pt") == 0.2  # an easier language serves from a lower score
    assert model.threshold_for(0.05, "de") == 0.95
    assert model.threshold_for(0.05, "fi") == model.threshold_for(0.05) == 0.8  # no curve: every set at once
    model.save(tmp_path / "m.npz")
    assert PairModel.load(tmp_path / "m.npz").threshold_for(0.05, "pt") == 0.2
    verifier = HitVerifier(model, WordRarity({}, 5.0), max_false_hit_rate=0.05)
    assert verifier.thresholds == {"de": 0.95, "pt": 0.2}


def test_a_model_file_without_language_curves_still_loads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    arrays = {name: value for name, value in np.load(_saved(tmp_path)).items()
              if name not in ("curve_languages", "language_false_hit_rates")}
    np.savez(tmp_path / "old.npz", **arrays)
    old = PairModel.load(tmp_path / "old.npz")
    assert old.threshold_for(0.05, "pt") == 0.8 and len(old.curve_languages) == 0


def _saved(tmp_path) -> object:  # type: ignore[no-untyped-def]
    tiny_model(0.9).save(tmp_path / "new.npz")
    return tmp_path / "new.npz"


def test_choose_serves_the_nearest_accepted_candidate_and_explains_the_rest() -> None:
    verifier = HitVerifier(tiny_model(0.9), WordRarity({}, 5.0), max_false_hit_rate=0.05)
    vector = np.ones(4, dtype=np.float32)
    asked = analyze("Convert 5 km to miles, please")
    candidates = [
        Candidate(facts=analyze("Convert 7 km to miles, please"), vector=vector, similarity=0.99),  # rule
        Candidate(facts=analyze("Convert 5 km into miles"), vector=vector, similarity=0.85),  # model: low
        Candidate(facts=analyze("Please convert 5 km to miles"), vector=vector, similarity=0.93),
    ]
    chosen, verdicts = verifier.choose(asked, vector, candidates)
    assert chosen == 2
    assert [v.accepted for v in verdicts] == [False, False, True]
    assert verdicts[0].reason.startswith("numbers") and verdicts[0].score == 0.0
    assert "score <" in verdicts[1].header() and verdicts[2].header().startswith("accept")


def test_same_words_are_accepted_before_the_model() -> None:
    verifier = HitVerifier(tiny_model(0.99), WordRarity({}, 5.0), max_false_hit_rate=0.05)
    vector = np.ones(4, dtype=np.float32)
    chosen, verdicts = verifier.choose(analyze("what is rust?"), vector,
                                       [Candidate(facts=analyze("What is Rust"), vector=vector, similarity=0.9)])
    assert chosen == 0 and verdicts[0].reason == "same words"


def test_features_are_symmetric_in_the_two_prompts() -> None:
    rarity = WordRarity({"capital": 3.0}, 8.0)
    a, b = analyze("What is the capital of France in 2020?"), analyze("France capital 2021 population")
    assert hand_features(a, b, 0.9, rarity) == hand_features(b, a, 0.9, rarity)


def test_the_packaged_model_loads_offline_and_honours_the_budget() -> None:
    strict = HitVerifier.packaged(max_false_hit_rate=0.01)
    loose = HitVerifier.packaged(max_false_hit_rate=0.10)
    assert 0.0 < loose.threshold < strict.threshold < 1.0
    rng = np.random.default_rng(0)
    u = rng.normal(size=384).astype(np.float32)
    score = strict.score(analyze("How do I bake bread?"), u, analyze("How can I bake bread?"), u, 0.97)
    assert 0.0 <= score <= 1.0
