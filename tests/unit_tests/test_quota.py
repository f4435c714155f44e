"""The quota ledger: its arithmetic (with hypothesis properties) and `QuotaManager`'s behaviour.

Time is a `FakeClock`; nothing here sleeps for a window, a cooldown or a deadline.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from ymera_groq_plugin.catalog import Catalog, ModelInfo, ModelLimits
from ymera_groq_plugin.config import ApiKey, YmeraSettings
from ymera_groq_plugin.errors import (
    InvalidRequestError,
    NoUsableKeyError,
    QuotaExhaustedError,
    RequestTooLargeError,
    UnknownModelError,
)
from ymera_groq_plugin.quota import (
    MARGIN,
    WINDOWS,
    Alert,
    Bucket,
    Grant,
    Headroom,
    QuotaLedger,
    QuotaManager,
    drain,
    headroom_of,
    observation_from,
    project,
    room_wait,
    settle_bucket,
    snapshot,
    try_reserve,
    wait_for,
)
from ymera_groq_plugin.storage.memory import MemoryKeyStateStore, MemoryQuotaStore
from ymera_groq_plugin.storage.quota_base import NO_LIMITS, Limits, Observation
from ymera_groq_plugin.testing import FakeClock
from ymera_groq_plugin.types import RateLimits, Usage

MODEL = "test/model"
T0 = 1_800_000_000.0

TPM_TEXT = (
    "Rate limit reached for model `test/model` in organization `org_01shared` service tier "
    "`on_demand` on tokens per minute (TPM): Limit 600, Used 550, Requested 100. Please try "
    "again in 5s. Need more tokens? Upgrade to Dev Tier today at "
    "https://console.groq.com/settings/billing"
)
TPD_TEXT = (
    "Rate limit reached for model `test/model` in organization `org_01day` service tier "
    "`on_demand` on tokens per day (TPD): Limit 100000, Used 97050, Requested 3619. Please try "
    "again in 9m38.016s. Need more tokens? Upgrade to Dev Tier today at "
    "https://console.groq.com/settings/billing"
)
TOO_LARGE_TEXT = (
    "Request too large for model `test/model` in organization `org_01x` service tier "
    "`on_demand` on tokens per minute (TPM): Limit 600, Requested 700, please reduce your "
    "message size and try again. Visit https://console.groq.com/docs/rate-limits for more "
    "information."
)


def make_catalog(
    rpm: int | None = 30, rpd: int | None = 1000, tpm: int | None = 600, tpd: int | None = 100_000
) -> Catalog:
    return Catalog(
        [
            ModelInfo(
                id=MODEL,
                aliases=("small",),
                context_window=8192,
                max_completion_tokens=1024,
                limits=ModelLimits(rpm=rpm, rpd=rpd, tpm=tpm, tpd=tpd),
            ),
            ModelInfo(
                id="other/model",
                context_window=8192,
                max_completion_tokens=1024,
                limits=ModelLimits(rpm=30, rpd=1000, tpm=6000, tpd=100_000),
            ),
        ]
    )


def make_key(n: int, org: str | None = None) -> ApiKey:
    return ApiKey(
        secret=SecretStr(f"gsk_topsecret{n:02d}xxxxxxxxxxxx{n:04d}"), label=f"key{n}", org=org
    )


def make_manager(
    keys: Sequence[ApiKey],
    clock: FakeClock,
    catalog: Catalog | None = None,
    **kwargs: Any,
) -> QuotaManager:
    kwargs.setdefault("max_poll", 0.005)
    return QuotaManager(
        keys,
        catalog or make_catalog(),
        quota_store=kwargs.pop("quota_store", None) or MemoryQuotaStore(),
        key_store=kwargs.pop("key_store", None) or MemoryKeyStateStore(),
        clock=clock,
        **kwargs,
    )


# -- the arithmetic ----------------------------------------------------------------------------

LIMITS: Limits = (3, 100, 100, 1000)


def test_drain_is_linear_and_stops_at_zero() -> None:
    b = Bucket(T0)
    b.levels = [3.0, 3.0, 90.0, 90.0]
    drain(b, LIMITS, T0 + 6)
    assert b.levels == pytest.approx(
        [3 - 6 * 3 / 60, 3 - 6 * 100 / 86400, 80.0, 90 - 6 * 1000 / 86400]
    )
    assert b.updated == T0 + 6
    drain(b, LIMITS, T0 + 600)
    assert b.levels[0] == 0 and b.levels[2] == 0
    drain(b, LIMITS, T0)  # an earlier clock changes nothing
    assert b.updated == T0 + 600


def test_room_wait() -> None:
    # An empty bucket takes a request of exactly its limit.
    assert room_wait([0, 0, 0, 0], 0, 0, LIMITS, 0.0, 3, 100, T0) == 0
    # A drained level counts a millisecond of refill higher: an exact fit on a non-empty
    # bucket is a tie Groq's own rounding may refuse, so it waits that long (plus the margin
    # every wait gets).
    hair = room_wait([0, 0, 60, 60], 1, 20, LIMITS, 0.0, 1, 20, T0)
    assert hair == pytest.approx(2 * MARGIN)
    assert room_wait([0, 0, 60, 60], 1, 20, LIMITS, 0.0, 1, 19, T0) == 0
    # 10 tokens too many on TPM: 10 × 60 / 100 s.
    assert room_wait([0, 0, 60, 60], 1, 20, LIMITS, 0.0, 1, 30, T0) == pytest.approx(6.0, abs=0.01)
    # The longest wait wins, and a cooldown counts.
    assert room_wait([3, 0, 0, 0], 0, 0, LIMITS, T0 + 50, 1, 0, T0) == pytest.approx(50.0, abs=0.01)
    assert room_wait([3, 0, 0, 0], 0, 0, LIMITS, T0 + 5, 1, 0, T0) == pytest.approx(20.0, abs=0.01)
    assert math.isinf(room_wait([0, 0, 0, 0], 0, 0, LIMITS, 0.0, 1, 101, T0))
    assert room_wait([0, 0, 0, 0], 0, 0, (None, None, None, None), 0.0, 99, 10**9, T0) == 0


def test_try_reserve_is_all_or_nothing() -> None:
    b = Bucket(T0)
    assert try_reserve(b, LIMITS, 1, 60, T0) == 0
    assert try_reserve(b, LIMITS, 1, 60, T0) == pytest.approx(12.0, abs=0.01)
    assert (b.pending_requests, b.pending_tokens, b.outstanding) == (1, 60, 1)
    assert try_reserve(b, LIMITS, 1, 40, T0) == 0
    assert (b.pending_requests, b.pending_tokens, b.outstanding) == (2, 100, 2)


def test_settle_charges_usage_and_folds_observations() -> None:
    b = Bucket(T0)
    try_reserve(b, LIMITS, 1, 30, T0)
    settle_bucket(b, LIMITS, T0, reserved=(1, 30), used_requests=1, used_tokens=45)
    assert b.levels == [1, 1, 45, 45] and b.pending_tokens == 0 and b.outstanding == 0
    obs = Observation(
        limits=(None, None, 80, None), floors=(2.0, None, 70.0, None), cool_until=T0 + 3
    )
    settle_bucket(b, LIMITS, T0, reserved=None, used_requests=0, used_tokens=0, observation=obs)
    assert b.levels == [2, 1, 70, 45] and b.learned == [None, None, 80, None]
    assert b.cool_until == T0 + 3
    assert snapshot(b, LIMITS).limits == (3, 100, 80, 1000)


def test_observation_from_headers() -> None:
    rl = RateLimits(
        limit_requests=1000, remaining_requests=990, limit_tokens=8000, remaining_tokens=7000
    )
    obs = observation_from(rl, (30, 1000, 8000, 200_000), completion_tokens=50)
    assert obs.limits == (None, 1000, 8000, None)
    assert obs.floors == (None, 10.0, 1050.0, None)
    assert (obs.remaining_requests, obs.remaining_tokens) == (990, 7000)
    # What drained since the reservation comes off; the completion is charged after admission.
    obs = observation_from(rl, (30, 1000, 8000, 200_000), completion_tokens=50, elapsed=6.0)
    assert obs.floors[2] == pytest.approx(1000 - 6 * 8000 / 60 + 50)
    assert obs.floors[1] == pytest.approx(10 - 6 * 1000 / 86400)
    # Only a reset: used = reset × limit / window.
    obs = observation_from(RateLimits(limit_tokens=18000, reset_tokens=7.66), NO_LIMITS)
    assert obs.floors[2] == pytest.approx(7.66 * 300)
    assert observation_from(None, LIMITS, cool_until=5.0) == Observation(cool_until=5.0)


def test_observation_from_texts_names_rpm_and_tpd() -> None:
    rl = RateLimits(limit_kind="tpd", limit_value=100_000, used=97_050, requested=3619)
    obs = observation_from(rl, (30, 1000, 6000, 500_000))
    assert obs.limits == (None, None, None, 100_000)
    assert obs.floors == (None, None, None, 97_050.0)
    rl = RateLimits(limit_kind="rpm", limit_value=30, used=30, requested=1)
    assert observation_from(rl, LIMITS).floors == (30.0, None, None, None)


def test_project_headroom_and_wait_for() -> None:
    b = Bucket(T0)
    try_reserve(b, LIMITS, 1, 50, T0)
    settle_bucket(b, LIMITS, T0, reserved=(1, 50), used_requests=1, used_tokens=50)
    state = snapshot(b, LIMITS)
    later = project(state, T0 + 15)
    assert later.levels[2] == pytest.approx(25.0) and later.updated == T0 + 15
    assert project(state, T0 - 1) is state
    assert wait_for(state, 1, 60, T0) == pytest.approx(6.0, abs=0.01)
    assert wait_for(state, 1, 60, T0 + 6) == pytest.approx(2 * MARGIN)
    assert wait_for(state, 1, 60, T0 + 6 + wait_for(state, 1, 60, T0)) == 0
    h = headroom_of(state, T0, "org_a")
    assert isinstance(h, Headroom)
    assert h.remaining_requests == 2 and h.remaining_tokens == 50
    assert h.fraction == pytest.approx(0.5)  # TPM is the tightest: half left
    # Every bucket is empty again once TPD has drained its 50 tokens (1000 per day).
    assert h.reset_at == pytest.approx(T0 + 50 * 86400 / 1000)
    assert headroom_of(state._replace(cool_until=T0 + 1), T0).fraction == 0


# -- hypothesis: the ledger's invariants -------------------------------------------------------

limits_st = st.tuples(
    st.one_of(st.none(), st.integers(1, 20)),
    st.one_of(st.none(), st.integers(1, 200)),
    st.one_of(st.none(), st.integers(50, 2000)),
    st.one_of(st.none(), st.integers(100, 50_000)),
)
dt_st = st.sampled_from([0.0, 0.0, 0.001, 0.5, 1.0, 3.0, 7.5, 30.0, 61.0, 3600.0])
op_st = st.tuples(
    st.sampled_from(["reserve", "reserve", "settle", "release"]),
    dt_st,
    st.integers(0, 400),
    st.integers(0, 300),
)


def _assert_within(b: Bucket, limits: Limits) -> None:
    for i, lim in enumerate(limits):
        if lim is not None:
            pending = b.pending_requests if i < 2 else b.pending_tokens
            assert b.levels[i] + pending <= lim + 1e-6


@settings(max_examples=300, deadline=None)
@given(limits=limits_st, ops=st.lists(op_st, max_size=80))
def test_used_never_exceeds_the_limit(
    limits: Limits, ops: list[tuple[str, float, int, int]]
) -> None:
    """Consumed plus reserved stays within every limit after every reservation; settling with
    exactly what was reserved keeps it within at all times."""
    for completion in (False, True):
        b = Bucket(T0)
        now = T0
        held: list[tuple[float, float]] = []
        for kind, dt, tokens, extra in ops:
            now += dt
            if kind == "reserve":
                if try_reserve(b, limits, 1, tokens, now) == 0:
                    held.append((1, tokens))
                    _assert_within(b, limits)
            elif held:
                r, t = held.pop(0)
                used = (t + extra if completion else t) if kind == "settle" else 0
                settle_bucket(
                    b,
                    limits,
                    now,
                    reserved=(r, t),
                    used_requests=r if kind == "settle" else 0,
                    used_tokens=used,
                )
            if not completion:
                _assert_within(b, limits)


@settings(max_examples=300, deadline=None)
@given(
    lim=st.integers(1, 50),
    window=st.sampled_from([0, 2]),
    attempts=st.lists(
        st.tuples(st.sampled_from([0.0, 0.0, 0.1, 1.0, 2.5, 10.0, 60.0]), st.integers(1, 12)),
        max_size=120,
    ),
)
def test_grants_respect_the_bucket_over_every_interval(
    lim: int, window: int, attempts: list[tuple[float, int]]
) -> None:
    """A continuous bucket of `lim` per window admits, over any interval of length d, at most
    `lim + d × lim / window`: check every interval of the granted history."""
    limits: list[int | None] = [None, None, None, None]
    limits[window] = lim
    lim_t: Limits = (limits[0], limits[1], limits[2], limits[3])
    b = Bucket(T0)
    now = T0
    granted: list[tuple[float, int]] = []
    for dt, amount in attempts:
        now += dt
        requests, tokens = (1, amount) if window == 2 else (1, 0)
        if try_reserve(b, lim_t, requests, tokens, now) == 0:
            settle_bucket(
                b,
                lim_t,
                now,
                reserved=(requests, tokens),
                used_requests=requests,
                used_tokens=tokens,
            )
            granted.append((now, tokens if window == 2 else 1))
    rate = lim / WINDOWS[window]
    for i in range(len(granted)):
        total = 0
        for j in range(i, len(granted)):
            total += granted[j][1]
            assert total <= lim + (granted[j][0] - granted[i][0]) * rate + 1e-6


def _run(
    ops: list[tuple[str, float, int, int]], limits: Limits
) -> tuple[Bucket, float, list[tuple[float, float]]]:
    b = Bucket(T0)
    now = T0
    held: list[tuple[float, float]] = []
    for kind, dt, tokens, extra in ops:
        now += dt
        if kind == "reserve":
            if try_reserve(b, limits, 1, tokens, now) == 0:
                held.append((1, tokens))
        elif held:
            r, t = held.pop()
            if kind == "settle":
                settle_bucket(
                    b, limits, now, reserved=(r, t), used_requests=r, used_tokens=t + extra
                )
            else:
                settle_bucket(b, limits, now, reserved=(r, t), used_requests=0, used_tokens=0)
    return b, now, held


@settings(max_examples=300, deadline=None)
@given(
    limits=limits_st,
    ops=st.lists(op_st, max_size=40),
    tokens=st.integers(0, 100),
    hold=dt_st,
    used=st.integers(0, 500),
)
def test_release_and_settle_restore_exactly(
    limits: Limits, ops: list[tuple[str, float, int, int]], tokens: int, hold: float, used: int
) -> None:
    """Reserve then release (however late) leaves exactly the state of never reserving; reserve
    then settle leaves exactly the state of charging the usage without a reservation."""
    base, now, _ = _run(ops, limits)
    if try_reserve(copy.deepcopy(base), limits, 1, tokens, now) != 0:
        return
    released, settled, untouched, charged = (copy.deepcopy(base) for _ in range(4))
    for b in (released, settled):
        assert try_reserve(b, limits, 1, tokens, now) == 0
    # The others are read at the same moment, so every run drains at the same instants
    # (draining in two steps or one can differ in the last bit of a float).
    for b in (untouched, charged):
        settle_bucket(b, limits, now, reserved=None, used_requests=0, used_tokens=0)
    later = now + hold
    settle_bucket(released, limits, later, reserved=(1, tokens), used_requests=0, used_tokens=0)
    settle_bucket(untouched, limits, later, reserved=None, used_requests=0, used_tokens=0)
    assert snapshot(released, limits) == snapshot(untouched, limits)
    settle_bucket(settled, limits, later, reserved=(1, tokens), used_requests=1, used_tokens=used)
    settle_bucket(charged, limits, later, reserved=None, used_requests=1, used_tokens=used)
    assert snapshot(settled, limits) == snapshot(charged, limits)


@settings(max_examples=300, deadline=None)
@given(limits=limits_st, ops=st.lists(op_st, max_size=60))
def test_windows_expire(limits: Limits, ops: list[tuple[str, float, int, int]]) -> None:
    """Once everything is settled, each level is gone after level × window / limit seconds: a
    minute limit within a minute of its last use (barring debt), a day limit within a day."""
    b, now, held = _run(ops, limits)
    for r, t in held:
        settle_bucket(b, limits, now, reserved=(r, t), used_requests=r, used_tokens=t)
    state = project(snapshot(b, limits), now)
    for i in range(4):
        lim = limits[i]
        if lim is None:
            continue
        level = state.levels[i]
        gone_at = now + level * WINDOWS[i] / lim
        assert project(state, gone_at + 1e-6).levels[i] == 0
        if level <= lim:
            assert project(state, now + WINDOWS[i] + 1e-6).levels[i] == 0
        if level > 1e-6:
            assert project(state, now + 0.5 * level * WINDOWS[i] / lim).levels[i] > 0
    # Room for anything that fits the limits returns once every window has passed.
    assert wait_for(state, 1, 0, now + 2 * 86400 + max(state.levels) * 86400) == 0


@settings(max_examples=100, deadline=None)
@given(
    reservations=st.lists(st.tuples(st.integers(0, 50), dt_st), min_size=1, max_size=30),
    ttl=st.sampled_from([1.0, 10.0, 600.0]),
)
def test_unsettled_reservations_come_back(
    reservations: list[tuple[int, float]], ttl: float
) -> None:
    store = MemoryQuotaStore()
    now = T0
    big: Limits = (10**6, 10**6, 10**9, 10**9)
    for n, (tokens, dt) in enumerate(reservations):
        now += dt
        store.reserve_now(
            "o",
            "m",
            reservation_id=str(n),
            requests=1,
            tokens=tokens,
            defaults=big,
            now=now,
            ttl=ttl,
        )
    state = store.get_now("o", "m", defaults=big, now=now + ttl)
    assert (state.pending_requests, state.pending_tokens, state.outstanding) == (0, 0, 0)


def test_a_saturated_bucket_is_used_to_the_full() -> None:
    """Demand always waiting: over ten minutes the ledger grants all the bucket allows."""
    limits: Limits = (None, None, 600, None)
    b = Bucket(T0)
    granted = 0
    for step in range(600):
        now = T0 + step
        while try_reserve(b, limits, 1, 7, now) == 0:
            settle_bucket(b, limits, now, reserved=(1, 7), used_requests=1, used_tokens=7)
            granted += 7
    allowed = 600 + 599 * 600 / 60
    assert allowed - 7 <= granted <= allowed


# -- QuotaLedger -------------------------------------------------------------------------------


async def test_ledger_over_a_store() -> None:
    clock = FakeClock(T0)
    ledger = QuotaLedger(MemoryQuotaStore(), make_catalog(), clock=clock)
    assert repr(ledger) == "<QuotaLedger (no activity)>"
    wait, state = await ledger.reserve("org_a", MODEL, "r1", 100)
    assert wait == 0 and state.pending_tokens == 100
    assert ledger.view("org_a", MODEL) == state
    found, state = await ledger.settle("org_a", MODEL, "r1", requests=1, tokens=250)
    assert found and state.levels[2] == 250
    assert repr(ledger) == f"<QuotaLedger {MODEL}: rpm 1/30, tpm 250/600>"
    wait = await ledger.time_until_room("org_a", MODEL, 400)
    assert wait == pytest.approx(5.0, abs=0.01)
    clock.advance(wait)
    assert await ledger.time_until_room("org_a", MODEL, 400) == 0
    h = await ledger.headroom("org_a", MODEL)
    assert h.remaining_tokens == pytest.approx(400, abs=0.1) and h.org == "org_a"
    await ledger.reserve("org_a", MODEL, "r2", 10)
    assert (await ledger.release("org_a", MODEL, "r2"))[0]
    state = await ledger.observe("org_a", MODEL, Observation(limits=(None, None, 300, None)))
    assert ledger.limits("org_a", MODEL) == (30, 1000, 300, 100_000) == state.limits
    assert ledger.limits("org_b", MODEL) == (30, 1000, 600, 100_000)
    with pytest.raises(UnknownModelError):
        ledger.defaults("nope")


# -- QuotaManager: choosing keys ---------------------------------------------------------------


async def test_acquire_spreads_over_organisations_by_headroom() -> None:
    clock = FakeClock(T0)
    m = make_manager([make_key(1), make_key(2), make_key(3)], clock)
    grants = [await m.acquire(MODEL, 50) for _ in range(6)]
    assert sorted(g.key.label for g in grants) == ["key1", "key1", "key2", "key2", "key3", "key3"]
    assert {g.org for g in grants} == {"org:key1", "org:key2", "org:key3"}
    # Spending one organisation's tokens makes the others preferred.
    await m.settle(grants[0], Usage(prompt_tokens=50, completion_tokens=400), None)
    nxt = [await m.acquire(MODEL, 10) for _ in range(4)]
    assert grants[0].org not in {g.org for g in nxt}


async def test_keys_of_one_organisation_share_one_budget() -> None:
    clock = FakeClock(T0)
    m = make_manager([make_key(1, "org_a"), make_key(2, "org_a")], clock, make_catalog(rpm=3))
    grants = [await m.acquire(MODEL, 10) for _ in range(3)]
    assert [g.key.label for g in grants] == ["key1", "key2", "key1"]
    assert {g.org for g in grants} == {"org_a"}
    with pytest.raises(QuotaExhaustedError):
        await m.acquire(MODEL, 10)


async def test_aliases_resolve_to_the_model_id() -> None:
    m = make_manager([make_key(1)], FakeClock(T0))
    grant = await m.acquire("small", 10)
    assert grant.model == MODEL
    with pytest.raises(UnknownModelError):
        await m.acquire("no/such-model", 10)
    with pytest.raises(InvalidRequestError):
        await m.acquire(MODEL, -1)


async def test_no_room_reports_the_earliest_time() -> None:
    clock = FakeClock(T0)
    m = make_manager([make_key(1)], clock, make_catalog(rpm=2))
    await m.settle(await m.acquire(MODEL, 10), None, None)
    clock.advance(0.01)  # a drained level counts MARGIN higher: fill it a moment later
    await m.settle(await m.acquire(MODEL, 10), None, None)
    with pytest.raises(QuotaExhaustedError) as info:
        await m.acquire(MODEL, 10)
    assert info.value.retry_after == pytest.approx(30.0, abs=0.01)
    assert info.value.model == MODEL
    assert await m.time_until_room(MODEL, 10) == pytest.approx(30.0, abs=0.01)
    # Waiting the advertised time is enough.
    assert info.value.retry_after is not None
    clock.advance(info.value.retry_after)
    assert (await m.acquire(MODEL, 10)).model == MODEL


async def test_a_request_larger_than_tpm_is_refused_for_the_model() -> None:
    m = make_manager([make_key(1), make_key(2)], FakeClock(T0))
    with pytest.raises(RequestTooLargeError) as info:
        await m.acquire(MODEL, 601)
    assert (info.value.limit, info.value.requested, info.value.model) == (600, 601, MODEL)
    assert isinstance(info.value, QuotaExhaustedError) and info.value.retry_after is None
    assert math.isinf(await m.time_until_room(MODEL, 601))
    assert (await m.acquire(MODEL, 600)).reserved_tokens == 600
    assert (await m.acquire("other/model", 601)).model == "other/model"


async def test_no_usable_key() -> None:
    m = make_manager([], FakeClock(T0))
    with pytest.raises(NoUsableKeyError, match="none configured"):
        await m.acquire(MODEL, 1)
    assert math.isinf(await m.time_until_room(MODEL, 1))
    assert await m.headroom(MODEL) == 0


# -- QuotaManager: settle, release, headers ----------------------------------------------------


async def test_settle_charges_prompt_plus_completion() -> None:
    clock = FakeClock(T0)
    m = make_manager([make_key(1)], clock)
    grant = await m.acquire(MODEL, 100, max_tokens=500)
    assert grant.max_tokens == 500
    usage = Usage(prompt_tokens=120, completion_tokens=200, cached_tokens=20)
    await m.settle(grant, usage, None)
    state = m.ledger.view("org:key1", MODEL)
    assert state is not None
    assert state.levels == (1, 1, 300, 300) and state.pending_tokens == 0
    await m.settle(grant, usage, None)  # idempotent
    assert m.ledger.view("org:key1", MODEL) == state
    # Without usage, the reservation is charged: the estimate, raised by 20 % since Groq
    # counted the last prompt 120 where 100 was estimated.
    g2 = await m.acquire(MODEL, 40)
    assert g2.reserved_tokens == 48
    await m.settle(g2, None, None)
    assert m.ledger.view("org:key1", MODEL).levels[2] == 348  # type: ignore[union-attr]
    assert await m.idle()


async def test_release_gives_back_everything_once() -> None:
    clock = FakeClock(T0)
    m = make_manager([make_key(1)], clock)
    await m.settle(await m.acquire(MODEL, 30), Usage(prompt_tokens=30, completion_tokens=5), None)
    before = await m.ledger.state("org:key1", MODEL)
    grant = await m.acquire(MODEL, 200)
    assert not await m.idle() and m.outstanding == 1
    await m.release(grant)
    await m.release(grant)
    await m.settle(grant, Usage(prompt_tokens=200, completion_tokens=99), None)
    assert await m.ledger.state("org:key1", MODEL) == before
    assert await m.idle()


async def test_reserve_context_releases_on_error_and_settles_otherwise() -> None:
    m = make_manager([make_key(1)], FakeClock(T0))
    with pytest.raises(RuntimeError):
        async with m.reserve(MODEL, 100):
            raise RuntimeError("the call failed before reaching Groq")
    state = await m.ledger.state("org:key1", MODEL)
    assert state.pending_tokens == 0 and state.levels[2] == 0
    async with m.reserve(MODEL, 100) as grant:
        assert isinstance(grant, Grant)
    assert (await m.ledger.state("org:key1", MODEL)).levels[2] == 100
    assert await m.idle()


async def test_headers_fold_in_and_the_server_wins() -> None:
    clock = FakeClock(T0)
    m = make_manager([make_key(1)], clock)
    grant = await m.acquire(MODEL, 100)
    rl = RateLimits(
        limit_requests=1000, remaining_requests=900, limit_tokens=600, remaining_tokens=200
    )
    await m.settle(grant, Usage(prompt_tokens=100, completion_tokens=50), rl)
    state = m.ledger.view("org:key1", MODEL)
    assert state is not None
    # Groq counts 100 requests today and 400 + 50 tokens this minute; the ledger had 1 and 150.
    assert state.levels[1] == 100 and state.levels[2] == 450
    assert (state.remaining_requests, state.remaining_tokens) == (900, 200)
    # Groq reporting more remaining than the ledger believes changes nothing.
    grant = await m.acquire(MODEL, 10)
    await m.settle(
        grant, Usage(prompt_tokens=10), RateLimits(limit_tokens=600, remaining_tokens=590)
    )
    assert m.ledger.view("org:key1", MODEL).levels[2] == 460  # type: ignore[union-attr]
    usage = await m.usage()
    assert usage["models"][MODEL]["remaining"]["org:key1"]["tokens"] == 590


async def test_a_different_limit_in_the_headers_becomes_the_limit_in_force() -> None:
    m = make_manager([make_key(1)], FakeClock(T0))
    grant = await m.acquire(MODEL, 10)
    await m.settle(
        grant, Usage(prompt_tokens=10), RateLimits(limit_tokens=300, remaining_tokens=290)
    )
    with pytest.raises(RequestTooLargeError) as info:
        await m.acquire(MODEL, 301)
    assert info.value.limit == 300
    usage = await m.usage()
    assert usage["keys"]["key1"]["usage"][MODEL]["tpm"] == {"used": 10, "limit": 300}


async def test_prompt_counts_above_the_estimate_raise_future_reservations() -> None:
    m = make_manager([make_key(1)], FakeClock(T0), make_catalog(rpm=None, tpm=None, tpd=None))
    grant = await m.acquire(MODEL, 100)
    await m.settle(grant, Usage(prompt_tokens=150, completion_tokens=1), None)
    nxt = await m.acquire(MODEL, 100)
    assert (nxt.prompt_tokens, nxt.reserved_tokens) == (100, 150)
    # Later, accurate estimates bring it back down, slowly.
    for _ in range(60):
        g = await m.acquire(MODEL, 100)
        await m.settle(g, Usage(prompt_tokens=100), None)
    assert (await m.acquire(MODEL, 100)).reserved_tokens == 100


# -- QuotaManager: failures --------------------------------------------------------------------


async def test_429_cools_the_organisation_for_retry_after() -> None:
    clock = FakeClock(T0)
    k1, k2 = make_key(1), make_key(2)
    m = make_manager([k1, k2], clock)
    grant = await m.acquire(MODEL, 100)
    assert grant.key is k1
    rl = RateLimits(retry_after=9.0, limit_tokens=600, remaining_tokens=50)
    await m.report_failure(grant, status=429, rate_limits=rl, message=TPM_TEXT)
    state = m.ledger.view("org:key1", MODEL)
    assert state is not None
    assert state.pending_tokens == 0 and state.pending_requests == 0  # nothing consumed
    assert state.levels[2] == 550  # Groq's "Used 550"
    assert state.cool_until == T0 + 9
    assert m.pool.health(k1, MODEL) == "cooling" and m.pool.health(k2, MODEL) == "healthy"
    assert "1 cooling" in repr(m.pool)
    assert {(await m.acquire(MODEL, 10)).key.label for _ in range(3)} == {"key2"}
    clock.advance(9)
    assert m.pool.health(k1, MODEL) == "healthy"
    assert await m.ledger.time_until_room("org:key1", MODEL, 10) == 0
    clock.advance(60)
    assert (await m.acquire(MODEL, 10)).key is k1


async def test_a_daily_429_cools_until_the_bucket_has_room() -> None:
    clock = FakeClock(T0)
    key = make_key(1)
    m = make_manager([key], clock, make_catalog(tpm=6000, tpd=100_000))
    grant = await m.acquire(MODEL, 3619)
    # Groq's retry-after says 2 s; the day's bucket needs (97050 + 3619 - 100000) × 0.864 s.
    await m.report_failure(
        grant, status=429, rate_limits=RateLimits(retry_after=2.0), message=TPD_TEXT
    )
    state = m.ledger.view("org:key1", MODEL)
    assert state is not None
    assert state.cool_until == pytest.approx(T0 + 669 * 0.864)
    clock.advance(60)
    assert m.pool.health(key, MODEL) == "cooling"
    with pytest.raises(QuotaExhaustedError) as info:
        await m.acquire(MODEL, 3619)
    assert info.value.retry_after == pytest.approx(669 * 0.864 - 60, abs=0.01)
    assert info.value.retry_after is not None
    clock.advance(info.value.retry_after)
    assert (await m.acquire(MODEL, 3619)).org == "org:key1"


async def test_429_without_details_cools_briefly() -> None:
    clock = FakeClock(T0)
    m = make_manager([make_key(1)], clock, default_cooldown=2.0)
    grant = await m.acquire(MODEL, 10)
    await m.report_failure(grant, status=429, rate_limits=None)
    assert await m.time_until_room(MODEL, 10) == pytest.approx(2.0, abs=0.01)


async def test_413_refuses_that_size_for_the_model_without_cooling() -> None:
    clock = FakeClock(T0)
    key = make_key(1)
    m = make_manager([key], clock, correct_estimates=False)
    grant = await m.acquire(MODEL, 500)
    await m.report_failure(grant, status=413, rate_limits=None, message=TOO_LARGE_TEXT)
    assert m.pool.health(key, MODEL) == "healthy"
    assert m.ledger.view("org:key1", MODEL).pending_tokens == 0  # type: ignore[union-attr]
    with pytest.raises(RequestTooLargeError) as info:
        await m.acquire(MODEL, 500)
    assert info.value.limit == 499
    assert (await m.acquire(MODEL, 400)).reserved_tokens == 400


async def test_401_and_403_disable_keys_everywhere() -> None:
    clock = FakeClock(T0)
    k1, k2 = make_key(1), make_key(2)
    shared = MemoryKeyStateStore()
    m = make_manager([k1, k2], clock, key_store=shared, key_refresh_interval=0)
    other = make_manager([k1, k2], clock, key_store=shared, key_refresh_interval=0)
    await m.report_failure(await m.acquire(MODEL, 10), status=401, rate_limits=None)
    assert m.pool.health(k1) == "disabled"
    assert [(await other.acquire(MODEL, 10)).key.label for _ in range(2)] == ["key2", "key2"]
    await m.report_failure(await m.acquire(MODEL, 10), status=403, rate_limits=None)
    with pytest.raises(NoUsableKeyError, match="disabled"):
        await other.acquire(MODEL, 10)
    assert "2 disabled" in repr(other.pool)
    assert await m.idle()


async def test_repeated_server_errors_degrade_a_key() -> None:
    clock = FakeClock(T0)
    k1, k2 = make_key(1, "org_a"), make_key(2, "org_a")
    m = make_manager([k1, k2], clock)
    failed = 0
    while failed < 3:
        g = await m.acquire(MODEL, 10)
        if g.key is k1:
            await m.report_failure(g, status=503 if failed else 500, rate_limits=None)
            failed += 1
        else:
            await m.release(g)
        assert m.pool.health(k1) == ("degraded" if failed == 3 else "healthy")
    assert "1 degraded" in repr(m.pool)
    # Degraded keys are ranked last; nothing was consumed by the failed calls.
    assert [(await m.acquire(MODEL, 10)).key for _ in range(3)] == [k2, k2, k2]
    state = m.ledger.view("org_a", MODEL)
    assert state is not None and state.levels[2] == 0
    await m.report_failure(await m.acquire(MODEL, 10), status=498, rate_limits=None)
    assert m.pool.record(k2).failures == 1
    clock.advance(31)
    assert m.pool.health(k1) == "healthy"
    # A success starts the count over.
    grant = await m.acquire(MODEL, 10)
    await m.settle(grant, None, None)
    assert m.pool.record(grant.key).failures == 0


async def test_timeouts_and_other_errors_charge_the_estimate() -> None:
    clock = FakeClock(T0)
    key = make_key(1)
    m = make_manager([key], clock)
    await m.report_failure(await m.acquire(MODEL, 70), status=None, rate_limits=None)
    await m.report_failure(await m.acquire(MODEL, 30), status=400, rate_limits=None)
    state = m.ledger.view("org:key1", MODEL)
    assert state is not None and state.levels[2] == 100 and state.levels[0] == 2
    assert m.pool.record(key).failures == 1
    assert await m.idle()


async def test_a_429_text_naming_one_organisation_merges_keys(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(T0)
    k1, k2 = make_key(1), make_key(2)
    m = make_manager([k1, k2], clock, make_catalog(rpm=4))
    g1 = await m.acquire(MODEL, 10)
    g2 = await m.acquire(MODEL, 10)
    assert {g1.org, g2.org} == {"org:key1", "org:key2"}
    with caplog.at_level(logging.WARNING, logger="ymera_groq_plugin.keys"):
        await m.report_failure(
            g1, status=429, rate_limits=RateLimits(retry_after=1.0), message=TPM_TEXT
        )
        await m.report_failure(
            g2, status=429, rate_limits=RateLimits(retry_after=1.0), message=TPM_TEXT
        )
    # Neither configured organisation is the one Groq named: the first key's survives.
    assert m.pool.organisation(k1) == m.pool.organisation(k2) == "org:key1"
    warning = [r.getMessage() for r in caplog.records if "share one organisation" in r.getMessage()]
    assert len(warning) == 1 and "key1, key2" in warning[0] and "adds no quota" in warning[0]
    assert "topsecret" not in caplog.text
    clock.advance(60)
    grants = [await m.acquire(MODEL, 10) for _ in range(4)]
    assert {g.org for g in grants} == {"org:key1"}
    with pytest.raises(QuotaExhaustedError):
        await m.acquire(MODEL, 10)


# -- QuotaManager: waiting ---------------------------------------------------------------------


async def test_waiting_is_first_come_first_served() -> None:
    clock = FakeClock(T0)
    m = make_manager([make_key(1)], clock, make_catalog(rpm=1))
    first = await m.acquire(MODEL, 10)
    order: list[str] = []

    async def want(name: str) -> Grant:
        grant = await m.acquire(MODEL, 10, wait=1000)
        order.append(name)
        return grant

    a = asyncio.create_task(want("a"))
    await asyncio.sleep(0.02)
    b = asyncio.create_task(want("b"))
    await asyncio.sleep(0.02)
    # Someone is waiting: an immediate request does not jump the line.
    with pytest.raises(QuotaExhaustedError):
        await m.acquire(MODEL, 10)
    await m.release(first)
    grant_a = await asyncio.wait_for(a, 5)
    await asyncio.sleep(0.02)
    assert order == ["a"] and not b.done()
    await m.release(grant_a)
    await asyncio.wait_for(b, 5)
    assert order == ["a", "b"]
    assert not m._queues


async def test_waiting_ends_when_the_window_refills() -> None:
    clock = FakeClock(T0)
    m = make_manager([make_key(1)], clock, make_catalog(rpm=1))
    await m.settle(await m.acquire(MODEL, 10), None, None)
    task = asyncio.create_task(m.acquire(MODEL, 10, wait=120))
    await asyncio.sleep(0.02)
    assert not task.done()
    clock.advance(60)
    grant = await asyncio.wait_for(task, 5)
    assert grant.waited == pytest.approx(60.0)


async def test_waiting_times_out_by_the_clock() -> None:
    clock = FakeClock(T0)
    m = make_manager([make_key(1)], clock, make_catalog(rpm=1))
    await m.acquire(MODEL, 10)  # held, never settled
    head = asyncio.create_task(m.acquire(MODEL, 10, wait=5))
    behind = asyncio.create_task(m.acquire(MODEL, 10, wait=5))
    await asyncio.sleep(0.02)
    clock.advance(6)
    for task in (head, behind):
        with pytest.raises(QuotaExhaustedError) as info:
            await asyncio.wait_for(task, 5)
        assert info.value.retry_after is not None and info.value.retry_after > 0
    assert not m._queues


async def test_a_cancelled_waiter_leaves_the_line() -> None:
    clock = FakeClock(T0)
    m = make_manager([make_key(1)], clock, make_catalog(rpm=1))
    held = await m.acquire(MODEL, 10)
    task = asyncio.create_task(m.acquire(MODEL, 10, wait=100))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not m._queues
    await m.release(held)
    assert (await m.acquire(MODEL, 10)).model == MODEL
    assert m.outstanding == 1


async def test_waiting_for_a_request_that_can_never_fit_fails_at_once() -> None:
    m = make_manager([make_key(1)], FakeClock(T0))
    with pytest.raises(RequestTooLargeError):
        await m.acquire(MODEL, 10_000, wait=100)


# -- QuotaManager: reading ---------------------------------------------------------------------


async def test_headroom_and_time_until_room() -> None:
    clock = FakeClock(T0)
    k1, k2 = make_key(1, "org_a"), make_key(2, "org_b")
    m = make_manager([k1, k2], clock)
    assert await m.headroom(MODEL) == 1.0
    assert await m.time_until_room(MODEL, 600) == 0
    for _ in range(2):
        await m.settle(await m.acquire(MODEL, 300), None, None)
    assert await m.headroom(MODEL) == pytest.approx(0.5)
    detail = await m.headroom_detail(MODEL)
    assert detail.remaining_tokens == pytest.approx(300)
    await m.settle(await m.acquire(MODEL, 299), None, None)
    await m.settle(await m.acquire(MODEL, 299), None, None)
    assert await m.headroom(MODEL) == pytest.approx(1 / 600)
    assert await m.time_until_room(MODEL, 600) == pytest.approx(59.9, abs=0.01)
    assert await m.time_until_room(MODEL, 60) == pytest.approx(5.9, abs=0.01)


async def test_usage_has_the_original_plan_shape() -> None:
    clock = FakeClock(T0)
    m = make_manager([make_key(1, "org_a"), make_key(2, "org_a"), make_key(3)], clock)
    g = await m.acquire(MODEL, 100)
    await m.settle(g, Usage(prompt_tokens=100, completion_tokens=20), None)
    await m.acquire(MODEL, 50)  # outstanding: counted as used
    usage = await m.usage()
    assert set(usage) == {"keys", "models"}
    entry = usage["keys"]["key1"]
    assert entry["org"] == "org_a" and entry["health"] == "healthy"
    assert entry["masked"].startswith("gsk_…")
    assert set(entry["usage"][MODEL]) == {"rpm", "rpd", "tpm", "tpd"}
    assert usage["keys"]["key2"]["usage"] == entry["usage"]
    per_org = [usage["keys"]["key1"]["usage"][MODEL], usage["keys"]["key3"]["usage"].get(MODEL)]
    totals = usage["models"][MODEL]
    assert totals["rpm"]["used"] == 2 and totals["rpm"]["limit"] == 60
    assert totals["tpm"]["used"] == 170
    assert per_org[0]["tpm"]["used"] + (per_org[1]["tpm"]["used"] if per_org[1] else 0) == 170
    assert "other/model" not in usage["models"]


async def test_reprs_never_show_a_secret() -> None:
    key = make_key(7)
    m = make_manager([key], FakeClock(T0))
    grant = await m.acquire(MODEL, 10)
    secret = key.secret.get_secret_value()
    for text in (
        repr(grant),
        str(grant),
        repr(m),
        repr(m.pool),
        repr(m.ledger),
        str(await m.usage()),
    ):
        assert secret not in text
        assert "topsecret" not in text
    assert repr(grant).startswith("<Grant key7 gsk_…0007 test/model")


# -- QuotaManager: alerts ----------------------------------------------------------------------


async def test_alerts_fire_once_per_crossing(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(T0)
    m = make_manager([make_key(1)], clock, make_catalog(rpm=20, tpm=100_000))
    seen: list[Alert] = []
    m.add_alert_callback(seen.append)

    def broken(alert: Alert) -> None:
        raise RuntimeError("a broken callback must not break quota")

    m.add_alert_callback(broken)
    grants = []
    with caplog.at_level(logging.WARNING, logger="ymera_groq_plugin.quota"):
        for _ in range(19):
            grants.append(await m.acquire(MODEL, 1))
    assert [(a.level, a.kind, a.threshold) for a in seen] == [
        ("warning", "rpm", 0.8),
        ("critical", "rpm", 0.9),
        ("emergency", "rpm", 0.95),
    ]
    assert seen[0].used == 16 and seen[0].limit == 20 and seen[0].keys == ("key1",)
    assert "80%" in seen[0].message
    assert any(r.levelno == logging.CRITICAL for r in caplog.records)
    assert "callback" in caplog.text
    # Staying high fires nothing more; falling well below re-arms.
    for g in grants:
        await m.release(g)
    assert len(seen) == 3
    for _ in range(16):
        await m.acquire(MODEL, 1)
    assert len(seen) == 4 and seen[-1].level == "warning"


# -- construction ------------------------------------------------------------------------------


async def test_from_settings_builds_memory_stores_in_embedded_mode() -> None:
    settings = YmeraSettings(api_keys=["gsk_fromsettingsxxxxxxxx1234"], alert_thresholds=(0.5,))
    m = QuotaManager.from_settings(settings, make_catalog(), clock=FakeClock(T0))
    assert isinstance(m.ledger.store, MemoryQuotaStore)
    assert isinstance(m.pool.store, MemoryKeyStateStore)
    assert [k.label for k in m.pool.keys] == ["key1"]
    seen: list[Alert] = []
    m.add_alert_callback(seen.append)
    for _ in range(15):
        await m.acquire(MODEL, 1)
    assert [a.level for a in seen] == ["warning"]
    await m.aclose()
    await m.aclose()
