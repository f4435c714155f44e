"""Protocols and records of the two shared-state concerns of quota: buckets and key health.

`QuotaStore` keeps, per (organisation, model), the four draining buckets (RPM, RPD, TPM, TPD),
the outstanding reservations, the limits learned from Groq and the cooldown after a 429.
`KeyStateStore` keeps what is known about each key (disabled, failing, its Groq organisation)
and which configured organisations turned out to share one budget.

Both are shared by every process that uses the same backend (Redis), so a 429 seen by one
worker, or a limit learned by it, changes what every worker does. The arithmetic lives in
`storage.buckets` (pure functions); a store only keeps the records and applies that
arithmetic atomically: the in-memory store calls the functions, the Redis store runs the same
formulas in one Lua script per operation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

__all__ = [
    "KEY_FIELDS",
    "KINDS",
    "NO_LIMITS",
    "WINDOWS",
    "KeyRecord",
    "KeyStateStore",
    "KeyStates",
    "Limits",
    "Observation",
    "QuotaState",
    "QuotaStore",
    "Report",
    "key_record_from",
]

KINDS: tuple[str, str, str, str] = ("rpm", "rpd", "tpm", "tpd")
"""The four limits Groq enforces per organisation and model, in the order every tuple uses."""

WINDOWS: tuple[float, float, float, float] = (60.0, 86400.0, 60.0, 86400.0)
"""Seconds a full bucket of each kind takes to refill (minute limits; rolling 24 h limits)."""

Limits = tuple[int | None, int | None, int | None, int | None]
"""A limit per kind (`KINDS` order); `None` means "no such limit"."""

NO_LIMITS: Limits = (None, None, None, None)


class QuotaState(NamedTuple):
    """One (organisation, model)'s buckets as a store saw them at `updated`.

    `levels` are what was consumed and is still draining (each kind drains at
    `limit / window` per second); `pending_*` are outstanding reservations, which do not drain
    (they are taken back exactly on release, or turned into consumption on settle). Room for a
    request exists when `level + pending + amount <= limit` for every kind with a limit.
    """

    levels: tuple[float, float, float, float]
    pending_requests: float
    pending_tokens: float
    limits: Limits
    """The limits in force: learned ones where known, else the catalog's."""
    learned: Limits
    """Limits learned from Groq's headers and 429 texts (shared, outlive the process)."""
    cool_until: float
    """No reservation before this time (a 429's `retry-after`, a spent daily allowance)."""
    updated: float
    remaining_requests: int | None = None
    """`x-ratelimit-remaining-requests` (requests per day) as Groq last reported it."""
    remaining_tokens: int | None = None
    """`x-ratelimit-remaining-tokens` (tokens per minute) as Groq last reported it."""
    reported_at: float | None = None
    outstanding: int = 0
    """Reservations neither settled, released nor expired."""

    def pending(self, i: int) -> float:
        """Pending amount for kind `i` (requests for RPM/RPD, tokens for TPM/TPD)."""
        return self.pending_requests if i < 2 else self.pending_tokens

    def used(self, i: int) -> float:
        """Consumed plus reserved for kind `i`."""
        return self.levels[i] + (self.pending_requests if i < 2 else self.pending_tokens)


@dataclass(frozen=True, slots=True)
class Observation:
    """What Groq said about one (organisation, model), folded into its buckets.

    Attributes:
        limits: Limits in force that Groq reported (headers, 429/413 texts); `None`: no news.
        floors: How much of each bucket Groq counts as used now. Where the ledger counts less
            (consumed plus reserved), its level is raised to match: the server wins.
        remaining_requests: `x-ratelimit-remaining-requests`, kept for display.
        remaining_tokens: `x-ratelimit-remaining-tokens`, kept for display.
        cool_until: No reservation before this time.
        charges: Amounts to add to each bucket after the floors (consumption the store did
            not see as it happened: what one process used while the store was unreachable).
            Unlike the usage a settle charges, they go to one kind each.
    """

    limits: Limits = NO_LIMITS
    floors: tuple[float | None, float | None, float | None, float | None] = (
        None,
        None,
        None,
        None,
    )
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    cool_until: float | None = None
    charges: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    @property
    def empty(self) -> bool:
        return (
            self.limits == NO_LIMITS
            and self.floors == (None, None, None, None)
            and self.remaining_requests is None
            and self.remaining_tokens is None
            and self.cool_until is None
            and not any(self.charges)
        )


@runtime_checkable
class QuotaStore(Protocol):
    """Buckets per (organisation, model), shared by every process using the same backend.

    Every method takes `now` (wall-clock seconds, from the caller's injectable clock) and the
    catalog's limits for the model (`defaults`), which apply where nothing was learned.
    """

    shared: bool
    """Whether other processes see the same state (Redis) or only this one (memory)."""

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
        """Take `requests` and `tokens` from all four buckets at once, or nothing.

        Returns:
            `(wait, state)`: `wait` is 0 when reserved, else the seconds until it would fit
            (`inf` if it never can); `state` is the buckets after the attempt.
        """
        ...

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
        """Swap a reservation for what was really used, and fold in what Groq said.

        Args:
            reservation_id: The reservation to take back (`None`: charge/observe only).
            requests: Requests consumed (charged to RPM and RPD); 0 to release.
            tokens: Tokens consumed (charged to TPM and TPD); 0 to release.
            observation: Limits, levels and cooldown Groq reported.

        Returns:
            `(found, state)`: whether the reservation was still outstanding.
        """
        ...

    async def get(self, org: str, model: str, *, defaults: Limits, now: float) -> QuotaState:
        """The buckets of one (organisation, model) as of `now`."""
        ...

    async def get_many(
        self, items: Sequence[tuple[str, str, Limits]], *, now: float
    ) -> list[QuotaState]:
        """`get` for several (organisation, model, defaults) at once (one round trip)."""
        ...

    async def clear(self) -> None:
        """Forget every bucket, reservation and learned limit of this namespace."""
        ...

    async def check(self) -> bool:
        """Whether the backend answers."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What is known about one key, by label (never the secret).

    Attributes:
        disabled: Why the key was disabled (401/403), or `None`.
        masked: The masked key the record is about: a record for `key1` written when `key1` was
            another key does not apply to the new one.
        failures: Consecutive upstream failures (5xx, 498, timeouts) within the window.
        failure_since: When the first of those failures happened.
        degraded_until: The key is ranked last until this time.
        groq_org: The Groq organisation id a 429/413 text named for this key.
        org_evidence: Why the key is known to share another organisation's budget (a 429
            text, or request counts reported in headers), for display.
    """

    disabled: str | None = None
    masked: str | None = None
    failures: int = 0
    failure_since: float = 0.0
    degraded_until: float = 0.0
    groq_org: str | None = None
    org_evidence: str | None = None


class Report(NamedTuple):
    """One `x-ratelimit-*-requests` report: when, the limit and the remaining count."""

    at: float
    limit: int
    remaining: int


class KeyStates(NamedTuple):
    """Every key record plus the organisation aliases (merged organisations)."""

    records: dict[str, KeyRecord] = {}  # noqa: RUF012 (NamedTuple defaults are never mutated)
    aliases: dict[str, str] = {}  # noqa: RUF012


@runtime_checkable
class KeyStateStore(Protocol):
    """Key health and organisation merges, shared by every process using the same backend."""

    shared: bool

    async def load(self, labels: Sequence[str]) -> KeyStates:
        """The records of these keys (absent ones are healthy) and every alias."""
        ...

    async def update(self, label: str, changes: Mapping[str, str | int | float | None]) -> None:
        """Set fields of one key's record (`None` removes a field)."""
        ...

    async def record_failure(self, label: str, *, now: float, window: float) -> int:
        """Count one failure; failures older than `window` seconds start a new count.

        Returns:
            The consecutive failures now counted.
        """
        ...

    async def set_alias(self, org: str, canonical: str) -> bool:
        """Record that `org` spends the same budget as `canonical`.

        Returns:
            Whether this call recorded it first (no process had), so exactly one process acts
            on a merge (moves the buckets), however many found it at once.
        """
        ...

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
        """Add `org`'s latest request-count report for `model`; return the recent ones of
        `orgs` (reports newer than `report.at - window`, at most `keep` per organisation, oldest
        first), so every process compares counts against the whole fleet's."""
        ...

    async def clear(self) -> None:
        """Forget every record and alias of this namespace."""
        ...

    async def check(self) -> bool:
        """Whether the backend answers."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


KEY_FIELDS: frozenset[str] = frozenset(KeyRecord.__dataclass_fields__)
"""The field names a key record keeps."""


def key_record_from(fields: Mapping[str, str | bytes]) -> KeyRecord:
    """Build a `KeyRecord` from stored string fields, ignoring unknown or malformed ones."""

    def text(name: str) -> str | None:
        v = fields.get(name)
        if v is None:
            return None
        return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)

    def number(name: str) -> float:
        v = text(name)
        try:
            return float(v) if v is not None else 0.0
        except ValueError:
            return 0.0

    return KeyRecord(
        disabled=text("disabled"),
        masked=text("masked"),
        failures=int(number("failures")),
        failure_since=number("failure_since"),
        degraded_until=number("degraded_until"),
        groq_org=text("groq_org"),
        org_evidence=text("org_evidence"),
    )
