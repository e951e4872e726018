"""Two `semproxy serve` processes on loopback sharing one PostgreSQL: the real thing, with the real model. And
one tenant's erasure while they run (with one embedded server too: the same requests, one process)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from semproxy.cache.keys import tenant_id
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


# ---------------------------------------------------------------- erasure of one tenant (issue 16)

TENANT_A, TENANT_B = "sk-tenant-a", "sk-tenant-b"
REVERSE, REVERSE_AGAIN = "How do I reverse a list in Python?", "How can I reverse a list in Python?"
BOIL, TOWER = "What is the boiling point of water?", "How tall is the Eiffel tower in metres?"
NEAR = {"x-semproxy-threshold": "0.85"}


def _as(who: str) -> dict[str, str]:
    return {"authorization": f"Bearer {who}"}


class Tables:
    """Counts per tenant in a store's tables, read the way an auditor would: straight from the database."""

    def __init__(self, store: str | Path) -> None:
        self.store = store

    def _query(self, table: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
        if isinstance(self.store, str):
            import psycopg

            with psycopg.connect(self.store, autocommit=True) as db:
                return [tuple(row) for row in db.execute(sql.format(t=f"semproxy_{table}"), args).fetchall()]
        path = self.store / ("stats.sqlite3" if table == "requests" else "cache.sqlite3")
        if not path.exists():  # the log's file is made with its first batch
            return [(0,)]
        with contextlib.closing(sqlite3.connect(path.as_uri() + "?mode=ro", uri=True)) as db:
            return db.execute(sql.format(t=table).replace("%s", "?"), args).fetchall()

    def tenant(self, api_key: str) -> str:
        (salt,), = self._query("meta", "SELECT value FROM {t} WHERE key = 'tenant_salt'")
        return tenant_id(api_key=api_key, namespace=None, salt=bytes.fromhex(salt))

    def count(self, table: str, tenant: str) -> int:
        return int(self._query(table, "SELECT count(*) FROM {t} WHERE tenant = %s", tenant)[0][0])

    def mentions(self, text: str) -> int:
        """Entries and log rows that hold this prompt (the log keeps prompt text here: stats_prompt_chars)."""
        pattern = f"%{text}%"
        return (int(self._query("entries", "SELECT count(*) FROM {t} WHERE prompt LIKE %s", pattern)[0][0])
                + int(self._query("requests", "SELECT count(*) FROM {t} WHERE prompt_text LIKE %s", pattern)[0][0]))


def _erasure_reaches_every_replica(first: str, second: str, store: str | Path, upstream: FakeOpenAI,
                                   capsys: pytest.CaptureFixture[str], *, waiting: Callable[[], bool] | None,
                                   then: Callable[[], None] = lambda: None) -> None:
    """Tenants A and B cache the same prompts through both replicas (`first` and `second`; one server twice
    for the embedded store); A is erased with `semproxy cache clear --tenant` while one of A's requests is
    still upstream and A's last log records may still be queued. Afterwards no replica serves A's answers,
    and none of A's entries or log rows stays, or comes back from the request in flight or the queues; B's
    stay served. `waiting` (replicas only) says when `second` waits for `first`'s identical request; `then`
    checks more, before A asks again."""
    tables = Tables(store)
    answers: dict[str, dict[str, str]] = {}
    for who in (TENANT_A, TENANT_B):
        outcome, reverse = _ask(first, REVERSE, **_as(who))
        assert outcome == "miss"
        assert _ask(second, REVERSE, **_as(who)) == ("exact", reverse)
        assert _ask(second, REVERSE_AGAIN, **_as(who), **NEAR) == ("semantic", reverse)
        outcome, boil = _ask(second, BOIL, **_as(who))
        assert outcome == "miss"
        assert _ask(first, BOIL, **_as(who)) == ("exact", boil)
        answers[who] = {REVERSE: reverse, BOIL: boil}
    a, b = tables.tenant(TENANT_A), tables.tenant(TENANT_B)
    _wait_for(lambda: tables.count("requests", b) == 5, "B's log rows were not written")

    # One of A's requests is upstream (and, with replicas, the other replica waits for its answer) while A is
    # erased; a hit just before leaves A's log record queued on its replica.
    upstream.release.clear()
    before = len(upstream.completions())
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        try:
            in_flight = [pool.submit(_ask, first, TOWER, **_as(TENANT_A))]
            _wait_for(lambda: len(upstream.completions()) > before, "A's request never reached the upstream")
            if waiting is not None:
                in_flight.append(pool.submit(_ask, second, TOWER, **_as(TENANT_A)))
                _wait_for(waiting, "the other replica did not wait for the identical request")
            assert _ask(second, BOIL, **_as(TENANT_A))[0] == "exact"
            command = ["cache", "clear", "--tenant", TENANT_A]
            where = ["--store", store] if isinstance(store, str) else ["--data-dir", str(store)]
            assert main([*command, *where]) == 0
            assert "removed 2 entries and " in capsys.readouterr().out
        finally:
            upstream.release.set()
        outcomes = [future.result()[0] for future in in_flight]
    # The answer in flight was not stored: the replica waiting for it found nothing and asked itself.
    assert outcomes == ["miss"] * len(outcomes)

    # B's answers are still served (by both), and once both replicas' log queues passed B's requests, A's
    # records from before the erasure cannot be on their way any more.
    assert _ask(first, BOIL, **_as(TENANT_B)) == ("exact", answers[TENANT_B][BOIL])
    assert _ask(second, REVERSE, **_as(TENANT_B)) == ("exact", answers[TENANT_B][REVERSE])
    # Each replica's log writes its queue in order: B's last rows written, A's earlier ones were handled too.
    _wait_for(lambda: tables.count("requests", b) == 7, "B's later log rows were not written")
    assert (tables.count("entries", a), tables.count("requests", a)) == (0, 0)
    assert tables.mentions("Eiffel") == 0  # the request in flight left nothing, in the log either
    assert (tables.count("entries", b), tables.count("requests", b)) == (2, 7)
    then()

    # Neither replica answers A from the cache: not by exact key, not by a vector found again.
    calls = len(upstream.completions())
    assert _ask(second, REVERSE_AGAIN, **_as(TENANT_A), **NEAR)[0] == "miss"
    assert _ask(first, BOIL, **_as(TENANT_A))[0] == "miss"
    assert _ask(second, TOWER, **_as(TENANT_A))[0] == "miss"
    outcome, answer = _ask(first, REVERSE, **_as(TENANT_A))  # may be the new answer to REVERSE_AGAIN
    assert answer != answers[TENANT_A][REVERSE], outcome
    assert len(upstream.completions()) >= calls + 3


def test_an_erased_tenant_is_gone_from_every_replica_and_stays_gone(
        tmp_path: Path, pg_url: str, upstream: FakeOpenAI, upstream_server: ThreadServer,
        capsys: pytest.CaptureFixture[str]) -> None:
    env = {"PYTHONPATH": WORKTREE, "SEMPROXY_STORE": pg_url, "SEMPROXY_STATS_PROMPT_CHARS": "200"}
    with contextlib.ExitStack() as stack:
        a, b = (stack.enter_context(semproxy_process(tmp_path / name, upstream_server.url + "/v1", env_extra=env))
                for name in ("a", "b"))
        _wait_for_store(a.url)  # type: ignore[attr-defined]
        _wait_for_store(b.url)  # type: ignore[attr-defined]
        _erasure_reaches_every_replica(a.url, b.url, pg_url, upstream, capsys,  # type: ignore[attr-defined]
                                       waiting=lambda: pg.lock_waiters(pg_url) > 0)


def test_an_erased_tenant_is_gone_from_a_running_embedded_server_down_to_the_bytes(
        tmp_path: Path, upstream: FakeOpenAI, upstream_server: ThreadServer,
        capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "data"
    env = {"PYTHONPATH": WORKTREE, "SEMPROXY_STATS_PROMPT_CHARS": "200"}
    with semproxy_process(data_dir, upstream_server.url + "/v1", env_extra=env) as server:
        _wait_for_store(server.url)  # type: ignore[attr-defined]
        url = server.url  # type: ignore[attr-defined]
        _erasure_reaches_every_replica(url, url, data_dir, upstream, capsys, waiting=None,
                                       then=lambda: _nowhere_on_disk(data_dir, b"Eiffel"))


def _nowhere_on_disk(data_dir: Path, text: bytes) -> None:
    """Not in any file of the data dir, not even in a freed page or the WAL."""
    for path in data_dir.iterdir():
        if path.is_file():
            assert text not in path.read_bytes(), path.name
