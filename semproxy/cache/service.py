"""The cache service: exact and semantic lookups, storing, and housekeeping over a store, an index and an embedder.

All blocking work (the store and its vector search, the model) runs in worker threads from here, and nothing
here raises into a request: a failing component is logged and the request carries on uncached.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.to_thread

from semproxy.cache.batching import BatchingEmbedder
from semproxy.cache.keys import tenant_id
from semproxy.cache.learning import History, Learner, ScopeRecord
from semproxy.cache.records import AuditPlan, CacheHit, Embedding, Lookup, Verdict
from semproxy.cache.spaces import Placement, Spaces
from semproxy.cache.store import EntryStore
from semproxy.cache.text import PromptFacts, analyze
from semproxy.cache.verifier import Candidate, Verifier
from semproxy.storage.records import CacheEntry, CacheKey, NewEntry, Observation, Relocation, Unplaced, Vector

log = logging.getLogger("semproxy.cache")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CachePolicy:
    """The settings the service applies."""

    threshold: float = 0.95
    top_k: int = 4
    ttl_seconds: int = 7 * 24 * 3600
    max_age_seconds: float = 0.0  # the operator's retention: no entry outlives it, whatever its TTL (0: none)
    max_entries: int = 100_000
    embed_batch_size: int = 64
    maintenance_seconds: float = 30.0
    flight_wait: float = 10.0  # longest wait for another replica's identical request before forwarding anyway
    relocate_batch: int = 16  # entries re-embedded per step in the background (live prompts wait at most one)
    max_false_hit_rate: float = 0.02  # the budget the learned bars keep served hits within
    audit_rate: float = 0.05  # the least share of would-be semantic hits audited (0: none)
    learn: bool = True  # apply what comparisons learned (per entry and per scope); off: audits only measure


class SemanticCache:
    """Exact tier (a key lookup) then semantic tier (nearest prompt inside the request's scope and space)."""

    def __init__(
        self,
        *,
        open_store: Callable[[], EntryStore],
        load_spaces: Callable[[], Spaces] | None,
        policy: CachePolicy,
        load_verifier: Callable[[str], Verifier | None] | None = None,
        clock: Callable[[], float] = time.time,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self._draw = draw
        self.learner = Learner(budget=policy.max_false_hit_rate, read=self._history)
        self._load_verifier = load_verifier
        self._verifiers: dict[str, Verifier | None] = {}  # by embedder name: each was fitted on one model's vectors
        self._facts: Callable[[str, str], PromptFacts] = functools.lru_cache(maxsize=8192)(analyze)
        self._open_store, self._load_spaces = open_store, load_spaces
        self._clock = clock
        self._store: EntryStore | None = None
        self._spaces: Spaces | None = None
        self._embedders: dict[str, BatchingEmbedder] = {}  # by embedder name, each on its own model thread
        self._relocating = False
        self.relocated = 0  # entries re-embedded in the background since start
        self._writer = anyio.CapacityLimiter(1)
        self._touched: dict[int, float] = {}
        self._count = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writes: set[asyncio.Task[Any]] = set()
        self._touch_lock = threading.Lock()
        self._started = False
        self.ready = False  # True once start-up finished (what /healthz reports)
        self.problems: list[str] = []

    # ---------------------------------------------------------------- life cycle

    @property
    def store_ready(self) -> bool:
        """Whether the exact tier works (the store is open)."""
        return self._store is not None

    def entry_count(self) -> float:
        """Entries in the store as last counted (resynced by housekeeping), for the metrics gauge."""
        return float(self._count)

    @property
    def semantic_ready(self) -> bool:
        """Whether the semantic tier works (model loaded and index rebuilt)."""
        return bool(self._embedders)

    async def start(self) -> None:
        """Open the store, then load the model and rebuild the index; requests are served meanwhile.

        A component that fails to start is logged and left out (the proxy keeps forwarding); `problems`
        says what is missing, for /healthz. A store that cannot open (a database that is down) is tried
        again every `maintenance_seconds` until it opens.
        """
        if self._started:
            return
        self._started = True
        try:
            await self._open()
        except Exception as exc:
            log.exception("the cache could not start fully; requests are forwarded uncached where needed")
            self.problems.append(f"{type(exc).__name__}: {exc}")
        self._spawn(self._maintain())
        self.ready = True
        log.info("cache ready: %d entries, semantic tier %s", self._count, "on" if self.semantic_ready else "off")

    async def _open(self) -> None:
        store = await anyio.to_thread.run_sync(self._open_store)
        self._count = await anyio.to_thread.run_sync(lambda: store.sweep(
            now=self._clock(), keep=self.policy.max_entries, used={}, born_after=self._born_after()))
        self._store = store
        if self._load_spaces is not None:
            await self._start_semantic(store)

    async def _reopen(self) -> None:
        try:
            await self._open()
        except Exception as exc:
            log.warning("the cache store is still unavailable (%s: %s); retrying later", type(exc).__name__, exc)
            return
        self.problems.clear()
        log.info("cache store opened: %d entries", self._count)

    async def _start_semantic(self, store: EntryStore) -> None:
        assert self._load_spaces is not None
        spaces = await anyio.to_thread.run_sync(self._load_spaces)
        if self._load_verifier is not None:
            for name in spaces.embedders:
                self._verifiers[name] = verifier = await anyio.to_thread.run_sync(self._load_verifier, name)
                if verifier is not None and verifier.problem:
                    self.problems.append(f"verifier ({name}): {verifier.problem}")
        await anyio.to_thread.run_sync(lambda: store.enable_vectors(spaces.dimension, now=self._clock()))
        self._spaces = spaces
        self._embedders = {name: BatchingEmbedder(embedder, max_batch=self.policy.embed_batch_size)
                           for name, embedder in spaces.embedders.items()}
        self._spawn(self.relocate())

    async def close(self) -> None:
        """Finish pending writes, flush LRU times, stop background work."""
        await asyncio.gather(*self._writes, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for embedder in self._embedders.values():
            await embedder.aclose()
        if self._store is not None:
            with contextlib.suppress(Exception):  # a database that went away: the touches are only LRU hints
                await self._write(self._sweep)
            await anyio.to_thread.run_sync(self._store.close)
        self._started = False

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) for health checks: 503 while starting, then 200, "degraded" if a part failed."""
        if not self.ready:
            return 503, {"status": "loading"}
        status = "degraded" if self.problems else "ok"
        return 200, {"status": status, "semantic": self.semantic_ready, "embedders": sorted(self._embedders),
                     "problems": self.problems}

    def _spawn(self, coroutine: Any, *, write: bool = False) -> None:
        """Run in the background: writes are awaited by close(), everything else is cancelled."""
        tasks = self._writes if write else self._tasks
        task = asyncio.get_running_loop().create_task(coroutine)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    # ---------------------------------------------------------------- tenants

    def tenant(self, *, api_key: str | None, namespace: str | None) -> str:
        """The salted tenant hash for a request (the store holds the salt)."""
        assert self._store is not None
        return tenant_id(api_key=api_key, namespace=namespace, salt=self._store.salt)

    # ---------------------------------------------------------------- lookups

    async def lookup(self, key: CacheKey, *, threshold: float | None = None, comparable: bool = False) -> Lookup:
        """Find a stored answer for the request; never raises. `comparable`: the request's answer is
        reproducible, so a candidate's answer may be compared with the fresh one (audited)."""
        if self._store is None:
            return Lookup(hit=None)
        try:
            hit = await self._lookup_exact(self._store, key)
            if hit is not None:
                return Lookup(hit=hit)
        except Exception:
            log.exception("exact lookup failed; forwarding uncached")
            return Lookup(hit=None)
        return await self._lookup_semantic(key, self.policy.threshold if threshold is None else threshold,
                                           comparable)

    async def _lookup_exact(self, store: EntryStore, key: CacheKey) -> CacheHit | None:
        # A primary-key read from SQLite takes ~12 µs here; a hop to a worker thread and back ~100 µs. So
        # that one read runs on the event loop (WAL readers never wait for writers); a database's goes to a thread.
        if store.inline_reads:
            entry = store.get(key.exact)
        else:
            entry = await anyio.to_thread.run_sync(store.get, key.exact)
        if entry is None or entry.tenant != key.tenant or not self._live(entry, self._clock()):
            return None
        self._touch(entry.id)
        return CacheHit(entry=entry, tier="exact")

    def _place(self, prompt: str | None) -> tuple[Placement, BatchingEmbedder] | None:
        """The prompt's space and the embedder that makes its vectors; None: exact tier only."""
        if prompt is None or self._spaces is None:
            return None
        placement = self._spaces.place(prompt)
        embedder = None if placement is None else self._embedders.get(placement.model)
        return None if placement is None or embedder is None else (placement, embedder)

    async def _lookup_semantic(self, key: CacheKey, threshold: float, comparable: bool) -> Lookup:
        try:
            placed = self._place(key.prompt)
            if placed is None or key.prompt is None:
                return Lookup(hit=None)
            placement, embedder = placed
            # The search runs on the model thread right after the forward pass: one thread hop, not two.
            found = await embedder.embed_then(key.prompt, lambda v: self._judged(
                key, comparable, *self._nearest(key, placement, v, threshold)))
            if found is None:
                return Lookup(hit=None)
            vector, (hit, rejected, compare) = found
        except Exception:
            log.exception("semantic lookup failed; forwarding uncached")
            return Lookup(hit=None)
        if hit is not None:
            self._touch(hit.entry.id)
            self._spawn(self._write(self._alias, key.exact, hit.entry.id), write=True)
        return Lookup(hit=hit, embedding=Embedding(placement.space, vector), rejected=rejected, compare=compare)

    @contextlib.asynccontextmanager
    async def replica_flight(self, key: CacheKey, *, threshold: float | None = None) -> AsyncIterator[CacheHit | None]:
        """Single flight across replicas sharing a store: hold the store's lock on the request while it is
        forwarded. If another replica holds it, wait (at most `flight_wait`) and yield the answer it stored;
        None means: forward it. A lock that cannot be taken (database down) never holds a request up."""
        lock = None if self._store is None else self._store.flight_lock
        if lock is None:
            yield None
            return
        held, waited = False, False
        deadline = time.monotonic() + self.policy.flight_wait
        try:
            while not held:
                try:
                    held = await anyio.to_thread.run_sync(lock.try_lock, key.exact)
                except Exception:
                    log.warning("single-flight lock unavailable; forwarding", exc_info=True)
                    break
                if not held and time.monotonic() >= deadline:
                    log.info("another replica is still answering an identical request; forwarding too")
                    break
                if not held:
                    waited = True
                    await anyio.sleep(0.02)
            lookup = await self.lookup(key, threshold=threshold) if waited else None
            yield None if lookup is None else lookup.hit
        finally:
            if held:
                with contextlib.suppress(Exception):
                    await anyio.to_thread.run_sync(lock.unlock, key.exact)

    async def embed(self, key: CacheKey) -> Embedding | None:
        """The prompt's vector for storing without a lookup (Cache-Control: no-cache); never raises."""
        try:
            placed = self._place(key.prompt)
            if placed is None or key.prompt is None:
                return None
            vector = await placed[1].embed(key.prompt)
        except Exception:
            log.exception("embedding failed; the entry will be stored for exact lookups only")
            return None
        return None if vector is None else Embedding(placed[0].space, vector)

    def _nearest(self, key: CacheKey, placement: Placement, vector: Vector,
                 threshold: float) -> tuple[CacheHit | None, Verdict | None]:
        """The nearest live entry of the scope and space at or above the threshold that the verifier
        accepts, or the verifier's reason for rejecting the nearest one."""
        assert self._store is not None
        found = self._store.nearest(key.scope, placement.space, vector, self.policy.top_k, min_similarity=threshold)
        now = self._clock()
        live = [(entry, similarity) for entry, similarity in found
                if self._matches(entry, key, now) and entry.space == placement.space]
        if not live:
            return None, None
        verifier = self._verifiers.get(placement.model)
        if verifier is None or key.prompt is None:
            entry, similarity = live[0]
            return CacheHit(entry=entry, tier="semantic", similarity=similarity), None
        return self._verified(verifier, key.prompt, placement.language, vector, live)

    def _verified(self, verifier: Verifier, prompt: str, language: str, vector: Vector,
                  live: list[tuple[CacheEntry, float]]) -> tuple[CacheHit | None, Verdict | None]:
        usable = [(entry, similarity, entry.vector) for entry, similarity in live if entry.vector is not None]
        candidates = [Candidate(facts=self._facts(entry.prompt or "", language), vector=stored, similarity=similarity)
                      for entry, similarity, stored in usable]
        chosen, verdicts = verifier.choose(self._facts(prompt, language), vector, candidates)
        for (entry, similarity, _), verdict in zip(usable, verdicts, strict=True):
            log.debug("semantic candidate %d (similarity %.4f) %s", entry.id, similarity, verdict.header())
        if chosen is None:
            return None, verdicts[0] if verdicts else None
        entry, similarity, _ = usable[chosen]
        return CacheHit(entry=entry, tier="semantic", similarity=similarity, verdict=verdicts[chosen]), None

    def _judged(self, key: CacheKey, comparable: bool, hit: CacheHit | None,
                rejected: Verdict | None) -> tuple[CacheHit | None, Verdict | None, AuditPlan | None]:
        """What audits learned, applied to the hit the verifier chose: served, audited, or refused (and then
        compared for free when the request is reproducible). See semproxy.cache.learning."""
        if hit is None or hit.similarity is None:
            return hit, rejected, None
        score = hit.verdict.score if hit.verdict is not None else hit.similarity
        record = self.learner.record(key.scope) if self.policy.learn else None
        refusal = None if record is None else _refusal(record, hit.entry, score)
        if refusal is not None:
            free = AuditPlan(entry=hit.entry, score=score, similarity=hit.similarity, probability=0.0)
            return None, refusal, free if comparable else None
        if comparable and self.policy.audit_rate > 0:
            chance = (self.policy.audit_rate if record is None
                      else record.audit_probability(self.policy.audit_rate))
            if self._draw() < chance:
                return None, None, AuditPlan(entry=hit.entry, score=score, similarity=hit.similarity,
                                             probability=chance)
        return hit, None, None

    async def observe(self, key: CacheKey, compared: AuditPlan, *, wrong: bool, asked_at: float) -> None:
        """Keep what comparing a candidate's answer with the fresh one found; never raises."""
        if self._store is None:
            return
        observation = Observation(tenant=key.tenant, scope=key.scope, entry_id=compared.entry.id,
                                  score=compared.score, wrong=wrong, at=asked_at)
        try:
            await self._write(self._store.record, observation)
        except Exception:
            log.exception("storing an audit's outcome failed; the answer was still delivered")
        self.learner.forget(key.scope)

    def _history(self, scope: str, limit: int) -> History:
        return [] if self._store is None else self._store.history(scope, limit)

    def _matches(self, entry: CacheEntry, key: CacheKey, now: float) -> bool:
        # The search is per scope already; checking again costs nothing and guards tenant isolation.
        return entry.scope == key.scope and entry.tenant == key.tenant and self._live(entry, now)

    def _live(self, entry: CacheEntry, now: float) -> bool:
        """Not expired, and not older than the retention (entries stored before it was set or lowered)."""
        max_age = self.policy.max_age_seconds
        return not entry.expired(now) and (max_age <= 0 or entry.created_at > now - max_age)

    def _born_after(self) -> float | None:
        """Entries created before this are past the retention."""
        max_age = self.policy.max_age_seconds
        return self._clock() - max_age if max_age > 0 else None

    def _lifetime(self, ttl: int) -> int:
        """A TTL within the retention (0, "never expires", becomes the retention)."""
        max_age = int(self.policy.max_age_seconds)
        return ttl if max_age <= 0 else (max_age if ttl <= 0 else min(ttl, max_age))

    # ---------------------------------------------------------------- writes

    async def put(self, key: CacheKey, response: bytes, *, embedding: Embedding | None,
                  ttl_seconds: int | None, asked_at: float | None = None) -> bool:
        """Store an upstream answer durably; True once it is committed (or dropped because its tenant was
        erased after `asked_at`, when the request arrived). Never raises."""
        if self._store is None:
            return False
        ttl = self._lifetime(self.policy.ttl_seconds if ttl_seconds is None else ttl_seconds)
        if embedding is not None and self.semantic_ready:
            entry = NewEntry(key=key, response=response, vector=embedding.vector, ttl_seconds=ttl,
                             space=embedding.space, asked_at=asked_at)
        else:
            entry = NewEntry(key=key, response=response, vector=None, ttl_seconds=ttl, space=self._no_space(key),
                             asked_at=asked_at)
        try:
            await self._write(self._put, entry)
        except Exception:
            log.exception("storing a cache entry failed; the answer was still delivered")
            return False
        return True

    async def _write(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run a write in a worker thread; writes run one at a time."""
        return await anyio.to_thread.run_sync(function, *args, limiter=self._writer)

    def _put(self, entry: NewEntry) -> None:
        assert self._store is not None
        replaced = self._store.put(entry, now=self._clock())
        if replaced is None:  # the tenant was erased while the request was upstream
            return
        self._count += 1 - replaced
        if self._count > self.policy.max_entries:
            self._sweep()

    def _no_space(self, key: CacheKey) -> str | None:
        """The space of an entry stored without a vector: "" if its prompt has none (exact hits only),
        None if it should be embedded in the background (the model was not ready, or embedding failed)."""
        try:
            unplaced = self.semantic_ready and (key.prompt is None or self._place(key.prompt) is None)
        except Exception:  # a broken language detector: let the background pass try again
            return None
        return "" if unplaced else None

    def _alias(self, exact_key: str, entry_id: int) -> None:
        assert self._store is not None
        self._store.alias(exact_key, entry_id)

    def _touch(self, entry_id: int) -> None:
        with self._touch_lock:
            self._touched[entry_id] = self._clock()

    # ---------------------------------------------------------------- housekeeping

    async def _maintain(self) -> None:
        while True:
            await anyio.sleep(self.policy.maintenance_seconds)
            if self._store is None:
                await self._reopen()
                continue
            try:
                await self.housekeeping()
            except Exception:
                log.exception("cache housekeeping failed; retrying later")

    async def housekeeping(self) -> None:
        """Flush LRU times, drop expired entries, resync the count, let the store maintain its vector search,
        embed entries that still lack a vector in the current space."""
        await self._write(self._sweep)
        if self.semantic_ready and self._store is not None:
            await anyio.to_thread.run_sync(self._store.maintain)
            await self.relocate()

    async def relocate(self) -> int:
        """Re-embed, in the background, the entries whose vectors are missing or were made by another model
        or route (a data dir from before spaces, or a changed `embedding_model`): until then they are served
        by the exact tier only, never compared across models. Returns how many entries moved."""
        store, spaces = self._store, self._spaces
        if self._relocating or store is None or spaces is None:
            return 0
        self._relocating, moved, after = True, 0, 0
        try:
            while batch := await anyio.to_thread.run_sync(functools.partial(
                    store.unplaced, spaces.is_current, after=after, limit=self.policy.relocate_batch)):
                after = batch[-1][0]
                moves = await self._relocations(batch)
                await self._write(store.relocate, moves)
                moved += len(moves)
                self.relocated += len(moves)
        finally:
            self._relocating = False
        if moved:
            log.info("re-embedded %d cache entries into their current spaces", moved)
        return moved

    async def _relocations(self, batch: list[Unplaced]) -> list[Relocation]:
        """New places for (id, prompt, old space) rows; rows whose embedding failed are left for a later pass."""
        async def one(entry_id: int, prompt: str) -> Relocation:
            placed = self._place(prompt)
            vector = None if placed is None else await placed[1].embed(prompt)
            if placed is None or vector is None:
                return Relocation(entry_id, "", None)
            return Relocation(entry_id, placed[0].space, vector)

        outcomes = await asyncio.gather(*(one(i, prompt) for i, prompt, _ in batch), return_exceptions=True)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            log.warning("re-embedding %d cache entries failed (%s); they stay exact-only for now",
                        len(failed), failed[0])
        return [o for o in outcomes if isinstance(o, Relocation)]

    def _sweep(self) -> None:
        """LRU times, expiry and eviction; the count is resynced (a shared store counts other replicas' too)."""
        assert self._store is not None
        with self._touch_lock:
            touched, self._touched = self._touched, {}
        try:
            self._count = self._store.sweep(now=self._clock(), keep=self.policy.max_entries, used=touched,
                                            born_after=self._born_after())
        except BaseException:
            with self._touch_lock:  # keep the LRU times for the next sweep
                self._touched = {**touched, **self._touched}
            raise


def _refusal(record: ScopeRecord, entry: CacheEntry, score: float) -> Verdict | None:
    """Why what comparisons learned refuses this candidate, if it does: its entry, or its scope's bar."""
    if entry.wrong_above is not None and score <= entry.wrong_above:
        return Verdict(accepted=False, score=score, reason=f"proved wrong: this answer was not the answer to a "
                                                           f"prompt scored {entry.wrong_above:.3f}")
    if score > record.bar:
        return None
    return Verdict(accepted=False, score=score,
                   reason=f"learned: this scope's comparisons found wrong hits up to score {record.bar:.3f}")
