"""A controllable clock for tests and simulations."""

from __future__ import annotations

import threading

__all__ = ["FakeClock"]


class FakeClock:
    """A clock that only moves when told to.

    Call it to read the time; `advance(seconds)` moves it forward. Thread-safe, so a test can
    share one clock between an engine's loop thread and the test body.

    Args:
        start: The initial time in seconds since the epoch.
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward and return the new time."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, now: float) -> None:
        """Jump to an absolute time (not earlier than the current one)."""
        with self._lock:
            if now < self._now:
                raise ValueError("a clock does not go backwards")
            self._now = now

    def __repr__(self) -> str:
        return f"<FakeClock {self._now:.3f}>"
