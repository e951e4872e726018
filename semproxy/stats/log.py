"""The request log: rows in the storage's `requests` table, written in batches by a thread of its own.

The request path only puts an `Observed` on a bounded queue (never waits: when the queue is full the
record is dropped and counted). The thread turns each into a `RequestRecord` (parsing and token counting
happen here, not on the event loop), tells the listeners (Prometheus), and commits a batch every
`flush_seconds` or `max_batch` records. Rows older than the retention are deleted at start and hourly.

Where the rows go is the storage's business (semproxy.storage): stats.sqlite3 in the data dir, or the shared
PostgreSQL database where every replica writes to one table.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from semproxy.stats.prices import PriceTable
from semproxy.stats.record import Observed, RequestRecord, finish
from semproxy.types import ByteBudget

log = logging.getLogger("semproxy.stats")

COLUMNS = [f.name for f in dataclasses.fields(RequestRecord)]
HOUR = 3600.0
Listener = Callable[[RequestRecord], None]
TokenCounter = Callable[[str, str], int]
_STOP = object()
_TICK = object()  # the writer woke without work: time to look at the retention


class LogStore(Protocol):
    """Where log rows are written; called from the writer thread only. Every method may raise (a database
    that is down): the batch is then dropped and counted, and later ones are written once it is back."""

    def log_key(self) -> bytes:
        """The per-installation key for prompt hashes (made once, kept with the log)."""
        ...

    def append_requests(self, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
        """Append rows to the log in one transaction."""
        ...

    def delete_requests_before(self, ts: float) -> int:
        """Apply the retention."""
        ...


class RequestLog:
    """Takes observed requests without blocking and writes them to the storage on its own thread."""

    def __init__(self, store: LogStore, *, prices: PriceTable, count: Callable[[], TokenCounter],
                 retention_days: float = 30.0, prompt_chars: int = 0, listeners: Sequence[Listener] = (),
                 flush_seconds: float = 0.5, max_batch: int = 512, max_pending: int = 10_000,
                 max_pending_bytes: int = 256 * 1024 * 1024, idle_seconds: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._key: bytes | None = None  # the prompt-hash key, read once
        self._prices, self._make_counter, self._listeners = prices, count, list(listeners)
        self._retention = retention_days * 24 * HOUR
        self._prompt_chars, self._flush_seconds, self._max_batch = prompt_chars, flush_seconds, max_batch
        self._clock, self._idle_seconds = clock, idle_seconds
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_pending)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()  # flush() and close() cut the batching wait short
        self.dropped = 0  # observations lost to a full queue
        self.written = 0
        # The bodies of requests in flight and of queued records, in bytes: each record is bounded by
        # max_body_bytes and the queue by a count, but 10,000 records of 16 MiB would be 160 GiB.
        self.budget = ByteBudget(max_pending_bytes)
        self.without_bodies = 0  # records logged without their bodies (the budget was spent)

    def submit(self, observed: Observed) -> None:
        """Queue one request for the log; never blocks (drops it if the writer is far behind)."""
        with self._lock:  # the writer only retires, idle, under this lock with an empty queue
            self._start()
            if not observed.bodies_whole:
                self.without_bodies += 1
            try:
                self._queue.put_nowait(observed)
            except queue.Full:
                self.dropped += 1
                self.budget.give(observed.held_bytes)

    def start(self) -> None:
        """Start the writer thread (idempotent; it also starts with the first request)."""
        with self._lock:
            self._start()

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="semproxy-stats", daemon=True)
            self._thread.start()

    def flush(self, timeout: float = 30.0) -> bool:
        """Block until everything submitted so far is written (True) or `timeout` passes (False)."""
        done = threading.Event()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                return True
            try:
                self._queue.put_nowait(done)
                queued = True
            except queue.Full:
                queued = False
        if not queued:
            try:
                self._queue.put(done, timeout=timeout)  # a full queue keeps the writer busy: it cannot retire
            except queue.Full:
                return False
        self._wake.set()
        return done.wait(timeout)

    def close(self) -> None:
        """Write what is queued and stop the thread."""
        with self._lock:
            thread = self._thread
            if thread is not None and thread.is_alive():
                self._queue.put(_STOP)  # the writer needs the lock only to retire, which a queued item prevents
                self._wake.set()
            self._thread = None
        if thread is not None:
            thread.join(timeout=30)

    # ---------------------------------------------------------------- the writer thread

    def _run(self) -> None:
        try:
            count = self._make_counter()
        except Exception:
            log.exception("the request log has no token counter; requests are not logged")
            self._drain_forever()
            return
        next_sweep = 0.0
        while True:
            if self._clock() >= next_sweep:
                self._sweep()
                next_sweep = self._clock() + HOUR
            first = self._next_or_retire()
            if first is None:
                return
            if first is _TICK:
                continue
            batch, waiting, stop = self._collect(first)
            self._write_batch(batch, count)
            for event in waiting:
                event.set()
            if stop:
                return

    def _next_or_retire(self) -> object | None:
        """The next item; None once the log was idle for `idle_seconds` (the thread then ends), or _TICK with a
        retention to apply: an idle proxy must still delete rows as they age."""
        while True:
            try:
                return self._queue.get(timeout=self._idle_seconds)
            except queue.Empty:
                if self._retention > 0:
                    return _TICK
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return None

    def _collect(self, item: object) -> tuple[list[Observed], list[threading.Event], bool]:
        """Take what arrives within `flush_seconds` of `item` (up to `max_batch` records).

        Between batches the thread sleeps instead of waking for every record: a wake-up per request would
        take the GIL from the event loop as often as requests come.
        """
        batch: list[Observed] = []
        waiting: list[threading.Event] = []
        deadline = time.monotonic() + self._flush_seconds
        while True:
            if item is _STOP:
                return batch, waiting, True
            if isinstance(item, threading.Event):
                waiting.append(item)  # someone waits: write what is there now
            elif isinstance(item, Observed):
                batch.append(item)
            if waiting or len(batch) >= self._max_batch:
                return batch, waiting, False
            try:
                item = self._queue.get_nowait()
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return batch, waiting, False
            self._wake.wait(remaining)
            self._wake.clear()  # before looking: a flush queued after this is found below or wakes us again
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, waiting, False

    def _finish(self, observed: Observed, key: bytes, count: TokenCounter) -> RequestRecord | None:
        try:
            record = finish(observed, prices=self._prices, count=count, hash_key=key,
                            prompt_chars=self._prompt_chars)
        except Exception:
            log.exception("could not make a log record of %s %s", observed.method, observed.endpoint)
            return None
        for listener in self._listeners:
            try:
                listener(record)
            except Exception:
                log.exception("a statistics listener failed")
        return record

    def _write_batch(self, batch: list[Observed], count: TokenCounter) -> None:
        try:
            self._write_records(batch, count)
        finally:
            self.budget.give(sum(o.held_bytes for o in batch))  # the batch's bodies are read no more

    def _write_records(self, batch: list[Observed], count: TokenCounter) -> None:
        try:
            key = self._key = self._key or self.store.log_key()
        except Exception as exc:  # a database that is down: these records are lost, later ones are written
            log.warning("the request log is unavailable (%s); %d records dropped", exc, len(batch))
            self.dropped += len(batch)
            return
        self._write([self._finish(o, key, count) for o in batch])

    def _write(self, records: list[RequestRecord | None]) -> None:
        rows = [tuple(getattr(r, c) for c in COLUMNS) for r in records if r is not None]
        if not rows:
            return
        try:
            self.store.append_requests(COLUMNS, rows)
            self.written += len(rows)
        except Exception:
            log.exception("could not write %d log records", len(rows))

    def _sweep(self) -> None:
        if self._retention <= 0:
            return
        try:
            self.store.delete_requests_before(self._clock() - self._retention)
        except Exception:
            log.exception("could not apply the log's retention")

    def _drain_forever(self) -> None:
        """A log that cannot open still answers flush() and close(), so nothing waits on it forever."""
        while (item := self._queue.get()) is not _STOP:
            if isinstance(item, threading.Event):
                item.set()
            elif isinstance(item, Observed):
                self.budget.give(item.held_bytes)
