"""Two `semproxy serve` processes on loopback sharing one PostgreSQL: the real thing, with the real model."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from semproxy.cli import main
from tests import pg
from tests.fakes import FakeOpenAI
from tests.servers import ThreadServer, semproxy_process

pytestmark = pytest.mark.slow
WORKTREE = str(Path(__file__).resolve().parents[1])


@pytest.fixture
def upstream_server(upstream: FakeOpenAI) -> Iterator[ThreadServer]:
    with ThreadServer(upstream, lifespan="off") as server:
        yield server


def _wait_for_store(url: str, *, timeout: float = 75) -> None:
    """Both replicas start at once; a store that failed to open is retried every 30 s. Wait for "ok", and
    say what went wrong if it never comes."""
    deadline = time.monotonic() + timeout
    while True:
        health = httpx.get(url + "/healthz", timeout=5).json()
        if health.get("status") == "ok" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert health.get("status") == "ok", health


def _wait_for(condition: Callable[[], bool], failure: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.05)


def _ask(url: str, prompt: str, **headers: str) -> tuple[str, str]:
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": prompt}]}
    response = httpx.post(url + "/v1/chat/completions", json=body, timeout=30,
                          headers={"authorization": "Bearer sk-replicas", **headers})
    response.raise_for_status()
    return response.headers["x-semproxy-cache"], response.json()["choices"][0]["message"]["content"]


def test_two_replicas_share_one_cache_and_one_log(tmp_path: Path, pg_url: str, upstream: FakeOpenAI,
                                                  upstream_server: ThreadServer,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    env = {"PYTHONPATH": WORKTREE, "SEMPROXY_STORE": pg_url}
    with contextlib.ExitStack() as stack:
        a, b = (stack.enter_context(semproxy_process(tmp_path / name, upstream_server.url + "/v1", env_extra=env))
                for name in ("a", "b"))
        url_a, url_b = a.url, b.url  # type: ignore[attr-defined]
        _wait_for_store(url_a)
        _wait_for_store(url_b)

        outcome, answer = _ask(url_a, "How do I reverse a list in Python?")
        assert outcome == "miss"
        assert _ask(url_b, "How do I reverse a list in Python?") == ("exact", answer)
        assert _ask(url_b, "How can I reverse a list in Python?", **{"x-semproxy-threshold": "0.85"}) \
            == ("semantic", answer)

        # Identical misses on both replicas at once: one goes upstream, and is held there until the other
        # replica is seen waiting for it.
        upstream.release.clear()
        before = len(upstream.completions())
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            asked = pool.map(lambda url: _ask(url, "What is the boiling point of water?"), [url_a, url_b, url_a, url_b])
            try:
                _wait_for(lambda: len(upstream.completions()) > before + 1 or pg.lock_waiters(pg_url) > 0,
                          "neither replica waited for the other")
            finally:
                upstream.release.set()
            answers = list(asked)
        assert len(upstream.completions()) == before + 1
        # The others are hits: exact, or semantic when a waiter's exact lookup ran before the answer was stored
        # and its embedding (slower: the model) after.
        outcomes = sorted(o for o, _ in answers)
        assert len({text for _, text in answers}) == 1 and outcomes.count("miss") == 1, answers
        assert set(outcomes) - {"miss"} <= {"exact", "semantic"}, answers

        assert main(["cache", "clear", "--store", pg_url]) == 0
        assert "removed 2 entries" in capsys.readouterr().out  # an alias points at an entry, it is not one
        assert _ask(url_a, "How do I reverse a list in Python?")[0] == "miss"
        assert _ask(url_b, "What is the boiling point of water?")[0] == "miss"
        sent = 9
        deadline = time.monotonic() + 10
        while True:  # each replica writes its log in batches, every half second
            assert main(["stats", "--store", pg_url, "--json", "--by", "endpoint"]) == 0
            figures = json.loads(capsys.readouterr().out)
            if figures["requests"] >= sent or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert figures["requests"] == sent
        outcomes = figures["outcomes"]
        assert (outcomes["exact"] + outcomes["semantic"], outcomes["miss"], outcomes["bypass"]) == (1 + 1 + 3, 4, 0)
