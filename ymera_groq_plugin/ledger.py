"""`QuotaLedger`: reservations against every (organisation, model)'s four buckets, kept in a
`QuotaStore`, with the last state seen of each pair so that choosing costs no round trip. The
arithmetic is `storage/buckets.py`'s; `QuotaManager` (`quota.py`) builds on this."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .clock import Clock
from .storage.buckets import (
    Headroom,
    headroom_of,
    project,
    wait_for,
)
from .storage.quota_base import (
    Limits,
    Observation,
    QuotaState,
    QuotaStore,
)

if TYPE_CHECKING:
    from .catalog import Catalog, ModelInfo


__all__ = ["DEFAULT_RESERVATION_TTL", "EPSILON", "QuotaLedger"]

EPSILON = 1e-9
"""Slack for display rounding."""


DEFAULT_RESERVATION_TTL = 600.0
"""Seconds after which an unsettled reservation is given back (its process probably died)."""


def _limits_of(info: ModelInfo) -> Limits:
    lim = info.limits
    return (lim.rpm, lim.rpd, lim.tpm, lim.tpd)


# -- the ledger: the arithmetic behind a store ----------------------------------------------


class QuotaLedger:
    """Reservations against every (organisation, model)'s four buckets, kept in a `QuotaStore`.

    The ledger also keeps the last state it saw of each pair (`view`), so choosing among
    organisations costs no round trip; reservations themselves are always checked by the store.

    Args:
        store: Where the buckets live (memory, or Redis shared by every process).
        catalog: Default limits per model (the limits in force until Groq reports others).
        clock: Wall-clock seconds.
        reservation_ttl: Seconds after which an unsettled reservation is given back.
    """

    def __init__(
        self,
        store: QuotaStore,
        catalog: Catalog,
        *,
        clock: Clock = time.time,
        reservation_ttl: float = DEFAULT_RESERVATION_TTL,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self._clock = clock
        self.reservation_ttl = reservation_ttl
        self._defaults: dict[str, Limits] = {}
        self._views: dict[tuple[str, str], QuotaState] = {}

    def defaults(self, model: str) -> Limits:
        """The catalog's limits for `model` (`UnknownModelError` if it has no entry)."""
        lim = self._defaults.get(model)
        if lim is None:
            lim = self._defaults[model] = _limits_of(self.catalog.get(model))
        return lim

    def view(self, org: str, model: str) -> QuotaState | None:
        """The last state seen of (org, model), or `None`."""
        return self._views.get((org, model))

    def views(self) -> dict[tuple[str, str], QuotaState]:
        return dict(self._views)

    def limits(self, org: str, model: str) -> Limits:
        """The limits in force as last seen (the catalog's when nothing was seen)."""
        v = self._views.get((org, model))
        return v.limits if v is not None else self.defaults(model)

    async def reserve(
        self,
        org: str,
        model: str,
        reservation_id: str,
        tokens: int,
        *,
        requests: int = 1,
        now: float | None = None,
        defaults: Limits | None = None,
    ) -> tuple[float, QuotaState]:
        """Reserve `requests` and `tokens` on all four buckets, or nothing.

        Args:
            defaults: Limits to apply where none was learned, instead of the catalog's.

        Returns:
            `(wait, state)`: 0 when reserved, else seconds until it would fit (`inf`: never).
        """
        now = self._clock() if now is None else now
        wait, state = await self.store.reserve(
            org,
            model,
            reservation_id=reservation_id,
            requests=requests,
            tokens=tokens,
            defaults=defaults or self.defaults(model),
            now=now,
            ttl=self.reservation_ttl,
        )
        self._views[(org, model)] = state
        return wait, state

    async def settle(
        self,
        org: str,
        model: str,
        reservation_id: str | None,
        *,
        requests: float,
        tokens: float,
        observation: Observation | None = None,
        now: float | None = None,
    ) -> tuple[bool, QuotaState]:
        """Replace a reservation with what was used and fold in what Groq said."""
        now = self._clock() if now is None else now
        found, state = await self.store.settle(
            org,
            model,
            reservation_id=reservation_id,
            requests=requests,
            tokens=tokens,
            defaults=self.defaults(model),
            now=now,
            observation=observation,
        )
        self._views[(org, model)] = state
        return found, state

    async def release(
        self, org: str, model: str, reservation_id: str, *, now: float | None = None
    ) -> tuple[bool, QuotaState]:
        """Give a reservation back in full (the call never reached Groq)."""
        return await self.settle(org, model, reservation_id, requests=0, tokens=0, now=now)

    async def observe(
        self, org: str, model: str, observation: Observation, *, now: float | None = None
    ) -> QuotaState:
        """Fold in what Groq said, without a reservation."""
        _, state = await self.settle(
            org, model, None, requests=0, tokens=0, observation=observation, now=now
        )
        return state

    async def state(self, org: str, model: str, *, now: float | None = None) -> QuotaState:
        """The buckets of (org, model) now, read from the store."""
        now = self._clock() if now is None else now
        state = await self.store.get(org, model, defaults=self.defaults(model), now=now)
        self._views[(org, model)] = state
        return state

    async def states(
        self, pairs: Sequence[tuple[str, str]], *, now: float | None = None
    ) -> list[QuotaState]:
        """`state` for several pairs in one round trip."""
        now = self._clock() if now is None else now
        items = [(org, model, self.defaults(model)) for org, model in pairs]
        states = await self.store.get_many(items, now=now)
        for (org, model), st in zip(pairs, states, strict=True):
            self._views[(org, model)] = st
        return states

    async def headroom(self, org: str, model: str, *, now: float | None = None) -> Headroom:
        """What is left of (org, model)'s allowance now."""
        now = self._clock() if now is None else now
        return headroom_of(await self.state(org, model, now=now), now, org)

    async def time_until_room(
        self, org: str, model: str, tokens: int, *, requests: int = 1, now: float | None = None
    ) -> float:
        """Seconds until a request of `tokens` fits (0: now; `inf`: never)."""
        now = self._clock() if now is None else now
        return wait_for(await self.state(org, model, now=now), requests, tokens, now)

    def __repr__(self) -> str:
        now = self._clock()
        per_model: dict[str, list[float]] = {}
        for (_, model), st in self._views.items():
            s = project(st, now)
            acc = per_model.setdefault(model, [0.0] * 8)
            for i in (0, 2):
                acc[i] += s.used(i)
                acc[i + 4] += s.limits[i] or 0
        if not per_model:
            return "<QuotaLedger (no activity)>"
        parts = []
        for model, acc in list(per_model.items())[:3]:
            parts.append(
                f"{model}: rpm {math.ceil(acc[0] - EPSILON)}/{int(acc[4]) or '∞'}, "
                f"tpm {math.ceil(acc[2] - EPSILON)}/{int(acc[6]) or '∞'}"
            )
        more = "; …" if len(per_model) > 3 else ""
        return f"<QuotaLedger {'; '.join(parts)}{more}>"
