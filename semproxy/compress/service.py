"""The compression service: results cached on disk by prompt, new prompts compressed on one worker thread.

A prompt seen for the first time is compressed before it is forwarded when that takes at most `wait_seconds`
(the default compressor added about 45 ms to a first-seen 600-token prompt through the proxy); past that, or
with `wait` off, it goes out as it is and the compression finishes in the background. Every later request with
that prompt reuses the stored result, so once a prompt has been seen, compression costs a hash and a dictionary
lookup. Prompts in a language the compressor was not shown to handle are never compressed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from semproxy.compress.compressor import ALGORITHM_VERSION, CompressionResult, Compressor
from semproxy.compress.tokens import count_tokens

log = logging.getLogger("semproxy.compress")

MEMORY_ENTRIES = 4096
# Compressed once at load, so the first prompt a user sends does not pay for the model's and tiktoken's set-up.
WARM_UP = ("You are a helpful assistant for the customers of a small shop. Answer their questions about orders, "
           "deliveries and returns politely, and never share internal notes. ") * 3
MAX_PENDING = 256


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompressionPolicy:
    """What gets compressed, how hard, and when."""

    rate: float = 0.5
    min_tokens: int = 200
    wait: bool = True
    wait_seconds: float = 0.5  # the longest a request waits for its prompt's first compression
    languages: frozenset[str] = frozenset({"*"})  # languages to compress; "*": all
    fingerprint: str = ""  # method, model and protection settings: part of every stored result's key
    max_age_seconds: float = 0.0  # stored results older than this are deleted (0: kept); the cache's retention


class ResultStore(Protocol):
    """Where compressions are kept across restarts (compression.sqlite3 in the data dir)."""

    def stored_compression(self, key: str) -> str | None:
        """The result stored under `key` (JSON), if any."""
        ...

    def store_compression(self, key: str, result: str, *, now: float) -> None:
        """Keep a result."""
        ...

    def delete_compressions_before(self, ts: float) -> int:
        """Apply the retention."""
        ...


class CompressionService:
    """Looks up, schedules and stores compressions; never raises into a request."""

    def __init__(self, *, load_compressor: Callable[[], Compressor], results: ResultStore,
                 policy: CompressionPolicy, language_of: Callable[[str], str] | None = None) -> None:
        self.policy = policy
        self._language_of = language_of
        self._load_compressor = load_compressor
        self._results = results
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="semproxy-compress")
        self._compressor: Compressor | None = None
        self._memory: OrderedDict[str, CompressionResult | None] = OrderedDict()  # None: below min_tokens
        self._memory_lock = threading.Lock()
        self._pending: dict[str, concurrent.futures.Future[CompressionResult | None]] = {}
        self._next_prune = 0.0
        self._started = False
        self.problem: str | None = None

    # ---------------------------------------------------------------- life cycle

    def start(self) -> None:
        """Load the model on the compression thread; prompts submitted meanwhile queue behind it."""
        if not self._started:
            self._started = True
            self._thread.submit(self._load)

    def _load(self) -> None:
        self._prune()
        try:
            compressor = self._load_compressor()
            compressor.compress(WARM_UP, rate=self.policy.rate)  # first run costs: sessions, tiktoken's tables
            self._compressor = compressor
            log.info("compression ready (rate %.2f, prompts of %d tokens or more)", self.policy.rate,
                     self.policy.min_tokens)
        except Exception as exc:
            self.problem = f"{type(exc).__name__}: {exc}"
            log.error("compression is off: the compressor could not load (%s); prompts go out as they are",
                      self.problem)

    @property
    def ready(self) -> bool:
        """Whether the compressor is loaded."""
        return self._compressor is not None

    async def close(self) -> None:
        """Let the current compression finish; drop the queue."""
        self._thread.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------- requests

    def key(self, text: str) -> str:
        """Stored results are keyed by the prompt and everything that shapes its compression."""
        material = f"{ALGORITHM_VERSION}\0{self.policy.fingerprint}\0{self.policy.rate}\0".encode() + text.encode()
        return hashlib.sha256(material).hexdigest()

    async def compressed(self, text: str) -> CompressionResult | None:
        """The compression of a prompt if it is known (or, in wait mode, once it is made); else schedule it.

        None means: send the prompt as it is (too short, not compressed yet, or compression failed).
        """
        if len(text) < self.policy.min_tokens and len(text.encode()) < self.policy.min_tokens:
            return None  # a token is at least one byte: surely too short, and no thread hop to learn it
        key = self.key(text)
        with self._memory_lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                return self._memory[key]
        if self._compressor is None and self.problem is not None:
            return None
        future = self._schedule(key, text)
        if future is None or not (self.policy.wait and self.ready):
            return None
        try:
            # shield: a request that stops waiting leaves the compression running, to be stored for the next
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), self.policy.wait_seconds)
        except TimeoutError:
            return None
        except asyncio.CancelledError:
            if future.cancelled():  # the service closed under the request: forward the prompt as it is
                return None
            raise

    def _schedule(self, key: str, text: str) -> concurrent.futures.Future[CompressionResult | None] | None:
        """The compression of `text`, queued once however many requests ask for it."""
        with self._memory_lock:
            if key in self._pending:
                return self._pending[key]
            if len(self._pending) >= MAX_PENDING:
                log.warning("compression queue full; a prompt goes out uncompressed until it frees up")
                return None
            future = self._thread.submit(self._produce, key, text)
            self._pending[key] = future
            return future

    def _produce(self, key: str, text: str) -> CompressionResult | None:
        """On the compression thread: stored result, or below the threshold, or a fresh compression."""
        try:
            self._prune()
            result = self._stored(key, text)
            if result is None and self._compressor is not None and self._worth_compressing(text):
                started = time.perf_counter()
                result = self._compressor.compress(text, rate=self.policy.rate)
                log.info("compressed a system prompt: %s tokens in %.1f s", result.tokens["cl100k_base"],
                         time.perf_counter() - started)
                self._store(key, result)
            self._remember(key, result)
            return result
        except Exception:
            log.exception("compressing a prompt failed; it goes out as it is")
            self._remember(key, None)
            return None
        finally:
            with self._memory_lock:
                self._pending.pop(key, None)

    def _worth_compressing(self, text: str) -> bool:
        """Long enough, and in a language the compressor handles."""
        if count_tokens(text) < self.policy.min_tokens:
            return False
        if "*" in self.policy.languages or self._language_of is None:
            return True
        language = self._language_of(text)
        if language not in self.policy.languages:
            log.debug("a %s prompt goes out uncompressed: compression_languages does not list it", language)
            return False
        return True

    def _remember(self, key: str, result: CompressionResult | None) -> None:
        with self._memory_lock:
            self._memory[key] = result
            while len(self._memory) > MEMORY_ENTRIES:
                self._memory.popitem(last=False)

    def _stored(self, key: str, text: str) -> CompressionResult | None:
        stored = self._results.stored_compression(key)
        if stored is None:
            return None
        data: dict[str, Any] = json.loads(stored)
        return CompressionResult(original=text, compressed=data["compressed"],
                                 tokens={k: (v[0], v[1]) for k, v in data["tokens"].items()})

    def _store(self, key: str, result: CompressionResult) -> None:
        # Not the prompt itself: its hash is the key, and every request that finds the result carries it.
        kept = {"compressed": result.compressed, "tokens": result.tokens}
        self._results.store_compression(key, json.dumps(kept), now=time.time())

    def _prune(self) -> None:
        """On the compression thread, at most hourly: delete stored results past the retention."""
        now = time.time()
        if self.policy.max_age_seconds <= 0 or now < self._next_prune:
            return
        self._next_prune = now + 3600
        try:
            self._results.delete_compressions_before(now - self.policy.max_age_seconds)
        except Exception:
            log.exception("could not apply the retention to stored compressions")

    def drain(self, timeout: float = 60.0) -> None:
        """Wait until queued compressions are done (for tests and benchmarks)."""
        self._thread.submit(lambda: None).result(timeout=timeout)
