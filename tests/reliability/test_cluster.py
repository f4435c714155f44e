"""The fleet on a Redis Cluster: processes share quota through it, and a primary that dies in
the middle of a run fails over without the run noticing.

1. Two worker processes (the soak of `soak.py`) share one quota ledger through a 3-primary
   cluster in front of the local Groq server: no 429, nothing lost or answered twice.
2. Two engines run against a cluster of 3 primaries with one replica each; the primary holding
   the busiest (organisation, model) slot is stopped mid-run. Its replica takes over within a
   few seconds (`cluster-node-timeout` 1 s); meanwhile the engines serve that pair from their
   local share exactly as in a single Redis's outage (`test_outage.py`). The run goes on:
   every request gets an answer or a typed error, the server never answers 429, the stores
   reconcile, and the snapshot's `storage` section says what happened (the topology, the outage,
   the error).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from ymera_groq_plugin.errors import YmeraError
from ymera_groq_plugin.monitor import monitor_for
from ymera_groq_plugin.testing import FakeClock
from ymera_groq_plugin.testing.redis_topologies import RedisClusterServer
from ymera_groq_plugin.testing.server import GroqTestServer

from .conftest import KEYS, MODEL, Ticker, catalog_with, closing, make_engine, on_portal
from .soak import SoakConfig, run_soak
from .test_outage import Run, _redis_executions, learning_store, quota_store, until

pytestmark = [pytest.mark.redis, pytest.mark.slow]

LIMITS = {"rpm": 20, "rpd": 5000, "tpm": 20_000, "tpd": 1_000_000}


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
    cluster = RedisClusterServer(primaries=3, replicas=1)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()


async def test_a_cluster_primary_fails_over_mid_run_and_the_run_goes_on(
    replicated_cluster: RedisClusterServer, tmp_path: Path
) -> None:
    cluster = replicated_cluster
    url = cluster.url
    clock = FakeClock(1_800_000_000.0)
    catalog = catalog_with(LIMITS)
    with GroqTestServer(KEYS, limits={MODEL: LIMITS}, clock=clock) as server, Ticker(clock):
        engines = [
            make_engine(
                server.base_url,
                tmp_path / f"worker{n}",
                clock=clock,
                catalog=catalog,
                redis_url=url,
                max_wait=600,
                request_timeout=10,
            )
            for n in range(2)
        ]
        run = Run(engines, per_engine=6)
        async with closing(*engines):
            run.start()
            await run.more(20, "requests before the failover")
            # The primary serving org_a's pair for the model: where most traffic goes.
            victim = cluster.node_for_key(f"ymera:default:quota:{{org_a|{MODEL}}}:b")
            primaries_before = cluster.primary_ports()
            await asyncio.to_thread(victim.stop)
            run.phase = "failover"
            await run.more(20, "requests while the replica takes over")
            await asyncio.to_thread(cluster.wait_primaries, 3)
            assert cluster.primary_ports() != primaries_before  # a replica was promoted
            during = await monitor_for(engines[0]).asnapshot()
            run.phase = "after"
            await until(
                lambda: all(
                    not quota_store(e).degraded
                    and not learning_store(e).degraded
                    and learning_store(e).pending == 0
                    for e in engines
                ),
                "the stores to reconcile on the new primary",
                limit=60,
            )
            after = await monitor_for(engines[0]).asnapshot()
            await run.more(20, "requests after the failover")
            await run.stop()
            idle = [await on_portal(e, e.quota.idle()) for e in engines]
            outages = [quota_store(e).outages for e in engines]
            errors = [quota_store(e).last_error for e in engines]
            records = await _redis_executions(url)
        stats = server.stats()
        # The old primary comes back as a replica of the one that took its place.
        await asyncio.to_thread(victim.start)
        await asyncio.to_thread(cluster.wait_ok)

    phases = Counter(phase for _, phase, _ in run.done)
    print(
        f"\ncluster failover: served {dict(phases)}, errors {len(run.errors)}, server statuses "
        f"{stats.by_status}, quota outages {outages}, last errors {errors}"
    )
    # Answers or typed errors, nothing lost: every request the run sent has an outcome, and
    # any error is one of the package's own.
    assert all(err.split(":")[0] in _typed_errors() for _, _, err in run.errors), run.errors
    assert 429 not in stats.by_status and stats.rate_limited == {}
    assert stats.by_status.get(200, 0) == len(run.done)
    assert phases["failover"] >= 20 and phases["after"] >= 20
    assert all(idle)
    # Nothing lost: every request served has exactly one execution record in the cluster's
    # learning log, those made while its primary was failing over included.
    assert set(records) == {rid for rid, _, _ in run.done}
    assert set(records.values()) == {1}
    # The stores noticed (the first call on the dead primary's slots) and say what it was.
    assert any(n >= 1 for n in outages)
    quota_entry = during["storage"]["quota"]
    assert quota_entry["topology"] == "cluster"
    assert after["storage"]["quota"]["state"] == "ok"
    noticed = [e for e in engines if quota_store(e).outages]
    assert all(quota_store(e).last_error for e in noticed)
    assert all(quota_store(e).recoveries >= 1 for e in noticed)


def _typed_errors() -> set[str]:
    import ymera_groq_plugin.errors as errors

    return {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, YmeraError)
    }
