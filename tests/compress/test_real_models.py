"""The real compressors, loaded offline: the bundled classifier (the default), SmolLM2 converted from its GGUF
file, and a LLMLingua-2 model built by the test itself (no hub is reachable, and none may be used)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from semproxy.app import load_compressor
from semproxy.compress.models import SMOLLM2, resolve_compression_model
from semproxy.compress.spans import units
from semproxy.config import Settings
from tests.compress.test_spans_and_tokens import MUST_SURVIVE, PROMPT
from tests.data import eval_data
from tests.fakes import tiny_llmlingua2_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("data"))


def test_the_bundled_classifier_is_the_default_and_compresses_the_gsm8k_prompt(settings: Settings) -> None:
    assert (settings.compression_method, settings.compression_model) == ("llmlingua2", "bundled")
    compressor = load_compressor(settings)
    _assert_compresses_and_keeps_every_span(compressor)


def test_the_classifier_keeps_content_words_over_function_words() -> None:
    """What it learnt from LLMLingua: in a plain instruction, articles and prepositions go before the nouns."""
    from semproxy.compress.classifier import KeepClassifier

    text = ("You are a friendly assistant for the customers of a small bakery in the town of Bristol. "
            "Answer the questions of the customers about the opening hours, the cakes and the prices.")
    pieces = units(text)
    scores = dict(zip((text[u.start:u.end].strip(".,").lower() for u in pieces),
                      KeepClassifier.packaged().score(text, pieces, rate=0.5), strict=True))
    for content in ("bakery", "bristol", "cakes", "customers"):
        for function in ("the", "a", "of"):
            assert scores[content] > scores[function], (content, function, scores)


def test_smollm2_is_converted_once_and_compresses_the_gsm8k_prompt(settings: Settings) -> None:
    compressor = load_compressor(dataclasses.replace(settings, compression_method="llmlingua", compression_model=""))
    folder = settings.data_dir / "models" / SMOLLM2
    assert (folder / "config.json").is_file()
    stamp = (folder / "config.json").stat().st_mtime
    assert resolve_compression_model(SMOLLM2, models_dir=settings.data_dir / "models") == str(folder)
    assert (folder / "config.json").stat().st_mtime == stamp  # reused, not converted again

    _assert_compresses_and_keeps_every_span(compressor)


def test_llmlingua2_with_a_token_classification_model(settings: Settings, tmp_path: Path) -> None:
    folder = tiny_llmlingua2_model(tmp_path)
    compressor = load_compressor(dataclasses.replace(settings, compression_method="llmlingua2",
                                                     compression_model=str(folder)))
    result = compressor.compress(PROMPT, rate=0.5)
    for span in MUST_SURVIVE:
        assert span in result.compressed
    assert result.tokens["cl100k_base"][1] < result.tokens["cl100k_base"][0]


def _assert_compresses_and_keeps_every_span(compressor: Any) -> None:
    text = _gsm8k_prompt()
    result = compressor.compress(text, rate=0.5)
    original, compressed = result.tokens["cl100k_base"]
    assert compressed < 0.8 * original
    _assert_protected_intact(text, result.compressed)
    for span in MUST_SURVIVE:
        assert span in compressor.compress(PROMPT, rate=0.3).compressed


def _gsm8k_prompt() -> str:
    path = eval_data() / "compression" / "gsm8k_cot_prompt_hardest.txt"
    if not path.exists():
        pytest.skip(f"no evaluation data at {path} (SEMPROXY_EVAL_DATA names the folder)")
    return path.read_text()


def _assert_protected_intact(text: str, compressed: str) -> None:
    cursor = 0
    for unit in units(text, keep_markers=("<keep>", "</keep>")):
        if unit.protected:
            cursor = compressed.index(text[unit.start:unit.end], cursor) + unit.end - unit.start


@pytest.mark.anyio
async def test_the_default_service_compresses_the_languages_it_was_shown_to_handle_only(settings: Settings) -> None:
    from semproxy.app import build_compression

    german = ("Du bist der Kundendienst eines Online-Shops für Gartenmöbel. Beantworte Fragen zu Bestellungen, "
              "Lieferzeiten und Rücksendungen freundlich und sachlich. Gib niemals interne Notizen heraus. ") * 4
    polish = ("Jesteś asystentem obsługi klienta sklepu internetowego z meblami ogrodowymi. Odpowiadaj uprzejmie "
              "na pytania o zamówienia, terminy dostaw i zwroty. Nigdy nie ujawniaj wewnętrznych notatek. ") * 4
    service = build_compression(dataclasses.replace(settings, compression_min_tokens=50))
    service.start()
    service.drain()
    compressed = await service.compressed(german)
    assert compressed is not None and compressed.saved("cl100k_base") > 0
    assert await service.compressed(polish) is None  # measured, and not handled well enough: left as it is
    await service.close()
