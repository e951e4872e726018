"""The hit verifier in the proxy, with the real embedding model: rewordings hit, swapped meanings do not."""

import pytest

from semproxy.cache.onnx_minilm import OnnxMiniLM
from semproxy.config import Settings
from tests.fakes import FakeOpenAI

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture(scope="module")
def minilm() -> OnnxMiniLM:
    return OnnxMiniLM()


@pytest.fixture
def verified(settings: Settings) -> Settings:
    # A low candidate floor, so every swap below reaches the verifier whatever its cosine (0.61-0.99).
    return Settings(**{**settings.__dict__, "verify_hits": True, "similarity_threshold": 0.6})


SWAPS = [
    ("How many miles is 5 km?", "How many miles is 8 km?", "numbers"),
    ("Is it safe to eat raw eggs?", "Is it not safe to eat raw eggs?", "negation"),
    ("How long is the flight from Paris to Tokyo?", "How long is the flight from Tokyo to Paris?", "direction"),
    ("What is the capital of Australia?", "What is the capital of Austria?", "name"),
    ("Write a function to reverse a string in Python", "Write a function to reverse a string in JavaScript",
     "names"),
    ("Is it legal to record a phone call?", "Is it illegal to record a phone call?", "opposites"),
    ("What does a dog think of its owner?", "What does an owner think of its dog?", "roles exchanged"),
    ("Explain how vaccines work in one sentence", "Explain how vaccines work in detail", "answer shape"),
]


@pytest.mark.parametrize(("stored", "asked", "reason"), SWAPS)
async def test_a_swapped_meaning_is_forwarded_with_the_reason(make_proxy, upstream: FakeOpenAI, minilm,  # type: ignore[no-untyped-def]
                                                              verified: Settings, stored: str, asked: str,
                                                              reason: str) -> None:
    proxy = await make_proxy(settings=verified, embedder=minilm)
    assert (await proxy.chat(stored)).headers["x-semproxy-cache"] == "miss"
    response = await proxy.chat(asked)
    assert response.headers["x-semproxy-cache"] == "miss"
    assert response.headers["x-semproxy-verdict"].startswith("reject; score=0.000; " + reason)
    assert len(upstream.completions()) == 2
    assert response.json()["choices"][0]["message"]["content"] != ""


async def test_the_same_swap_is_served_when_verification_is_off(make_proxy, upstream: FakeOpenAI, minilm,  # type: ignore[no-untyped-def]
                                                                verified: Settings) -> None:
    proxy = await make_proxy(settings=Settings(**{**verified.__dict__, "verify_hits": False}), embedder=minilm)
    await proxy.chat("What is the capital of Australia?")
    response = await proxy.chat("What is the capital of Austria?")
    assert response.headers["x-semproxy-cache"] == "semantic"  # the wrong answer plain cosine would serve
    assert "x-semproxy-verdict" not in response.headers


async def test_a_rewording_hits_with_an_accepting_verdict(make_proxy, upstream: FakeOpenAI, minilm,  # type: ignore[no-untyped-def]
                                                          verified: Settings) -> None:
    proxy = await make_proxy(settings=verified, embedder=minilm)
    first = await proxy.chat("How do I make my phone battery last longer?")
    second = await proxy.chat("How can I make my phone's battery last longer?")
    assert second.headers["x-semproxy-cache"] == "semantic"
    assert second.headers["x-semproxy-verdict"].startswith("accept; score=")
    assert second.json()["choices"] == first.json()["choices"]
    assert len(upstream.completions()) == 1


@pytest.mark.parametrize(("stored", "asked"), [
    ("What is the population of Canada?", "Tell me Canada's population."),
    ("How do I reverse a linked list in Python?", "In Python, how can I reverse a linked list?"),
])
async def test_a_natural_rewording_is_read_and_served(make_proxy, upstream: FakeOpenAI, minilm,  # type: ignore[no-untyped-def]
                                                      verified: Settings, stored: str, asked: str) -> None:
    proxy = await make_proxy(settings=verified, embedder=minilm)
    await proxy.chat(stored)
    response = await proxy.chat(asked)
    assert response.headers["x-semproxy-cache"] == "semantic"
    assert "read: score >=" in response.headers["x-semproxy-verdict"]  # the pair encoder read the pair


async def test_a_stricter_budget_serves_fewer_rewordings(make_proxy, upstream: FakeOpenAI, minilm,  # type: ignore[no-untyped-def]
                                                        verified: Settings) -> None:
    proxy = await make_proxy(settings=Settings(**{**verified.__dict__, "max_false_hit_rate": 0.0001}),
                             embedder=minilm)
    await proxy.chat("How do I make my phone battery last longer?")
    response = await proxy.chat("How can I make my phone's battery last longer?")
    assert response.headers["x-semproxy-cache"] == "miss"
    assert "score <" in response.headers["x-semproxy-verdict"]


async def test_a_reason_that_quotes_prompts_stays_with_their_owner(make_proxy, minilm,  # type: ignore[no-untyped-def]
                                                                    verified: Settings) -> None:
    """"name austria instead of cached australia" tells a tenant about its own prompts; in a shared namespace the
    cached prompt is someone else's, and the request log keeps no prompt words unless stats_prompt_chars says so."""
    own = await make_proxy(settings=verified, embedder=minilm)
    await own.chat("What is the capital of Australia?")
    mine = await own.chat("What is the capital of Austria?")
    assert "australia" in mine.headers["x-semproxy-verdict"]
    shared = await make_proxy(settings=Settings(**{**verified.__dict__, "namespace": "team",
                                                   "data_dir": verified.data_dir / "shared"}), embedder=minilm)
    await shared.chat("What is the capital of Australia?", headers={"authorization": "Bearer sk-bob"})
    theirs = await shared.chat("What is the capital of Austria?")
    assert theirs.headers["x-semproxy-verdict"].endswith("; name")  # the kind of reason, no prompt words
    for proxy in (own, shared):
        assert proxy.app.log.flush()  # type: ignore[attr-defined]
    rows = [row for path in (verified.stats_path, verified.data_dir / "shared" / "stats.sqlite3")
            for row in _verdicts(path)]
    assert rows and all(row.endswith("; name") for row in rows)


def _verdicts(path: object) -> list[str]:
    import sqlite3

    with sqlite3.connect(str(path)) as db:
        return [v for (v,) in db.execute("SELECT verdict FROM requests WHERE verdict IS NOT NULL")]
