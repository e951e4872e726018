"""The shipped embedders and language detector, loaded offline from their packages."""

from __future__ import annotations

import numpy as np
import pytest

from semproxy.app import configured_spaces
from semproxy.cache.embedder import SentenceTransformerEmbedder
from semproxy.cache.languages import load_detector
from semproxy.cache.multilingual_e5 import MultilingualE5
from semproxy.cache.onnx_minilm import OnnxMiniLM
from semproxy.config import Settings

pytestmark = pytest.mark.slow

SENTENCES = [
    "What is the capital of France?",
    "Summarise this support ticket in two sentences: the printer on floor 3 jams whenever duplex is on.",
    "ok",
    "Convert 100 EUR to USD",
]


@pytest.fixture(scope="module")
def onnx() -> OnnxMiniLM:
    return OnnxMiniLM()


@pytest.fixture(scope="module")
def e5() -> MultilingualE5:
    return MultilingualE5()


def test_the_int8_minilm_agrees_with_the_full_precision_model(onnx: OnnxMiniLM) -> None:
    full = SentenceTransformerEmbedder().embed(SENTENCES)
    fast = onnx.embed(SENTENCES)
    assert fast.shape == (4, 384) and fast.dtype == np.float32
    assert np.allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(fast * full, axis=1)) >= 0.995
    one_by_one = np.vstack([onnx.embed([s]) for s in SENTENCES])  # padding in a batch changes nothing
    assert np.allclose(one_by_one, fast, atol=1e-4)
    assert onnx.name == SentenceTransformerEmbedder().name == "minilm"  # one space: no re-embedding needed


def test_texts_too_long_to_embed_whole_are_refused(onnx: OnnxMiniLM, e5: MultilingualE5) -> None:
    assert onnx.fits("short prompt") and e5.fits("short prompt")
    long_text = "word " * 600
    assert not onnx.fits(long_text) and not e5.fits(long_text)
    assert onnx.fits("word " * 200) and e5.fits("word " * 200)


def test_e5_puts_a_translation_nearer_than_another_question(e5: MultilingualE5) -> None:
    english, german, other = e5.embed(["How do I reset my password?", "Wie setze ich mein Passwort zurück?",
                                       "What is the weather like in Madrid tomorrow?"])
    assert float(english @ german) > float(english @ other) + 0.05
    assert np.allclose(np.linalg.norm(e5.embed(SENTENCES), axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(("text", "language"), [
    ("How do I reset my password?", "en"), ("Wie setze ich mein Passwort zurück?", "de"),
    ("Comment réinitialiser mon mot de passe ?", "fr"), ("¿Cómo restablezco mi contraseña?", "es"),
    ("Come reimposto la mia password?", "it"), ("Hoe stel ik mijn wachtwoord opnieuw in?", "nl"),
    ("Jak zresetować hasło do konta?", "pl"), ("Como redefino a minha senha?", "pt"),
])
def test_the_detector_names_the_language(text: str, language: str) -> None:
    assert load_detector()(text) == language


def test_the_default_routes_english_to_minilm_and_other_languages_to_e5() -> None:
    spaces = configured_spaces(Settings())
    assert set(spaces.embedders) == {"minilm", "e5"}
    placed = spaces.place("How do I reset my password?")
    assert placed is not None and placed.space == "minilm/en"
    placed = spaces.place("Wie setze ich mein Passwort zurück?")
    assert placed is not None and placed.space == "e5/de"
    placed = spaces.place("Kuinka vaihdan salasanani tänään?")  # measured, though never fitted on
    assert placed is not None and placed.space == "e5/fi"
    assert spaces.place("Hur byter jag mitt lösenord idag?") is None  # Swedish was never measured: exact only


def test_the_choice_of_embedder_changes_which_languages_are_served() -> None:
    english_only = configured_spaces(Settings(embedding_model="minilm"))
    assert set(english_only.embedders) == {"minilm"}
    assert english_only.place("Wie setze ich mein Passwort zurück?") is None
    everything = configured_spaces(Settings(embedding_model="e5", semantic_languages=("*",)))
    placed = everything.place("Hur byter jag mitt lösenord idag?")
    assert placed is not None and placed.space == "e5/sv"
    placed = everything.place("How do I reset my password?")
    assert placed is not None and placed.space == "e5/en"
