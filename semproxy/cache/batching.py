"""Micro-batching: concurrent requests share one forward pass of the embedding model."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from semproxy.cache.embedder import Embedder
from semproxy.storage.records import Vector
from semproxy.types import RequestFacts, current_facts

log = logging.getLogger(__name__)
T = TypeVar("T")


class BatchingEmbedder:
    """Queues texts and embeds whatever is waiting in one call.

    There is no timer: a lone request is embedded at once, and requests that arrive while a forward pass
    runs form the next batch. Batches therefore grow with load and cost nothing when traffic is light.

    Every forward pass runs on the same dedicated thread. torch's OpenMP keeps a team of worker threads per
    calling thread, and idle teams spin: passes hopping between pool threads made a 11 ms embedding take 14.
    """

    def __init__(self, embedder: Embedder, *, max_batch: int = 64) -> None:
        self._embedder = embedder
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="semproxy-embed")

    @property
    def pending(self) -> int:
        """Texts waiting for the next forward pass."""
        return 0 if self._queue is None else self._queue.qsize()

    async def embed(self, text: str) -> Vector | None:
        """The unit vector of `text`, or None if the model would have to truncate it."""
        vector, _ = await self._submit(text, None)
        return vector

    async def embed_then(self, text: str, then: Callable[[Vector], T]) -> tuple[Vector, T] | None:
        """Embed, then run `then(vector)` on the model thread: one thread hop for both (e.g. an index search).

        None if the text is too long to embed whole; an exception from `then` reaches the caller.
        """
        vector, result = await self._submit(text, then)
        return None if vector is None else (vector, result)

    async def _submit(self, text: str, then: Callable[[Vector], Any] | None) -> tuple[Vector | None, Any]:
        queue = self._ensure_worker()
        job = _Job(text, then, asyncio.get_running_loop().create_future(), current_facts())
        await queue.put(job)
        return await job.future

    def _ensure_worker(self) -> asyncio.Queue[_Job]:
        # The worker belongs to one event loop; a server restarted in-process gets a new one.
        loop = asyncio.get_running_loop()
        if self._queue is None or self._worker is None or self._worker.done() or self._loop is not loop:
            self._queue, self._loop = asyncio.Queue(), loop
            self._worker = loop.create_task(self._run(self._queue))
        return self._queue

    async def _run(self, queue: asyncio.Queue[_Job]) -> None:
        while True:
            batch = [await queue.get()]
            while len(batch) < self._max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            live = [job for job in batch if not job.future.done()]
            if live:
                await self._embed_batch(live)

    async def _embed_batch(self, jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        try:
            outcomes = await loop.run_in_executor(self._thread, self._process, jobs)
        except Exception as exc:  # a broken model fails these requests' lookups, not the worker
            outcomes = [exc] * len(jobs)
        for job, outcome in zip(jobs, outcomes, strict=True):
            if job.future.done():
                continue
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)

    def _process(self, jobs: list[_Job]) -> list[tuple[Vector | None, Any] | BaseException]:
        """On the model thread: one forward pass for every text that fits, then each job's follow-up."""
        fitting = [i for i, job in enumerate(jobs) if self._embedder.fits(job.text)]
        started = time.perf_counter()
        vectors = self._embedder.embed([jobs[i].text for i in fitting]) if fitting else None
        elapsed = time.perf_counter() - started
        for i in fitting:  # each request waited for the whole forward pass
            _add_ms(jobs[i].facts, "embed_ms", elapsed)
        by_job: dict[int, Vector] = {i: vectors[row] for row, i in enumerate(fitting)} if vectors is not None else {}
        return [self._follow_up(job, by_job.get(i)) for i, job in enumerate(jobs)]

    @staticmethod
    def _follow_up(job: _Job, vector: Vector | None) -> tuple[Vector | None, Any] | BaseException:
        if vector is None or job.then is None:
            return vector, None
        started = time.perf_counter()
        try:
            return vector, job.then(vector)
        except Exception as exc:
            return exc
        finally:
            _add_ms(job.facts, "search_ms", time.perf_counter() - started)

    async def aclose(self) -> None:
        """Stop the worker; waiting callers get a CancelledError."""
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
        self._thread.shutdown(wait=False)


@dataclasses.dataclass(frozen=True)
class _Job:
    text: str
    then: Callable[[Vector], Any] | None
    future: asyncio.Future[tuple[Vector | None, Any]]
    facts: RequestFacts | None = None  # the request's record, for the statistics


def _add_ms(facts: RequestFacts | None, stage: str, seconds: float) -> None:
    if facts is not None:
        facts.add_ms(stage, seconds)
