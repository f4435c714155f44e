"""L1: a bounded, thread-safe in-process cache with per-entry TTL.

Reads are the hot path (an L1 hit must cost no more than LangChain's `InMemoryCache`), so a
read takes no lock and makes no system call:

- one `dict` probe (atomic in CPython);
- the entry's expiry compared with `now`. With the default clock (`time.time`), `now` is a
  process-wide copy of `time.time()` refreshed every `COARSE_RESOLUTION` seconds by a daemon
  thread, so a read never pays for a clock call; an entry may outlive its TTL by that much.
  An injected clock (tests, simulations) is read on every lookup instead, exactly;
- a bump of the entry's hit counter, which is both the hit statistic and the reference mark
  of the eviction policy.

Eviction is second-chance ("CLOCK"), the classic approximation of LRU: when the cache is
full, the oldest entry goes unless it was hit since it was last considered, in which case it
is moved to the young end with its mark cleared. Hits therefore never reorder anything (no
lock, no write to shared structure on a read), and an entry that is read keeps its place the
way it would under LRU. Writes (`set`, `delete`, eviction, expiry clean-up) hold one lock.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Hashable, Iterator
from typing import Any, ClassVar, Generic, TypeVar

from ..clock import Clock

__all__ = ["COARSE_RESOLUTION", "CoarseTime", "Entry", "LRUCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

COARSE_RESOLUTION = 0.05
"""Seconds between refreshes of the shared coarse wall clock."""


class CoarseTime:
    """`time.time()`, refreshed by a daemon thread: `.now` is an attribute, not a call.

    One instance serves the whole process (`CoarseTime.shared()`); it restarts its thread
    in a child after `fork`.
    """

    __slots__ = ("_resolution", "_thread", "now")

    _shared: ClassVar[CoarseTime | None] = None
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, resolution: float = COARSE_RESOLUTION) -> None:
        self._resolution = resolution
        self.now = time.time()
        self._thread: threading.Thread | None = None
        self._start()

    def _start(self) -> None:
        self.now = time.time()
        self._thread = threading.Thread(target=self._tick, name="ymera-coarse-clock", daemon=True)
        self._thread.start()

    def _tick(self) -> None:
        sleep, resolution, clock = time.sleep, self._resolution, time.time
        while True:
            sleep(resolution)
            self.now = clock()

    @classmethod
    def shared(cls) -> CoarseTime:
        """The process-wide coarse clock, started on first use."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    @classmethod
    def _after_fork(cls) -> None:
        # Threads do not survive fork: without this a child's clock would stand still and
        # its L1 entries would never expire.
        cls._shared_lock = threading.Lock()
        if cls._shared is not None:
            cls._shared._start()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=CoarseTime._after_fork)


class _ExactTime:
    """An injected clock behind the same `.now` attribute, read on every access."""

    __slots__ = ("_clock",)

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    @property
    def now(self) -> float:
        return self._clock()


class Entry(Generic[V]):
    """One cached value: the value, when it expires, and its hits (the reference mark)."""

    __slots__ = ("expires_at", "hits", "seen", "value")

    def __init__(self, value: V, expires_at: float) -> None:
        self.value = value
        self.expires_at = expires_at
        self.hits = 0
        self.seen = 0  # `hits` as of the last time eviction looked at this entry


class LRUCache(Generic[K, V]):
    """A bounded in-process cache with per-entry TTL; safe to share between threads.

    Args:
        max_entries: The most entries kept; the next `set` evicts (see the module docstring).
        ttl: Default seconds an entry lives; `None` for no expiry.
        clock: Wall clock; the default `time.time` is read through the shared `CoarseTime`.

    Raises:
        ValueError: `max_entries` is not positive, or `ttl` is not positive.
    """

    def __init__(
        self,
        max_entries: int = 10_000,
        ttl: float | None = 300.0,
        *,
        clock: Clock = time.time,
    ) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        if ttl is not None and ttl <= 0:
            raise ValueError("ttl must be positive (or None for no expiry)")
        self.max_entries = max_entries
        self.ttl = ttl
        self._clock = clock
        self._data: dict[K, Entry[V]] = {}
        self._lock = threading.Lock()
        self._retired_hits = 0
        self.evictions = 0
        # What a hot path may bind once (see `TieredCache.lookup`): the raw probe, returning
        # an `Entry` or `None`, and the time source whose `.now` an entry's `expires_at` must
        # exceed. Both stay valid for the cache's lifetime.
        self.probe = self._data.get
        self.timer: CoarseTime | _ExactTime = (
            CoarseTime.shared() if clock is time.time else _ExactTime(clock)
        )

    # -- reads (lock-free) -----------------------------------------------------------------

    def get(self, key: K) -> V | None:
        """The live value under `key`, counting a hit; `None` when absent or expired."""
        entry = self._data.get(key)
        if entry is not None and entry.expires_at > self.timer.now:
            entry.hits += 1
            return entry.value
        return None

    def __contains__(self, key: object) -> bool:
        entry = self._data.get(key)  # type: ignore[arg-type]
        return entry is not None and entry.expires_at > self.timer.now

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._data))

    @property
    def hits(self) -> int:
        """Every hit so far, including those of entries since evicted, replaced or deleted.

        Bumps race without a lock, so under heavy contention from many threads a few hits may
        go uncounted; the figure is a statistic, not an invariant.
        """
        return self._retired_hits + sum(e.hits for e in list(self._data.values()))

    # -- writes (one lock) -----------------------------------------------------------------

    def set(self, key: K, value: V, ttl: float | None = None) -> None:
        """Store `value` under `key` for `ttl` seconds (default: the cache's TTL).

        A `ttl` of zero or less stores nothing (and drops an older entry under the key).
        """
        ttl = self.ttl if ttl is None else ttl
        if ttl is not None and ttl <= 0:
            self.delete(key)
            return
        expires_at = float("inf") if ttl is None else self._clock() + ttl
        entry = Entry(value, expires_at)
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._retired_hits += old.hits
            self._data[key] = entry
            if len(self._data) > self.max_entries:
                self._evict()

    def _evict(self) -> None:
        # Called with the lock held. First drop anything expired at the old end, then apply
        # second chance. Each pass clears a mark, so the loop ends within two sweeps (the
        # bound only matters if readers keep re-marking every entry meanwhile).
        data = self._data
        now = self.timer.now
        chances = 2 * len(data)
        while len(data) > self.max_entries:
            key = next(iter(data))
            entry = data.pop(key)
            chances -= 1
            if chances > 0 and entry.expires_at > now and entry.hits != entry.seen:
                entry.seen = entry.hits
                data[key] = entry  # second chance: back to the young end
                continue
            self._retired_hits += entry.hits
            self.evictions += 1

    def delete(self, key: K) -> bool:
        """Remove `key`; whether it was there."""
        with self._lock:
            old = self._data.pop(key, None)
            if old is None:
                return False
            self._retired_hits += old.hits
            return True

    def discard_entry(self, key: K, entry: Entry[V]) -> None:
        """Remove `key` only if it still holds `entry` (a reader's expired copy)."""
        with self._lock:
            if self._data.get(key) is entry:
                del self._data[key]
                self._retired_hits += entry.hits

    def clear(self) -> None:
        """Remove every entry (hits so far stay counted)."""
        with self._lock:
            self._retired_hits += sum(e.hits for e in self._data.values())
            self._data.clear()

    def purge_expired(self) -> int:
        """Remove every expired entry now; how many went."""
        now = self.timer.now
        with self._lock:
            dead = [k for k, e in self._data.items() if e.expires_at <= now]
            for k in dead:
                self._retired_hits += self._data.pop(k).hits
            return len(dead)

    def __repr__(self) -> str:
        ttl = "none" if self.ttl is None else f"{self.ttl:g}s"
        return f"<LRUCache {len(self._data)}/{self.max_entries} entries, ttl {ttl}>"

    def info(self) -> dict[str, Any]:
        """Size, bound, TTL, hits and evictions, for statistics."""
        return {
            "size": len(self._data),
            "max_entries": self.max_entries,
            "ttl": self.ttl,
            "hits": self.hits,
            "evictions": self.evictions,
        }
