"""The protocol a lower cache tier (L2, L3, or one you add) implements.

A store keeps opaque JSON text under (namespace, key) for a TTL measured on the store's
injected clock; `TieredCache` decides what goes in and how to read it back. A store never
pickles, never sees an API key, and maps its backend's errors to `StorageError` (the tiered
cache turns those into misses and trips a circuit breaker, so they never reach a caller).

Implementations: `storage.sqlite_cache.SqliteCacheStore` (persistent L3, the default) and
`storage.redis_cache.RedisCacheStore` (shared L2). A new backend needs only these verbs.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["CacheStore"]


@runtime_checkable
class CacheStore(Protocol):
    """Async key-value storage with TTL, namespaced, bounded by the implementation.

    Every method may raise `StorageError`; none raises anything else for a backend fault.
    """

    name: str
    """A short label for logs and statistics (`"redis"`, `"sqlite"`)."""

    async def get(self, namespace: str, key: str) -> str | None:
        """The text stored under the key, or `None` if absent or expired.

        An expired or undecodable entry found on the way is removed.
        """
        ...

    async def set(self, namespace: str, key: str, value: str, ttl: float) -> None:
        """Store `value` for `ttl` seconds (replacing any older value).

        Stays within the store's entry bound by evicting the oldest entries.
        """
        ...

    async def delete(self, namespace: str, key: str) -> None:
        """Remove the key (absent is fine)."""
        ...

    async def clear(self, namespace: str) -> None:
        """Remove every entry of one namespace."""
        ...

    async def size(self, namespace: str | None = None) -> int:
        """Live entries in one namespace, or in all of them (`None`)."""
        ...

    async def check(self) -> bool:
        """Whether the backend answers right now (never raises)."""
        ...

    async def aclose(self) -> None:
        """Release connections and threads."""
        ...
