"""Several replicas on one PostgreSQL: shared entries, eviction, clearing, single flight, one request log,
and a database that goes away and comes back. Replicas here are in-process proxies with their own cache
objects (nothing shared but the database); tests/test_replicas.py runs real `semproxy serve` processes."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path

import anyio
import pytest

from semproxy.app import build_app, build_storage, open_entry_store
from semproxy.cache.service import CachePolicy, SemanticCache
from semproxy.cache.spaces import Spaces
from semproxy.cli import main
from semproxy.config import Settings
from semproxy.errors import CacheFailure
from semproxy.storage.postgres_schema import SCHEMA_VERSION
from tests import pg
from tests.conftest import Proxy
from tests.fakes import FakeOpenAI, HashingEmbedder

pytestmark = pytest.mark.anyio


@pytest.fixture
def shared(settings: Settings, pg_url: str) -> Settings:
    return dataclasses.replace(settings, store=pg_url)


def on(settings: Settings, name: str) -> Settings:
    """A replica's settings: the shared store, its own data dir (as on its own machine)."""
    return dataclasses.replace(settings, data_dir=settings.data_dir / name)


def _text(response: object) -> str:
    return str(response.json()["choices"][0]["message"]["content"])  # type: ignore[attr-defined]


async def test_an_answer_stored_by_one_replica_is_served_by_another(make_proxy, shared: Settings,  # type: ignore[no-untyped-def]
                                                                    upstream: FakeOpenAI) -> None:
    a, b = await make_proxy(settings=on(shared, "a")), await make_proxy(settings=on(shared, "b"))
    first = await a.chat("what is the capital city of france")
    exact = await b.chat("what is the capital city of france")
    near = await b.chat("what is the capital city of france ?!")
    assert (first.headers["x-semproxy-cache"], exact.headers["x-semproxy-cache"]) == ("miss", "exact")
    assert near.headers["x-semproxy-cache"] == "semantic" and _text(near) == _text(exact) == _text(first)
    assert len(upstream.completions()) == 1
    assert a.cache.tenant(api_key="sk-alice", namespace=None) == b.cache.tenant(api_key="sk-alice", namespace=None)


async def test_clear_and_eviction_apply_to_every_replica(make_proxy, shared: Settings,  # type: ignore[no-untyped-def]
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    small = dataclasses.replace(shared, max_entries=2)
    now = [1000.0]
    a = await make_proxy(settings=on(small, "a"), clock=lambda: now[0])
    b = await make_proxy(settings=on(small, "b"), clock=lambda: now[0])
    for replica, prompt in ((a, "one apple"), (b, "two bananas")):
        now[0] += 1
        await replica.chat(prompt)
    now[0] += 1
    assert (await b.chat("one apple")).headers["x-semproxy-cache"] == "exact"  # a's entry, now the most recent
    await b.cache.housekeeping()  # every 30 s: b's LRU times go to the database ...
    await a.cache.housekeeping()  # ... and a counts the entries of every replica (2)
    now[0] += 1
    await a.chat("three cherries")  # 3 > 2: evicts the least recently used of all replicas', "two bananas"
    assert (await a.chat("one apple")).headers["x-semproxy-cache"] == "exact"
    assert (await b.chat("three cherries")).headers["x-semproxy-cache"] == "exact"
    assert (await b.chat("two bananas")).headers["x-semproxy-cache"] == "miss"

    assert main(["cache", "clear", "--store", shared.store or ""]) == 0  # from any machine that can reach the DB
    assert "removed 2 entries" in capsys.readouterr().out
    assert (await a.chat("one apple")).headers["x-semproxy-cache"] == "miss"
    assert main(["cache", "info", "--store", shared.store or ""]) == 0
    assert capsys.readouterr().out.startswith("1 entries in postgresql://")


async def test_identical_misses_on_two_replicas_reach_the_upstream_once(make_proxy, shared: Settings,  # type: ignore[no-untyped-def]
                                                                       upstream: FakeOpenAI) -> None:
    a, b = await make_proxy(settings=on(shared, "a")), await make_proxy(settings=on(shared, "b"))
    upstream.release.clear()  # the first to go upstream is held there until the other replica is seen waiting
    asked = asyncio.gather(a.chat("one question, twice"), b.chat("one question, twice"),
                           a.chat("one question, twice"), b.chat("one question, twice"))
    try:
        await _until(lambda: _a_replica_waits_for_the_lock(shared.store or "", upstream),
                     "the other replica never asked for the lock")
    finally:
        upstream.release.set()
    answers = await asked
    assert len(upstream.completions()) == 1
    assert len({_text(r) for r in answers}) == 1
    assert sorted(r.headers["x-semproxy-cache"] for r in answers) == ["exact", "exact", "exact", "miss"]


async def test_a_replica_waits_for_another_only_so_long(make_proxy, shared: Settings,  # type: ignore[no-untyped-def]
                                                        upstream: FakeOpenAI) -> None:
    a = await make_proxy(settings=on(shared, "a"))
    b = await make_proxy(settings=on(dataclasses.replace(shared, flight_wait=0.2), "b"))
    upstream.release.clear()  # a's answer is held upstream until the test lets it go
    slow = asyncio.ensure_future(a.chat("slow one"))
    try:
        await _until(lambda: len(upstream.completions()) == 1, "a never forwarded the request")
        impatient = asyncio.ensure_future(b.chat("slow one"))  # a holds the replicas' lock on it now
        await _until(lambda: len(upstream.completions()) == 2, "b waited for a for longer than flight_wait")
        assert not slow.done()  # b gave up waiting while a's answer was still on its way
    finally:
        upstream.release.set()
    assert (await slow).headers["x-semproxy-cache"] == (await impatient).headers["x-semproxy-cache"] == "miss"
    assert len(upstream.completions()) == 2


async def _until(condition: Callable[[], bool | Awaitable[bool]], failure: str, timeout: float = 30.0) -> None:
    """Poll until the condition holds; fail with `failure` if it does not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await _value(condition()):
        assert time.monotonic() < deadline, failure
        await asyncio.sleep(0.01)


async def _value(result: bool | Awaitable[bool]) -> bool:
    return await result if inspect.isawaitable(result) else bool(result)


async def _a_replica_waits_for_the_lock(url: str, upstream: FakeOpenAI) -> bool:
    """Whether a replica asked for the single-flight lock and was refused (it waits), or, if single flight
    failed, a second request reached the upstream."""
    return len(upstream.completions()) > 1 or await anyio.to_thread.run_sync(pg.lock_waiters, url) > 0


@pytest.mark.usefixtures("offline_encodings")
async def test_one_request_log_for_every_replica(make_proxy, shared: Settings,  # type: ignore[no-untyped-def]
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    a, b = await make_proxy(settings=on(shared, "a")), await make_proxy(settings=on(shared, "b"))
    await a.chat("hello")
    await b.chat("hello")
    await b.chat("hello", headers={"cache-control": "no-store"})
    assert a.app.log.flush() and b.app.log.flush()  # type: ignore[attr-defined]
    figures = (await a.client.get("/semproxy/api/stats?since=15m&by=endpoint")).json()
    assert figures["requests"] == 3
    assert figures["outcomes"] == {"exact": 1, "semantic": 0, "miss": 1, "audit": 0, "bypass": 1}
    assert figures["hit_rate"] == 0.5 and figures["tokens"]["saved_by_cache"] == 15
    assert figures["top_prompts"][0]["requests"] == 3 and figures["latency_ms"]["hit"]["count"] == 1
    assert sum(bucket["requests"] for bucket in figures["timeline"]) == 3
    assert main(["stats", "--store", shared.store or "", "--json", "--since", "1h"]) == 0
    assert json.loads(capsys.readouterr().out)["requests"] == 3
    assert not on(shared, "a").stats_path.exists()  # nothing went to the data dir


# ------------------------------------------------------------------ faults


@pytest.fixture
def own_server() -> Iterator[tuple[object, str]]:
    """A PostgreSQL server of its own, to be stopped and started by the test."""
    with pg.server_folder() as folder, pg.start_server(folder / "data") as server:
        yield server, server.get_uri()


async def test_requests_are_forwarded_while_postgres_is_down_and_cached_again_after(  # type: ignore[no-untyped-def]
        make_proxy, settings: Settings, own_server: tuple[object, str], upstream: FakeOpenAI,
        caplog: pytest.LogCaptureFixture) -> None:
    server, url = own_server
    proxy = await make_proxy(settings=dataclasses.replace(settings, store=url, postgres_timeout=1.0))
    await proxy.chat("before the outage")
    assert (await proxy.chat("before the outage")).headers["x-semproxy-cache"] == "exact"
    pg.stop_server(server)
    caplog.set_level(logging.WARNING, logger="semproxy.cache")
    for number, prompt in enumerate(("before the outage", "during the outage", "during the outage")):
        caplog.clear()
        with anyio.fail_after(30):  # the first one waits for the database at most about postgres_timeout
            response = await proxy.chat(prompt)
        assert response.status_code == 200 and response.headers["x-semproxy-cache"] == "miss"
        assert _text(response).startswith("answer #")
        why = [record.exc_info[0] for record in caplog.records if record.exc_info and record.name == "semproxy.cache"]
        if number > 0:  # once it is known to be down, the store is not waited for: each use fails at once
            assert why and set(why) == {CacheFailure}, why
    pg.restart_server(server)
    await _eventually(lambda: proxy.chat("after the outage"), "exact")  # stored, then served: reconnected
    assert (await proxy.chat("before the outage")).headers["x-semproxy-cache"] == "exact"  # and nothing was lost


async def _eventually(request: object, outcome: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        response = await request()  # type: ignore[operator]
        if response.status_code == 200 and response.headers["x-semproxy-cache"] == outcome:
            return
        assert time.monotonic() < deadline, response.headers
        await asyncio.sleep(0.2)


async def test_a_replica_started_while_postgres_is_down_forwards_then_opens_the_store(  # type: ignore[no-untyped-def]
        settings: Settings, own_server: tuple[object, str], upstream: FakeOpenAI) -> None:
    import httpx

    server, url = own_server
    pg.stop_server(server)
    shared = dataclasses.replace(settings, store=url, postgres_timeout=1.0)
    storage = build_storage(shared)
    cache = SemanticCache(open_store=partial(open_entry_store, shared, storage),
                          load_spaces=lambda: Spaces.single(HashingEmbedder()),
                          policy=CachePolicy(maintenance_seconds=0.3))
    app = build_app(shared, transport=upstream.transport(), storage=storage, cache=cache)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        proxy = Proxy(app, cache, client)
        await cache.start()
        assert not cache.store_ready and cache.problems
        response = await proxy.chat("while the database is down")
        assert response.status_code == 200 and response.headers["x-semproxy-cache"] == "bypass"
        pg.restart_server(server)
        await _eventually(lambda: proxy.chat("once it is up"), "exact")
        assert cache.semantic_ready and cache.problems == []
        await cache.close()
        storage.close()


_WRITER = textwrap.dedent("""
    import sys, numpy as np
    from semproxy.cache.keys import make_key
    from semproxy.storage.pgvector import PostgresEntries
    from semproxy.storage.postgres import PostgresStorage
    from semproxy.storage.records import NewEntry
    store = PostgresEntries(PostgresStorage(sys.argv[1]))
    store.enable_vectors(8, now=0.0)
    print("ready", flush=True)
    i = 0
    while True:
        body = {"model": "m", "messages": [{"role": "user", "content": f"prompt {i}"}]}
        vector = np.ones(8, np.float32) / np.sqrt(8)
        store.put(NewEntry(key=make_key("chat", body, tenant="t"), response=b"x" * 200_000, vector=vector,
                           ttl_seconds=0, space="s/en"), now=1.0)
        print("stored", i, flush=True)
        i += 1
""")


def test_a_replica_killed_mid_write_leaves_no_half_written_entry(pg_url: str) -> None:
    import psycopg

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for delay in (0.4, 0.7, 1.0):
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, pg_url], stdout=subprocess.PIPE, env=env)
        assert writer.stdout is not None and writer.stdout.readline().strip() == b"ready"
        for _ in range(2):  # it is writing: two entries are in already
            assert writer.stdout.readline().startswith(b"stored ")
        time.sleep(delay)  # then kill it at an arbitrary point of its writing
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    with psycopg.connect(pg_url) as db:
        entries = db.execute("SELECT count(*) FROM semproxy_entries").fetchone()[0]
        orphans = db.execute("SELECT count(*) FROM semproxy_entries e WHERE NOT EXISTS "
                             "(SELECT 1 FROM semproxy_exact_keys k WHERE k.entry_id = e.id)").fetchone()[0]
        short = db.execute("SELECT count(*) FROM semproxy_entries WHERE length(response) <> 200000 "
                           "OR embedding IS NULL").fetchone()[0]
    assert entries > 3 and orphans == 0 and short == 0


def test_db_migrate_creates_and_reports_the_schema(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    import psycopg

    assert main(["db", "migrate", "--store", pg_url]) == 0
    assert capsys.readouterr().out.strip() == f"schema version {SCHEMA_VERSION} (was 0)"
    assert main(["db", "migrate", "--store", pg_url]) == 0
    assert capsys.readouterr().out.strip() == f"schema version {SCHEMA_VERSION}"
    with psycopg.connect(pg_url) as db:
        versions = db.execute("SELECT version FROM semproxy_schema_version ORDER BY version").fetchall()
        assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    assert main(["db", "migrate"]) == 2
    assert "needs a postgresql:// store" in capsys.readouterr().err


def test_the_store_setting_takes_a_postgresql_url_or_nothing() -> None:
    from semproxy.config import load_settings
    from semproxy.errors import ConfigError

    with pytest.raises(ConfigError, match="postgresql://"):
        Settings(store="mysql://db/semproxy")
    assert Settings(store="").store is None
    settings = load_settings(environ={"SEMPROXY_STORE": "postgresql://u:pw@db/semproxy"})
    assert settings.store == "postgresql://u:pw@db/semproxy"
    with pytest.raises(ConfigError, match="hnsw_ef_construction"):
        Settings(hnsw_m=32, hnsw_ef_construction=40)


@pytest.mark.usefixtures("offline_encodings")
async def test_raw_api_keys_never_reach_the_database(make_proxy, shared: Settings) -> None:  # type: ignore[no-untyped-def]
    import psycopg

    proxy = await make_proxy(settings=on(shared, "a"))
    await proxy.chat("hello there", headers={"authorization": "Bearer sk-very-secret-key-123"})
    await proxy.chat("hello there", headers={"authorization": "Bearer sk-very-secret-key-123"})
    assert proxy.app.log.flush()  # type: ignore[attr-defined]
    with psycopg.connect(shared.store or "") as db:
        tables = [row[0] for row in db.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'semproxy_%'")]
        rows = [row[0] for table in tables for row in db.execute(f"SELECT t::text FROM {table} t")]
    assert {"semproxy_entries", "semproxy_requests", "semproxy_meta"} <= set(tables) and len(rows) > 4
    assert not [row for row in rows if "sk-very-secret" in row]
