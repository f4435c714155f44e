"""Bucket arithmetic: the pure functions over the quota records every store keeps.

This module owns the formulas of the quota ledger (`ymera_groq_plugin.quota` explains what the
ledger models and why): how each of an (organisation, model)'s four levels drains at
`limit / window` per second, when a request fits (`room_wait`), reserving on all four buckets or
on none (`try_reserve`), settling a reservation into consumption (`settle_bucket`), folding in
what Groq reported (`apply_observation`, fed by `observation_from` from headers and 429 texts),
and reading a state forward in time (`project`, `wait_for`, `free_fraction`, `headroom_of`).

Everything here is pure: no I/O, no clock (`now` is always passed in), no state but the `Bucket`
record handed in. `storage.memory` keeps `Bucket` records and calls these functions;
`storage/lua/quota_common.lua` runs the same formulas inside Redis; `quota.QuotaLedger` and
`quota.QuotaManager` use them to read the states the stores return. Nothing above `storage` is
imported but the leaf module `types`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from ..types import RateLimits
from .quota_base import KINDS, NO_LIMITS, WINDOWS, Limits, Observation, QuotaState

__all__ = [
    "MARGIN",
    "Bucket",
    "Headroom",
    "apply_observation",
    "can_fit",
    "drain",
    "empty_state",
    "free_fraction",
    "headroom_of",
    "limits_in_force",
    "observation_from",
    "project",
    "room_wait",
    "settle_bucket",
    "snapshot",
    "token_cap",
    "try_reserve",
    "wait_for",
]

MARGIN = 1e-3
"""Seconds of refill a partly drained level is counted short, settling ties in Groq's favour.

Draining leaves float residues, Groq computes its own with other roundings, and an epoch clock
moves in steps of about 2e-7 s: at an exact boundary (a level of 3.0000000000000067 against
Groq's 3.0000000000000004, say) the two could disagree, and Groq would answer 429. So a level
above zero counts `limit × MARGIN / window` higher (a millisecond of refill, far above any
rounding and far below anything that costs throughput), and every wait is a millisecond longer,
so that waiting what the ledger says is always enough. An empty bucket gets no margin: a
request of exactly the limit still fits. The Redis script uses the same rule.
"""


class Bucket:
    """The mutable record of one (organisation, model): the in-memory store's unit of state.

    `levels[i]` is consumption still draining for kind `KINDS[i]`, as of `updated`.
    """

    __slots__ = (
        "cool_until",
        "learned",
        "levels",
        "outstanding",
        "pending_requests",
        "pending_tokens",
        "remaining_requests",
        "remaining_tokens",
        "reported_at",
        "updated",
    )

    def __init__(self, now: float) -> None:
        self.levels: list[float] = [0.0, 0.0, 0.0, 0.0]
        self.pending_requests = 0.0
        self.pending_tokens = 0.0
        self.learned: list[int | None] = [None, None, None, None]
        self.cool_until = 0.0
        self.updated = now
        self.remaining_requests: int | None = None
        self.remaining_tokens: int | None = None
        self.reported_at: float | None = None
        self.outstanding = 0


def limits_in_force(defaults: Limits, learned: Sequence[int | None]) -> Limits:
    """Learned limits where known, else the catalog's."""
    a, b, c, d = learned
    return (
        defaults[0] if a is None else a,
        defaults[1] if b is None else b,
        defaults[2] if c is None else c,
        defaults[3] if d is None else d,
    )


def drain(bucket: Bucket, limits: Limits, now: float) -> None:
    """Let every level drain at `limit / window` per second up to `now` (never below zero).

    A clock that reads earlier than the last update (another host's) drains nothing.
    """
    elapsed = now - bucket.updated
    if elapsed <= 0:
        return
    levels = bucket.levels
    for i in range(4):
        level = levels[i]
        if level > 0.0:
            lim = limits[i]
            if lim:
                level -= elapsed * lim / WINDOWS[i]
                levels[i] = level if level > 0.0 else 0.0
    bucket.updated = now


def room_wait(
    levels: Sequence[float],
    pending_requests: float,
    pending_tokens: float,
    limits: Limits,
    cool_until: float,
    requests: float,
    tokens: float,
    now: float,
) -> float:
    """Seconds until `requests` and `tokens` fit every bucket (0: now; `inf`: never).

    Pending reservations are assumed to stay: the wait is how long the consumed part must
    drain, plus `MARGIN`, so that after waiting it fits with room to spare. A request larger
    than a limit never fits.
    """
    wait = cool_until - now + MARGIN if cool_until > now else 0.0
    for i in range(4):
        lim = limits[i]
        if lim is None:
            continue
        if i < 2:
            amount, pending = requests, pending_requests
        else:
            amount, pending = tokens, pending_tokens
        if amount > lim:
            return math.inf
        level = levels[i]
        if level > 0.0:
            level += lim * MARGIN / WINDOWS[i]
        excess = level + pending + amount - lim
        if excess > 0.0:
            w = excess * WINDOWS[i] / lim + MARGIN
            if w > wait:
                wait = w
    return wait


def try_reserve(
    bucket: Bucket, defaults: Limits, requests: float, tokens: float, now: float
) -> float:
    """Reserve on all four buckets, or on none.

    Returns:
        0 when reserved; else the seconds until it would fit (`inf`: never).
    """
    limits = limits_in_force(defaults, bucket.learned)
    drain(bucket, limits, now)
    wait = room_wait(
        bucket.levels,
        bucket.pending_requests,
        bucket.pending_tokens,
        limits,
        bucket.cool_until,
        requests,
        tokens,
        now,
    )
    if wait <= 0.0:
        bucket.pending_requests += requests
        bucket.pending_tokens += tokens
        bucket.outstanding += 1
        return 0.0
    return wait


def settle_bucket(
    bucket: Bucket,
    defaults: Limits,
    now: float,
    *,
    reserved: tuple[float, float] | None,
    used_requests: float,
    used_tokens: float,
    observation: Observation | None = None,
) -> None:
    """Take back a reservation, charge what was used, then fold in what Groq said.

    Args:
        reserved: The reservation's `(requests, tokens)`; `None` when there is none (already
            settled, expired, or a charge without a reservation).
        used_requests: Requests to charge to RPM and RPD (0 to release).
        used_tokens: Tokens to charge to TPM and TPD (0 to release).
        observation: Limits, levels and cooldown reported by Groq.
    """
    limits = limits_in_force(defaults, bucket.learned)
    drain(bucket, limits, now)
    if reserved is not None:
        r, t = reserved
        bucket.pending_requests = max(0.0, bucket.pending_requests - r)
        bucket.pending_tokens = max(0.0, bucket.pending_tokens - t)
        bucket.outstanding = max(0, bucket.outstanding - 1)
    levels = bucket.levels
    # A kind without a limit is not tracked: with no refill rate its level could only grow.
    if used_requests:
        if limits[0]:
            levels[0] += used_requests
        if limits[1]:
            levels[1] += used_requests
    if used_tokens:
        if limits[2]:
            levels[2] += used_tokens
        if limits[3]:
            levels[3] += used_tokens
    if observation is not None:
        apply_observation(bucket, defaults, observation, now)


def apply_observation(
    bucket: Bucket, defaults: Limits, observation: Observation, now: float
) -> None:
    """Fold what Groq reported into a bucket that is already drained to `now`.

    Learned limits change first (they set the limit the floors are measured against); then each
    floor raises the level where Groq counts more than consumed plus reserved; then the
    observation's `charges` are added (consumption reconciled after an outage of the store).
    """
    for i, lim in enumerate(observation.limits):
        if lim is not None and lim > 0:
            bucket.learned[i] = lim
    limits = limits_in_force(defaults, bucket.learned)
    levels = bucket.levels
    for i, floor in enumerate(observation.floors):
        if floor is None or not limits[i]:
            continue
        pending = bucket.pending_requests if i < 2 else bucket.pending_tokens
        gap = floor - (levels[i] + pending)
        if gap > 0:
            levels[i] += gap
    for i, charge in enumerate(observation.charges):
        if charge > 0 and limits[i]:
            levels[i] += charge
    if observation.remaining_requests is not None or observation.remaining_tokens is not None:
        bucket.remaining_requests = observation.remaining_requests
        bucket.remaining_tokens = observation.remaining_tokens
        bucket.reported_at = now
    if observation.cool_until is not None and observation.cool_until > bucket.cool_until:
        bucket.cool_until = observation.cool_until


def snapshot(bucket: Bucket, defaults: Limits) -> QuotaState:
    """An immutable copy of a bucket record."""
    learned = tuple(bucket.learned)
    return QuotaState(
        levels=tuple(bucket.levels),  # type: ignore[arg-type]
        pending_requests=bucket.pending_requests,
        pending_tokens=bucket.pending_tokens,
        limits=limits_in_force(defaults, learned),
        learned=learned,  # type: ignore[arg-type]
        cool_until=bucket.cool_until,
        updated=bucket.updated,
        remaining_requests=bucket.remaining_requests,
        remaining_tokens=bucket.remaining_tokens,
        reported_at=bucket.reported_at,
        outstanding=bucket.outstanding,
    )


def empty_state(defaults: Limits, now: float) -> QuotaState:
    """The state of an (organisation, model) nothing is known about."""
    return QuotaState((0.0, 0.0, 0.0, 0.0), 0.0, 0.0, defaults, NO_LIMITS, 0.0, now)


def project(state: QuotaState, now: float) -> QuotaState:
    """The state drained forward to `now` (what a store would report then, barring changes)."""
    elapsed = now - state.updated
    if elapsed <= 0:
        return state
    limits = state.limits
    lv = list(state.levels)
    for i in range(4):
        lim = limits[i]
        if lim and lv[i] > 0:
            lv[i] = max(0.0, lv[i] - elapsed * lim / WINDOWS[i])
    return state._replace(levels=(lv[0], lv[1], lv[2], lv[3]), updated=now)


def wait_for(state: QuotaState, requests: float, tokens: float, now: float) -> float:
    """Seconds until a request fits a (possibly old) state: 0 now, `inf` never."""
    s = project(state, now)
    return room_wait(
        s.levels,
        s.pending_requests,
        s.pending_tokens,
        s.limits,
        s.cool_until,
        requests,
        tokens,
        now,
    )


def free_fraction(state: QuotaState, requests: float, tokens: float, now: float) -> float:
    """The smallest share of a limit left after this request (negative: it does not fit)."""
    elapsed = now - state.updated
    limits = state.limits
    levels = state.levels
    best = 1.0
    for i in range(4):
        lim = limits[i]
        if not lim:
            continue
        level = levels[i]
        if elapsed > 0 and level > 0:
            level -= elapsed * lim / WINDOWS[i]
            if level < 0:
                level = 0.0
        if i < 2:
            frac = (lim - level - state.pending_requests - requests) / lim
        else:
            frac = (lim - level - state.pending_tokens - tokens) / lim
        if frac < best:
            best = frac
    return best


class Headroom(NamedTuple):
    """What is left of one (organisation, model)'s allowance.

    Attributes:
        remaining_requests: Requests that fit now (the tighter of RPM and RPD; `inf`: no limit).
        remaining_tokens: Tokens that fit now (the tighter of TPM and TPD; `inf`: no limit).
        reset_at: When every bucket will have drained empty (epoch seconds), barring new use.
        fraction: The smallest share of any limit left, in [0, 1]; 0 while cooling down.
        org: The organisation.
    """

    remaining_requests: float
    remaining_tokens: float
    reset_at: float
    fraction: float
    org: str | None = None


def headroom_of(state: QuotaState, now: float, org: str | None = None) -> Headroom:
    """The `Headroom` of a state at `now`."""
    s = project(state, now)
    rem = [math.inf, math.inf]
    frac = 1.0
    reset = now
    for i in range(4):
        lim = s.limits[i]
        if not lim:
            continue
        left = lim - s.used(i)
        j = 0 if i < 2 else 1
        rem[j] = min(rem[j], max(0.0, left))
        frac = min(frac, left / lim)
        reset = max(reset, now + s.levels[i] * WINDOWS[i] / lim)
    if s.cool_until > now:
        frac = 0.0
    return Headroom(rem[0], rem[1], reset, min(1.0, max(0.0, frac)), org)


def observation_from(
    rate_limits: RateLimits | None,
    limits: Limits,
    *,
    completion_tokens: float = 0.0,
    elapsed: float = 0.0,
    cool_until: float | None = None,
) -> Observation:
    """Turn what one Groq response said into an `Observation` of its (organisation, model).

    `*-requests` headers are requests per day and `*-tokens` headers tokens per minute; a
    429/413 text names its own kind (and is the only source for RPM and TPD). Groq computed
    `remaining` when it admitted the request, before the completion was charged, so the
    completion is added to the token floor, and what drained since the reservation is taken
    off both.

    Args:
        rate_limits: Parsed headers and error text (`None`: nothing reported).
        limits: The limits in force for the organisation and model.
        completion_tokens: Completion tokens of this response (charged after admission).
        elapsed: Seconds since the reservation (drain Groq applied meanwhile).
        cool_until: A cooldown to set.
    """
    if rate_limits is None:
        return Observation(cool_until=cool_until)
    learned: list[int | None] = [None, None, None, None]
    floors: list[float | None] = [None, None, None, None]
    for i, lim_h, rem_h, reset_h, extra in (
        (
            1,
            rate_limits.limit_requests,
            rate_limits.remaining_requests,
            rate_limits.reset_requests,
            0.0,
        ),
        (
            2,
            rate_limits.limit_tokens,
            rate_limits.remaining_tokens,
            rate_limits.reset_tokens,
            completion_tokens,
        ),
    ):
        if lim_h:
            learned[i] = lim_h
        lim = lim_h or limits[i]
        if not lim:
            continue
        used: float | None = None
        if rem_h is not None:
            used = max(0.0, float(lim - rem_h))
        elif reset_h is not None:
            used = min(float(lim), reset_h * lim / WINDOWS[i])
        if used is not None:
            floors[i] = max(0.0, used - max(0.0, elapsed) * lim / WINDOWS[i]) + extra
    kind = rate_limits.limit_kind
    if kind is not None and rate_limits.limit_value:
        i = KINDS.index(kind)
        learned[i] = rate_limits.limit_value
        if rate_limits.used is not None:
            floors[i] = max(floors[i] or 0.0, float(rate_limits.used))
    return Observation(
        limits=(learned[0], learned[1], learned[2], learned[3]),
        floors=(floors[0], floors[1], floors[2], floors[3]),
        remaining_requests=rate_limits.remaining_requests,
        remaining_tokens=rate_limits.remaining_tokens,
        cool_until=cool_until,
    )


def can_fit(limits: Limits, tokens: float) -> bool:
    """Whether one request of `tokens` can ever fit these limits."""
    rpm, rpd, tpm, tpd = limits
    return (
        (rpm is None or rpm >= 1)
        and (rpd is None or rpd >= 1)
        and (tpm is None or tpm >= tokens)
        and (tpd is None or tpd >= tokens)
    )


def token_cap(limits: Limits) -> int:
    """The largest request these limits admit (2**62 when tokens are not limited)."""
    caps = [lim for lim in (limits[2], limits[3]) if lim]
    return min(caps) if caps else 2**62
