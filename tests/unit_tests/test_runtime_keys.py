"""Keys found at run time (a LiteLLM router's own) and reservations limited to some
organisations (the sync pre-call check reserves on the organisation already picked)."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import SecretStr

from ymera_groq_plugin.config import ApiKey
from ymera_groq_plugin.errors import QuotaExhaustedError
from ymera_groq_plugin.keys import KeyPool
from ymera_groq_plugin.testing import FakeClock

from .test_quota import MODEL, make_catalog, make_key, make_manager


def test_a_pool_takes_keys_at_run_time() -> None:
    pool = KeyPool([make_key(1, "org_a")])
    new = make_key(2, "org_b")
    assert pool.add([new]) == [new]
    assert [k.label for k in pool.keys] == ["key1", "key2"]
    assert [org for org, _ in pool.groups()] == ["org_a", "org_b"]
    # The same secret again, or another secret under a taken label, is not added.
    again = ApiKey(secret=new.secret, label="other", org="org_c")
    clash = ApiKey(secret=SecretStr("gsk_anotherone0000000000000x"), label="key1")
    assert pool.add([again, clash]) == []
    assert len(pool) == 2
    assert "gsk_topsecret" not in repr(pool)


async def test_a_reservation_can_be_limited_to_some_organisations() -> None:
    clock = FakeClock()
    manager = make_manager([make_key(1, "org_a"), make_key(2, "org_b")], clock, make_catalog(rpm=1))
    grant = await manager.acquire(MODEL, 10, orgs={"org_b"})
    assert grant.org == "org_b"
    # org_b's one request a minute is taken; org_a still has room but is not asked.
    with pytest.raises(QuotaExhaustedError) as info:
        await manager.acquire(MODEL, 10, orgs={"org_b"})
    assert info.value.retry_after is not None and info.value.retry_after > 0
    assert (await manager.acquire(MODEL, 10)).org == "org_a"
    # An organisation the pool does not know has no room at all.
    with pytest.raises(QuotaExhaustedError):
        await manager.acquire(MODEL, 10, orgs={"org_zzz"})


async def test_a_limited_reservation_waits_for_its_organisation() -> None:
    clock = FakeClock()
    manager = make_manager([make_key(1, "org_a"), make_key(2, "org_b")], clock, make_catalog(rpm=1))
    first = await manager.acquire(MODEL, 10, orgs={"org_a"})
    await manager.settle(first, None, None)

    async def advance() -> None:
        for _ in range(100):
            await asyncio.sleep(0.001)
            clock.advance(1.0)

    grant, _ = await asyncio.gather(manager.acquire(MODEL, 10, orgs={"org_a"}, wait=120), advance())
    # It waited for org_a's request to come back (a minute), though org_b had room all along.
    assert grant.org == "org_a" and grant.waited >= 50


async def test_a_caller_limited_to_one_organisation_does_not_wait_behind_another() -> None:
    clock = FakeClock()
    manager = make_manager([make_key(1, "org_a"), make_key(2, "org_b")], clock, make_catalog(rpm=1))
    await manager.settle(await manager.acquire(MODEL, 10, orgs={"org_a"}), None, None)
    # Someone waits for org_a's room (a minute away)...
    waiting = asyncio.ensure_future(manager.acquire(MODEL, 10, orgs={"org_a"}, wait=600))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    # ...while org_b has room now: a caller limited to org_b gets it at once, not in line.
    grant = await manager.acquire(MODEL, 10, orgs={"org_b"}, wait=600)
    assert grant.org == "org_b" and grant.waited == 0
    clock.advance(61)
    assert (await waiting).org == "org_a"
