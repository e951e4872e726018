"""Entries survive restarts and `kill -9` under load: a real `semproxy serve` process with the real model."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes import FakeOpenAI
from tests.servers import ThreadServer, semproxy_process

pytestmark = pytest.mark.slow


@pytest.fixture
def upstream_server(upstream: FakeOpenAI) -> Iterator[ThreadServer]:
    upstream.chunk_delay = 0.002
    with ThreadServer(upstream, lifespan="off") as server:
        yield server


# The load's prompts differ only in their numbers, which plain cosine similarity cannot tell apart: the
# load therefore asks for identical-vector matches only, and still embeds and indexes every entry.
EXACT_ONLY = {"x-semproxy-threshold": "1.0"}


def _ask(url: str, prompt: str, *, stream: bool = False, headers: dict[str, str] | None = None) -> tuple[str, str]:
    """(cache outcome, answer text) of one chat request; raises if the answer did not arrive whole."""
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": prompt}], "stream": stream}
    response = httpx.post(url + "/v1/chat/completions", json=body, timeout=30,
                          headers={"authorization": "Bearer sk-persist", **(headers or {})})
    response.raise_for_status()
    if stream:
        text = "".join(_delta(line) for line in response.text.splitlines() if line.startswith("data: {"))
        assert response.text.rstrip().endswith("data: [DONE]")
    else:
        text = response.json()["choices"][0]["message"]["content"]
    return response.headers["x-semproxy-cache"], text


def _delta(line: str) -> str:
    import json

    choices = json.loads(line.removeprefix("data: "))["choices"]
    return str(choices[0]["delta"].get("content") or "") if choices else ""


def test_entries_survive_a_restart_in_both_tiers(tmp_path: Path, upstream_server: ThreadServer) -> None:
    upstream = upstream_server.url + "/v1"
    with semproxy_process(tmp_path, upstream) as proxy:
        outcome, answer = _ask(proxy.url, "How do I reverse a list in Python?")  # type: ignore[attr-defined]
        assert outcome == "miss"
    with semproxy_process(tmp_path, upstream) as proxy:
        url = proxy.url  # type: ignore[attr-defined]
        assert _ask(url, "How do I reverse a list in Python?") == ("exact", answer)
        near = _ask(url, "How can I reverse a list in Python?", headers={"x-semproxy-threshold": "0.85"})
        assert near == ("semantic", answer)


def test_kill_9_under_load_loses_no_acknowledged_entry(tmp_path: Path, upstream_server: ThreadServer) -> None:
    upstream = upstream_server.url + "/v1"
    rng = random.Random(7)
    acknowledged: dict[str, str] = {}
    sent: list[str] = []
    for round_number in range(2):
        with semproxy_process(tmp_path, upstream) as proxy:
            url = proxy.url  # type: ignore[attr-defined]
            _check_acknowledged(url, acknowledged, sent)
            stop = threading.Event()
            workers = [threading.Thread(target=_load, args=(url, f"r{round_number}w{w}", stop, acknowledged, sent))
                       for w in range(4)]
            for worker in workers:
                worker.start()
            target = 15 * (round_number + 1)
            _wait_for(lambda: len(acknowledged) >= target)  # noqa: B023 - called before the loop moves on
            time.sleep(rng.uniform(0.0, 0.5))  # then kill at an arbitrary point of the traffic
            proxy.send_signal(signal.SIGKILL)
            proxy.wait()
            stop.set()
            for worker in workers:
                worker.join()
    with semproxy_process(tmp_path, upstream) as proxy:
        _check_acknowledged(proxy.url, acknowledged, sent)  # type: ignore[attr-defined]


def _wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the load generator hardly got any answer through"
        time.sleep(0.05)


def _load(url: str, name: str, stop: threading.Event, acknowledged: dict[str, str], sent: list[str]) -> None:
    for i in range(10_000):
        if stop.is_set():
            return
        prompt = f"question {i} from {name}: what is {i} times {len(name)}?"
        sent.append(prompt)
        try:
            _, answer = _ask(url, prompt, stream=i % 2 == 0, headers=EXACT_ONLY)
        except (httpx.HTTPError, AssertionError, ValueError, KeyError):
            return  # the server died mid-request: this answer was never acknowledged
        acknowledged[prompt] = answer


def _check_acknowledged(url: str, acknowledged: dict[str, str], sent: list[str]) -> None:
    for prompt, answer in acknowledged.items():
        assert _ask(url, prompt, headers=EXACT_ONLY) == ("exact", answer), prompt
    for prompt in set(sent) - set(acknowledged):  # in flight at the kill: a miss or a whole answer, never half
        outcome, answer = _ask(url, prompt, headers=EXACT_ONLY)
        assert answer.endswith(f"to: {prompt}"), (outcome, answer)
        acknowledged[prompt] = answer
