"""Quota shared by processes through one real Redis.

The main test runs 4 OS processes (spawned, not forked) × 50 concurrent tasks against small
limits. Time is deterministic: every process has its own `FakeClock`, and all of them step it in
lockstep (round r is `T0 + r` seconds in every process; a barrier separates rounds). Every grant
is counted and checked against what continuously refilling buckets allow over every interval of
the run, and the total must reach 95 % of what they allow.

The other tests drive several `QuotaManager`s in one process over the same Redis: what one
learns (a cooldown, a limit, a disabled key, a merge) the others honour.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue as queue_mod
from collections import defaultdict
from typing import Any

import pytest
from pydantic import SecretStr

from ymera_groq_plugin.catalog import Catalog, ModelInfo, ModelLimits
from ymera_groq_plugin.config import ApiKey, YmeraSettings
from ymera_groq_plugin.errors import NoUsableKeyError, QuotaExhaustedError, RequestTooLargeError
from ymera_groq_plugin.quota import QuotaManager
from ymera_groq_plugin.storage.memory import MemoryKeyStateStore
from ymera_groq_plugin.storage.redis_quota import RedisKeyStateStore, RedisQuotaStore
from ymera_groq_plugin.storage.resilient import ResilientKeyStateStore, ResilientQuotaStore
from ymera_groq_plugin.testing import FakeClock
from ymera_groq_plugin.types import RateLimits, Usage

pytestmark = pytest.mark.redis

MODEL = "test/model"
T0 = 1_800_000_000.0
PROCESSES = 4
TASKS = 50
ROUNDS = 30
STEP = 1.0
LIMITS = {"rpm": 60, "rpd": 5000, "tpm": 1200, "tpd": 100_000}
KINDS = (("rpm", 60.0), ("rpd", 86400.0), ("tpm", 60.0), ("tpd", 86400.0))


def _catalog() -> Catalog:
    return Catalog(
        [
            ModelInfo(
                id=MODEL,
                context_window=8192,
                max_completion_tokens=1024,
                limits=ModelLimits(**LIMITS),
            )
        ]
    )


def _keys() -> list[ApiKey]:
    return [
        ApiKey(secret=SecretStr("gsk_processkeyaaaaaaaaaaaa0001"), label="key1", org="org_a"),
        ApiKey(secret=SecretStr("gsk_processkeybbbbbbbbbbbb0002"), label="key2", org="org_b"),
        ApiKey(secret=SecretStr("gsk_processkeycccccccccccc0003"), label="key3", org="org_b"),
    ]


def _worker(url: str, index: int, barrier: Any, results: Any) -> None:
    asyncio.run(_work(url, index, barrier, results))


async def _work(url: str, index: int, barrier: Any, results: Any) -> None:
    clock = FakeClock(T0)
    manager = QuotaManager(
        _keys(),
        _catalog(),
        quota_store=RedisQuotaStore.from_url(url, namespace="procs"),
        key_store=RedisKeyStateStore.from_url(url, namespace="procs"),
        clock=clock,
    )
    grants: list[tuple[int, str, int]] = []
    refused = 0

    async def task(round_: int, i: int) -> None:
        nonlocal refused
        tokens = 10 + (i * 7 + round_ * 13 + index * 5) % 41
        try:
            grant = await manager.acquire(MODEL, tokens)
        except QuotaExhaustedError:
            refused += 1
            return
        grants.append((round_, grant.org, tokens))
        await manager.settle(grant, Usage(prompt_tokens=tokens), None)

    barrier.wait(60)
    for round_ in range(ROUNDS):
        clock.set(T0 + round_ * STEP)
        await asyncio.gather(*(task(round_, i) for i in range(TASKS)))
        # Blocking the loop here is fine: every task of the round has finished.
        barrier.wait(60)
    idle = await manager.idle()
    await manager.aclose()
    results.put((index, grants, refused, idle))


def _within_buckets(per_round: dict[int, float], limit: int, window: float) -> float:
    """Check every interval of rounds against the bucket; return the total granted."""
    rate = limit / window
    amounts = [per_round.get(r, 0.0) for r in range(ROUNDS)]
    for i in range(ROUNDS):
        total = 0.0
        for j in range(i, ROUNDS):
            total += amounts[j]
            assert total <= limit + (j - i) * STEP * rate + 1e-6, (i, j, total)
    return sum(amounts)


def test_four_processes_never_exceed_the_buckets_and_use_95_percent(redis_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(redis_url, n, barrier, results), daemon=True)
        for n in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    collected = []
    try:
        for _ in range(PROCESSES):
            collected.append(results.get(timeout=90))
    except queue_mod.Empty:
        pytest.fail("a worker process did not finish")
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs)
    assert all(idle for *_, idle in collected)

    per_org: dict[str, dict[str, dict[int, float]]] = defaultdict(
        lambda: {"requests": defaultdict(float), "tokens": defaultdict(float)}
    )
    processes_granted = set()
    for index, grants, refused, _ in collected:
        assert refused > 0  # demand exceeded the allowance in every process
        if grants:
            processes_granted.add(index)
        for round_, org, tokens in grants:
            per_org[org]["requests"][round_] += 1
            per_org[org]["tokens"][round_] += tokens
    assert set(per_org) == {"org_a", "org_b"}
    assert len(processes_granted) > 1
    span = (ROUNDS - 1) * STEP
    for org, counts in per_org.items():
        shares = []
        for kind, window in KINDS:
            limit = LIMITS[kind]
            granted = _within_buckets(
                counts["requests" if kind.startswith("r") else "tokens"], limit, window
            )
            shares.append(granted / (limit + span * limit / window))
        # The binding limit (here TPM) is used to at least 95 % of what it allows.
        assert max(shares) >= 0.95, (org, shares)


# -- several managers, one Redis ---------------------------------------------------------------


def _manager(
    url: str, clock: FakeClock, keys: list[ApiKey] | None = None, **kw: Any
) -> QuotaManager:
    return QuotaManager(
        keys or _keys()[:2],
        _catalog(),
        quota_store=kw.pop("quota_store", None) or RedisQuotaStore.from_url(url, namespace="pair"),
        key_store=kw.pop("key_store", None) or RedisKeyStateStore.from_url(url, namespace="pair"),
        clock=clock,
        key_refresh_interval=0,
        **kw,
    )


async def test_what_one_worker_learns_every_worker_honours(redis_url: str) -> None:
    clock = FakeClock(T0)
    a, b = _manager(redis_url, clock), _manager(redis_url, clock)
    try:
        grant = await a.acquire(MODEL, 100)
        assert grant.org == "org_a"
        message = (
            "Rate limit reached for model `test/model` in organization `org_a` service tier "
            "`on_demand` on tokens per minute (TPM): Limit 1200, Used 1150, Requested 100. "
            "Please try again in 2.5s."
        )
        await a.report_failure(
            grant, status=429, rate_limits=RateLimits(retry_after=3.0), message=message
        )
        # The other worker's next call avoids the cooling organisation at once.
        assert {(await b.acquire(MODEL, 10)).org for _ in range(3)} == {"org_b"}
        # A limit learned from headers holds for every worker.
        g = await b.acquire(MODEL, 10)
        await b.settle(
            g, Usage(prompt_tokens=10), RateLimits(limit_tokens=500, remaining_tokens=400)
        )
        clock.advance(120)
        assert (await a.ledger.state("org_b", MODEL)).limits == (60, 5000, 500, 100_000)
        assert [(await a.acquire(MODEL, 550)).org for _ in range(2)] == ["org_a", "org_a"]
        with pytest.raises(QuotaExhaustedError) as info:
            await a.acquire(MODEL, 550)  # org_b can never take 550 now; org_a is full
        assert not isinstance(info.value, RequestTooLargeError)
        # A disabled key is disabled for everyone.
        g = await a.acquire(MODEL, 10)
        assert g.key.label == "key2"
        await a.report_failure(g, status=401, rate_limits=None)
        await b.pool.refresh(force=True)
        assert b.pool.health(g.key) == "disabled"
        usage = await b.usage()
        assert usage["keys"]["key2"]["health"] == "disabled"
        assert usage["models"][MODEL]["tpm"]["limit"] == 1700
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_cancelled_reservation_is_given_back(redis_url: str) -> None:
    clock = FakeClock(T0)
    quota = RedisQuotaStore.from_url(redis_url, namespace="cancel")
    m = _manager(redis_url, clock, quota_store=quota, key_store=MemoryKeyStateStore())
    try:
        for _ in range(20):
            task = asyncio.create_task(m.acquire(MODEL, 100))
            await asyncio.sleep(0)  # the reserve script is on its way
            task.cancel()
            try:
                grant = await task
            except asyncio.CancelledError:
                pass
            else:
                await m.release(grant)
        for _ in range(50):
            states = await quota.get_many(
                [
                    ("org_a", MODEL, (60, 5000, 1200, 100_000)),
                    ("org_b", MODEL, (60, 5000, 1200, 100_000)),
                ],
                now=T0,
            )
            if all(s.outstanding == 0 for s in states):
                break
            await asyncio.sleep(0.01)
        assert [s.pending_tokens for s in states] == [0, 0]
        assert await m.idle()
    finally:
        await m.aclose()


async def test_from_settings_uses_redis_with_the_namespace(redis_url: str) -> None:
    settings = YmeraSettings(
        api_keys=["gsk_settingsredisxxxxxxx0001"], redis_url=redis_url, namespace="tenant-1"
    )
    clock = FakeClock(T0)
    m = QuotaManager.from_settings(settings, _catalog(), clock=clock)
    other = QuotaManager.from_settings(settings, _catalog(), clock=clock)
    separate = QuotaManager.from_settings(
        YmeraSettings(
            api_keys=["gsk_settingsredisxxxxxxx0001"], redis_url=redis_url, namespace="t2"
        ),
        _catalog(),
        clock=clock,
    )
    try:
        # Redis, behind the wrappers that keep serving while it is unreachable.
        assert isinstance(m.ledger.store, ResilientQuotaStore)
        assert isinstance(m.ledger.store.primary, RedisQuotaStore)
        assert isinstance(m.pool.store, ResilientKeyStateStore)
        assert isinstance(m.pool.store.primary, RedisKeyStateStore)
        for _ in range(60):
            await m.acquire(MODEL, 1)
        with pytest.raises(QuotaExhaustedError):
            await other.acquire(MODEL, 1)
        assert (await separate.acquire(MODEL, 1)).model == MODEL
    finally:
        for x in (m, other, separate):
            await x.aclose()


async def test_every_key_disabled_across_workers(redis_url: str) -> None:
    clock = FakeClock(T0)
    keys = _keys()[:1]
    a, b = _manager(redis_url, clock, keys), _manager(redis_url, clock, keys)
    try:
        await a.report_failure(await a.acquire(MODEL, 5), status=403, rate_limits=None)
        with pytest.raises(NoUsableKeyError):
            await b.acquire(MODEL, 5)
    finally:
        await a.aclose()
        await b.aclose()
