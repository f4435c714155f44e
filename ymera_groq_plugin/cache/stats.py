"""Per-tier statistics and the circuit breaker that keeps a failing tier out of the way.

Both are small, thread-safe and clock-injected: counters are bumped from callers' threads and
from the portal; the breaker reads the tiered cache's clock, so tests open and close it by
advancing a fake clock.
"""

from __future__ import annotations

import threading
from typing import Any

from ..clock import Clock

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


class CircuitBreaker:
    """Closed until a failure; then open for `retry_after` seconds, doubling per consecutive
    failure up to `max_retry_after`; then one trial call decides (half-open).

    Args:
        clock: Wall clock.
        retry_after: Seconds the first failure keeps the tier out.
        max_retry_after: Cap of the doubling.
    """

    def __init__(
        self, clock: Clock, *, retry_after: float = 5.0, max_retry_after: float = 60.0
    ) -> None:
        self._clock = clock
        self.retry_after = retry_after
        self.max_retry_after = max_retry_after
        self._lock = threading.Lock()
        self.failures = 0
        self.open_until: float | None = None

    def allow(self) -> bool:
        """Whether to use the tier now (closed, or open but due for a trial)."""
        open_until = self.open_until
        return open_until is None or self._clock() >= open_until

    @property
    def state(self) -> str:
        """`"closed"`, `"open"` or `"half-open"` (due for a trial)."""
        if self.open_until is None:
            return "closed"
        return "half-open" if self._clock() >= self.open_until else "open"

    def success(self) -> bool:
        """Record a success; whether this closed an open breaker."""
        with self._lock:
            was_open = self.open_until is not None
            self.failures = 0
            self.open_until = None
            return was_open

    def failure(self) -> bool:
        """Record a failure and (re)open; whether the breaker was closed before."""
        with self._lock:
            was_closed = self.open_until is None
            self.failures += 1
            wait = min(self.max_retry_after, self.retry_after * 2 ** (self.failures - 1))
            self.open_until = self._clock() + wait
            return was_closed

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.state} failures={self.failures}>"
