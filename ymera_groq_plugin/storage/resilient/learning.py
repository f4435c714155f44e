"""Learning records while Redis is away (`ResilientLearningStore`).

Executions, feedback and imports are buffered in order and flushed once Redis is back, so none
is lost (unless the buffer bound is reached; then the oldest go and are counted). Feedback for
an execution this process recorded works meanwhile; other processes' evidence simply arrives
late.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ...clock import Clock
from ...errors import StorageError
from ...types import Execution
from ..learning_base import LearningEvent, LearningStore
from .fallback import Fallback, FallbackStore

__all__ = ["ResilientLearningStore"]

logger = logging.getLogger(__name__)


_Op = tuple[str, tuple[Any, ...]]


class ResilientLearningStore(FallbackStore):
    """A `LearningStore` that buffers what it cannot write and flushes it, in order, once its
    primary is back.

    Args:
        primary: The shared store (`RedisLearningStore`).
        clock: Wall clock for the breaker.
        max_buffer: Operations kept while the primary is away (beyond it the oldest go, counted
            in `stats["dropped"]`).
        remember: Recent executions kept by id, so feedback works during an outage.
        retry_after: Seconds before the first retry of the primary (doubling per failure).
        max_retry_after: Cap of the doubling.
    """

    def __init__(
        self,
        primary: LearningStore,
        *,
        clock: Clock = time.time,
        max_buffer: int = 100_000,
        remember: int = 10_000,
        retry_after: float = 1.0,
        max_retry_after: float = 30.0,
    ) -> None:
        self.primary = primary
        self._fb = Fallback(
            "learning store",
            clock,
            retry_after,
            max_retry_after,
            recover=self._recover,
            on_close=self._start_flush,
            ready=self._in_order,
        )
        self._buffer: deque[_Op] = deque()
        self._max_buffer = max_buffer
        self._recent: OrderedDict[str, Execution] = OrderedDict()
        self._remember_n = remember
        self._flushing: asyncio.Task[None] | None = None
        self.stats: dict[str, int] = {
            "buffered": 0,
            "flushed": 0,
            "dropped": 0,
            "feedback_lost": 0,
        }

    @property
    def pending(self) -> int:
        """Operations waiting for the primary."""
        return len(self._buffer)

    async def recover(self) -> bool:
        """Try the primary now and flush; whether everything was written."""
        if not await self._fb.recover():
            return False
        self._start_flush()
        if self._flushing is not None:
            await asyncio.shield(self._flushing)
        return self._fb.breaker.closed and not self._buffer

    def _keep(self, execution: Execution) -> None:
        self._recent[execution.execution_id] = execution
        self._recent.move_to_end(execution.execution_id)
        while len(self._recent) > self._remember_n:
            self._recent.popitem(last=False)

    def _buffer_op(self, op: _Op) -> None:
        if len(self._buffer) >= self._max_buffer:
            self._buffer.popleft()
            self.stats["dropped"] += 1
        self._buffer.append(op)
        self.stats["buffered"] += 1

    def _in_order(self) -> bool:
        """Whether a call may go straight to the primary: not while older writes wait."""
        if self._buffer:
            # New writes queue behind what is buffered, so the order is kept.
            self._start_flush()
            return False
        return True

    def _start_flush(self) -> None:
        if self._buffer and (self._flushing is None or self._flushing.done()):
            self._flushing = self._fb.spawn(self._drain())

    async def _drain(self) -> None:
        try:
            await self._flush(len(self._buffer) + self._max_buffer)
        except StorageError as exc:
            self._fb.failed("flush", exc)

    async def record(self, execution: Execution, *, origin: str) -> int:
        self._keep(execution)

        async def later() -> int:
            self._buffer_op(("record", (execution, origin)))
            return 0

        return await self._fb.call(
            "record", lambda: self.primary.record(execution, origin=origin), later
        )

    async def add_summary(
        self, summary: Mapping[str, Any], *, timestamp: float, origin: str
    ) -> int:
        async def later() -> int:
            self._buffer_op(("summary", (dict(summary), timestamp, origin)))
            return 0

        return await self._fb.call(
            "add_summary",
            lambda: self.primary.add_summary(summary, timestamp=timestamp, origin=origin),
            later,
        )

    async def feedback(
        self, execution_id: str, quality: float, *, timestamp: float, origin: str
    ) -> Execution | None:
        async def shared() -> Execution | None:
            before = await self.primary.feedback(
                execution_id, quality, timestamp=timestamp, origin=origin
            )
            if before is not None and execution_id in self._recent:
                self._recent[execution_id] = replace(before, quality=quality)
            return before

        async def later() -> Execution | None:
            known = self._recent.get(execution_id)
            if known is None:
                raise StorageError(
                    "learning feedback: the store is unreachable and this process did not "
                    "record that execution; try again when Redis is back"
                )
            self._recent[execution_id] = replace(known, quality=quality)
            self._buffer_op(("feedback", (execution_id, quality, timestamp, origin)))
            return known

        return await self._fb.call("feedback", shared, later)

    async def get(self, execution_id: str) -> Execution | None:
        async def recent() -> Execution | None:
            return self._recent.get(execution_id)

        return await self._fb.call("get", lambda: self.primary.get(execution_id), recent)

    async def events(self, after: int = 0, *, limit: int = 1000) -> list[LearningEvent]:
        async def none() -> list[LearningEvent]:
            # Meanwhile other processes' evidence waits; this process's own is in memory
            # already.
            return []

        return await self._fb.call("events", lambda: self.primary.events(after, limit=limit), none)

    async def prune(self, before: float) -> int:
        async def none() -> int:
            return 0

        return await self._fb.call("prune", lambda: self.primary.prune(before), none)

    async def _flush(self, most: int) -> None:
        """Write up to `most` buffered operations, oldest first."""
        while self._buffer and most > 0:
            most -= 1
            kind, args = self._buffer[0]
            if kind == "record":
                execution, origin = args
                await self.primary.record(execution, origin=origin)
            elif kind == "summary":
                summary, timestamp, origin = args
                await self.primary.add_summary(summary, timestamp=timestamp, origin=origin)
            else:
                eid, quality, timestamp, origin = args
                found = await self.primary.feedback(
                    eid, quality, timestamp=timestamp, origin=origin
                )
                if found is None:
                    self.stats["feedback_lost"] += 1
            self._buffer.popleft()
            self.stats["flushed"] += 1

    async def _recover(self) -> None:
        if not await self.primary.check():
            raise StorageError("redis learning: still unreachable")
        # What is buffered now; what arrives meanwhile follows once the breaker is closed
        # (under steady traffic, waiting for an empty buffer might never end).
        await self._flush(len(self._buffer))

    async def check(self) -> bool:
        return await self.primary.check()

    async def aclose(self) -> None:
        await self._fb.aclose()
        if self._buffer:
            # One last try, so a short outage at shutdown loses nothing.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._flush(len(self._buffer)), 5.0)
            if self._buffer:
                logger.warning(
                    "Closing the learning store with %d records not written to Redis",
                    len(self._buffer),
                )
        await self.primary.aclose()

    def __repr__(self) -> str:
        return (
            f"<ResilientLearningStore {self.primary!r} {self._fb.breaker!r} "
            f"pending={len(self._buffer)}>"
        )
