"""One background event loop per process, where the engine's async state lives.

Why: the package is called from sync code (LangChain `invoke`, LiteLLM's sync routing), from
async code on the caller's loop, and from several loops in one process (each `asyncio.run`).
`redis.asyncio` connections, `asyncio.Lock`s, in-flight futures and the fair quota wait queue
all belong to the loop that made them. Running every stateful coroutine on one loop thread
gives every caller the same state with no loop mix-ups; the price is one thread hop per call
(tens of microseconds), so hot paths that need no I/O (the L1 cache) stay in the caller's
thread.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["Portal", "get_portal"]

T = TypeVar("T")


class Portal:
    """A daemon thread running an event loop; submit coroutines to it from anywhere."""

    def __init__(self, name: str = "ymera-portal") -> None:
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            try:
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def in_portal(self) -> bool:
        """Whether the current thread is the portal's own."""
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule a coroutine on the portal loop."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the portal and block for its result (from a non-portal thread).

        Raises:
            RuntimeError: Called from the portal thread itself (it would deadlock).
        """
        if self.in_portal():
            coro.close()
            raise RuntimeError("Portal.run() called from the portal thread; await instead")
        fut = self.submit(coro)
        try:
            return fut.result(timeout)
        except BaseException:
            fut.cancel()
            raise

    async def arun(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await a coroutine that runs on the portal, from any event loop.

        Cancelling the awaiting task cancels the coroutine on the portal too.
        """
        if self.in_portal():
            return await coro
        return await asyncio.wrap_future(self.submit(coro))

    def close(self) -> None:
        """Stop the loop and join the thread."""
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)


_portal: Portal | None = None
_lock = threading.Lock()


def get_portal() -> Portal:
    """The process's portal, started on first use."""
    global _portal
    with _lock:
        if _portal is None or not _portal._thread.is_alive():
            _portal = Portal()
            atexit.register(_portal.close)
        return _portal
