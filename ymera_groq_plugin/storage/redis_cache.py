"""L2: the shared cache tier in Redis, bounded per namespace.

Layout (the hash tag keeps a namespace's entries and index in one cluster slot, since every
write touches both):

```
ymera:<namespace>:cache:{<namespace>}:e:<key>   string: the entry's JSON text, PX = its TTL
ymera:<namespace>:cache:{<namespace>}:idx       zset: key -> expiry (the caller's clock)
```

On a Redis Cluster with a large bound (`max_entries` ≥ 16 × 1024, the default 100,000
included), a namespace is split into 16 shards, `{<namespace>|0}` … `{<namespace>|f}`, by a
CRC-32 of the entry's key: each shard has its own index and a 16th of the bound, so one
namespace's cache traffic spreads over 16 slots (and so over every primary) instead of loading
one. Eviction is then oldest-first within a shard, which for thousands of uniformly hashed
keys per shard is the oldest overall within a few entries. Small bounds keep one index (exact
eviction order); a single server always does.

Expiry is judged by the injected clock (`now` is passed to every script), so tests move time
instead of sleeping; each entry also carries a Redis `PX` TTL so memory is reclaimed when no
one reads it again. Each multi-step operation is one Lua script (`lua/cache_*.lua`), registered
once per client; `set` evicts the soonest-expiring entries beyond `max_entries` (the oldest,
since one tier writes with one TTL).

The client (`redis.asyncio`) is bound to the event loop that first uses it: use a store from
one loop (the engine's portal does).
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from typing import TYPE_CHECKING, Any

from ..clock import Clock
from ..errors import ConfigurationError
from .base import KEY_PREFIX, astorage_errors, is_cluster, lua_script
from .redis_quota import fast_failing_client

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["RedisCacheStore"]

logger = logging.getLogger(__name__)

_CLEAR_BATCH = 500
_SHARDS = 16
_SHARD_MIN = 1024
"""Entries per shard below which a namespace keeps one index (exact eviction order)."""



def _tag(namespace: str) -> str:
    # Braces inside the tag would end it early.
    return namespace.replace("{", "(").replace("}", ")")


class RedisCacheStore:
    """A `CacheStore` in Redis, shared by every process that uses the same server.

    Args:
        client: A `redis.asyncio.Redis` with `decode_responses=False`.
        max_entries: The bound on entries per namespace.
        clock: Wall clock for expiry.
        owns_client: Close the client in `aclose`.
    """

    name = "redis"

    def __init__(
        self,
        client: Redis,
        *,
        max_entries: int = 100_000,
        clock: Clock = time.time,
        owns_client: bool = True,
    ) -> None:
        if max_entries <= 0:
            raise ConfigurationError("max_entries must be positive", setting="cache_l2_max_entries")
        self._client = client
        self.max_entries = max_entries
        self._clock = clock
        self._owns = owns_client
        self._get: AsyncScript = client.register_script(lua_script("cache_get.lua"))
        self._set: AsyncScript = client.register_script(lua_script("cache_set.lua"))
        self._delete: AsyncScript = client.register_script(lua_script("cache_delete.lua"))
        self._clear: AsyncScript = client.register_script(lua_script("cache_clear.lua"))
        self._shards = _SHARDS if is_cluster(client) and max_entries >= _SHARDS * _SHARD_MIN else 1
        self._bound = math.ceil(max_entries / self._shards)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisCacheStore:
        """Build from a Redis URL: one server, `redis+cluster://` or `redis+sentinel://`.

        Keyword arguments `max_entries`, `clock` go to the store; the rest to the client.
        """
        store_kwargs = {k: kwargs.pop(k) for k in ("max_entries", "clock") if k in kwargs}
        return cls(fast_failing_client(url, **kwargs), **store_kwargs)

    def __repr__(self) -> str:
        shards = f" shards={self._shards}" if self._shards > 1 else ""
        return f"<RedisCacheStore max_entries={self.max_entries}{shards}>"

    def _base(self, namespace: str, shard: int = 0) -> str:
        tag = _tag(namespace) if self._shards == 1 else f"{_tag(namespace)}|{shard:x}"
        return f"{KEY_PREFIX}{namespace}:cache:{{{tag}}}:"

    def _keys(self, namespace: str, key: str) -> tuple[list[str], str]:
        shard = zlib.crc32(key.encode("utf-8", "surrogatepass")) % self._shards
        base = self._base(namespace, shard)
        return [f"{base}e:{key}", f"{base}idx"], f"{base}e:"

    # -- CacheStore ------------------------------------------------------------------------

    async def get(self, namespace: str, key: str) -> str | None:
        keys, _ = self._keys(namespace, key)
        async with astorage_errors("redis", "cache get"):
            raw = await self._get(keys=keys, args=[key, repr(float(self._clock()))])
        if raw is None:
            return None
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            logger.warning("Removing an undecodable L2 cache entry in namespace %s", namespace)
            await self.delete(namespace, key)
            return None

    async def set(self, namespace: str, key: str, value: str, ttl: float) -> None:
        if ttl <= 0:
            await self.delete(namespace, key)
            return
        keys, prefix = self._keys(namespace, key)
        now = float(self._clock())
        async with astorage_errors("redis", "cache set"):
            await self._set(
                keys=keys,
                args=[
                    value,
                    key,
                    repr(now),
                    repr(now + ttl),
                    str(max(1, math.ceil(ttl * 1000))),
                    str(self._bound),
                    prefix,
                ],
            )

    async def delete(self, namespace: str, key: str) -> None:
        keys, _ = self._keys(namespace, key)
        async with astorage_errors("redis", "cache delete"):
            await self._delete(keys=keys, args=[key])

    async def clear(self, namespace: str) -> None:
        async with astorage_errors("redis", "cache clear"):
            for shard in range(self._shards):
                base = self._base(namespace, shard)
                # In batches, so one huge namespace never blocks the server for long.
                while await self._clear(keys=[f"{base}idx"], args=[f"{base}e:", str(_CLEAR_BATCH)]):
                    pass

    async def size(self, namespace: str | None = None) -> int:
        now = f"({float(self._clock())!r}"
        async with astorage_errors("redis", "cache size"):
            if namespace is not None:
                async with self._client.pipeline(transaction=False) as pipe:
                    for shard in range(self._shards):
                        pipe.zcount(f"{self._base(namespace, shard)}idx", now, "+inf")
                    return sum(int(n) for n in await pipe.execute())
            total = 0
            async for index in self._client.scan_iter(
                match=f"{KEY_PREFIX}*:cache:{{*}}:idx", count=500
            ):
                total += int(await self._client.zcount(index, now, "+inf"))
            return total

    async def check(self) -> bool:
        try:
            async with astorage_errors("redis", "cache check"):
                return bool(await self._client.ping())
        except Exception:
            return False

    async def aclose(self) -> None:
        """Close the client if this store made it."""
        if self._owns:
            await self._client.aclose()
