"""Key health while Redis is away (`ResilientKeyStateStore`).

The last records read stay in force; changes made meanwhile (a key disabled after 401, a merge)
apply at once here and are written to Redis when it is back; failure counts are kept locally.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from ...clock import Clock
from ...errors import StorageError
from ..memory import MemoryKeyStateStore
from ..quota_base import KEY_FIELDS, KeyStates, KeyStateStore, Report
from .fallback import Fallback, FallbackStore

__all__ = ["ResilientKeyStateStore"]


class ResilientKeyStateStore(FallbackStore):
    """A `KeyStateStore` that keeps the last known key health while its primary is away.

    Changes made meanwhile (a key disabled, organisations merged) apply here at once and are
    written to the primary, in order, when it is back. Failure counts are kept locally.

    Args:
        primary: The shared store (`RedisKeyStateStore`).
        clock: Wall clock for the breaker.
        retry_after: Seconds before the first retry of the primary (doubling per failure).
        max_retry_after: Cap of the doubling.
    """

    shared = True

    def __init__(
        self,
        primary: KeyStateStore,
        *,
        clock: Clock = time.time,
        retry_after: float = 1.0,
        max_retry_after: float = 30.0,
    ) -> None:
        self.primary = primary
        self.local = MemoryKeyStateStore()
        self._fb = Fallback(
            "key state store", clock, retry_after, max_retry_after, recover=self._replay
        )
        self._pending: deque[tuple[str, str, Any]] = deque()

    @classmethod
    def wrap(cls, primary: KeyStateStore, **kwargs: Any) -> KeyStateStore:
        """`primary` itself when it is local, else a wrapper."""
        if not getattr(primary, "shared", True):
            return primary
        return cls(primary, **kwargs)

    async def load(self, labels: Sequence[str]) -> KeyStates:
        async def shared() -> KeyStates:
            states = await self.primary.load(labels)
            self.local.mirror(labels, states)
            return states

        return await self._fb.call("load", shared, lambda: self.local.load(labels))

    async def update(self, label: str, changes: Mapping[str, str | int | float | None]) -> None:
        unknown = set(changes) - KEY_FIELDS
        if unknown:
            raise ValueError(f"unknown key record fields: {sorted(unknown)}")
        await self.local.update(label, changes)

        async def later() -> None:
            self._pending.append(("update", label, dict(changes)))

        await self._fb.call("update", lambda: self.primary.update(label, changes), later)

    async def record_failure(self, label: str, *, now: float, window: float) -> int:
        return await self._fb.call(
            "record_failure",
            lambda: self.primary.record_failure(label, now=now, window=window),
            lambda: self.local.record_failure(label, now=now, window=window),
        )

    async def set_alias(self, org: str, canonical: str) -> bool:
        new = await self.local.set_alias(org, canonical)

        async def later() -> bool:
            self._pending.append(("alias", org, canonical))
            return new

        return await self._fb.call(
            "set_alias", lambda: self.primary.set_alias(org, canonical), later
        )

    async def report(
        self,
        model: str,
        org: str,
        report: Report,
        *,
        orgs: Sequence[str],
        window: float,
        keep: int,
    ) -> dict[str, list[Report]]:
        # Reports are evidence, not state: while the primary is away, this process compares
        # against what it sees itself.
        return await self._fb.call(
            "report",
            lambda: self.primary.report(model, org, report, orgs=orgs, window=window, keep=keep),
            lambda: self.local.report(model, org, report, orgs=orgs, window=window, keep=keep),
        )

    async def _replay(self) -> None:
        if not await self.primary.check():
            raise StorageError("redis key state: still unreachable")
        while self._pending:
            kind, a, b = self._pending[0]
            if kind == "update":
                await self.primary.update(a, b)
            else:
                await self.primary.set_alias(a, b)
            self._pending.popleft()

    async def clear(self) -> None:
        await self.local.clear()
        self._pending.clear()
        await self.primary.clear()

    async def check(self) -> bool:
        return await self.primary.check()

    async def aclose(self) -> None:
        await self._fb.aclose()
        await self.primary.aclose()

    def __repr__(self) -> str:
        return f"<ResilientKeyStateStore {self.primary!r} {self._fb.breaker!r}>"
