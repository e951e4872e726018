"""Upstream faults on real sockets: each gives the client a clear answer, stores nothing and leaks nothing.

bench/fault_bench.py runs the same faults 1,000 times; here a few rounds keep the suite quick.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from semproxy.app import build_app, build_cache
from semproxy.config import Settings, UpstreamConfig
from tests.fault_upstream import EXPECTED, FaultUpstream, eventually, open_fds, open_sockets, run_faults, settled
from tests.servers import ThreadServer, free_port


def fault_settings(data_dir: Path, fault_url: str) -> Settings:
    """A proxy in front of the fault server (model fault-*) and of a port nobody listens on (refused-*)."""
    return Settings(
        data_dir=data_dir, compression_enabled=False, semantic_enabled=False, verify_hits=False,
        breaker_failures=1_000_000,  # every fault must reach the upstream, not a resting circuit
        upstreams=(UpstreamConfig(name="fault", url=fault_url, models=("fault-*",), read_timeout=0.6),
                   UpstreamConfig(name="dead", url=f"http://127.0.0.1:{free_port()}/v1", models=("refused-*",))),
    )


@pytest.fixture
def faults() -> Iterator[FaultUpstream]:
    with FaultUpstream() as server:
        yield server


def test_every_fault_is_answered_clearly_and_nothing_is_stored(tmp_path: Path, faults: FaultUpstream) -> None:
    settings = fault_settings(tmp_path / "data", faults.url)
    with ThreadServer(build_app(settings, cache=build_cache(settings))) as proxy:
        report = run_faults(proxy.url, faults, rounds=1, tag="once")
    assert report.failures == []
    assert report.faults == len(EXPECTED)
    with sqlite3.connect(settings.db_path) as db:
        stored = [bytes(row[0]) for row in db.execute("SELECT response FROM entries")]
    assert len(stored) == len(EXPECTED) - 2  # the answers of the retries, nothing of a fault
    assert not any(b"answer #0 " in response for response in stored)  # every fault's answer is number 0


def test_faults_leak_no_descriptor_or_connection(tmp_path: Path, faults: FaultUpstream) -> None:
    settings = fault_settings(tmp_path / "data", faults.url)
    with ThreadServer(build_app(settings, cache=build_cache(settings))) as proxy:
        with settled():
            warm = run_faults(proxy.url, faults, rounds=1, tag="warm-up")  # worker threads, SQLite, pools
        fds, sockets, upstream_connections = open_fds(), open_sockets(), faults.open_connections
        report = run_faults(proxy.url, faults, rounds=3, tag="measured")
        assert warm.failures == [] and report.failures == []
        # Connections closed a moment ago are released soon after: wait for the counts to come down, not a while.
        eventually(lambda: open_sockets() <= sockets + 2, "sockets leaked")  # a keep-alive connection may come and go
        eventually(lambda: open_fds() <= fds + 2, "file descriptors leaked")
        eventually(lambda: faults.open_connections <= upstream_connections + 2,  # idle keep-alive connections, no more
                   "upstream connections leaked")


def test_a_kept_alive_connection_the_upstream_just_closed_is_retried_on_a_new_one(tmp_path: Path,
                                                                                  faults: FaultUpstream) -> None:
    settings = fault_settings(tmp_path / "data", faults.url)
    faults.drop_reused = True
    with ThreadServer(build_app(settings, cache=build_cache(settings))) as proxy, httpx.Client(timeout=10) as client:
        for i in range(3):  # each request after the first finds its pooled connection closed under it
            body = {"model": "fault-model", "messages": [{"role": "user", "content": f"question {i}"}]}
            response = client.post(proxy.url + "/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
    assert faults.answered == 3
