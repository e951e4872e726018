"""Micro-batching: concurrent requests share one forward pass of the embedding model."""

from __future__ import annotations

import asyncio
import logging

import anyio.to_thread

from semproxy.cache.embedder import Embedder
from semproxy.cache.records import Vector

log = logging.getLogger(__name__)


class BatchingEmbedder:
    """Queues texts and embeds whatever is waiting in one call.

    There is no timer: a lone request is embedded at once, and requests that arrive while a forward pass
    runs form the next batch. Batches therefore grow with load and cost nothing when traffic is light.
    """

    def __init__(self, embedder: Embedder, *, max_batch: int = 64) -> None:
        self._embedder = embedder
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[str, asyncio.Future[Vector | None]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def embed(self, text: str) -> Vector | None:
        """The unit vector of `text`, or None if the model would have to truncate it."""
        queue = self._ensure_worker()
        future: asyncio.Future[Vector | None] = asyncio.get_running_loop().create_future()
        await queue.put((text, future))
        return await future

    def _ensure_worker(self) -> asyncio.Queue[tuple[str, asyncio.Future[Vector | None]]]:
        # The worker belongs to one event loop; a server restarted in-process gets a new one.
        loop = asyncio.get_running_loop()
        if self._queue is None or self._worker is None or self._worker.done() or self._loop is not loop:
            self._queue, self._loop = asyncio.Queue(), loop
            self._worker = loop.create_task(self._run(self._queue))
        return self._queue

    async def _run(self, queue: asyncio.Queue[tuple[str, asyncio.Future[Vector | None]]]) -> None:
        while True:
            batch = [await queue.get()]
            while len(batch) < self._max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            live = [(text, future) for text, future in batch if not future.done()]
            if live:
                await self._embed_batch(live)

    async def _embed_batch(self, batch: list[tuple[str, asyncio.Future[Vector | None]]]) -> None:
        texts = [text for text, _ in batch]
        try:
            vectors = await anyio.to_thread.run_sync(self._embed_fitting, texts)
        except Exception as exc:  # a broken model fails these requests' lookups, not the worker
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), vector in zip(batch, vectors, strict=True):
            if not future.done():
                future.set_result(vector)

    def _embed_fitting(self, texts: list[str]) -> list[Vector | None]:
        fitting = [i for i, text in enumerate(texts) if self._embedder.fits(text)]
        vectors = self._embedder.embed([texts[i] for i in fitting]) if fitting else None
        out: list[Vector | None] = [None] * len(texts)
        for row, i in enumerate(fitting):
            assert vectors is not None
            out[i] = vectors[row]
        return out

    async def aclose(self) -> None:
        """Stop the worker; waiting callers get a CancelledError."""
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
