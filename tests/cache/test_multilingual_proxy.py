"""Europe's languages through the proxy at its default embedders (int8 MiniLM for English, multilingual-e5
for the rest) and verifiers: rewordings hit in their language, swaps and other languages do not."""

from __future__ import annotations

import dataclasses

import pytest

from semproxy.config import Settings
from tests.conftest import Proxy

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

REWORDINGS = [
    ("Wie lange dauert der Flug von Berlin nach Madrid?", "Wie lange fliegt man von Berlin nach Madrid?"),
    ("Hoe kan ik mijn wachtwoord wijzigen?", "Hoe verander ik mijn wachtwoord?"),
    ("Jak mogę zmienić hasło?", "Jak zmienić moje hasło?"),
    ("Como posso alterar a minha senha?", "Como altero a minha senha?"),
    ("Quelle est la meilleure façon d'apprendre le français ?",
     "Comment apprendre le français le plus efficacement ?"),
]
SWAPS = [
    ("Der Hund hat den Mann gebissen.", "Der Mann hat den Hund gebissen.", "score"),
    ("¿Cuál es la capital de Australia?", "¿Cuál es la capital de Austria?", "name"),
    ("Ist es sicher, rohe Eier zu essen?", "Ist es nicht sicher, rohe Eier zu essen?", "negation"),
]


@pytest.fixture
async def proxy(make_proxy, settings: Settings) -> Proxy:  # type: ignore[no-untyped-def]
    return await make_proxy(settings=dataclasses.replace(settings, verify_hits=True), embedder=None)


@pytest.mark.parametrize(("stored", "asked"), REWORDINGS)
async def test_a_rewording_hits_in_its_own_language(proxy: Proxy, stored: str, asked: str) -> None:
    assert (await proxy.chat(stored)).headers["x-semproxy-cache"] == "miss"
    response = await proxy.chat(asked)
    assert response.headers["x-semproxy-cache"] == "semantic", response.headers.get("x-semproxy-verdict")


@pytest.mark.parametrize(("stored", "asked", "reason"), SWAPS)
async def test_a_swap_is_refused_with_its_reason(proxy: Proxy, stored: str, asked: str, reason: str) -> None:
    assert (await proxy.chat(stored)).headers["x-semproxy-cache"] == "miss"
    response = await proxy.chat(asked)
    assert response.headers["x-semproxy-cache"] == "miss"
    assert reason in response.headers["x-semproxy-verdict"]


async def test_a_translation_never_gets_the_answer_in_another_language(proxy: Proxy) -> None:
    assert (await proxy.chat("Wie lange dauert der Flug von Berlin nach Madrid?")).headers["x-semproxy-cache"] \
        == "miss"
    french = await proxy.chat("Combien de temps dure le vol de Berlin à Madrid ?")
    assert french.headers["x-semproxy-cache"] == "miss" and "x-semproxy-verdict" not in french.headers
    english = await proxy.chat("How long is the flight from Berlin to Madrid?")
    assert english.headers["x-semproxy-cache"] == "miss" and "x-semproxy-verdict" not in english.headers


async def test_a_language_outside_the_calibrated_ones_gets_exact_hits_only(proxy: Proxy) -> None:
    assert (await proxy.chat("Hur lång tid tar flyget från Berlin till Madrid?")).headers["x-semproxy-cache"] \
        == "miss"
    assert (await proxy.chat("Hur lång tid tar flyget från Berlin till Madrid?")).headers["x-semproxy-cache"] \
        == "exact"
    assert (await proxy.chat("Hur länge varar flyget från Berlin till Madrid?")).headers["x-semproxy-cache"] \
        == "miss"
