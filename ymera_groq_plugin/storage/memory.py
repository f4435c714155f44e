"""In-process stores: the embedded default, with nothing to install or run.

State lives in dictionaries of this process; the event loop that calls them is the only writer,
so no operation needs a lock (none awaits in the middle). The quota arithmetic is the pure
functions of `storage.buckets`, the same formulas the Redis scripts run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

from .buckets import Bucket, empty_state, settle_bucket, snapshot, try_reserve
from .quota_base import (
    KEY_FIELDS,
    KeyRecord,
    KeyStates,
    Limits,
    Observation,
    QuotaState,
    Report,
)

__all__ = ["MemoryKeyStateStore", "MemoryQuotaStore"]


class _Reservation(NamedTuple):
    org: str
    model: str
    requests: float
    tokens: float
    expires: float


class MemoryQuotaStore:
    """Buckets in this process's memory (`memory://`)."""

    shared = False

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], Bucket] = {}
        self._reservations: dict[str, _Reservation] = {}
        self._next_expiry = math.inf

    @classmethod
    def from_url(cls, url: str = "memory://", **kwargs: Any) -> MemoryQuotaStore:
        """Build from `memory://` (keyword arguments such as `namespace` are ignored: the
        store is private to this process anyway)."""
        return cls()

    # -- the operations, synchronous (each is atomic on the loop) -----------------------------

    def _bucket(self, org: str, model: str, now: float) -> Bucket:
        b = self._buckets.get((org, model))
        if b is None:
            b = self._buckets[(org, model)] = Bucket(now)
        return b

    def _expire(self, now: float) -> None:
        """Give back reservations whose process never settled them."""
        if now < self._next_expiry:
            return
        nxt = math.inf
        for rid, r in list(self._reservations.items()):
            if r.expires <= now:
                del self._reservations[rid]
                b = self._buckets.get((r.org, r.model))
                if b is not None:
                    b.pending_requests = max(0.0, b.pending_requests - r.requests)
                    b.pending_tokens = max(0.0, b.pending_tokens - r.tokens)
                    b.outstanding = max(0, b.outstanding - 1)
            elif r.expires < nxt:
                nxt = r.expires
        self._next_expiry = nxt

    def seed(
        self,
        org: str,
        model: str,
        *,
        levels: tuple[float, float, float, float],
        learned: Sequence[float | None],
        cool_until: float,
        now: float,
    ) -> None:
        """Start (org, model) over from known levels and learned limits, dropping its
        reservations (the resilient store's stand-in starts each outage from the shared state)."""
        b = Bucket(now)
        b.levels = [max(0.0, float(x)) for x in levels]
        b.learned = list(learned)  # type: ignore[arg-type]  # a share of a limit is a float
        b.cool_until = cool_until
        self._buckets[(org, model)] = b
        for rid, r in list(self._reservations.items()):
            if r.org == org and r.model == model:
                del self._reservations[rid]

    def reserve_now(
        self,
        org: str,
        model: str,
        *,
        reservation_id: str,
        requests: float,
        tokens: float,
        defaults: Limits,
        now: float,
        ttl: float,
    ) -> tuple[float, QuotaState]:
        """`reserve`, without the coroutine."""
        self._expire(now)
        b = self._bucket(org, model, now)
        if reservation_id in self._reservations:
            raise ValueError("reservation id already in use")
        wait = try_reserve(b, defaults, requests, tokens, now)
        if wait <= 0.0:
            expires = now + ttl
            self._reservations[reservation_id] = _Reservation(org, model, requests, tokens, expires)
            if expires < self._next_expiry:
                self._next_expiry = expires
        return wait, snapshot(b, defaults)

    def settle_now(
        self,
        org: str,
        model: str,
        *,
        reservation_id: str | None,
        requests: float,
        tokens: float,
        defaults: Limits,
        now: float,
        observation: Observation | None = None,
    ) -> tuple[bool, QuotaState]:
        """`settle`, without the coroutine."""
        self._expire(now)
        b = self._bucket(org, model, now)
        reserved: tuple[float, float] | None = None
        if reservation_id is not None:
            r = self._reservations.get(reservation_id)
            if r is not None and r.org == org and r.model == model:
                del self._reservations[reservation_id]
                reserved = (r.requests, r.tokens)
        settle_bucket(
            b,
            defaults,
            now,
            reserved=reserved,
            used_requests=requests,
            used_tokens=tokens,
            observation=observation,
        )
        return reserved is not None, snapshot(b, defaults)

    def get_now(self, org: str, model: str, *, defaults: Limits, now: float) -> QuotaState:
        """`get`, without the coroutine."""
        self._expire(now)
        b = self._buckets.get((org, model))
        if b is None:
            return empty_state(defaults, now)
        settle_bucket(b, defaults, now, reserved=None, used_requests=0, used_tokens=0)
        return snapshot(b, defaults)

    # -- QuotaStore ---------------------------------------------------------------------------

    async def reserve(
        self,
        org: str,
        model: str,
        *,
        reservation_id: str,
        requests: int,
        tokens: int,
        defaults: Limits,
        now: float,
        ttl: float,
    ) -> tuple[float, QuotaState]:
        """Take `requests` and `tokens` from all four buckets, or nothing."""
        return self.reserve_now(
            org,
            model,
            reservation_id=reservation_id,
            requests=requests,
            tokens=tokens,
            defaults=defaults,
            now=now,
            ttl=ttl,
        )

    async def settle(
        self,
        org: str,
        model: str,
        *,
        reservation_id: str | None,
        requests: float,
        tokens: float,
        defaults: Limits,
        now: float,
        observation: Observation | None = None,
    ) -> tuple[bool, QuotaState]:
        """Swap a reservation for what was used and fold in what Groq said."""
        return self.settle_now(
            org,
            model,
            reservation_id=reservation_id,
            requests=requests,
            tokens=tokens,
            defaults=defaults,
            now=now,
            observation=observation,
        )

    async def get(self, org: str, model: str, *, defaults: Limits, now: float) -> QuotaState:
        """The buckets of (org, model) at `now`."""
        return self.get_now(org, model, defaults=defaults, now=now)

    async def get_many(
        self, items: Sequence[tuple[str, str, Limits]], *, now: float
    ) -> list[QuotaState]:
        """`get` for several pairs."""
        return [self.get_now(org, model, defaults=d, now=now) for org, model, d in items]

    async def clear(self) -> None:
        self._buckets.clear()
        self._reservations.clear()
        self._next_expiry = math.inf

    async def check(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return (
            f"<MemoryQuotaStore [{len(self._buckets)} buckets, "
            f"{len(self._reservations)} reservations]>"
        )


class MemoryKeyStateStore:
    """Key health and organisation merges in this process's memory (`memory://`)."""

    shared = False

    def __init__(self) -> None:
        self._records: dict[str, KeyRecord] = {}
        self._aliases: dict[str, str] = {}
        self._reports: dict[tuple[str, str], list[Report]] = {}

    @classmethod
    def from_url(cls, url: str = "memory://", **kwargs: Any) -> MemoryKeyStateStore:
        """Build from `memory://` (keyword arguments are ignored)."""
        return cls()

    def mirror(self, labels: Sequence[str], states: KeyStates) -> None:
        """Take these keys' records and every alias from another store's `load` (the resilient
        store keeps the last state Redis reported this way)."""
        for label in labels:
            rec = states.records.get(label)
            if rec is None:
                self._records.pop(label, None)
            else:
                self._records[label] = rec
        self._aliases = dict(states.aliases)

    async def load(self, labels: Sequence[str]) -> KeyStates:
        return KeyStates(
            {label: self._records[label] for label in labels if label in self._records},
            dict(self._aliases),
        )

    async def update(self, label: str, changes: Mapping[str, str | int | float | None]) -> None:
        unknown = set(changes) - KEY_FIELDS
        if unknown:
            raise ValueError(f"unknown key record fields: {sorted(unknown)}")
        rec = self._records.get(label, KeyRecord())
        values: dict[str, Any] = {}
        for name, value in changes.items():
            if value is None:
                values[name] = KeyRecord.__dataclass_fields__[name].default
            elif name == "failures":
                values[name] = int(value)
            elif name in ("failure_since", "degraded_until"):
                values[name] = float(value)
            else:
                values[name] = str(value)
        self._records[label] = replace(rec, **values)

    async def record_failure(self, label: str, *, now: float, window: float) -> int:
        rec = self._records.get(label, KeyRecord())
        if rec.failures == 0 or now - rec.failure_since > window:
            rec = replace(rec, failures=1, failure_since=now)
        else:
            rec = replace(rec, failures=rec.failures + 1)
        self._records[label] = rec
        return rec.failures

    async def set_alias(self, org: str, canonical: str) -> bool:
        if org == canonical:
            return False
        new = org not in self._aliases
        self._aliases[org] = canonical
        return new

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
        mine = self._reports.setdefault((model, org), [])
        mine.append(report)
        del mine[:-keep]
        since = report.at - window
        out: dict[str, list[Report]] = {}
        for o in orgs:
            recent = [r for r in self._reports.get((model, o), ()) if r.at >= since]
            if recent:
                out[o] = recent[-keep:]
        return out

    async def clear(self) -> None:
        self._records.clear()
        self._aliases.clear()
        self._reports.clear()

    async def check(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"<MemoryKeyStateStore [{len(self._records)} keys, {len(self._aliases)} aliases]>"
