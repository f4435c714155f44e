"""Rate-limit arithmetic of the local Groq server: four refilling buckets per (organisation, model).

Groq's limiter refills continuously (groq-api.md §1.3): the `x-ratelimit-reset-*` headers equal
`(limit − remaining) × window / limit` in every recording, so each limit is modelled as a token
bucket with capacity `limit` refilling at `limit / window` per second. Admission checks the
request buckets for one request and the token buckets for the request's *input* tokens only;
completion tokens are charged afterwards and may push a token bucket below zero ("Used" above
"Limit" in Groq's messages), which later requests then wait out.

Times here are *server seconds*: the caller multiplies its clock by the time scale, so the same
arithmetic serves real time, accelerated demos and fake clocks.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from ..catalog import ModelLimits

__all__ = ["RPD", "RPM", "TPD", "TPM", "LimitSpec", "RateLimiter", "Refusal", "Snapshot"]


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """One of the four limits Groq enforces."""

    code: str
    """`RPM`, `RPD`, `TPM` or `TPD`, as Groq's 429 message names it."""
    phrase: str
    """`requests per minute` …, as the message spells it."""
    unit: str
    """`requests` or `tokens`: the error's `type`."""
    field: str
    """The `ModelLimits` attribute."""
    window: float
    """Seconds for a full refill."""


RPM = LimitSpec("RPM", "requests per minute", "requests", "rpm", 60.0)
RPD = LimitSpec("RPD", "requests per day", "requests", "rpd", 86_400.0)
TPM = LimitSpec("TPM", "tokens per minute", "tokens", "tpm", 60.0)
TPD = LimitSpec("TPD", "tokens per day", "tokens", "tpd", 86_400.0)
_SPECS = (RPM, RPD, TPM, TPD)


class _Bucket:
    """A token bucket whose level may go negative (debt from completion tokens)."""

    __slots__ = ("level", "limit", "rate", "stamp")

    def __init__(self, limit: int, window: float, now: float) -> None:
        self.limit = float(limit)
        self.rate = limit / window
        self.level = float(limit)
        self.stamp = now

    def available(self, now: float) -> float:
        elapsed = now - self.stamp
        if elapsed <= 0:
            return self.level
        return min(self.limit, self.level + elapsed * self.rate)

    def take(self, now: float, amount: float) -> None:
        self.level = self.available(now) - amount
        self.stamp = max(now, self.stamp)

    def wait(self, now: float, amount: float) -> float:
        """Seconds until `amount` is available."""
        return max(0.0, amount - self.available(now)) / self.rate

    def until_full(self, now: float) -> float:
        return max(0.0, self.limit - self.available(now)) / self.rate


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was not admitted: the limit that binds longest."""

    spec: LimitSpec
    limit: int
    used: int
    """`limit − available`, rounded up: what Groq prints as "Used"."""
    requested: int
    wait: float
    """Server seconds until the request would be admitted by this limit."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the `x-ratelimit-*` headers report: RPD for requests, TPM for tokens."""

    requests_limit: int | None
    requests_remaining: int
    requests_reset: float
    tokens_limit: int | None
    tokens_remaining: int
    tokens_reset: float


class RateLimiter:
    """Buckets per (organisation, model), all arithmetic under one lock.

    The lock is held only for a few float operations per request, so one lock for every
    organisation and model is cheaper than a lock per bucket and keeps multi-bucket admission
    atomic.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], dict[LimitSpec, _Bucket]] = {}

    def _get(
        self, org: str, model: str, limits: ModelLimits, now: float
    ) -> dict[LimitSpec, _Bucket]:
        key = (org, model)
        buckets = self._buckets.get(key)
        if buckets is None:
            buckets = {}
            for spec in _SPECS:
                limit = getattr(limits, spec.field)
                if limit is not None:
                    buckets[spec] = _Bucket(limit, spec.window, now)
            self._buckets[key] = buckets
        return buckets

    def admit(
        self, org: str, model: str, limits: ModelLimits, tokens: int, now: float
    ) -> tuple[Refusal | None, Snapshot]:
        """Admit one request of `tokens` input tokens, or refuse it without consuming anything.

        Args:
            org: The organisation the key belongs to.
            model: The model id.
            limits: The model's limits (fixed per model for the server's life).
            tokens: The request's estimated input tokens.
            now: Server seconds.

        Returns:
            `(None, snapshot)` when admitted (the snapshot counts this request), else
            `(refusal, snapshot)` with the limit whose wait is longest.
        """
        with self._lock:
            buckets = self._get(org, model, limits, now)
            refusal: Refusal | None = None
            for spec, bucket in buckets.items():
                amount = 1.0 if spec.unit == "requests" else float(tokens)
                wait = bucket.wait(now, amount)
                if wait > 0 and (refusal is None or wait > refusal.wait):
                    used = max(0, math.ceil(bucket.limit - bucket.available(now) - 1e-9))
                    requested = 1 if spec.unit == "requests" else tokens
                    refusal = Refusal(spec, int(bucket.limit), used, requested, wait)
            if refusal is None:
                for spec, bucket in buckets.items():
                    bucket.take(now, 1.0 if spec.unit == "requests" else float(tokens))
            return refusal, self._snapshot(buckets, now)

    def charge(self, org: str, model: str, limits: ModelLimits, tokens: int, now: float) -> None:
        """Charge completion tokens to the token buckets (they may go into debt)."""
        if tokens <= 0:
            return
        with self._lock:
            buckets = self._get(org, model, limits, now)
            for spec in (TPM, TPD):
                bucket = buckets.get(spec)
                if bucket is not None:
                    bucket.take(now, float(tokens))

    def snapshot(self, org: str, model: str, limits: ModelLimits, now: float) -> Snapshot:
        """The header values right now, without consuming anything."""
        with self._lock:
            return self._snapshot(self._get(org, model, limits, now), now)

    def available(
        self, org: str, model: str, limits: ModelLimits, now: float
    ) -> dict[str, float | None]:
        """Exact availability per limit (`rpm`, `rpd`, `tpm`, `tpd`; `None` = no such limit)."""
        with self._lock:
            buckets = self._get(org, model, limits, now)
            return {
                spec.field: (buckets[spec].available(now) if spec in buckets else None)
                for spec in _SPECS
            }

    def clear(self) -> None:
        """Refill everything (buckets are recreated full on next use)."""
        with self._lock:
            self._buckets.clear()

    @staticmethod
    def _snapshot(buckets: dict[LimitSpec, _Bucket], now: float) -> Snapshot:
        rpd = buckets.get(RPD)
        tpm = buckets.get(TPM)
        return Snapshot(
            requests_limit=int(rpd.limit) if rpd else None,
            requests_remaining=max(0, math.floor(rpd.available(now))) if rpd else 0,
            requests_reset=rpd.until_full(now) if rpd else 0.0,
            tokens_limit=int(tpm.limit) if tpm else None,
            tokens_remaining=max(0, math.floor(tpm.available(now))) if tpm else 0,
            tokens_reset=tpm.until_full(now) if tpm else 0.0,
        )
