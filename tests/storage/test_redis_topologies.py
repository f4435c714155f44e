"""The Redis stores on a real 3-primary Redis Cluster and a real Sentinel group, beyond the
contract suites (which run on both too): where the keys land, scans that reach every primary,
scripts on nodes that never saw them, and failures that must read as `StorageError` so the
resilient stores fall back the way they do when one Redis goes away."""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections import Counter
from typing import Any

import pytest
import redis

from ymera_groq_plugin.errors import StorageError
from ymera_groq_plugin.storage import store_from_url
from ymera_groq_plugin.storage.base import _sentinel_classes, redis_client
from ymera_groq_plugin.storage.learning_base import LearningStore
from ymera_groq_plugin.storage.quota_base import Limits
from ymera_groq_plugin.storage.redis_cache import RedisCacheStore
from ymera_groq_plugin.storage.resilient import ResilientQuotaStore
from ymera_groq_plugin.testing import FakeClock
from ymera_groq_plugin.testing.redis_topologies import (
    RedisClusterServer,
    RedisSentinelServer,
    _call,
    _role,
)
from ymera_groq_plugin.types import Execution

pytestmark = pytest.mark.redis

LIMITS: Limits = (30, 1000, 10_000, 100_000)
T0 = 1_800_000_000.0


def keys_per_node(cluster: RedisClusterServer, pattern: str = "ymera:*") -> dict[int, int]:
    """How many keys matching `pattern` each running primary holds (its own SCAN)."""
    out: dict[int, int] = {}
    for port in cluster.primary_ports():
        client = redis.Redis(host="127.0.0.1", port=port)
        try:
            out[port] = sum(1 for _ in client.scan_iter(match=pattern, count=1000))
        finally:
            client.close()
    return out


async def reserve(store: Any, org: str, rid: str, *, model: str = "m", now: float = T0) -> float:
    wait, _ = await store.reserve(
        org, model, reservation_id=rid, requests=1, tokens=10, defaults=LIMITS, now=now, ttl=60
    )
    return float(wait)


# -- where the keys land ------------------------------------------------------------------------


async def test_pairs_spread_over_the_primaries_and_clear_scans_every_one(
    redis_cluster: RedisClusterServer, redis_cluster_url: str
) -> None:
    quota = store_from_url("quota", redis_cluster_url, namespace="spread")
    keys = store_from_url("keys", redis_cluster_url, namespace="spread")
    try:
        for n in range(24):
            assert await reserve(quota, f"org_{n}", f"r{n}") == 0
            await keys.update(f"key{n}", {"disabled": "401"})
        await keys.set_alias("org_x", "org_0")
        spread = keys_per_node(redis_cluster, "ymera:spread:quota:*")
        # One slot per (organisation, model): 24 pairs land on every primary.
        assert len(spread) == 3 and all(v > 0 for v in spread.values()), spread
        assert sum(spread.values()) == 24 * 3  # state, reservations, expiries per pair
        assert all(v > 0 for v in keys_per_node(redis_cluster, "ymera:spread:key:*").values())
        # Reads across slots in one pipelined call.
        states = await quota.get_many([(f"org_{n}", "m", LIMITS) for n in range(24)], now=T0)
        assert [s.outstanding for s in states] == [1] * 24
        loaded = await keys.load([f"key{n}" for n in range(24)])
        assert len(loaded.records) == 24 and loaded.aliases == {"org_x": "org_0"}
        # Clearing scans every primary, not the one the client happens to talk to.
        await quota.clear()
        await keys.clear()
        assert set(keys_per_node(redis_cluster, "ymera:spread:*").values()) == {0}
    finally:
        await quota.aclose()
        await keys.aclose()


async def test_a_large_l2_namespace_is_sharded_over_slots_and_still_one_cache(
    redis_cluster: RedisClusterServer, redis_cluster_url: str, clock: FakeClock
) -> None:
    store = RedisCacheStore.from_url(redis_cluster_url, clock=clock, max_entries=32 * 1024)
    small = RedisCacheStore.from_url(redis_cluster_url, clock=clock, max_entries=100)
    try:
        assert "shards=16" in repr(store) and "shards" not in repr(small)
        for n in range(64):
            await store.set("ns", f"{n:064x}", f"value {n}", 60)
        indexes = keys_per_node(redis_cluster, "ymera:ns:cache:*:idx")
        assert sum(indexes.values()) == 16  # one index per shard, spread over the primaries
        assert all(v > 0 for v in indexes.values()), indexes
        assert [await store.get("ns", f"{n:064x}") for n in (0, 33, 63)] == [
            "value 0",
            "value 33",
            "value 63",
        ]
        assert await store.size("ns") == 64 and await store.size() == 64
        await store.clear("ns")
        assert await store.size("ns") == 0
        assert set(keys_per_node(redis_cluster, "ymera:ns:cache:*").values()) == {0}
    finally:
        await store.aclose()
        await small.aclose()


async def test_sharded_eviction_keeps_each_shard_within_its_share(
    redis_cluster_url: str, clock: FakeClock
) -> None:
    store = RedisCacheStore.from_url(redis_cluster_url, clock=clock, max_entries=16 * 1024)
    try:
        # Keys of one shard only: its share of the bound (1024) is what it keeps.
        keys = [k for k in (f"k{n}" for n in range(40_000)) if zlib.crc32(k.encode()) % 16 == 3]
        keys = keys[:1030]
        for key in keys:
            clock.advance(0.001)
            await store.set("big", key, "v", 3600)
        assert await store.size("big") == 1024
        # The oldest went, the newest stayed.
        assert [await store.get("big", k) for k in keys[:6]] == [None] * 6
        assert await store.get("big", keys[6]) == "v" and await store.get("big", keys[-1]) == "v"
    finally:
        await store.aclose()


async def test_pipelined_scripts_load_on_nodes_that_never_ran_them(
    redis_cluster: RedisClusterServer, redis_cluster_url: str
) -> None:
    quota = store_from_url("quota", redis_cluster_url, namespace="noscript")
    try:
        for port in redis_cluster.primary_ports():
            client = redis.Redis(host="127.0.0.1", port=port)
            try:
                client.script_flush()
            finally:
                client.close()
        states = await quota.get_many([(f"org_{n}", "m", LIMITS) for n in range(12)], now=T0)
        assert len(states) == 12 and all(s.outstanding == 0 for s in states)
    finally:
        await quota.aclose()


async def test_the_learning_log_is_one_ordered_log_on_a_cluster(redis_cluster_url: str) -> None:
    a: LearningStore = store_from_url("learning", redis_cluster_url, namespace="fleet")
    b: LearningStore = store_from_url("learning", redis_cluster_url, namespace="fleet")
    try:
        for n in range(6):
            store = a if n % 2 else b
            await store.record(
                Execution(
                    execution_id=f"e{n}",
                    agent_name="agent",
                    task_type="qa",
                    model="m",
                    success=True,
                    latency_ms=10.0,
                    tokens=5,
                    timestamp=1000.0 + n,
                ),
                origin=f"w{n % 2}",
            )
        events = await a.events()
        assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
        assert await a.feedback("e3", 0.5, timestamp=2000.0, origin="w0") is not None
        assert await a.prune(1003.5) == 4
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_resharded_slot_is_followed_without_an_error(
    redis_cluster: RedisClusterServer, redis_cluster_url: str
) -> None:
    quota = store_from_url("quota", redis_cluster_url, namespace="reshard")
    try:
        for n in range(3):
            assert await reserve(quota, "org_a", f"before-{n}") == 0
        key = "ymera:reshard:quota:{org_a|m}:b"
        here = redis_cluster.node_for_key(key).port
        there = next(p for p in redis_cluster.primary_ports() if p != here)
        await asyncio.to_thread(redis_cluster.move_slot, key, there)
        # The client's slot map is stale: redis-py follows MOVED, and the new primary loads the
        # script on NOSCRIPT; the ledger moved with the keys.
        assert await reserve(quota, "org_a", "after") == 0
        state = await quota.get("org_a", "m", defaults=LIMITS, now=T0)
        assert state.outstanding == 4
        assert redis_cluster.node_for_key(key).port == there
        states = await quota.get_many([("org_a", "m", LIMITS)], now=T0)
        assert states[0].outstanding == 4
    finally:
        await quota.aclose()


# -- failures read as StorageError ---------------------------------------------------------------


async def test_a_stopped_cluster_primary_fails_only_its_slots_as_storage_errors(
    redis_cluster: RedisClusterServer, redis_cluster_url: str
) -> None:
    quota = store_from_url("quota", redis_cluster_url, namespace="down")
    resilient = ResilientQuotaStore(
        store_from_url("quota", redis_cluster_url, namespace="down"), clock=lambda: T0
    )
    orgs = [f"org_{n}" for n in range(12)]
    try:
        for org in orgs:
            await reserve(quota, org, f"{org}-a")
        victim = redis_cluster.node_for_key("ymera:down:quota:{org_0|m}:b")
        victim.stop()
        outcomes: Counter[str] = Counter()
        causes: list[BaseException | None] = []
        for org in orgs:
            try:
                await reserve(quota, org, f"{org}-b")
                outcomes["ok"] += 1
            except StorageError as exc:
                causes.append(exc.storage_error)
                outcomes["storage_error"] += 1
        assert all(isinstance(c, redis.RedisError | redis.RedisClusterException) for c in causes)
        # A process that starts now still serves the slots the other primaries hold.
        late = store_from_url("quota", redis_cluster_url, namespace="down")
        try:
            served = 0
            for org in orgs:
                with contextlib.suppress(StorageError):
                    served += await reserve(late, org, f"{org}-late") == 0
            assert served == outcomes["ok"]
        finally:
            await late.aclose()
        # Only the stopped primary's pairs fail; the others keep their shared ledger.
        assert outcomes["storage_error"] >= 1 and outcomes["ok"] >= 1, outcomes
        # Behind the resilient store the caller sees no error: the failed pair is served
        # from the local share, and the snapshot's entry can say what happened.
        assert await reserve(resilient, "org_0", "res-1") == 0
        assert resilient.degraded and resilient.outages == 1
        assert resilient.last_error is not None and "quota reserve" in resilient.last_error
        victim.start()
        redis_cluster.wait_ok()
        assert await resilient.recover() is True
        assert not resilient.degraded and resilient.recoveries == 1
        assert await reserve(quota, "org_0", "org_0-c") == 0
    finally:
        await quota.aclose()
        await resilient.aclose()


async def test_a_sentinel_switch_is_an_outage_then_the_new_primary(
    redis_sentinel: RedisSentinelServer, redis_sentinel_url: str
) -> None:
    # Every command asks the Sentinel which server is the primary (the default is every half
    # second), so what each call sees does not depend on how long the switch took.
    url = f"{redis_sentinel_url}?master_check=0"
    quota = store_from_url("quota", url, namespace="switch")
    resilient = ResilientQuotaStore(
        store_from_url("quota", url, namespace="switch"), clock=lambda: T0
    )
    try:
        assert await reserve(resilient, "org_a", "before") == 0
        # A worker running before the switch has been counted: without an answered heartbeat
        # it could not know it is alone and would fall back to a newcomer's sliver (the one
        # its first call spawned may meet the switch itself).
        assert await resilient.beat() == 1 and resilient.counted
        old = redis_sentinel.master_port()
        new = await asyncio.to_thread(redis_sentinel.failover)
        assert new != old
        # While the Sentinel's record may still name the old primary, a call either fails (no
        # primary named: an outage, `StorageError`) or reaches the new primary; never the old.
        failure: StorageError | None = None
        try:
            await reserve(quota, "org_a", "during")
        except StorageError as exc:
            failure = exc
        assert failure is None or isinstance(failure.storage_error, redis.RedisError)
        await asyncio.to_thread(redis_sentinel.wait_promoted, old)
        # Once the switch is over, the next call goes to the new primary (its pooled
        # connection to the old one, which may still take writes, is left).
        assert await reserve(quota, "org_a", "direct") == 0
        assert _call(new, "HEXISTS", "ymera:switch:quota:{org_a|m}:r", "direct")
        for n in range(3):  # never an error behind the resilient store
            assert await reserve(resilient, "org_a", f"after-{n}") == 0
        if resilient.degraded:
            assert resilient.last_error is not None
            assert await resilient.recover() is True
        state = await quota.get("org_a", "m", defaults=LIMITS, now=T0)
        # The replica had the reservation made before the switch (asynchronous replication
        # caught up: the group was ready), plus the ones made after it.
        assert state.outstanding >= 2
    finally:
        await quota.aclose()
        await resilient.aclose()


async def test_a_sentinel_client_leaves_an_old_primary_that_still_takes_writes(
    redis_sentinel: RedisSentinelServer, redis_sentinel_url: str
) -> None:
    client = redis_client(redis_sentinel_url, master_check=0.0)
    try:
        await client.set("ymera:switch:before", b"1")  # leaves a pooled connection behind
        old = redis_sentinel.master_port()
        await asyncio.to_thread(redis_sentinel.failover)
        new = await asyncio.to_thread(redis_sentinel.wait_promoted, old)
        # The old primary takes writes until the Sentinel next looks at it (seconds later) and
        # turns it into a replica, dropping them; the pooled connection must not go there.
        old_still_primary = _role(old) == "master"
        await client.set("ymera:switch:after", b"2")
        assert _call(new, "GET", "ymera:switch:after") == b"2"
        if old_still_primary:
            assert _call(old, "GET", "ymera:switch:after") is None
    finally:
        await client.aclose()


def test_a_sentinel_record_in_a_switch_names_no_primary() -> None:
    # While the Sentinel switches, its record still names the old primary although the
    # replica already takes writes as the new one: that window must read as an outage.
    sentinel_class, _ = _sentinel_classes()
    sentinel = sentinel_class([("127.0.0.1", 1)])
    state: dict[str, Any] = {
        "flags": "master",
        "is_master": True,
        "is_sdown": False,
        "is_odown": False,
        "num-other-sentinels": 0,
    }
    assert sentinel.check_master_state(state, "ymera")
    state["flags"] = "master,failover_in_progress,force_failover"
    assert not sentinel.check_master_state(state, "ymera")
