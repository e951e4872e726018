"""Shared fixtures. Every test runs offline: a model hub call fails fast instead of hanging."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from semproxy.app import build_app, build_cache, build_storage
from semproxy.cache.service import SemanticCache
from semproxy.cache.spaces import Spaces
from semproxy.config import Settings
from semproxy.storage import Storage
from tests import pg
from tests.fakes import FakeOpenAI, HashingEmbedder

T = TypeVar("T")


@pytest.fixture(scope="session")
def offline_encodings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """tiktoken's encodings installed from the bundled files."""
    from semproxy.compress.tokens import install_offline_encodings

    patch = pytest.MonkeyPatch()
    patch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    yield install_offline_encodings(tmp_path_factory.mktemp("tiktoken"))
    patch.undo()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A PostgreSQL server with pgvector for the whole session; yields its admin URL."""
    with pg.server_folder() as folder, pg.start_server(folder / "data") as server:
        yield server.get_uri()


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """An empty database of its own on the session's server."""
    with pg.database(pg_server) as url:
        yield url


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def upstream() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture
def embedder() -> HashingEmbedder:
    return HashingEmbedder()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # The hashing embedder's vectors mean nothing to the hit verifier's model: cache mechanics are tested
    # without it, and the verifier with the real embedder (tests/cache/test_verifier_proxy.py).
    return Settings(data_dir=tmp_path / "data", upstream="http://upstream.test/v1", similarity_threshold=0.8,
                    compression_enabled=False, verify_hits=False, allow_namespace_header=True,
                    admin_open=True)  # the admin endpoints' own tests close them


def layer(app: object, kind: type[T]) -> T:
    """The layer of this kind inside a stack build_app (or the middleware) made."""
    while not isinstance(app, kind):
        app = app.app  # type: ignore[attr-defined]
    return app


class Proxy:
    """A semproxy app wired to the fake upstream, with an httpx client that talks to it in-process."""

    def __init__(self, app: object, cache: SemanticCache, client: httpx.AsyncClient) -> None:
        self.app, self.cache, self.client = app, cache, client

    async def chat(self, prompt: str, *, headers: dict[str, str] | None = None, **fields: object) -> httpx.Response:
        body = {"model": "gpt-test", "messages": [{"role": "user", "content": prompt}], **fields}
        return await self.client.post("/v1/chat/completions", json=body,
                                      headers={"authorization": "Bearer sk-alice", **(headers or {})})


ProxyFactory = Callable[..., "AsyncIterator[Proxy]"]


@pytest.fixture
async def make_proxy(upstream: FakeOpenAI, embedder: HashingEmbedder, settings: Settings):  # type: ignore[no-untyped-def]
    """Build (and start) a proxy; `await make_proxy(settings=..., embedder=...)` to vary the parts."""
    started: list[tuple[SemanticCache, httpx.AsyncClient, Storage]] = []

    async def make(*, settings: Settings = settings, embedder: HashingEmbedder | None = embedder,
                   start: bool = True, compression: object = None, transport: httpx.AsyncBaseTransport | None = None,
                   spaces: Spaces | None = None, **cache_options: object) -> Proxy:
        storage = build_storage(settings)
        cache = build_cache(settings, storage=storage, load_embedder=(lambda: embedder) if embedder else None,
                            load_spaces=(lambda: spaces) if spaces else None, **cache_options)
        app = build_app(settings, transport=transport or upstream.transport(), storage=storage, cache=cache,
                        compression=compression)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://semproxy.test")
        if start:
            await cache.start()
        started.append((cache, client, storage))
        return Proxy(app, cache, client)

    yield make
    for cache, client, storage in started:
        await client.aclose()
        await cache.close()
        storage.close()


@pytest.fixture
async def proxy(make_proxy) -> Proxy:  # type: ignore[no-untyped-def]
    return await make_proxy()
