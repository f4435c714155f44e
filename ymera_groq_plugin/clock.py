"""Clocks. Every component that reads time takes one, so tests advance time instead of sleeping.

Shared state (quota windows, cooldowns, cache expiry in Redis) uses wall-clock seconds
(`time.time`): several processes on several hosts compare them. Latency measurements use
`time.perf_counter` directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Clock", "system_clock"]

Clock = Callable[[], float]
"""A function returning seconds since the epoch."""

system_clock: Clock = time.time
