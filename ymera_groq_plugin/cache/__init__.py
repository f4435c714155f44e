"""The three-tier response cache: L1 in-process, L2 Redis, L3 persistent (SQLite).

A lookup goes L1 → L2 → L3 and a hit is promoted into the faster tiers; a store writes
through every configured tier. Without a Redis URL (embedded mode) the tiers are L1 + L3.
`TieredCache` is also a LangChain `BaseCache`, so `set_llm_cache(TieredCache.from_settings(s))`
gives any LangChain model the same tiers.

Threads and loops: L1 (`LRUCache`) is a thread-safe in-process structure used directly in the
caller's thread, so an L1 hit is a dict probe, with no thread hop and no await. L2 and L3 I/O
always runs on the process's portal loop (`_portal.get_portal()`): a `redis.asyncio` client
belongs to the loop that first used it, and the portal is the one loop every caller can reach,
from sync code (`Portal.run`), from any other loop (`Portal.arun`) or from the portal itself.

Faults never reach a caller: a tier that fails is skipped for a while (a `CircuitBreaker` on
the injected clock, retried after 5 s, doubling to 60 s) and an unreadable or foreign entry is
a miss that is deleted. Values in L2/L3 are JSON envelopes (`codec`), never pickle.

In-flight coalescing: identical concurrent requests (same key) make one upstream call; see
`TieredCache.coalesce`.
"""

from __future__ import annotations

from .base import CacheStore
from .keys import UncacheableRequestError
from .lru import LRUCache
from .stats import CircuitBreaker
from .tiered import TieredCache

__all__ = [
    "CacheStore",
    "CircuitBreaker",
    "LRUCache",
    "TieredCache",
    "UncacheableRequestError",
]
