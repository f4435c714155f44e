"""The three-tier cache as LiteLLM's response cache (`litellm.cache`, `cache_responses=True`).

LiteLLM's `Cache` computes its own keys (a hash of model, messages and every output-changing
parameter) and stores `{"timestamp": …, "response": "<ModelResponse JSON>"}` under them through
a `BaseCache` backend; `Cache(_backend=…)` accepts any backend. `TieredLiteLLMCache` is that
backend over a `TieredCache`'s tiers: L1 in-process (read in the caller's thread), L2 Redis and
L3 SQLite (always on the engine's portal loop), promotion on a hit, each tier's circuit breaker
honoured. Lower-tier values are the package's JSON envelopes (`cache.codec`, kind `"litellm"`),
never pickle.

LiteLLM 1.110's cache-hit path imports `fastapi` and `soundfile` (through
`litellm.proxy.pass_through_endpoints`): without them a hit raises `ModuleNotFoundError`
inside LiteLLM. Install them next to LiteLLM when caching through it.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from litellm.caching.base_cache import BaseCache
from litellm.caching.caching import Cache

from .._portal import get_portal
from ..cache import codec

if TYPE_CHECKING:
    from ..breaker import CircuitBreaker
    from ..cache import TieredCache
    from ..cache.base import CacheStore
    from ..cache.lru import LRUCache
    from ..engine import Engine

__all__ = ["TieredLiteLLMCache", "litellm_cache"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

KIND = "litellm"
"""The envelope kind of LiteLLM entries (distinct from `chat` and `langchain`)."""


class _Lower:
    """A lower tier as this adapter uses it."""

    __slots__ = ("breaker", "name", "store", "ttl")

    def __init__(self, name: str, store: CacheStore, breaker: CircuitBreaker, ttl: float) -> None:
        self.name = name
        self.store = store
        self.breaker = breaker
        self.ttl = ttl


def _tiers(cache: TieredCache) -> tuple[LRUCache[Any, Any] | None, list[_Lower]]:
    # TieredCache keeps its tiers private and offers no raw get/set by key; this is the one
    # place that reads them, until it grows a public accessor.
    l1: LRUCache[Any, Any] | None = cache._l1
    lower = [_Lower(t.name, t.store, t.breaker, cache.ttl[t.name]) for t in cache._lower]
    return l1, lower


class TieredLiteLLMCache(BaseCache):
    """A LiteLLM `BaseCache` over the package's three cache tiers.

    Args:
        cache: The tiered cache (usually `engine.cache`), shared with `ChatYmeraGroq`.
        namespace: Where entries live in L2/L3; default: the tiered cache's namespace.
        default_ttl: Seconds an entry lives when LiteLLM passes no `ttl` (capped by each
            tier's own TTL).
    """

    def __init__(
        self, cache: TieredCache, *, namespace: str | None = None, default_ttl: int = 3600
    ) -> None:
        super().__init__(default_ttl=default_ttl)
        self.tiered = cache
        self.namespace = namespace or cache.namespace
        self._clock = cache._clock
        self._l1, self._lower = _tiers(cache)
        self._l1_ttl = cache.ttl["l1"]
        self.hits = {"l1": 0, "l2": 0, "l3": 0}
        self.misses = 0

    def __repr__(self) -> str:
        tiers = (["l1"] if self._l1 is not None else []) + [t.name for t in self._lower]
        return f"<TieredLiteLLMCache {'+'.join(tiers)} namespace={self.namespace}>"

    def _l1_key(self, key: str) -> tuple[str, str, str]:
        return (KIND, self.namespace, key)

    def _store_key(self, key: str) -> str:
        return f"{KIND}:{key}"

    def _lifetime(self, kwargs: dict[str, Any]) -> float:
        ttl = self.get_ttl(**kwargs)
        return float(ttl) if ttl is not None and ttl > 0 else float(self.default_ttl)

    # -- lower tiers (on the portal) ------------------------------------------------------

    async def _get_lower(self, key: str) -> Any:
        skey = self._store_key(key)
        for i, tier in enumerate(self._lower):
            if not tier.breaker.allow():
                continue
            try:
                text = await tier.store.get(self.namespace, skey)
            except Exception as exc:
                self._failed(tier, exc)
                continue
            tier.breaker.success()
            if text is None:
                continue
            try:
                env = codec.decode(text, kind=KIND, key=skey)
            except codec.CorruptEntryError:
                await self._quiet(tier, tier.store.delete(self.namespace, skey))
                continue
            now = self._clock()
            if env.expires_at <= now:
                continue
            for faster in self._lower[:i]:
                ttl = min(faster.ttl, env.expires_at - now)
                if ttl > 0 and faster.breaker.allow():
                    await self._quiet(faster, faster.store.set(self.namespace, skey, text, ttl))
            if self._l1 is not None:
                self._l1.set(self._l1_key(key), env.value, min(self._l1_ttl, env.expires_at - now))
            self.hits[tier.name] += 1
            return env.value
        self.misses += 1
        return None

    async def _set_lower(self, key: str, text: str, expires_at: float) -> None:
        skey = self._store_key(key)
        now = self._clock()
        for tier in self._lower:
            ttl = min(tier.ttl, expires_at - now)
            if ttl > 0 and tier.breaker.allow():
                await self._quiet(tier, tier.store.set(self.namespace, skey, text, ttl))

    async def _delete_lower(self, key: str) -> None:
        for tier in self._lower:
            await self._quiet(tier, tier.store.delete(self.namespace, self._store_key(key)))

    async def _quiet(self, tier: _Lower, coro: Coroutine[Any, Any, Any]) -> None:
        try:
            await coro
        except Exception as exc:
            self._failed(tier, exc)
        else:
            tier.breaker.success()

    def _failed(self, tier: _Lower, exc: BaseException) -> None:
        if tier.breaker.failure():
            logger.warning(
                "LiteLLM cache: tier %s failed, skipping it for a while: %s", tier.name, exc
            )

    async def _arun(self, coro: Coroutine[Any, Any, T]) -> T:
        return await get_portal().arun(coro)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T | None:
        portal = get_portal()
        if portal.in_portal():
            coro.close()  # blocking here would deadlock the loop: treat as a miss
            return None
        return portal.run(coro)

    # -- the BaseCache interface ------------------------------------------------------------

    def _l1_get(self, key: str) -> Any:
        if self._l1 is None:
            return None
        value = self._l1.get(self._l1_key(key))
        if value is not None:
            self.hits["l1"] += 1
        return value

    def _prepare_set(
        self, key: str, value: Any, kwargs: dict[str, Any]
    ) -> tuple[str, float] | None:
        now = self._clock()
        expires_at = now + self._lifetime(kwargs)
        if self._l1 is not None:
            self._l1.set(self._l1_key(key), value, min(self._l1_ttl, expires_at - now))
        if not self._lower:
            return None
        try:
            text = codec.encode(
                KIND, self._store_key(key), value, stored_at=now, expires_at=expires_at
            )
        except (TypeError, ValueError) as exc:
            logger.debug("LiteLLM cache: keeping a non-JSON value in L1 only: %s", exc)
            return None
        return text, expires_at

    def get_cache(self, key: str, **kwargs: Any) -> Any:
        """The value under `key` (L1 in this thread, then L2/L3 through the portal)."""
        value = self._l1_get(key)
        if value is not None or not self._lower:
            if value is None:
                self.misses += 1
            return value
        return self._run(self._get_lower(key))

    async def async_get_cache(self, key: str, **kwargs: Any) -> Any:
        """Async `get_cache`, from any event loop."""
        value = self._l1_get(key)
        if value is not None or not self._lower:
            if value is None:
                self.misses += 1
            return value
        return await self._arun(self._get_lower(key))

    def batch_get_cache(self, keys: Sequence[str], **kwargs: Any) -> list[Any]:
        return [self.get_cache(k, **kwargs) for k in keys]

    async def async_batch_get_cache(self, keys: Sequence[str], **kwargs: Any) -> list[Any]:
        return [await self.async_get_cache(k, **kwargs) for k in keys]

    def set_cache(self, key: str, value: Any, **kwargs: Any) -> None:
        """Store `value` in every tier (L2/L3 only if it is JSON)."""
        lower = self._prepare_set(key, value, kwargs)
        if lower is not None:
            self._run(self._set_lower(key, *lower))

    async def async_set_cache(self, key: str, value: Any, **kwargs: Any) -> None:
        lower = self._prepare_set(key, value, kwargs)
        if lower is not None:
            await self._arun(self._set_lower(key, *lower))

    async def async_set_cache_pipeline(self, cache_list: Sequence[Any], **kwargs: Any) -> None:
        for key, value in cache_list:
            await self.async_set_cache(key, value, **kwargs)

    async def batch_cache_write(self, key: str, value: Any, **kwargs: Any) -> None:
        await self.async_set_cache(key, value, **kwargs)

    def delete_cache(self, key: str) -> None:
        if self._l1 is not None:
            self._l1.delete(self._l1_key(key))
        if self._lower:
            self._run(self._delete_lower(key))

    async def async_delete_cache(self, key: str) -> None:
        if self._l1 is not None:
            self._l1.delete(self._l1_key(key))
        if self._lower:
            await self._arun(self._delete_lower(key))

    async def delete_cache_keys(self, keys: Sequence[str]) -> None:
        for key in keys:
            await self.async_delete_cache(key)

    def flush_cache(self) -> None:
        """Empty L1 (the lower tiers are shared; clear them through the tiered cache)."""
        if self._l1 is not None:
            self._l1.clear()

    async def ping(self) -> bool:
        return True

    async def disconnect(self) -> None:
        """Nothing to close: the engine owns the tiers."""

    async def test_connection(self) -> dict[str, Any]:
        ok = True
        for tier in self._lower:
            ok = ok and bool(await self._arun(tier.store.check()))
        return {"status": "success" if ok else "failed", "message": repr(self)}

    def stats(self) -> dict[str, Any]:
        """Hits per tier and misses of LiteLLM lookups."""
        return {"hits": dict(self.hits), "misses": self.misses}


def litellm_cache(
    cache: TieredCache | None = None,
    *,
    engine: Engine | None = None,
    namespace: str | None = None,
    default_ttl: int = 3600,
    **cache_kwargs: Any,
) -> Cache:
    """A `litellm.Cache` whose storage is the package's three tiers.

    ```python
    litellm.cache = litellm_cache(engine=Engine.shared())
    router = Router(model_list=..., cache_responses=True)
    ```

    Args:
        cache: The tiered cache; default: the engine's.
        engine: The engine whose cache to use (`Engine.shared()` when neither is given).
        namespace: L2/L3 namespace for LiteLLM entries; default: the cache's namespace.
        default_ttl: Seconds an entry lives unless LiteLLM passes a `ttl`.
        **cache_kwargs: Passed to `litellm.Cache` (`mode`, `ttl`, `supported_call_types`, …).

    Raises:
        ValueError: The engine has no cache (`cache_enabled=False`).
    """
    if cache is None:
        if engine is None:
            from ..engine import Engine

            engine = Engine.shared()
        cache = engine.cache
        if cache is None:
            raise ValueError("the engine has no cache (cache_enabled=False)")
    backend = TieredLiteLLMCache(cache, namespace=namespace, default_ttl=default_ttl)
    return Cache(_backend=backend, **cache_kwargs)
