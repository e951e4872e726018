"""The verifier's reading step: the pair encoder's score weighed with the trees' and the cosine."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from semproxy.cache.pair_model import WordRarity
from semproxy.cache.reading import Blend, PairReader
from semproxy.cache.text import analyze
from semproxy.cache.verifier import Candidate, HitVerifier
from tests.cache.test_verifier import tiny_model

GRID = np.array([0.1, 0.5, 0.9])


class FakeEncoder:
    """Reads a pair as a fit when the stored prompt is in `fits`; records every batch it is given."""

    def __init__(self, fits: set[str]) -> None:
        self.fits, self.batches = fits, []  # type: list[list[tuple[str, str]]]

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        self.batches.append(list(pairs))
        return np.asarray([0.99 if stored in self.fits else 0.01 for stored, _ in pairs], dtype=np.float32)


def reading_verifier(encoder: FakeEncoder) -> HitVerifier:
    blend = Blend((1.0, 0.0, 0.0), 0.0, GRID, np.array([0.2, 0.04, 0.01]))  # the encoder's score decides
    return HitVerifier(tiny_model(0.99), WordRarity({}, 5.0), max_false_hit_rate=0.05,
                       reader=PairReader(encoder, blend))


def candidates(*texts: str) -> list[Candidate]:
    return [Candidate(facts=analyze(t), vector=np.ones(4, dtype=np.float32), similarity=0.9) for t in texts]


def test_the_reader_overrules_the_trees_in_both_directions() -> None:
    encoder = FakeEncoder({"Tell me the population of Canada"})
    verifier = reading_verifier(encoder)
    asked, vector = analyze("What is Canada's population?"), np.ones(4, dtype=np.float32)
    chosen, verdicts = verifier.choose(asked, vector, candidates("What is the area of Canada?",
                                                                 "Tell me the population of Canada"))
    assert chosen == 1  # the trees (threshold 0.99 on cosine 0.9) refuse both; the reading decides
    assert [v.accepted for v in verdicts] == [False, True] and verdicts[1].reason.startswith("read:")


def test_the_nearest_candidate_is_read_alone_and_the_rest_only_when_it_does_not_fit() -> None:
    encoder = FakeEncoder({"Please tell me the capital of France"})
    verifier = reading_verifier(encoder)
    asked, vector = analyze("What is the capital of France?"), np.ones(4, dtype=np.float32)
    chosen, verdicts = verifier.choose(asked, vector, candidates("Please tell me the capital of France",
                                                                 "France: what is its capital city?"))
    assert chosen == 0 and len(encoder.batches) == 1 and len(encoder.batches[0]) == 1
    assert verdicts[1].reason.startswith("not read")
    encoder.batches.clear()
    chosen, _ = verifier.choose(asked, vector, candidates("Name the largest city of France",
                                                          "Which river flows through France?",
                                                          "Please tell me the capital of France"))
    assert chosen == 2 and [len(b) for b in encoder.batches] == [1, 2]


def test_rules_still_reject_before_anything_is_read() -> None:
    encoder = FakeEncoder({"Convert 7 km to miles"})
    chosen, verdicts = reading_verifier(encoder).choose(analyze("Convert 5 km to miles"), np.ones(4, dtype=np.float32),
                                                        candidates("Convert 7 km to miles"))
    assert chosen is None and verdicts[0].by_rule and encoder.batches == []


def test_the_blend_round_trips_and_picks_the_lowest_threshold_within_budget() -> None:
    blend = Blend((1.5, 0.5, 2.0), -1.0, GRID, np.array([0.2, 0.04, 0.01]))
    again = Blend.from_json(blend.to_json())
    assert again.threshold_for(0.05) == 0.5 and again.threshold_for(0.001) == 1.0
    np.testing.assert_allclose(again.score(np.array([0.9]), np.array([0.5]), np.array([0.8])),
                               blend.score(np.array([0.9]), np.array([0.5]), np.array([0.8])))


def test_a_reader_that_cannot_load_leaves_the_trees_to_decide(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> PairReader:
        raise OSError("model file unreadable")

    monkeypatch.setattr(PairReader, "packaged", staticmethod(broken))
    verifier = HitVerifier.packaged(max_false_hit_rate=0.02, space="minilm")
    assert verifier.reader is None and verifier.threshold_at(0.02) == verifier.model.threshold_for(0.02)
    assert verifier.problem is not None and "pair encoder" in verifier.problem
    assert HitVerifier.packaged(max_false_hit_rate=0.02, space="e5").problem is None  # no encoder to miss


@pytest.fixture(scope="module")
def shipped() -> PairReader:
    return PairReader.packaged()


@pytest.mark.parametrize(("stored", "asked", "fits"), [
    ("What is the population of Canada?", "Tell me Canada's population.", True),
    ("How do I reverse a linked list in Python?", "In Python, how can I reverse a linked list?", True),
    ("What should I pack for a ski trip?", "What should I pack for a beach trip?", False),  # no rule sees it
    ("Summarize the plot of Hamlet in one sentence", "Summarize the plot of Hamlet in a detailed essay", False),
])
def test_the_shipped_encoder_reads_rewordings_and_swaps(shipped: PairReader, stored: str, asked: str,
                                                        fits: bool) -> None:
    score = float(shipped.encoder.score([(stored, asked)])[0])
    assert (score >= 0.5) == fits, score


@pytest.mark.anyio
async def test_a_verifier_that_fell_back_makes_the_cache_report_degraded(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from semproxy.app import build_storage, open_entry_store
    from semproxy.cache.service import CachePolicy, SemanticCache
    from semproxy.cache.spaces import Spaces
    from semproxy.config import Settings
    from tests.fakes import HashingEmbedder

    def broken() -> PairReader:
        raise OSError("model file unreadable")

    monkeypatch.setattr(PairReader, "packaged", staticmethod(broken))
    settings = Settings(data_dir=tmp_path)
    storage = build_storage(settings)
    cache = SemanticCache(open_store=lambda: open_entry_store(settings, storage),
                          load_spaces=lambda: Spaces.single(HashingEmbedder()), policy=CachePolicy(),
                          load_verifier=lambda _: HitVerifier.packaged(max_false_hit_rate=0.02, space="minilm"))
    await cache.start()
    status, report = cache.health()
    assert status == 200 and report["status"] == "degraded"
    assert any("pair encoder could not load" in problem for problem in report["problems"])
    await cache.close()
