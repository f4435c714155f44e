"""Fault injection for the local Groq server: 5xx, 498, latency, mid-stream errors, 429 storms.

Every request draws the same four numbers from one seeded `random.Random`, whatever the
configuration, so with a fixed seed and a fixed request order the same requests fail on every
run, and changing one probability does not reshuffle the others.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["FaultConfig", "FaultDecision", "FaultInjector"]


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """What the server injects. All probabilities are per request, in `[0, 1]`.

    Latencies are wall-clock seconds (never time-scaled): they model the network and Groq's
    queue, not the rate-limit windows.
    """

    error_rate: float = 0.0
    """Probability of a 5xx answer (not charged to any limit, as Groq documents)."""
    error_statuses: tuple[int, ...] = (500, 502, 503)
    """Statuses an injected server error picks from, uniformly."""
    capacity_rate: float = 0.0
    """Probability of `498 capacity_exceeded` (flex tier at capacity)."""
    latency: float = 0.0
    """Seconds added before every chat answer (before the first byte of a stream)."""
    spike_rate: float = 0.0
    """Probability that a request gets `spike_latency` more seconds."""
    spike_latency: float = 0.0
    """Extra seconds of a latency spike."""
    stream_error_rate: float = 0.0
    """Probability that a stream ends in `event: error` inside its HTTP 200."""
    stream_error_after: int = 3
    """Chunks sent before the mid-stream error (the role chunk counts)."""
    stream_chunk_delay: float = 0.0
    """Seconds between stream chunks (to exercise time-to-first-token and timeouts)."""
    seed: int | None = None
    """Seed of the fault generator; `None` draws from the OS."""

    def __post_init__(self) -> None:
        for name in ("error_rate", "capacity_rate", "spike_rate", "stream_error_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value!r}")
        for name in ("latency", "spike_latency", "stream_chunk_delay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.stream_error_after < 0:
            raise ValueError("stream_error_after must not be negative")
        if not self.error_statuses or any(not 500 <= s <= 599 for s in self.error_statuses):
            raise ValueError("error_statuses must be a non-empty tuple of 5xx codes")

    @classmethod
    def of(cls, value: FaultConfig | Mapping[str, Any] | None) -> FaultConfig:
        """Coerce a config, a mapping of its fields, or `None` (no faults)."""
        if value is None:
            return cls()
        if isinstance(value, FaultConfig):
            return value
        data = dict(value)
        if "error_statuses" in data:
            data["error_statuses"] = tuple(data["error_statuses"])
        return cls(**data)


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """The faults drawn for one request."""

    delay: float = 0.0
    status: int | None = None
    """An injected status (5xx or 498) to answer with instead of serving."""
    stream_error_after: int | None = None
    """For streams: break after this many chunks with `event: error`."""
    spiked: bool = False
    storm_wait: float | None = None
    """Seconds left in a 429 storm; set when the request falls inside one."""


class FaultInjector:
    """Thread-safe holder of the fault config, its random generator and the storm window.

    Args:
        config: The initial configuration.
        clock: The server's clock (storms are measured on it, so a fake clock ends them).
    """

    def __init__(self, config: FaultConfig, clock: Callable[[], float]) -> None:
        self._lock = threading.Lock()
        self._config = config
        self._rng = random.Random(config.seed)
        self._clock = clock
        self._storm_until: float | None = None

    @property
    def config(self) -> FaultConfig:
        with self._lock:
            return self._config

    def configure(self, config: FaultConfig | None = None, **changes: Any) -> FaultConfig:
        """Replace the config, or change some fields; reseeds when `seed` is given."""
        with self._lock:
            base = config if config is not None else self._config
            if "error_statuses" in changes:
                changes["error_statuses"] = tuple(changes["error_statuses"])
            new = dataclasses.replace(base, **changes) if changes else base
            if config is not None or "seed" in changes:
                self._rng = random.Random(new.seed)
            self._config = new
            return new

    def start_storm(self, duration: float) -> None:
        with self._lock:
            self._storm_until = self._clock() + duration

    def stop_storm(self) -> None:
        with self._lock:
            self._storm_until = None

    def storm_remaining(self) -> float:
        with self._lock:
            return self._storm_left()

    def _storm_left(self) -> float:
        if self._storm_until is None:
            return 0.0
        left: float = self._storm_until - self._clock()
        if left <= 0:
            self._storm_until = None
            return 0.0
        return left

    def decide(self, *, streaming: bool) -> FaultDecision:
        """Draw the faults of one chat request."""
        with self._lock:
            cfg = self._config
            storm = self._storm_left()
            r_spike, r_error, r_capacity, r_stream = (self._rng.random() for _ in range(4))
            spiked = r_spike < cfg.spike_rate
            delay = cfg.latency + (cfg.spike_latency if spiked else 0.0)
            if storm > 0:
                return FaultDecision(delay=delay, spiked=spiked, storm_wait=storm)
            status: int | None = None
            if r_error < cfg.error_rate:
                status = cfg.error_statuses[self._rng.randrange(len(cfg.error_statuses))]
            elif r_capacity < cfg.capacity_rate:
                status = 498
            stream_error = (
                cfg.stream_error_after
                if streaming and status is None and r_stream < cfg.stream_error_rate
                else None
            )
            return FaultDecision(
                delay=delay, status=status, stream_error_after=stream_error, spiked=spiked
            )

    def chunk_delay(self) -> float:
        with self._lock:
            return self._config.stream_chunk_delay
