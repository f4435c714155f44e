"""The fleet on a Redis Cluster and behind Sentinel: processes share quota through a cluster,
and a primary that dies in the middle of a run fails over without the run noticing.

1. Two worker processes (the soak of `soak.py`) share one quota ledger through a 3-primary
   cluster in front of the local Groq server: no 429, nothing lost or answered twice.
2. Two engines run against a cluster of 3 primaries with one replica each; the primary holding
   the busiest (organisation, model) slot is stopped mid-run. Its replica takes over within a
   few seconds (`cluster-node-timeout` 1 s); meanwhile the engines serve that pair from their
   local share exactly as in a single Redis's outage (`test_outage.py`). The run goes on:
   every request gets an answer or a typed error, the server never answers 429, the stores
   reconcile, and the snapshot's `storage` section says what happened (the topology, the outage,
   the error).
3. The same with a Sentinel group (one primary, one replica): the primary is stopped and the
   Sentinel, on its own, promotes the replica after `down-after-milliseconds` (1 s).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ymera_groq_plugin.errors import YmeraError
from ymera_groq_plugin.monitor import monitor_for
from ymera_groq_plugin.testing import FakeClock
from ymera_groq_plugin.testing.redis_topologies import RedisClusterServer, RedisSentinelServer
from ymera_groq_plugin.testing.server import GroqTestServer

from .conftest import KEYS, MODEL, Ticker, closing, on_portal
from .soak import SoakConfig, run_soak
from .test_outage import (
    LIMITS,
    Run,
    _redis_executions,
    quota_store,
    two_workers,
    until_reconciled,
)

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def test_two_processes_share_quota_through_the_cluster_with_no_429(
    redis_cluster_url: str,
) -> None:
    report = run_soak(SoakConfig(processes=2, requests=150, concurrency=8), redis_cluster_url)
    print("\n" + "\n".join(report.lines()))
    assert report.server_refused == {} and 429 not in report.server_statuses
    assert report.errors == {}
    assert report.lost == [] and report.duplicated == [] and report.unexpected == []
    assert report.answered == report.sent == 300
    assert report.server_statuses == {200: 300}
    assert all(w["idle"] for w in report.per_worker)


@pytest.fixture(scope="module")
def replicated_cluster() -> Iterator[RedisClusterServer]:
    """3 primaries with a replica each, of this module's own (a test stops one primary)."""
    with RedisClusterServer(primaries=3, replicas=1) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def sentinel_group() -> Iterator[RedisSentinelServer]:
    """One primary, one replica and a Sentinel of this module's own (a test stops the
    primary)."""
    with RedisSentinelServer() as group:
        yield group


async def test_a_cluster_primary_fails_over_mid_run_and_the_run_goes_on(
    replicated_cluster: RedisClusterServer, tmp_path: Path
) -> None:
    cluster = replicated_cluster
    # The primary serving org_a's pair for the model: where most traffic goes.
    victim = cluster.node_for_key(f"ymera:default:quota:{{org_a|{MODEL}}}:b")
    before = cluster.primary_ports()

    def fail_over() -> None:
        victim.stop()
        cluster.wait_primaries(3)
        assert cluster.primary_ports() != before  # a replica was promoted

    def heal() -> None:
        # The old primary comes back as a replica of the one that took its place.
        victim.start()
        cluster.wait_ok()

    await _run_through_failover(cluster.url, "cluster", fail_over, heal, tmp_path)


async def test_a_sentinel_primary_fails_over_mid_run_and_the_run_goes_on(
    sentinel_group: RedisSentinelServer, tmp_path: Path
) -> None:
    group = sentinel_group
    victim = group.primary()

    def fail_over() -> None:
        victim.stop()
        # No SENTINEL FAILOVER here: the Sentinel must notice the silence itself. Wait for it
        # to finish (flags clear), not only to name the new port, or the next phase starts
        # while redis-py still finds no primary.
        try:
            group.wait_promoted(victim.port, timeout=60)
        except RuntimeError:
            pytest.fail("the Sentinel never promoted the replica")

    def heal() -> None:
        # Back as a replica once the Sentinel reconfigures it (seconds; nothing waits on it).
        victim.start()

    await _run_through_failover(group.url, "sentinel", fail_over, heal, tmp_path)


async def _run_through_failover(
    url: str,
    topology: str,
    fail_over: Callable[[], None],
    heal: Callable[[], None],
    tmp_path: Path,
) -> None:
    clock = FakeClock(1_800_000_000.0)
    with GroqTestServer(KEYS, limits={MODEL: LIMITS}, clock=clock) as server, Ticker(clock):
        engines = two_workers(server.base_url, url, clock, tmp_path)
        run = Run(engines, per_engine=6)
        async with closing(*engines):
            run.start()
            await run.more(20, "requests before the failover")
            run.phase = "failover"
            await asyncio.to_thread(fail_over)
            await run.more(20, "requests after the replica took over")
            during = await monitor_for(engines[0]).asnapshot()
            run.phase = "after"
            await until_reconciled(engines, "the stores to reconcile on the new primary", limit=60)
            # A store that trips once more on the new primary (a topology still settling) retries
            # every second; what must hold is that the snapshot comes back to "ok".
            after = await monitor_for(engines[0]).asnapshot()
            deadline = time.monotonic() + 30
            while after["storage"]["quota"]["state"] != "ok" and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                after = await monitor_for(engines[0]).asnapshot()
            await run.more(20, "requests after the failover")
            await run.stop()
            idle = [await on_portal(e, e.quota.idle()) for e in engines]
            final = [await monitor_for(e).asnapshot() for e in engines]
            outages = [quota_store(e).outages for e in engines]
            errors = [quota_store(e).last_error for e in engines]
            recoveries = [quota_store(e).recoveries for e in engines]
        # Read once the engines closed: their last learning records are written behind.
        records = await _redis_executions(url)
        stats = server.stats()
    await asyncio.to_thread(heal)

    phases = Counter(phase for _, phase, _ in run.done)
    print(
        f"\n{topology} failover: served {dict(phases)}, errors {len(run.errors)}, server "
        f"statuses {stats.by_status}, quota outages {outages}, last errors {errors}"
    )
    # Answers or typed errors, nothing lost: any error is one of the package's own.
    assert all(err.split(":")[0] in _typed_errors() for _, _, err in run.errors), run.errors
    assert 429 not in stats.by_status and stats.rate_limited == {}
    assert stats.by_status.get(200, 0) == len(run.done)
    assert phases["failover"] >= 20 and phases["after"] >= 20
    assert all(idle)
    # Every request served has exactly one execution record in the shared learning log,
    # those made while the primary was failing over included.
    assert set(records) == {rid for rid, _, _ in run.done}
    assert set(records.values()) == {1}
    # The stores noticed, say what it was, and came back.
    assert any(n >= 1 for n in outages)
    assert during["storage"]["quota"]["topology"] == topology
    assert after["storage"]["quota"]["state"] == "ok"
    for n, e in zip(outages, errors, strict=True):
        if n:
            assert e
    # Each engine that lived through the outage says so in its own snapshot.
    for n, snap in zip(outages, final, strict=True):
        quota = snap["storage"]["quota"]
        assert quota["topology"] == topology
        if n:
            assert quota["outages"] >= 1, quota
            assert quota.get("last_error"), quota
    assert all(r >= 1 for n, r in zip(outages, recoveries, strict=True) if n)


def _typed_errors() -> set[str]:
    import ymera_groq_plugin.errors as errors

    return {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, YmeraError)
    }
