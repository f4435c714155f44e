"""What the engine tells its subscribers: a request finished, the engine closed.

`Engine.subscribe(callback, *kinds)` registers a callback for some kinds of event (default:
every kind). Callbacks run synchronously where the event happens, on the engine's portal
thread, so they must be cheap and must not block; one that raises is logged and the others
still run. An event of a kind nobody subscribed to is never built, which keeps the request
path's cost unchanged when nothing listens.

Who subscribes: the monitor (`monitor.py`) to `EngineClosed`, to publish its last record
before the engine's stores close; a tracer or a custom metric may subscribe the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Awaitable, Callable

__all__ = ["EngineClosed", "EngineEvent", "RequestFinished", "Subscribers"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class RequestFinished:
    """A request the engine's pipeline served (`invoke`, `stream` and their async twins)
    finished, answered or failed.

    Answers served from the in-process (L1) cache are counted in `engine.stats` but neither
    timed nor announced: they never leave the caller's thread. The LiteLLM adapter's calls
    are timed in `engine.stats` by the adapter itself, not announced here.
    """

    latency_ms: float
    """From the request reaching the portal to its end."""
    error: BaseException | None = None
    """What it raised (a typed `YmeraError`, or `CancelledError`), or `None`."""

    @property
    def ok(self) -> bool:
        """Whether the request was answered."""
        return self.error is None


@dataclasses.dataclass(frozen=True, slots=True)
class EngineClosed:
    """The engine is closing: integrations have stopped feeding it work, and its stores and
    connections are still open until the work handed to `wait_until` is done."""

    pending: list[Awaitable[None]] = dataclasses.field(
        default_factory=list, init=False, repr=False, compare=False
    )
    """Work subscribers asked the engine to await before it closes its parts."""

    def wait_until(self, work: Awaitable[None]) -> None:
        """Have the engine await `work` (on the portal) before it closes its stores.

        For what a subscriber must do asynchronously at close, like the monitor's last
        publish; a failure of `work` is logged, not raised.
        """
        self.pending.append(work)


EngineEvent = RequestFinished | EngineClosed
"""Every kind of engine event."""

_KINDS: tuple[type[EngineEvent], ...] = (RequestFinished, EngineClosed)

Callback = Callable[[EngineEvent], object]


class Subscribers:
    """An engine's subscriber lists, one per kind of event.

    Subscribing takes a lock; emitting does not: each kind's list is a tuple replaced whole,
    so an emit sees a consistent list, and a callback may unsubscribe while it runs.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_kind: dict[type[EngineEvent], tuple[Callback, ...]] = {}

    def __repr__(self) -> str:
        counts = ", ".join(f"{k.__name__}: {len(v)}" for k, v in self._by_kind.items())
        return f"<Subscribers {{{counts}}}>"

    def subscribe(self, callback: Callback, *kinds: type[EngineEvent]) -> Callable[[], None]:
        """Call `callback(event)` for each event of `kinds` (default: every kind).

        Returns:
            A function that unsubscribes (idempotent).

        Raises:
            TypeError: A kind is not an engine event class.
        """
        wanted = kinds or _KINDS
        for kind in wanted:
            if kind not in _KINDS:
                raise TypeError(f"not an engine event: {kind!r}")
        with self._lock:
            for kind in wanted:
                self._by_kind[kind] = (*self._by_kind.get(kind, ()), callback)

        subscribed = [True]

        def unsubscribe() -> None:
            with self._lock:
                if not subscribed[0]:
                    return
                subscribed[0] = False
                for kind in wanted:
                    callbacks = list(self._by_kind.get(kind, ()))
                    if callback in callbacks:
                        callbacks.remove(callback)
                    if callbacks:
                        self._by_kind[kind] = tuple(callbacks)
                    else:
                        self._by_kind.pop(kind, None)

        return unsubscribe

    def wants(self, kind: type[EngineEvent]) -> bool:
        """Whether anyone listens to `kind` (so the event is worth building)."""
        return kind in self._by_kind

    def emit(self, event: EngineEvent) -> None:
        """Call each subscriber of the event's kind; a subscriber's exception is logged."""
        for callback in self._by_kind.get(type(event), ()):
            try:
                callback(event)
            except Exception:
                logger.exception("engine event subscriber %r failed", callback)
