"""Request latencies as the engine keeps them: the recent window and a cumulative histogram.

`engine.stats` owns both; the monitor publishes them and adds up the fleet's. They live here,
apart from `monitor.py`, so the engine records latencies without importing its consumers.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["LATENCY_BUCKETS_MS", "LatencyTally", "LatencyWindow"]

LATENCY_BUCKETS_MS: tuple[float, ...] = (
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
    30000,
    60000,
)
"""Upper bounds (ms) of the latency histogram's buckets (an implicit `+Inf` follows)."""


class LatencyTally:
    """A cumulative latency histogram (Prometheus-style buckets, milliseconds)."""

    __slots__ = ("bounds", "count", "counts", "sum_ms")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS_MS) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        """Observations per bucket (not cumulative); the last one is `+Inf`."""
        self.count = 0
        self.sum_ms = 0.0

    def observe(self, ms: float) -> None:
        # The first bucket whose upper bound is >= ms (Prometheus `le`); past the last, +Inf.
        self.counts[bisect.bisect_left(self.bounds, ms)] += 1
        self.count += 1
        self.sum_ms += ms

    def as_dict(self) -> dict[str, Any]:
        return {
            "bounds_ms": list(self.bounds),
            "counts": list(self.counts),
            "count": self.count,
            "sum_ms": round(self.sum_ms, 3),
        }


class LatencyWindow(deque[float]):
    """The last `maxlen` latencies (ms), each append also counted in `tally`.

    The window alone cannot make a Prometheus histogram (its counts must only grow), and the
    tally alone has no percentiles. Counting in `append` means every writer of the window
    (the engine's requests, the LiteLLM adapter's calls) reaches the histogram without
    knowing about it. Appends happen under the owner's lock (`engine.stats.lock`); both
    steps are O(1).

    Args:
        iterable: Latencies to start with (not tallied: they were counted where they came from).
        maxlen: How many recent latencies the window keeps.
        tally: The histogram to count into; default: a new one.
    """

    def __init__(
        self,
        iterable: Iterable[float] = (),
        maxlen: int | None = None,
        *,
        tally: LatencyTally | None = None,
    ) -> None:
        super().__init__(iterable, maxlen)
        self.tally = tally if tally is not None else LatencyTally()

    def append(self, value: float) -> None:
        super().append(value)
        self.tally.observe(value)
