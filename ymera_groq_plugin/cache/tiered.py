"""`TieredCache`: the tiers in order, promotion, write-behind, in-flight coalescing, and the
LangChain `BaseCache` face; see the package docstring for the threads and loops."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, TypeVar

from langchain_core.caches import RETURN_VAL_TYPE, BaseCache

from .._portal import get_portal
from ..batching import DelayedBatcher
from ..clock import Clock
from ..errors import ConfigurationError
from ..types import ChatRequest, ChatResult
from . import codec
from .base import CacheStore
from .keys import UncacheableRequestError, langchain_key, request_key
from .lru import LRUCache
from .stats import CircuitBreaker, TierStats, hit_rate

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from ..config import YmeraSettings

__all__ = ["TieredCache"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TTL: Mapping[str, float] = {"l1": 300.0, "l2": 3600.0, "l3": 7 * 86400.0}
"""Seconds an entry lives in each tier unless told otherwise (`YmeraSettings.cache_l*_ttl`)."""

_NO_ENTRIES: dict[Any, Any] = {}
_KEY_MEMO_SIZE = 64
# Write-behind batches: the first answer waits this long for others, so that the caller it
# was handed to gets the interpreter first and one SQLite transaction (one thread hop)
# carries many answers (`benchmarks/bench_engine.py`: a per-answer write cost a cache miss
# about 0.3 ms). Bounded so another process sees the answer in L2/L3 soon.
_WRITE_BEHIND_DELAY = 0.02
_WRITE_BEHIND_MAX = 256


class _Unset:
    """Marks a tier argument not given (`None` means "no such tier")."""

    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()


@dataclasses.dataclass(slots=True)
class _Built:
    l1: LRUCache[Any, Any] | None
    l2: CacheStore | None
    l3: CacheStore | None
    namespace: str
    ttl: dict[str, float]
    sampled: bool
    enabled: bool


def _tiers_from(
    settings: YmeraSettings | None,
    redis_url: str | None,
    data_dir: str | os.PathLike[str] | None,
    namespace: str | None,
    sampled: bool | None,
    enabled: bool | None,
    clock: Clock,
) -> _Built:
    """The tiers a configuration describes: L1 always, L2 with a Redis URL, L3 in the data
    directory; none with `cache_enabled=False`."""
    from ..config import YmeraSettings

    overrides: dict[str, Any] = {
        name: value
        for name, value in (
            ("redis_url", redis_url),
            ("data_dir", data_dir),
            ("namespace", namespace),
            ("cache_sampled", sampled),
            ("cache_enabled", enabled),
        )
        if value is not None
    }
    if settings is None:
        settings = YmeraSettings(**overrides)
    elif overrides:
        data = settings.model_dump()
        data["api_keys"] = settings.api_keys
        settings = YmeraSettings(**{**data, **overrides})
    ttl = {"l1": settings.cache_l1_ttl, "l2": settings.cache_l2_ttl, "l3": settings.cache_l3_ttl}
    if not settings.cache_enabled:
        return _Built(None, None, None, settings.namespace, ttl, settings.cache_sampled, False)
    from ..storage.sqlite_cache import SqliteCacheStore

    l2: CacheStore | None = None
    if settings.redis_url:
        from ..storage.redis_cache import RedisCacheStore

        l2 = RedisCacheStore.from_url(
            settings.redis_url, max_entries=settings.cache_l2_max_entries, clock=clock
        )
    return _Built(
        l1=LRUCache(settings.cache_l1_max_entries, settings.cache_l1_ttl, clock=clock),
        l2=l2,
        l3=SqliteCacheStore(
            settings.data_dir / "cache.db", max_entries=settings.cache_l3_max_entries, clock=clock
        ),
        namespace=settings.namespace,
        ttl=ttl,
        sampled=settings.cache_sampled,
        enabled=True,
    )


class _LeaderCancelled(Exception):
    """The leader of an in-flight call was cancelled: its followers try again themselves."""


@dataclasses.dataclass(slots=True)
class _Tier:
    name: str
    store: CacheStore
    breaker: CircuitBreaker
    stats: TierStats
    size: int | None = None


class TieredCache(BaseCache):
    """L1 → L2 → L3 response cache for the engine, and a LangChain `BaseCache`.

    Built like LangChain's own caches: `TieredCache()` reads the configuration from the
    environment (`YmeraSettings()`: L2 on `YMERA_REDIS_URL` when set, L3 in
    `YMERA_DATA_DIR`), `TieredCache(redis_url=..., data_dir=..., namespace=...)` overrides
    those, and `set_llm_cache(TieredCache())` caches every LangChain model's answers. Passing
    `l1`, `l2` or `l3` instead assembles the tiers given (the ones not given are absent).

    Args:
        l1: The in-process tier, or `None` for none.
        l2: The shared tier (Redis), or `None` (embedded mode).
        l3: The persistent tier (SQLite), or `None`.
        redis_url: Build L2 on this Redis (only without explicit tiers).
        data_dir: Build L3 in `data_dir / "cache.db"` (only without explicit tiers).
        settings: Build every tier from this configuration (default: `YmeraSettings()` with
            `redis_url`, `data_dir`, `namespace` and `cache_sampled` applied).
        namespace: Tenant namespace; a request's own `namespace` wins.
        ttl: Seconds per tier, e.g. `{"l1": 300, "l2": 3600, "l3": 604800}`; missing tiers
            use the L1 cache's own TTL and `DEFAULT_TTL`.
        cache_sampled: Also cache requests that sample (temperature > 0 without a seed).
        clock: Wall clock for expiry and the circuit breakers.
        enabled: `False` makes a cache that never hits and never stores.
        retry_after: Seconds a failing lower tier is skipped before it is tried again
            (doubling per consecutive failure, up to 60 s).
    """

    def __init__(
        self,
        *,
        l1: LRUCache[Any, Any] | _Unset | None = _UNSET,
        l2: CacheStore | _Unset | None = _UNSET,
        l3: CacheStore | _Unset | None = _UNSET,
        redis_url: str | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        settings: YmeraSettings | None = None,
        namespace: str | None = None,
        ttl: Mapping[str, float] | None = None,
        cache_sampled: bool | None = None,
        clock: Clock = time.time,
        enabled: bool | None = None,
        retry_after: float = 5.0,
    ) -> None:
        if isinstance(l1, _Unset) and isinstance(l2, _Unset) and isinstance(l3, _Unset):
            built = _tiers_from(
                settings, redis_url, data_dir, namespace, cache_sampled, enabled, clock
            )
            l1, l2, l3 = built.l1, built.l2, built.l3
            namespace, cache_sampled, enabled = built.namespace, built.sampled, built.enabled
            ttl = {**built.ttl, **(ttl or {})}
        elif redis_url is not None or data_dir is not None or settings is not None:
            raise ConfigurationError(
                "TieredCache takes either tiers (l1, l2, l3) or what to build them from "
                "(redis_url, data_dir, settings), not both",
                setting="redis_url" if redis_url is not None else "data_dir",
            )
        l1 = None if isinstance(l1, _Unset) else l1
        l2 = None if isinstance(l2, _Unset) else l2
        l3 = None if isinstance(l3, _Unset) else l3
        namespace = "default" if namespace is None else namespace
        cache_sampled = bool(cache_sampled)
        enabled = True if enabled is None else enabled
        self.namespace = namespace
        self.cache_sampled = cache_sampled
        self.enabled = enabled
        self._clock = clock
        self._l1 = l1
        self.ttl: dict[str, float] = dict(DEFAULT_TTL)
        if l1 is not None and l1.ttl is not None:
            self.ttl["l1"] = l1.ttl
        self.ttl.update(ttl or {})
        self._lower: list[_Tier] = [
            _Tier(name, store, CircuitBreaker(clock, retry_after=retry_after), TierStats())
            for name, store in (("l2", l2), ("l3", l3))
            if store is not None
        ]
        self._l1_stats = TierStats()
        self._total = TierStats()
        self._closed = False
        self._inflight: dict[str, concurrent.futures.Future[ChatResult]] = {}
        self._inflight_lock = threading.Lock()
        self._coalesced = {"leaders": 0, "followers": 0}
        self._memo = threading.local()
        self._background: set[asyncio.Task[Any]] = set()
        self._writes: DelayedBatcher[tuple[str, str, ChatResult, float, float]] = DelayedBatcher(
            self._write_behind,
            delay=_WRITE_BEHIND_DELAY,
            max_batch=_WRITE_BEHIND_MAX,
            name="cache write-behind",
        )
        self.write_behind = False
        """Store to L2/L3 in the background when called on the portal (the engine sets it)."""
        # The LangChain `lookup` fast path binds these once (see `LRUCache`).
        self._probe: Callable[[Any], Any] = l1.probe if l1 is not None else _NO_ENTRIES.get
        self._timer = l1.timer if l1 is not None else None

    @classmethod
    def from_settings(cls, settings: YmeraSettings, *, clock: Clock = time.time) -> TieredCache:
        """The cache a configuration describes.

        L1 always; L2 when `settings.redis_url` is set; L3 in `settings.data_dir / "cache.db"`.
        With `cache_enabled=False`, a cache that never hits and never stores.
        """
        return cls(settings=settings, clock=clock)

    def __repr__(self) -> str:
        tiers = ["l1"] if self._l1 is not None else []
        tiers += [f"{t.name}:{t.store.name}" for t in self._lower]
        state = "" if self.enabled else " disabled"
        return f"<TieredCache {'+'.join(tiers) or 'no tiers'} namespace={self.namespace}{state}>"

    # -- keys and policy --------------------------------------------------------------------

    def key_for(self, request: ChatRequest) -> str:
        """The request's cache key (SHA-256 hex of its canonical form; see `cache.keys`).

        Raises:
            UncacheableRequestError: The request holds a secret or an opaque object.
        """
        # A few recent keys per thread, by identity: the engine asks should_cache, get_l1,
        # aget_result, coalesce and aput_result about the same request object, and hashing
        # it once is enough. The memo holds the request, so its id cannot be reused meanwhile.
        memo: dict[int, tuple[ChatRequest, str]] | None = getattr(self._memo, "keys", None)
        if memo is None:
            memo = self._memo.keys = {}
        hit = memo.get(id(request))
        if hit is not None and hit[0] is request:
            return hit[1]
        key = request_key(request, namespace=self.namespace)
        if len(memo) >= _KEY_MEMO_SIZE:
            memo.clear()
        memo[id(request)] = (request, key)
        return key

    def _policy_allows(self, request: ChatRequest) -> bool:
        if not self.enabled or request.cache is False:
            return False
        return request.cache is True or self.cache_sampled or not request.samples

    def should_cache(self, request: ChatRequest) -> bool:
        """Whether the request may be answered from, and stored in, the cache.

        No when the cache is disabled, the request says `cache=False`, it samples
        (temperature > 0 without a seed) and neither it (`cache=True`) nor the settings
        (`cache_sampled`) opt in, or it cannot be keyed safely.
        """
        return self._key_or_none(request) is not None

    def _key_or_none(self, request: ChatRequest) -> str | None:
        if not self._policy_allows(request):
            return None
        try:
            return self.key_for(request)
        except UncacheableRequestError:
            return None

    def _ns(self, request: ChatRequest) -> str:
        return request.namespace or self.namespace

    # -- L1 -------------------------------------------------------------------------------

    def _l1_probe(self, key: Any) -> Any:
        """Timed L1 read: the value or `None`; counts a hit (in the entry) but not a miss."""
        l1 = self._l1
        if l1 is None:
            return None
        started = time.perf_counter()
        value = l1.get(key)
        self._l1_stats.record(None, time.perf_counter() - started)
        return value

    def _l1_missed(self) -> bool:
        """Count an L1 miss; whether lower tiers are there to ask next (else a total miss)."""
        if self._l1 is not None:
            self._l1_stats.record(False)
        if self._lower and not self._closed:
            return True
        self._total.record(False)
        return False

    def _l1_set(self, key: Any, value: Any, expires_at: float) -> None:
        if self._l1 is not None:
            self._l1.set(key, value, min(self.ttl["l1"], expires_at - self._clock()))

    def get_l1(self, request: ChatRequest) -> ChatResult | None:
        """The L1 answer for a request, in the caller's thread (no I/O, no await).

        A miss here is not counted: the lookup that follows it (`aget_result`) counts the
        request once, whichever tier answers.
        """
        key = self._key_or_none(request)
        if key is None:
            return None
        value = self._l1_probe(key)
        if value is None:
            return None
        return self._as_hit(value, request)

    @staticmethod
    def _as_hit(value: ChatResult, request: ChatRequest) -> ChatResult:
        return dataclasses.replace(value, request_id=request.request_id)

    # -- the engine's API -----------------------------------------------------------------

    async def aget_result(self, request: ChatRequest) -> ChatResult | None:
        """Look a request up in L1, then L2, then L3; promote a hit into the faster tiers.

        Returns:
            The cached answer with `cache_tier` set to the tier that had it, or `None`.
        """
        key = self._key_or_none(request)
        if key is None:
            return None
        value = self._l1_probe(key)
        if value is not None:
            return self._as_hit(value, request)
        if not self._l1_missed():
            return None
        found = await self._arun(self._lower_get(self._ns(request), key, "chat", key))
        if found is None:
            return None
        result: ChatResult = found
        return self._as_hit(result, request)

    async def aput_result(self, request: ChatRequest, result: ChatResult) -> None:
        """Store an answer in every tier (if the policy allows and the answer is complete).

        Rate limits, the plan, latency and the request id are not stored; nor is an answer
        without a finish reason (a broken stream) or one that came from the cache. Tier
        failures are logged, never raised.
        """
        key = self._key_or_none(request)
        if key is None or not codec.storable(result):
            return
        now = self._clock()
        expires_at = now + self._lifetime()
        cached = dataclasses.replace(
            result, cache_tier="l1", rate_limits=None, plan=None, latency_ms=0.0, request_id=None
        )
        self._l1_set(key, cached, expires_at)
        if not self._lower or self._closed:
            return
        if self.write_behind and get_portal().in_portal():
            # The answer is already in L1 for this process; Redis and SQLite follow off the
            # request's path, in batches (flushed by `aflush()` and `aclose()`).
            self._writes.add((self._ns(request), key, result, now, expires_at))
            return
        text = self._encode(result, key, now, expires_at)
        if text is not None:
            await self._arun(self._lower_set_many([(self._ns(request), key, text, expires_at)]))

    @staticmethod
    def _encode(result: ChatResult, key: str, now: float, expires_at: float) -> str | None:
        try:
            return codec.encode_result(result, key=key, stored_at=now, expires_at=expires_at)
        except (TypeError, ValueError) as exc:
            logger.warning("Keeping an answer in L1 only (not JSON): %s", exc)
            return None

    async def _write_behind(self, batch: list[tuple[str, str, ChatResult, float, float]]) -> None:
        """Store one batch of pending answers in the lower tiers (on the portal)."""
        items = [
            (ns, key, text, expires_at)
            for ns, key, result, now, expires_at in batch
            if (text := self._encode(result, key, now, expires_at)) is not None
        ]
        await self._lower_set_many(items)

    async def aflush(self) -> None:
        """Wait for write-behind stores to finish (from any event loop)."""
        if not get_portal().in_portal():
            await self._arun(self.aflush())
            return
        await self._writes.flush()
        if self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def ainvalidate(self, request: ChatRequest) -> None:
        """Remove a request's answer from every tier."""
        try:
            key = self.key_for(request)
        except UncacheableRequestError:
            return
        if self._l1 is not None:
            self._l1.delete(key)
        if self._lower and not self._closed:
            await self._arun(self._lower_delete(self._ns(request), key))

    async def coalesce(
        self, request: ChatRequest, call: Callable[[], Awaitable[ChatResult]]
    ) -> ChatResult:
        """Make one upstream call for identical concurrent requests.

        The first request with a key (the leader) runs `call()`, stores the answer
        (`aput_result`) and hands it to every request with the same key that arrived
        meanwhile (followers, on any thread or loop); if `call()` raises, every follower gets
        the same exception. Followers get the leader's answer with their own `request_id`.

        Cancellation: a cancelled follower just stops waiting. A cancelled leader raises
        `CancelledError` itself, and its followers do not hang and do not see the
        cancellation: they start over, so one of them becomes the new leader and calls
        upstream. A request the policy does not cache is not coalesced either: it simply
        runs `call()`.
        """
        key = self._key_or_none(request)
        if key is None:
            return await call()
        while True:
            with self._inflight_lock:
                flight = self._inflight.get(key)
                leader = flight is None
                if flight is None:
                    flight = self._inflight[key] = concurrent.futures.Future()
                self._coalesced["leaders" if leader else "followers"] += 1
            if leader:
                return await self._lead(request, key, flight, call)
            try:
                result = await _wait(flight)
            except _LeaderCancelled:
                continue
            return dataclasses.replace(result, request_id=request.request_id)

    async def _lead(
        self,
        request: ChatRequest,
        key: str,
        flight: concurrent.futures.Future[ChatResult],
        call: Callable[[], Awaitable[ChatResult]],
    ) -> ChatResult:
        def land() -> None:
            with self._inflight_lock:
                if self._inflight.get(key) is flight:
                    del self._inflight[key]

        try:
            # The answer may have landed in L1 between the caller's lookup and now.
            hit = self._l1_probe(key)
            if hit is not None:
                result: ChatResult = self._as_hit(hit, request)
            else:
                result = await call()
                # Store before landing, so a request arriving after the flight is gone finds
                # the answer in the cache instead of calling upstream again.
                try:
                    await self.aput_result(request, result)
                except Exception:  # storing is best effort; the caller has its answer
                    logger.exception("Storing a coalesced answer failed")
        except asyncio.CancelledError:
            land()
            flight.set_exception(_LeaderCancelled())
            raise
        except BaseException as exc:
            land()
            flight.set_exception(exc)
            raise
        land()
        flight.set_result(result)
        return result

    def replay_stream(self, result: ChatResult) -> list[dict[str, Any]]:
        """A (cached) answer as the chunk dicts Groq would stream for it."""
        return codec.replay_stream(result, created=int(self._clock()))

    async def arecord_stream(
        self, request: ChatRequest, chunks: AsyncIterable[Mapping[str, Any]]
    ) -> AsyncIterator[Mapping[str, Any]]:
        """Pass a Groq chunk stream through, storing the answer once it completed.

        Nothing is stored if the stream raises, is closed early, carries an error event or
        ends without a finish reason.
        """
        seen: list[Mapping[str, Any]] = []
        async for chunk in chunks:
            seen.append(chunk)
            yield chunk
        result = codec.assemble_stream(seen)
        if result is not None:
            await self.aput_result(request, result)

    # -- lower tiers (always on the portal loop) -------------------------------------------

    def _lifetime(self) -> float:
        names = ["l1", *(t.name for t in self._lower)]
        return max(self.ttl[n] for n in names)

    async def _arun(self, coro: Coroutine[Any, Any, T]) -> T:
        return await get_portal().arun(coro)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T | None:
        """Run lower-tier work from sync code; on the portal thread itself, schedule it."""
        portal = get_portal()
        if portal.in_portal():
            # Blocking here would deadlock the loop; let the work run after this callback.
            task = portal.loop.create_task(coro)
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return None
        return portal.run(coro)

    def _failed(self, tier: _Tier, operation: str, exc: BaseException) -> None:
        tier.stats.bump("errors")
        if tier.breaker.failure():
            logger.warning(
                "Cache tier %s (%s) failed on %s; skipping it for %.0f s: %s",
                tier.name,
                tier.store.name,
                operation,
                tier.breaker.retry_after,
                exc,
            )

    def _succeeded(self, tier: _Tier) -> None:
        if tier.breaker.success():
            logger.info("Cache tier %s (%s) is back", tier.name, tier.store.name)

    async def _lower_get(self, namespace: str, key: str, kind: str, l1_key: Any) -> Any:
        """L2 then L3; a hit is decoded, promoted (L3 → L2, and into L1) and returned."""
        for i, tier in enumerate(self._lower):
            if not tier.breaker.allow():
                tier.stats.bump("skipped")
                continue
            started = time.perf_counter()
            try:
                text = await tier.store.get(namespace, key)
            except Exception as exc:
                self._failed(tier, "get", exc)
                continue
            self._succeeded(tier)
            if text is None:
                tier.stats.record(False, time.perf_counter() - started)
                continue
            value: Any
            try:
                if kind == "chat":
                    value, env = codec.decode_result(text, key=key, tier=tier.name)
                    l1_value: Any = dataclasses.replace(value, cache_tier="l1")
                else:
                    value, env = codec.decode_generations(text, key=key)
                    l1_value = value
            except codec.CorruptEntryError as exc:
                tier.stats.record(False, time.perf_counter() - started)
                tier.stats.bump("corrupt")
                logger.warning(
                    "Removing an unreadable %s cache entry (%s): %s", tier.name, key[:12], exc
                )
                await self._guarded(tier, "delete", tier.store.delete(namespace, key))
                continue
            now = self._clock()
            if env.expires_at <= now:
                tier.stats.record(False, time.perf_counter() - started)
                await self._guarded(tier, "delete", tier.store.delete(namespace, key))
                continue
            tier.stats.record(True, time.perf_counter() - started)
            self._total.record(True)
            for faster in self._lower[:i]:
                ttl = min(self.ttl[faster.name], env.expires_at - now)
                if ttl > 0 and faster.breaker.allow():
                    await self._guarded(faster, "set", faster.store.set(namespace, key, text, ttl))
            self._l1_set(l1_key, l1_value, env.expires_at)
            return value
        self._total.record(False)
        return None

    async def _guarded(self, tier: _Tier, operation: str, coro: Awaitable[Any]) -> None:
        try:
            await coro
        except Exception as exc:
            self._failed(tier, operation, exc)
        else:
            self._succeeded(tier)

    async def _lower_set_many(self, items: Sequence[tuple[str, str, str, float]]) -> None:
        """Write `(namespace, key, text, expires_at)` items to every lower tier.

        A store with `set_many` gets the batch in one call (SQLite: one transaction);
        otherwise its `set`s run concurrently.
        """
        now = self._clock()
        writes = []
        for tier in self._lower:
            rows = [
                (ns, key, text, ttl)
                for ns, key, text, expires_at in items
                if (ttl := min(self.ttl[tier.name], expires_at - now)) > 0
            ]
            if not rows:
                continue
            if not tier.breaker.allow():
                tier.stats.bump("skipped", len(rows))
                continue
            set_many = getattr(tier.store, "set_many", None)
            if set_many is not None:
                writes.append(self._guarded(tier, "set", set_many(rows)))
            else:
                writes.extend(
                    self._guarded(tier, "set", tier.store.set(ns, key, text, ttl))
                    for ns, key, text, ttl in rows
                )
        await asyncio.gather(*writes)

    async def _lower_delete(self, namespace: str, key: str) -> None:
        await asyncio.gather(
            *(self._guarded(t, "delete", t.store.delete(namespace, key)) for t in self._lower)
        )

    async def _lower_clear(self, namespace: str) -> None:
        await asyncio.gather(
            *(self._guarded(t, "clear", t.store.clear(namespace)) for t in self._lower)
        )

    # -- statistics -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Per-tier and total statistics, shaped for the monitoring snapshot.

        `{"l1": {...}, "l2": {...}, "l3": {...}, "total": {"hits", "misses", "hit_rate"},
        "coalesced": {"leaders", "followers"}}`; each tier has `enabled`, `hits`, `misses`,
        `hit_rate`, `mean_lookup_ms`, `size`, `errors`, `skipped` and `corrupt`. A tier's
        misses are lookups that reached it and missed. L1 latency is measured on every L1
        probe except the LangChain `lookup` hit path, which is counted but not timed (timing
        it would double its cost). L2/L3 `size` is as of the last `astats()` (`None` before),
        since reading it is I/O.
        """
        l1 = self._l1
        out: dict[str, Any] = {
            "l1": self._l1_stats.snapshot(
                enabled=l1 is not None,
                size=len(l1) if l1 is not None else 0,
                hits=l1.hits if l1 is not None else 0,
            )
        }
        for name in ("l2", "l3"):
            tier = next((t for t in self._lower if t.name == name), None)
            if tier is None:
                out[name] = TierStats().snapshot(enabled=False, size=0)
            else:
                out[name] = tier.stats.snapshot(enabled=True, size=tier.size)
                out[name]["backend"] = tier.store.name
                out[name]["state"] = tier.breaker.state
        hits = out["l1"]["hits"] + out["l2"]["hits"] + out["l3"]["hits"]
        misses = self._total.misses
        out["total"] = {"hits": hits, "misses": misses, "hit_rate": hit_rate(hits, misses)}
        with self._inflight_lock:
            out["coalesced"] = dict(self._coalesced)
        return out

    async def astats(self) -> dict[str, Any]:
        """`stats()` with the L2/L3 sizes read now (skipping a tier whose breaker is open)."""
        if self._lower and not self._closed:
            await self._arun(self._refresh_sizes())
        return self.stats()

    async def _refresh_sizes(self) -> None:
        for tier in self._lower:
            if not tier.breaker.allow():
                continue
            try:
                tier.size = await tier.store.size(self.namespace)
            except Exception as exc:
                self._failed(tier, "size", exc)

    # -- LangChain BaseCache ----------------------------------------------------------------

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """LangChain lookup: L1 in the caller's thread, then L2/L3 through the portal."""
        # The hot path, kept as short as `InMemoryCache.lookup`: one probe, one comparison
        # with the coarse clock, one counter bump (see `LRUCache`).
        entry = self._probe((self.namespace, prompt, llm_string))
        if entry is not None and entry.expires_at > self._timer.now:  # type: ignore[union-attr]
            entry.hits += 1
            value: RETURN_VAL_TYPE = entry.value
            return value
        return self._lookup_lower(prompt, llm_string)

    def _lookup_lower(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        hit, lower = self._lc_start(prompt, llm_string)
        if lower is None:
            return hit
        found: RETURN_VAL_TYPE | None = self._run(lower)
        return found

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """LangChain async lookup (from any event loop)."""
        hit, lower = self._lc_start(prompt, llm_string)
        if lower is None:
            return hit
        found: RETURN_VAL_TYPE | None = await self._arun(lower)
        return found

    def _lc_start(
        self, prompt: str, llm_string: str
    ) -> tuple[RETURN_VAL_TYPE | None, Coroutine[Any, Any, Any] | None]:
        """The timed L1 probe of a LangChain lookup: (an L1 hit, or the lower-tier lookup to
        run next, or neither)."""
        l1_key = (self.namespace, prompt, llm_string)
        # On the sync path this probes a second time, timed: it measures L1 for the
        # statistics, and picks up an entry another thread promoted since the fast path.
        value: RETURN_VAL_TYPE | None = self._l1_probe(l1_key)
        if value is not None or not self.enabled or not self._l1_missed():
            return value, None
        key = langchain_key(prompt, llm_string, namespace=self.namespace)
        return None, self._lower_get(self.namespace, key, "langchain", l1_key)

    def _prepare_update(
        self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE
    ) -> tuple[str, str, float] | None:
        """Store in L1; return what the lower tiers need (key, text, expiry), if any."""
        if not self.enabled:
            return None
        generations = list(return_val)
        now = self._clock()
        expires_at = now + self._lifetime()
        self._l1_set((self.namespace, prompt, llm_string), generations, expires_at)
        if not self._lower or self._closed:
            return None
        key = langchain_key(prompt, llm_string, namespace=self.namespace)
        try:
            text = codec.encode_generations(
                generations, key=key, stored_at=now, expires_at=expires_at
            )
        except (TypeError, ValueError) as exc:
            logger.warning("Keeping a LangChain answer in L1 only (not JSON): %s", exc)
            return None
        return key, text, expires_at

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """LangChain update: write through every tier."""
        lower = self._prepare_update(prompt, llm_string, return_val)
        if lower is not None:
            self._run(self._lower_set_many([(self.namespace, *lower)]))

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """LangChain async update: write through every tier."""
        lower = self._prepare_update(prompt, llm_string, return_val)
        if lower is not None:
            await self._arun(self._lower_set_many([(self.namespace, *lower)]))

    def _start_clear(self, namespace: str | None) -> Coroutine[Any, Any, None] | None:
        if self._l1 is not None:
            self._l1.clear()
        if self._lower and not self._closed:
            return self._lower_clear(namespace or self.namespace)
        return None

    def clear(self, **kwargs: Any) -> None:
        """Empty L1 and this namespace in L2/L3 (`namespace=` picks another namespace)."""
        if (lower := self._start_clear(kwargs.get("namespace"))) is not None:
            self._run(lower)

    async def aclear(self, **kwargs: Any) -> None:
        """Async `clear`."""
        if (lower := self._start_clear(kwargs.get("namespace"))) is not None:
            await self._arun(lower)

    # -- lifecycle --------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the lower tiers' connections and threads (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._lower:
            await self._arun(self._aclose_lower())

    async def _aclose_lower(self) -> None:
        await self._writes.aclose()
        if self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        for tier in self._lower:
            try:
                await tier.store.aclose()
            except Exception as exc:
                logger.debug("Closing cache tier %s failed: %s", tier.name, exc)

    def close(self) -> None:
        """Sync `aclose` (not from the portal thread)."""
        if self._closed:
            return
        self._closed = True
        if self._lower:
            get_portal().run(self._aclose_lower())


async def _wait(flight: concurrent.futures.Future[T]) -> T:
    """Await a thread-safe future without letting this waiter's cancellation cancel it."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[T] = loop.create_future()

    def transfer(done: concurrent.futures.Future[T]) -> None:
        if waiter.done():
            return  # this follower was cancelled meanwhile
        exc = done.exception()
        if exc is not None:
            waiter.set_exception(exc)
        else:
            waiter.set_result(done.result())

    def on_done(done: concurrent.futures.Future[T]) -> None:
        with contextlib.suppress(RuntimeError):  # the follower's loop may be gone
            loop.call_soon_threadsafe(transfer, done)

    flight.add_done_callback(on_done)
    return await waiter
