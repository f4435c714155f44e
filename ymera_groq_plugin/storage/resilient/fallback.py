"""The breaker, the background recovery and the "primary, else local" call that every
resilient store shares (one `Fallback` per store).

`Fallback.call` is the one place that decides where a call goes: to the primary while the
breaker is closed; if that raises `StorageError`, the breaker opens (the first failure of an
outage is logged and counted) and the same call is served locally, so a caller never sees the
outage; while the breaker is open, locally, and once it is due, one background task runs the
store's `recover` (never on a caller's path, so a dead Redis costs requests no latency). The
stores say only what "primary", "local" and "recover" mean for them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ...breaker import CircuitBreaker
from ...clock import Clock
from ...errors import StorageError

__all__ = ["Fallback", "FallbackStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Fallback:
    """The breaker and background recovery of one resilient store.

    Args:
        what: The store, in log messages (`"quota store"`).
        clock: Wall clock for the breaker.
        retry_after: Seconds before the first retry of the primary (doubling per failure).
        max_retry_after: Cap of the doubling.
        recover: Brings the primary up to date; raises while it is still unreachable.
        on_open: Called right after the breaker opened from closed (no await in between).
        on_close: Called right after a recovery closed the breaker (no await in between).
        ready: Whether a call may go to the primary while the breaker is closed (default:
            always); when not, it is served locally.
    """

    def __init__(
        self,
        what: str,
        clock: Clock,
        retry_after: float,
        max_retry_after: float,
        *,
        recover: Callable[[], Awaitable[None]],
        on_open: Callable[[], None] | None = None,
        on_close: Callable[[], None] | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self._what = what
        self.breaker = CircuitBreaker(
            clock, retry_after=retry_after, max_retry_after=max_retry_after
        )
        self._recover = recover
        self._on_open = on_open
        self._on_close = on_close
        self._ready = ready
        self._recovering: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.outages = 0
        """Times the primary became unreachable."""
        self.recoveries = 0
        """Times it came back and was brought up to date."""
        self.last_error: str | None = None
        """What made it unreachable last (`"<operation>: <error type>: <message>"`), e.g. a
        cluster primary's `ConnectionError` before its replica took over, or Sentinel's
        `MasterNotFoundError` during a switch."""

    @property
    def degraded(self) -> bool:
        """Whether calls are being served locally now."""
        return not self.breaker.closed

    async def call(
        self,
        operation: str,
        primary: Callable[[], Awaitable[T]],
        local: Callable[[], Awaitable[T]],
    ) -> T:
        """`primary()` while the breaker is closed (and the store is `ready`), else (or if it
        raised `StorageError`) `local()`.

        Only `StorageError` falls back: any other error (a bad argument, a bug) is the
        caller's, as it would be without Redis.

        Args:
            operation: The call's name, for the log and `last_error`.
            primary: The call to the primary, with whatever it updates on success.
            local: What serves the call without the primary.
        """
        if self.breaker.closed and (self._ready is None or self._ready()):
            try:
                return await primary()
            except StorageError as exc:
                self.failed(operation, exc)
        self._maybe_recover()
        return await local()

    def failed(self, operation: str, exc: BaseException) -> None:
        """Record that the primary failed `operation`, and open the breaker."""
        self.last_error = f"{operation}: {exc}"[:300]
        if self.breaker.failure():
            self.outages += 1
            logger.warning(
                "Redis %s unreachable (%s failed: %s); serving locally, retrying in %.1f s",
                self._what,
                operation,
                exc,
                self.breaker.retry_after,
            )
            if self._on_open is not None:
                self._on_open()

    def spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        """Run `coro` in the background, until it ends or `aclose()`."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _maybe_recover(self) -> None:
        """Start one background recovery when the breaker is due (never on a caller's path)."""
        busy = self._recovering is not None and not self._recovering.done()
        if busy or not self.breaker.due():
            return
        self._recovering = self.spawn(self._recover_guarded())

    async def _recover_guarded(self) -> None:
        try:
            await self._recover()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.breaker.failure()
            logger.debug("Redis %s still unreachable: %s", self._what, exc)
            return
        self.breaker.success()
        self.recoveries += 1
        logger.warning("Redis %s is back; the shared state is up to date again", self._what)
        if self._on_close is not None:
            self._on_close()

    async def recover(self) -> bool:
        """Try the primary now, whatever the breaker says (tests, shutdown); whether it is
        back and up to date."""
        if self.breaker.closed:
            return True
        if self._recovering is not None and not self._recovering.done():
            await asyncio.shield(self._recovering)
        else:
            self._recovering = self.spawn(self._recover_guarded())
            await asyncio.shield(self._recovering)
        return self.breaker.closed

    async def drain(self) -> None:
        """Wait for the background work started so far (errors are the tasks' own)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel the background work."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


class FallbackStore:
    """What every resilient store shows of its `Fallback` (`self._fb`)."""

    _fb: Fallback

    @property
    def degraded(self) -> bool:
        """Whether calls are being served locally now."""
        return self._fb.degraded

    @property
    def last_error(self) -> str | None:
        """What made the primary unreachable last."""
        return self._fb.last_error

    async def recover(self) -> bool:
        """Try the primary now; whether it is back and up to date."""
        return await self._fb.recover()
