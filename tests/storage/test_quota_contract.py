"""One contract for `QuotaStore` and `KeyStateStore`, run against memory and a real Redis.

Both backends must behave identically: the in-memory store calls the arithmetic of
`ymera_groq_plugin.storage.buckets`, the Redis store runs the same formulas in Lua. The last test
replays one long random operation sequence on both and compares every number exactly.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.utils import all_backends, redis_url_for
from ymera_groq_plugin.errors import ConfigurationError
from ymera_groq_plugin.storage import resilient_store_from_url, store_from_url
from ymera_groq_plugin.storage.memory import MemoryKeyStateStore, MemoryQuotaStore
from ymera_groq_plugin.storage.quota_base import (
    KeyRecord,
    KeyStateStore,
    Limits,
    Observation,
    QuotaState,
    QuotaStore,
    Report,
)
from ymera_groq_plugin.storage.redis_learning import RedisLearningStore
from ymera_groq_plugin.storage.redis_quota import RedisKeyStateStore, RedisQuotaStore
from ymera_groq_plugin.storage.resilient import (
    ResilientKeyStateStore,
    ResilientLearningStore,
    ResilientQuotaStore,
)
from ymera_groq_plugin.storage.sqlite_learning import SqliteLearningStore

T0 = 1_800_000_000.0
LIMITS: Limits = (3, 100, 100, 1000)  # rpm, rpd, tpm, tpd
TTL = 600.0


@pytest.fixture
async def quota(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[QuotaStore]:
    if backend == "memory":
        store: Any = store_from_url("quota", "memory://")
    else:
        url = redis_url_for(request, backend)
        store = store_from_url("quota", url, namespace="contract")
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture
async def keystore(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[KeyStateStore]:
    if backend == "memory":
        store: Any = store_from_url("keys", "memory://")
    else:
        url = redis_url_for(request, backend)
        store = store_from_url("keys", url, namespace="contract")
    try:
        yield store
    finally:
        await store.aclose()


async def reserve(
    store: QuotaStore,
    rid: str,
    tokens: int,
    now: float,
    *,
    requests: int = 1,
    limits: Limits = LIMITS,
    org: str = "org_a",
    model: str = "m",
    ttl: float = TTL,
) -> tuple[float, QuotaState]:
    return await store.reserve(
        org,
        model,
        reservation_id=rid,
        requests=requests,
        tokens=tokens,
        defaults=limits,
        now=now,
        ttl=ttl,
    )


async def settle(
    store: QuotaStore,
    rid: str | None,
    now: float,
    *,
    requests: float = 1,
    tokens: float = 0,
    observation: Observation | None = None,
    limits: Limits = LIMITS,
    org: str = "org_a",
    model: str = "m",
) -> tuple[bool, QuotaState]:
    return await store.settle(
        org,
        model,
        reservation_id=rid,
        requests=requests,
        tokens=tokens,
        defaults=limits,
        now=now,
        observation=observation,
    )


# -- QuotaStore --------------------------------------------------------------------------------


@all_backends
async def test_reserve_takes_all_four_or_nothing(quota: QuotaStore) -> None:
    assert (await reserve(quota, "a", 40, T0))[0] == 0
    wait, st = await reserve(quota, "b", 40, T0)
    assert wait == 0
    assert (st.pending_requests, st.pending_tokens, st.outstanding) == (2, 80, 2)
    # 40 more tokens would exceed TPM (100) by 20: nothing is taken, not even the request.
    wait, st = await reserve(quota, "c", 40, T0)
    assert wait == pytest.approx(20 * 60 / 100, abs=0.01)
    assert (st.pending_requests, st.pending_tokens, st.outstanding) == (2, 80, 2)
    # The request buckets alone still have room for a third request.
    assert (await reserve(quota, "d", 20, T0))[0] == 0
    # RPM (3) is now full: a fourth request waits for one request to drain (60 / 3 s).
    await settle(quota, "a", T0, tokens=40)
    wait, st = await reserve(quota, "e", 0, T0)
    assert wait == pytest.approx(20.0, abs=0.01)
    assert st.levels[0] == 1 and st.pending_requests == 2


@all_backends
async def test_request_larger_than_a_limit_never_fits(quota: QuotaStore) -> None:
    wait, st = await reserve(quota, "a", 101, T0)
    assert math.isinf(wait)
    assert st.pending_tokens == 0
    wait, _ = await reserve(quota, "b", 1, T0, requests=4)
    assert math.isinf(wait)


@all_backends
async def test_kinds_without_limit_are_not_checked(quota: QuotaStore) -> None:
    limits: Limits = (None, None, 10, None)
    for i in range(50):
        assert (await reserve(quota, f"r{i}", 0, T0, limits=limits))[0] == 0
    wait, st = await reserve(quota, "t", 11, T0, limits=limits)
    assert math.isinf(wait)
    assert st.limits == limits


@all_backends
async def test_settle_turns_the_reservation_into_consumption(quota: QuotaStore) -> None:
    await reserve(quota, "a", 30, T0)
    found, st = await settle(quota, "a", T0 + 1, requests=1, tokens=75)
    assert found
    assert (st.pending_requests, st.pending_tokens, st.outstanding) == (0, 0, 0)
    assert st.levels == (1, 1, 75, 75)
    assert st.updated == T0 + 1
    # Settling again finds nothing to take back (the caller guards against double charges).
    found, st = await settle(quota, "a", T0 + 1, requests=0, tokens=0)
    assert not found
    assert st.levels == (1, 1, 75, 75)


@all_backends
async def test_release_restores_exactly(quota: QuotaStore) -> None:
    await reserve(quota, "keep", 10, T0)
    await settle(quota, "keep", T0, tokens=10)
    before = await quota.get("org_a", "m", defaults=LIMITS, now=T0 + 5)
    await reserve(quota, "x", 37, T0 + 5)
    found, after = await settle(quota, "x", T0 + 5, requests=0, tokens=0)
    assert found
    assert after == before
    # Released long after it was taken, it still gives back exactly what it took.
    await reserve(quota, "y", 37, T0 + 5)
    later = await quota.get("org_a", "m", defaults=LIMITS, now=T0 + 30)
    assert later.pending_tokens == 37
    _, after = await settle(quota, "y", T0 + 30, requests=0, tokens=0)
    assert after.pending_tokens == 0 and after.pending_requests == 0
    assert after.levels == later.levels


@all_backends
async def test_levels_drain_continuously(quota: QuotaStore) -> None:
    await reserve(quota, "a", 100, T0)
    await settle(quota, "a", T0, tokens=100)
    st = await quota.get("org_a", "m", defaults=LIMITS, now=T0 + 15)
    # TPM drains 100/60 per second, RPM 3/60, the day buckets 1/864 of their limit per 864 s.
    assert st.levels[2] == pytest.approx(75.0)
    assert st.levels[0] == pytest.approx(1 - 15 * 3 / 60)
    assert st.levels[3] == pytest.approx(100 - 15 * 1000 / 86400)
    # 25 tokens have drained; an exact fit on a drained level waits a hair (quota.MARGIN).
    assert 0 < (await reserve(quota, "x", 25, T0 + 15))[0] < 0.01
    assert (await reserve(quota, "b", 24, T0 + 15))[0] == 0
    assert (await reserve(quota, "c", 1, T0 + 15))[0] > 0
    st = await quota.get("org_a", "m", defaults=LIMITS, now=T0 + 200)
    assert st.levels[0] == 0 and st.levels[2] == 0
    assert st.levels[3] == pytest.approx(100 - 200 * 1000 / 86400)


@all_backends
async def test_a_clock_running_behind_drains_nothing(quota: QuotaStore) -> None:
    await reserve(quota, "a", 60, T0 + 10)
    await settle(quota, "a", T0 + 10, tokens=60)
    st = await quota.get("org_a", "m", defaults=LIMITS, now=T0)
    assert st.levels[2] == 60 and st.updated == T0 + 10


@all_backends
async def test_unsettled_reservations_expire(quota: QuotaStore) -> None:
    await reserve(quota, "crashed", 90, T0, ttl=10)
    assert (await reserve(quota, "b", 20, T0 + 9))[0] > 0
    wait, st = await reserve(quota, "b", 20, T0 + 10)
    assert wait == 0
    assert st.pending_tokens == 20 and st.outstanding == 1
    found, _ = await settle(quota, "crashed", T0 + 11, requests=0, tokens=0)
    assert not found


@all_backends
async def test_observation_learns_limits_and_the_server_wins(quota: QuotaStore) -> None:
    await reserve(quota, "a", 10, T0)
    obs = Observation(limits=(None, 50, 80, None), floors=(None, 20.0, 30.0, None))
    found, st = await settle(quota, "a", T0, tokens=10, observation=obs)
    assert found
    assert st.learned == (None, 50, 80, None)
    assert st.limits == (3, 50, 80, 1000)
    # Groq counts 20 requests today (the ledger 1) and 30 tokens this minute (ledger 10).
    assert st.levels[1] == 20 and st.levels[2] == 30
    # A floor below what the ledger counts (consumed plus reserved) changes nothing.
    await reserve(quota, "b", 40, T0)
    _, st = await settle(
        quota, None, T0, requests=0, observation=Observation(floors=(None, None, 50.0, None))
    )
    assert st.levels[2] == 30 and st.pending_tokens == 40
    _, st = await settle(
        quota, None, T0, requests=0, observation=Observation(floors=(None, None, 75.0, None))
    )
    assert st.levels[2] == 35
    # The learned limit stays in force for callers that still pass the catalog's.
    st = await quota.get("org_a", "m", defaults=LIMITS, now=T0)
    assert st.limits == (3, 50, 80, 1000)
    wait, _ = await reserve(quota, "c", 81, T0)
    assert math.isinf(wait)


@all_backends
async def test_remaining_as_reported_is_kept(quota: QuotaStore) -> None:
    obs = Observation(remaining_requests=999, remaining_tokens=7987)
    _, st = await settle(quota, None, T0 + 3, requests=0, observation=obs)
    assert (st.remaining_requests, st.remaining_tokens, st.reported_at) == (999, 7987, T0 + 3)


@all_backends
async def test_cooldown_blocks_until_it_ends(quota: QuotaStore) -> None:
    _, st = await settle(quota, None, T0, requests=0, observation=Observation(cool_until=T0 + 9))
    assert st.cool_until == T0 + 9
    wait, _ = await reserve(quota, "a", 1, T0 + 2)
    assert wait == pytest.approx(7.0, abs=0.01)
    # A shorter cooldown never cuts a longer one.
    await settle(quota, None, T0, requests=0, observation=Observation(cool_until=T0 + 4))
    assert (await reserve(quota, "a", 1, T0 + 5))[0] == pytest.approx(4.0, abs=0.01)
    assert (await reserve(quota, "a", 1, T0 + 9))[0] == 0


@all_backends
async def test_pairs_are_independent_and_read_together(quota: QuotaStore) -> None:
    await reserve(quota, "a", 50, T0, org="org_a")
    await reserve(quota, "b", 70, T0, org="org_b")
    await reserve(quota, "c", 20, T0, org="org_a", model="other")
    got = await quota.get_many(
        [("org_a", "m", LIMITS), ("org_b", "m", LIMITS), ("org_c", "m", LIMITS)], now=T0
    )
    assert [s.pending_tokens for s in got] == [50, 70, 0]
    assert got[2].limits == LIMITS and got[2].outstanding == 0
    assert await quota.get_many([], now=T0) == []


@all_backends
async def test_awkward_names_are_kept_apart(quota: QuotaStore) -> None:
    await reserve(quota, "a", 50, T0, org="o{x}|y", model="a/b:c")
    st = await quota.get("o{x}|y", "a/b:c", defaults=LIMITS, now=T0)
    assert st.pending_tokens == 50
    other = await quota.get("o{x}", "y|a/b:c", defaults=LIMITS, now=T0)
    assert other.pending_tokens == 0


@all_backends
async def test_clear_and_check(quota: QuotaStore) -> None:
    await reserve(quota, "a", 50, T0)
    assert await quota.check()
    await quota.clear()
    st = await quota.get("org_a", "m", defaults=LIMITS, now=T0)
    assert st.pending_tokens == 0 and st.outstanding == 0


# -- KeyStateStore -----------------------------------------------------------------------------


@all_backends
async def test_key_records_round_trip(keystore: KeyStateStore) -> None:
    empty = await keystore.load(["key1", "key2"])
    assert empty.records == {} and empty.aliases == {}
    await keystore.update("key1", {"disabled": "Groq answered 401", "masked": "gsk_…a1b2"})
    await keystore.update("key2", {"degraded_until": T0 + 30.5, "groq_org": "org_01abc"})
    states = await keystore.load(["key1", "key2", "key3"])
    assert states.records == {
        "key1": KeyRecord(disabled="Groq answered 401", masked="gsk_…a1b2"),
        "key2": KeyRecord(degraded_until=T0 + 30.5, groq_org="org_01abc"),
    }
    await keystore.update("key1", {"disabled": None})
    assert (await keystore.load(["key1"])).records["key1"].disabled is None
    with pytest.raises(ValueError, match="unknown"):
        await keystore.update("key1", {"secret": "gsk_nope"})


@all_backends
async def test_failures_count_within_a_window(keystore: KeyStateStore) -> None:
    assert await keystore.record_failure("key1", now=T0, window=60) == 1
    assert await keystore.record_failure("key1", now=T0 + 10, window=60) == 2
    assert await keystore.record_failure("key1", now=T0 + 59, window=60) == 3
    # Too long after the first of the run: a new run starts.
    assert await keystore.record_failure("key1", now=T0 + 61, window=60) == 1
    rec = (await keystore.load(["key1"])).records["key1"]
    assert (rec.failures, rec.failure_since) == (1, T0 + 61)
    await keystore.update("key1", {"failures": 0})
    assert await keystore.record_failure("key1", now=T0 + 62, window=60) == 1


@all_backends
async def test_aliases_and_clear(keystore: KeyStateStore) -> None:
    await keystore.set_alias("org:key2", "org_a")
    await keystore.set_alias("org_a", "org_a")
    assert (await keystore.load([])).aliases == {"org:key2": "org_a"}
    await keystore.update("key1", {"groq_org": "org_a"})
    assert await keystore.check()
    await keystore.clear()
    states = await keystore.load(["key1"])
    assert states.records == {} and states.aliases == {}


@all_backends
async def test_the_first_alias_writer_is_told(keystore: KeyStateStore) -> None:
    assert await keystore.set_alias("org:key2", "org:key1") is True
    assert await keystore.set_alias("org:key2", "org:key1") is False  # another process, later
    assert await keystore.set_alias("org:key1", "org:key1") is False


@all_backends
async def test_request_count_reports_are_shared_recent_and_bounded(
    keystore: KeyStateStore,
) -> None:
    model = "openai/gpt-oss-20b"
    for n in range(5):
        got = await keystore.report(
            model,
            "org_a",
            Report(T0 + n, 1000, 990 - n),
            orgs=["org_a", "org_b"],
            window=60,
            keep=3,
        )
    assert got == {"org_a": [Report(T0 + n, 1000, 990 - n) for n in (2, 3, 4)]}
    got = await keystore.report(
        model, "org_b", Report(T0 + 70, 1000, 500), orgs=["org_b", "org_a"], window=60, keep=3
    )
    # org_a's reports are older than the window by now; another model's are apart.
    assert got == {"org_b": [Report(T0 + 70, 1000, 500)]}
    other = await keystore.report(
        "qwen/qwen3-32b", "org_a", Report(T0 + 71, 1000, 1), orgs=["org_b"], window=60, keep=3
    )
    assert other == {}
    await keystore.clear()
    assert (
        await keystore.report(
            model, "org_c", Report(T0 + 72, 1000, 7), orgs=["org_b"], window=60, keep=3
        )
        == {}
    )


# -- both backends compute the same numbers ----------------------------------------------------


@pytest.mark.redis
async def test_redis_matches_memory_exactly_on_a_random_history(redis_url: str) -> None:
    rng = random.Random(20261128)
    mem = MemoryQuotaStore()
    red = RedisQuotaStore.from_url(redis_url, namespace="twin")
    limits: dict[str, Limits] = {"m1": (5, 40, 300, 2000), "m2": (None, 10, 120, None)}
    outstanding: list[tuple[str, str, str]] = []
    now = T0
    try:
        for step in range(400):
            now += rng.choice([0.0, 0.0, 0.25, 1.7, 13.0])
            org, model = rng.choice(["o1", "o2"]), rng.choice(["m1", "m2"])
            op = rng.random()
            results: list[Any] = []
            for store in (mem, red):
                if op < 0.5:
                    results.append(
                        await store.reserve(
                            org,
                            model,
                            reservation_id=f"r{step}",
                            requests=1,
                            tokens=random.Random(step).randint(0, 90),
                            defaults=limits[model],
                            now=now,
                            ttl=30.0,
                        )
                    )
                elif op < 0.85 and outstanding:
                    o, m, rid = outstanding[random.Random(step).randrange(len(outstanding))]
                    used = random.Random(step).choice([0, 0, 17, 64, 150])
                    obs = None
                    if random.Random(step + 1).random() < 0.3:
                        obs = Observation(
                            limits=(None, None, random.Random(step).choice([None, 100, 140]), None),
                            floors=(None, 3.0, 55.5, None),
                            remaining_requests=7,
                            remaining_tokens=44,
                            cool_until=now + 0.5,
                        )
                    results.append(
                        await store.settle(
                            o,
                            m,
                            reservation_id=rid,
                            requests=1 if used else 0,
                            tokens=used,
                            defaults=limits[m],
                            now=now,
                            observation=obs,
                        )
                    )
                else:
                    results.append(await store.get(org, model, defaults=limits[model], now=now))
            assert results[0] == results[1], f"step {step}: {results}"
            if op < 0.5 and results[0][0] == 0:
                outstanding.append((org, model, f"r{step}"))
            elif 0.5 <= op < 0.85 and outstanding:
                outstanding = [x for x in outstanding if x[2] != rid]
    finally:
        await red.aclose()


@pytest.mark.redis
async def test_registry_builds_the_named_classes(redis_url: str) -> None:
    assert isinstance(store_from_url("quota", "memory://"), MemoryQuotaStore)
    assert isinstance(store_from_url("keys", "memory://"), MemoryKeyStateStore)
    q = store_from_url("quota", redis_url, namespace="n1")
    k = store_from_url("keys", redis_url, namespace="n1")
    try:
        assert isinstance(q, RedisQuotaStore) and isinstance(k, RedisKeyStateStore)
        assert isinstance(q, QuotaStore) and isinstance(k, KeyStateStore)
        assert q.shared and not MemoryQuotaStore().shared
    finally:
        await q.aclose()
        await k.aclose()


@pytest.mark.redis
async def test_components_get_redis_behind_its_fallback_and_local_stores_bare(
    redis_url: str, tmp_path: Path
) -> None:
    # One place chooses memory, a file, or Redis wrapped by `storage.resilient`.
    assert isinstance(
        resilient_store_from_url("quota", "memory://", namespace="n2"), MemoryQuotaStore
    )
    assert isinstance(
        resilient_store_from_url("keys", "memory://", namespace="n2"), MemoryKeyStateStore
    )
    sqlite = resilient_store_from_url(
        "learning", f"sqlite:///{tmp_path}/l.db", namespace="n2", remember=7
    )
    q = resilient_store_from_url("quota", redis_url, namespace="n2", clock=lambda: T0)
    k = resilient_store_from_url("keys", redis_url, namespace="n2")
    learning = resilient_store_from_url("learning", redis_url, namespace="n2", remember=7)
    try:
        assert isinstance(sqlite, SqliteLearningStore)
        assert isinstance(q, ResilientQuotaStore) and isinstance(q.primary, RedisQuotaStore)
        assert isinstance(k, ResilientKeyStateStore) and isinstance(k.primary, RedisKeyStateStore)
        assert isinstance(learning, ResilientLearningStore)
        assert isinstance(learning.primary, RedisLearningStore)
        assert learning._remember_n == 7  # the wrapper's options reach the wrapper
        assert q._clock() == T0
    finally:
        for store in (sqlite, q, k, learning):
            await store.aclose()
    with pytest.raises(ConfigurationError):
        resilient_store_from_url("quota", "sqlite:///x.db", namespace="n2")
