"""A small delayed batcher: items wait a moment, then are written together.

The engine's learning records and the cache's write-behind (L2/L3) both defer their writes
off the request's path: written the moment an answer is handed over, each write holds the
interpreter while the caller's thread wakes up (`benchmarks/bench_engine.py`). The first item
of a batch starts a timer; when it fires, everything collected meanwhile goes to `write` in one
call (at most `max_batch` items a call). `flush()` writes what is pending at once and waits for
it; `aclose()` drains and then drops whatever is added later. A failing `write` is logged, never
raised into the code that added the items (they have their answers already).

All of it runs on one event loop (the portal's): the loop that runs the first `add` of a batch
schedules its write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["DelayedBatcher"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class DelayedBatcher(Generic[T]):
    """Collects items and hands them to `write` in batches, `delay` seconds after the first.

    Args:
        write: Stores one batch (a non-empty list, in the order the items were added).
        delay: Seconds the first item of a batch waits for others.
        max_batch: Most items per `write` call; default: no bound.
        name: What the batches are, for log messages.
    """

    def __init__(
        self,
        write: Callable[[list[T]], Awaitable[None]],
        *,
        delay: float,
        max_batch: int | None = None,
        name: str = "batch",
    ) -> None:
        if delay < 0:
            raise ValueError("delay must not be negative")
        if max_batch is not None and max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._write = write
        self._delay = delay
        self._max = max_batch
        self._name = name
        self._items: list[T] = []
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "writing" if self._task is not None else "idle"
        return f"<DelayedBatcher {self._name}: {len(self._items)} pending, {state}>"

    @property
    def closed(self) -> bool:
        """Whether `aclose` was called (later items are dropped)."""
        return self._closed

    def add(self, item: T) -> None:
        """Queue one item (on the running loop); the first of a batch starts the timer."""
        if self._closed:
            # Nothing may write to stores that are closing.
            logger.debug("%s batcher closed; item dropped", self._name)
            return
        self._items.append(item)
        if self._timer is None and self._task is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._delay, self._start)

    def _start(self) -> None:
        self._timer = None
        if self._task is None and self._items:
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._items:
                if self._max is None:
                    batch, self._items = self._items, []
                else:
                    batch = self._items[: self._max]
                    del self._items[: self._max]
                try:
                    await self._write(batch)
                except Exception as exc:
                    logger.warning(
                        "%s write failed (%d items): %s: %s",
                        self._name,
                        len(batch),
                        type(exc).__name__,
                        exc,
                    )
        finally:
            self._task = None

    async def flush(self) -> None:
        """Write what is pending now (without waiting out the delay) and wait until it landed.

        The write itself is not cancelled when the caller of `flush` is.
        """
        while True:
            if self._timer is not None:
                self._timer.cancel()
                self._start()
            task = self._task
            if task is None:
                return
            await asyncio.wait({task})

    async def aclose(self) -> None:
        """Write what is pending and drop whatever is added from now on."""
        self._closed = True
        await self.flush()
