"""The circuit breaker: keeps a failing dependency out of the way for a while, then tries it.

One class serves both places that need it: the cache's L2/L3 tiers (`cache/`, also through
`litellm/cache.py`) and the resilient stores' fallback (`storage/resilient/`). It imports only
the clock, so either side can use it without importing the other.
"""

from __future__ import annotations

import threading

from .clock import Clock

__all__ = ["CircuitBreaker"]


class CircuitBreaker:
    """Closed until a failure; then open for `retry_after` seconds, doubling per consecutive
    failure up to `max_retry_after`; then due for one trial (half-open), which closes it
    (`success`) or opens it again for longer (`failure`).

    Thread-safe (cache tiers are used from callers' threads and from the portal) and on an
    injected clock, so tests open and close it by advancing a fake clock.

    Args:
        clock: Wall clock.
        retry_after: Seconds the first failure keeps it open.
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

    @property
    def closed(self) -> bool:
        """Whether the last call succeeded (no failure since)."""
        return self.open_until is None

    def due(self) -> bool:
        """Open, and time to try again (half-open)."""
        open_until = self.open_until
        return open_until is not None and self._clock() >= open_until

    def allow(self) -> bool:
        """Whether to call now (closed, or open but due for a trial)."""
        open_until = self.open_until
        return open_until is None or self._clock() >= open_until

    @property
    def state(self) -> str:
        """`"closed"`, `"open"` or `"half-open"` (due for a trial)."""
        if self.open_until is None:
            return "closed"
        return "half-open" if self._clock() >= self.open_until else "open"

    def success(self) -> bool:
        """Record a success and close; whether this closed an open breaker."""
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
