"""Vector spaces: each prompt is embedded by its language's model and compared only inside its space; entries
from another model or from before spaces existed are re-embedded in the background, and served exactly until."""

from __future__ import annotations

import dataclasses
import sqlite3
import time

import anyio
import pytest

from semproxy.cache.keys import make_key, tenant_id
from semproxy.cache.spaces import ANY_LANGUAGE, Placement, Routes, Spaces
from semproxy.config import Settings
from semproxy.storage.records import CacheKey, NewEntry
from semproxy.storage.sqlite import SqliteStorage
from tests.conftest import Proxy
from tests.fakes import HashingEmbedder

pytestmark = pytest.mark.anyio


class Named(HashingEmbedder):
    """A hashing embedder under another model name (as if another model had made its vectors)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


def by_prefix(text: str) -> str:
    """A stand-in language detector: "de: ..." is German, "fr: ..." French, anything else English."""
    head, _, rest = text.partition(": ")
    return head if rest and len(head) == 2 else "en"


def two_models(*, english: str = "fast", other: str = "multi") -> Spaces:
    embedders = {name: Named(name) for name in {english, other}}
    return Spaces(embedders, routes=Routes(english=english, other=other, languages={"en", "de", "fr"}),
                  detect=by_prefix)


def test_a_prompt_goes_to_its_languages_model_and_space() -> None:
    spaces = two_models()
    assert spaces.place("how do I bake bread") == Placement(space="fast/en", model="fast", language="en")
    assert spaces.place("de: wie backe ich Brot") == Placement(space="multi/de", model="multi", language="de")
    assert spaces.place("fi: miten leivon leipää") is None  # not a semantic language: exact hits only
    assert spaces.is_current("fast/en") and spaces.is_current("multi/de")
    assert not spaces.is_current("multi/en") and not spaces.is_current("fast/de")  # routed elsewhere now
    assert not spaces.is_current("multi/fi") and not spaces.is_current("old/en") and not spaces.is_current("fast/all")


def test_one_model_for_everything_keeps_every_language_in_one_space() -> None:
    spaces = Spaces.single(Named("custom"))
    assert spaces.place("de: wie backe ich Brot") == Placement(space="custom/all", model="custom", language="all")
    assert spaces.is_current("custom/all") and not spaces.is_current("custom/en")
    routes = Routes(english="a", other="b", languages={ANY_LANGUAGE})
    assert routes.model_for("el") == "b" and routes.model_for("en") == "a"


def test_embedders_of_different_sizes_cannot_share_a_store() -> None:
    small, large = Named("small"), Named("large")
    large.dimension = 128
    with pytest.raises(ValueError, match="different sizes"):
        Spaces({"small": small, "large": large}, routes=Routes(english="small", other="large", languages={"en"}),
               detect=by_prefix)


async def test_prompts_match_only_inside_their_language(make_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy = await make_proxy(spaces=two_models())
    assert (await proxy.chat("de: wie backe ich ein Brot zu Hause")).headers["x-semproxy-cache"] == "miss"
    reworded = await proxy.chat("de: wie backe ich zu Hause ein Brot")
    assert reworded.headers["x-semproxy-cache"] == "semantic"
    # The same words said to be French land in another space: never compared, whatever their cosine.
    assert (await proxy.chat("fr: wie backe ich zu Hause ein Brot")).headers["x-semproxy-cache"] == "miss"


async def test_a_language_without_a_model_gets_exact_hits_only(make_proxy, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    proxy = await make_proxy(spaces=two_models())
    assert (await proxy.chat("fi: miten leivon leipää kotona")).headers["x-semproxy-cache"] == "miss"
    assert (await proxy.chat("fi: miten leivon leipää kotona")).headers["x-semproxy-cache"] == "exact"
    assert (await proxy.chat("fi: miten kotona leivon leipää")).headers["x-semproxy-cache"] == "miss"
    await proxy.cache.housekeeping()
    assert proxy.cache.relocated == 0  # placed nowhere on purpose, not waiting to be embedded
    assert _spaces(settings) == {"": 2}


async def test_entries_of_a_data_dir_from_before_spaces_are_reembedded_and_exact_meanwhile(  # type: ignore[no-untyped-def]
        make_proxy, settings: Settings) -> None:
    spaces = two_models()
    stored, asked = "de: wie backe ich ein Brot zu Hause", "how do I bake bread at home"
    storage = SqliteStorage(settings.data_dir)
    salt_key = _key(stored, storage)
    # Stored by an older release: no space, and a vector some other model made. Here it is the vector the
    # English question will get, so a search across models would serve it with cosine 1.0.
    foreign = spaces.embedders["fast"].embed([asked])[0]
    storage.put_entry(NewEntry(key=salt_key, response=b'{"old": true}', vector=foreign, ttl_seconds=0), now=time.time())
    storage.close()

    multi = spaces.embedders["multi"]
    assert isinstance(multi, HashingEmbedder)
    multi.hold.clear()  # re-embedding waits until the checks below are done
    proxy = await make_proxy(spaces=spaces)
    multi.holding.wait(10)
    assert (await proxy.chat(asked)).headers["x-semproxy-cache"] == "miss"  # never compared across models
    assert (await proxy.chat(stored)).headers["x-semproxy-cache"] == "exact"  # exact hits meanwhile
    multi.hold.set()
    await _relocated(proxy, 1)
    assert (await proxy.chat("de: wie backe ich zu Hause ein Brot")).headers["x-semproxy-cache"] == "semantic"
    assert _spaces(settings) == {"multi/de": 1, "fast/en": 1}


@pytest.mark.parametrize("backend", ["embedded", "postgres"])
async def test_a_changed_embedding_model_reembeds_the_stored_entries(  # type: ignore[no-untyped-def]
        make_proxy, settings: Settings, backend: str, request: pytest.FixtureRequest) -> None:
    if backend == "postgres":
        settings = dataclasses.replace(settings, store=request.getfixturevalue("pg_url"))
    first = await make_proxy(settings=settings, spaces=Spaces.single(Named("before")))
    for prompt in ("how do I bake bread at home", "de: wie backe ich ein Brot zu Hause"):
        assert (await first.chat(prompt)).headers["x-semproxy-cache"] == "miss"
    await first.cache.close()

    second = await make_proxy(settings=settings, spaces=two_models())
    await _relocated(second, 2)
    for prompt in ("at home how do I bake bread", "de: wie backe ich zu Hause ein Brot"):
        assert (await second.chat(prompt)).headers["x-semproxy-cache"] == "semantic", prompt
    assert second.cache.relocated == 2


async def _relocated(proxy: Proxy, count: int) -> None:
    for _ in range(200):
        if proxy.cache.relocated >= count:
            return
        await proxy.cache.relocate()
        await anyio.sleep(0.02)
    raise AssertionError(f"only {proxy.cache.relocated} of {count} entries were re-embedded")


def _key(prompt: str, storage: SqliteStorage) -> CacheKey:
    tenant = tenant_id(api_key="sk-alice", namespace=None, salt=storage.tenant_salt())
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": prompt}]}
    return make_key("chat", body, tenant=tenant)


def _spaces(settings: Settings) -> dict[str, int]:
    with sqlite3.connect(settings.data_dir / "cache.sqlite3") as db:
        return {str(s): int(n) for s, n in db.execute("SELECT space, count(*) FROM entries GROUP BY space")}

