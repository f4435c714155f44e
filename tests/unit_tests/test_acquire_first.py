"""`QuotaManager.acquire_first`: the first model with room now, else the one that opens first.

The walk the engine's route and the LiteLLM adapter share. Time is a `FakeClock`; nothing here
sleeps for a window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from pydantic import SecretStr

from ymera_groq_plugin.catalog import Catalog, ModelInfo, ModelLimits
from ymera_groq_plugin.config import ApiKey
from ymera_groq_plugin.errors import (
    ModelRetiredError,
    NoUsableKeyError,
    QuotaExhaustedError,
    RequestTooLargeError,
    YmeraError,
)
from ymera_groq_plugin.quota import QuotaManager
from ymera_groq_plugin.storage.memory import MemoryKeyStateStore, MemoryQuotaStore
from ymera_groq_plugin.testing import FakeClock

SLOW = "test/slow"
"""One request a minute: full, it opens in 60 s."""
FAST = "test/fast"
"""Two requests a minute: full, it opens in 30 s."""
T0 = 1_800_000_000.0


def catalog() -> Catalog:
    def info(model: str, rpm: int) -> ModelInfo:
        return ModelInfo(
            id=model,
            context_window=8192,
            max_completion_tokens=1024,
            limits=ModelLimits(rpm=rpm, rpd=1000, tpm=600, tpd=100_000),
        )

    return Catalog([info(SLOW, 1), info(FAST, 2)])


def key(n: int, org: str | None = None) -> ApiKey:
    return ApiKey(
        secret=SecretStr(f"gsk_walk{n:02d}xxxxxxxxxxxxxxxx{n:04d}"), label=f"k{n}", org=org
    )


def manager(clock: FakeClock, keys: Sequence[ApiKey] | None = None) -> QuotaManager:
    return QuotaManager(
        [key(1)] if keys is None else keys,
        catalog(),
        quota_store=MemoryQuotaStore(),
        key_store=MemoryKeyStateStore(),
        clock=clock,
        max_poll=0.005,
    )


async def fill(m: QuotaManager, clock: FakeClock, model: str, n: int) -> None:
    for _ in range(n):
        await m.settle(await m.acquire(model, 10), None, None)
        clock.advance(0.01)  # a drained level counts a margin higher: fill it a moment later


async def test_the_first_model_with_room_in_order_and_why_others_were_passed() -> None:
    clock = FakeClock(T0)
    m = manager(clock)
    await fill(m, clock, SLOW, 1)
    told: list[tuple[str, YmeraError]] = []

    def passed(model: str, exc: YmeraError) -> None:
        told.append((model, exc))

    grant = await m.acquire_first([SLOW, FAST], 10, max_tokens=50, passed=passed)
    assert (grant.model, grant.max_tokens) == (FAST, 50)
    assert [model for model, _ in told] == [SLOW]
    exc = told[0][1]
    assert isinstance(exc, QuotaExhaustedError) and exc.retry_after == pytest.approx(60, abs=0.1)
    # With room on both, the order of preference decides.
    await m.release(grant)
    assert (await m.acquire_first([FAST, SLOW], 10)).model == FAST


async def test_nothing_with_room_waits_for_the_soonest_opening() -> None:
    clock = FakeClock(T0)
    m = manager(clock)
    await fill(m, clock, SLOW, 1)
    await fill(m, clock, FAST, 2)
    task = asyncio.create_task(m.acquire_first([SLOW, FAST], 10, wait=100))
    await asyncio.sleep(0.05)
    assert not task.done()
    clock.advance(31)  # FAST has room again, SLOW not yet
    grant = await asyncio.wait_for(task, 10)
    assert grant.model == FAST and grant.waited == pytest.approx(31, abs=0.1)


async def test_no_opening_within_the_wait_raises_with_the_earliest_at_once() -> None:
    clock = FakeClock(T0)
    m = manager(clock)
    await fill(m, clock, SLOW, 1)
    await fill(m, clock, FAST, 2)
    # FAST opens in about 30 s, more than the 10 s the caller may wait: no waiting at all.
    with pytest.raises(QuotaExhaustedError) as info:
        await asyncio.wait_for(m.acquire_first([SLOW, FAST], 10, wait=10), 10)
    assert info.value.retry_after == pytest.approx(30, abs=0.1)
    assert isinstance(info.value.__cause__, QuotaExhaustedError)


async def test_openings_the_caller_knows_are_waited_for() -> None:
    clock = FakeClock(T0)
    m = manager(clock)
    # No model to try at once; SLOW is expected to open now (a 429's retry-after is over).
    grant = await m.acquire_first((), 10, wait=5, opens={SLOW: clock()})
    assert grant.model == SLOW
    # Without a wait, known openings are only reported.
    with pytest.raises(QuotaExhaustedError) as info:
        await m.acquire_first((), 10, opens={FAST: clock() + 7})
    assert info.value.retry_after == pytest.approx(7)


async def test_only_the_organisations_the_caller_may_use() -> None:
    clock = FakeClock(T0)
    a, b = key(1, "org_a"), key(2, "org_b")
    m = manager(clock, [a, b])
    org_b = m.pool.organisation(b)
    for _ in range(3):
        grant = await m.acquire_first([SLOW, FAST], 10, orgs={SLOW: {org_b}, FAST: {org_b}})
        assert grant.org == org_b
        await m.release(grant)
    # A model with no organisation for this caller is skipped, not tried.
    grant = await m.acquire_first([SLOW, FAST], 10, orgs={FAST: {org_b}})
    assert (grant.model, grant.org) == (FAST, org_b)


async def test_too_large_everywhere_is_its_own_error() -> None:
    clock = FakeClock(T0)
    m = manager(clock)
    with pytest.raises(RequestTooLargeError):
        await m.acquire_first([SLOW, FAST], 601, wait=100)
    # Too large for the models tried, but an opening is known: a quota error with its time.
    with pytest.raises(QuotaExhaustedError) as info:
        await m.acquire_first([SLOW], 601, opens={FAST: clock() + 4})
    assert not isinstance(info.value, RequestTooLargeError)
    assert info.value.retry_after == pytest.approx(4)


async def test_a_passed_model_may_name_the_one_to_try_in_its_place() -> None:
    clock = FakeClock(T0)
    m = manager(clock)
    m.served = lambda org, model: model != SLOW

    def successor(model: str, exc: YmeraError) -> str | None:
        assert isinstance(exc, ModelRetiredError)
        return FAST

    assert (await m.acquire_first([SLOW], 10, passed=successor)).model == FAST
    # Without a successor, a model served nowhere is simply passed over.
    with pytest.raises(QuotaExhaustedError) as info:
        await m.acquire_first([SLOW], 10)
    assert info.value.retry_after is None
    assert isinstance(info.value.__cause__, ModelRetiredError)


async def test_a_caller_that_will_not_wait_does_not_jump_the_line() -> None:
    clock = FakeClock(T0)
    m = manager(clock)
    held = await m.acquire(SLOW, 10)
    waiter = asyncio.create_task(m.acquire(SLOW, 10, wait=1000))
    await asyncio.sleep(0.05)
    await m.release(held)  # room now, but someone was waiting first
    with pytest.raises(QuotaExhaustedError):
        await m.acquire_first([SLOW], 10)
    grant = await asyncio.wait_for(waiter, 10)
    assert grant.model == SLOW


async def test_no_usable_key_is_raised() -> None:
    m = manager(FakeClock(T0), [])
    with pytest.raises(NoUsableKeyError):
        await m.acquire_first([SLOW, FAST], 10, wait=5)
