"""Per-tier statistics; the circuit breaker that keeps a failing tier out of the way is the
package's one breaker (`ymera_groq_plugin.breaker`), re-exported here.

Counters are small and thread-safe: they are bumped from callers' threads and from the portal.
"""

from __future__ import annotations

import threading
from typing import Any

from ..breaker import CircuitBreaker

__all__ = ["CircuitBreaker", "TierStats", "hit_rate"]


def hit_rate(hits: int, misses: int) -> float:
    """`hits / (hits + misses)`, 0.0 before any lookup."""
    total = hits + misses
    return hits / total if total else 0.0


class TierStats:
    """Lookup counters and latency of one tier."""

    __slots__ = ("_lock", "_timed", "_total_s", "corrupt", "errors", "hits", "misses", "skipped")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.errors = 0
        """Lookups or writes that failed (the tier then counts as unavailable for a while)."""
        self.skipped = 0
        """Lookups that passed the tier by while its breaker was open."""
        self.corrupt = 0
        """Entries found unreadable or foreign (each removed)."""
        self._timed = 0
        self._total_s = 0.0

    def record(self, hit: bool | None, seconds: float | None = None) -> None:
        """Count one lookup (`hit=None` counts only its latency) and its duration."""
        with self._lock:
            if hit is True:
                self.hits += 1
            elif hit is False:
                self.misses += 1
            if seconds is not None:
                self._timed += 1
                self._total_s += seconds

    def bump(self, counter: str, n: int = 1) -> None:
        """Add `n` to `errors`, `skipped` or `corrupt`."""
        with self._lock:
            setattr(self, counter, getattr(self, counter) + n)

    def mean_ms(self) -> float:
        """Mean timed lookup, in milliseconds (0.0 before any)."""
        with self._lock:
            return self._total_s * 1000 / self._timed if self._timed else 0.0

    def snapshot(
        self, *, enabled: bool, size: int | None, hits: int | None = None
    ) -> dict[str, Any]:
        """The tier's entry in `TieredCache.stats()`."""
        h = self.hits if hits is None else hits
        return {
            "enabled": enabled,
            "hits": h,
            "misses": self.misses,
            "hit_rate": hit_rate(h, self.misses),
            "mean_lookup_ms": self.mean_ms(),
            "size": size,
            "errors": self.errors,
            "skipped": self.skipped,
            "corrupt": self.corrupt,
        }
