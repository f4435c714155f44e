"""The resilient stores one by one, on a fake clock, with a real Redis stopped and started.

What the end-to-end outage test shows in aggregate, shown here step by step: the share each
worker takes while Redis is away, a request larger than a share, the reconcile after Redis came
back empty, the grace after a recovery, the learning buffer (nothing lost, nothing twice) and
key health changes made during the outage.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from ymera_groq_plugin.storage.quota_base import Observation
from ymera_groq_plugin.storage.redis_learning import RedisLearningStore
from ymera_groq_plugin.storage.redis_quota import RedisKeyStateStore, RedisQuotaStore
from ymera_groq_plugin.storage.resilient import (
    Breaker,
    ResilientKeyStateStore,
    ResilientLearningStore,
    ResilientQuotaStore,
)
from ymera_groq_plugin.testing import FakeClock, RedisServer
from ymera_groq_plugin.types import Execution

from .conftest import T0

pytestmark = pytest.mark.redis

D = (30, 1000, 6000, 200_000)
"""Catalog limits of the pair under test: RPM, RPD, TPM, TPD."""


def _quota(
    url: str, clock: FakeClock, namespace: str = "rs", **kw: object
) -> ResilientQuotaStore:
    return ResilientQuotaStore(
        RedisQuotaStore.from_url(url, namespace=namespace), clock=clock, **kw  # type: ignore[arg-type]
    )


async def _grant_all(
    store: ResilientQuotaStore, clock: FakeClock, tag: str, tokens: int = 10
) -> int:
    n = 0
    while True:
        wait, _ = await store.reserve(
            "org", "m", reservation_id=f"{tag}-{n}", requests=1, tokens=tokens, defaults=D,
            now=clock(), ttl=600,
        )
        if wait > 0:
            return n
        n += 1


def test_the_breaker_doubles_up_to_its_cap() -> None:
    clock = FakeClock(T0)
    b = Breaker(clock, retry_after=1, max_retry_after=5)
    assert b.closed and b.state == "closed"
    assert b.failure() and not b.closed and not b.due()
    clock.advance(1)
    assert b.due() and b.state == "half-open"
    assert not b.failure()  # already open: no new outage
    assert b.open_until == pytest.approx(clock() + 2)
    b.failure()
    b.failure()
    assert b.open_until == pytest.approx(clock() + 5)
    b.success()
    assert b.closed


async def test_each_worker_takes_its_share_while_redis_is_away(own_redis: RedisServer) -> None:
    clock = FakeClock(T0)
    url = own_redis.url
    a, b = _quota(url, clock), _quota(url, clock)
    try:
        # b joined after a's first heartbeat: its next one says that a counts it.
        assert await a.beat() == 1 and await b.beat() == 2 and await a.beat() == 2
        assert await b.beat() == 2 and a.counted and b.counted
        # Ten requests in flight (reserved, not settled) before the outage.
        assert await _grant_all(a, clock, "pre") == 30  # RPM binds at 30
        for i in range(20):
            await a.settle("org", "m", reservation_id=f"pre-{i}", requests=1, tokens=10,
                           defaults=D, now=clock())
        clock.advance(20)  # RPM drains 10 of the 20 settled
        await a.get("org", "m", defaults=D, now=clock())
        await b.get("org", "m", defaults=D, now=clock())
        own_redis.stop()
        # Each worker: 0.9 / 2 of the budget, less its share of what is used or reserved.
        got_a = await _grant_all(a, clock, "a")
        got_b = await _grant_all(b, clock, "b")
        assert a.degraded and b.degraded and a.share == pytest.approx(0.45)
        used = 10 + 10  # consumed (drained to 10) plus the ten still reserved
        share_room = 0.45 * 30 - 0.45 * used
        assert got_a == math.floor(share_room + 1e-9) and got_b == got_a
        assert got_a + got_b + used <= 30
        # The share refills at its share of the rate (0.45 * 30 per minute); its own
        # reservations, still in flight, keep their room.
        clock.advance(60)
        assert await _grant_all(a, clock, "a2") == math.floor(0.45 * 30 - got_a)
    finally:
        own_redis.start()
        await a.aclose()
        await b.aclose()


async def test_a_request_larger_than_a_share_waits_for_it_then_runs_in_debt(
    own_redis: RedisServer,
) -> None:
    clock = FakeClock(T0)
    store, *others = (_quota(own_redis.url, clock, namespace="rs-debt") for _ in range(4))
    try:
        for worker in (store, *others, store):
            await worker.beat()
        assert store.workers == 4 and store.counted
        own_redis.stop()
        # 4 workers counting each other: a share of 1350 TPM.
        wait, state = await store.reserve("org", "m", reservation_id="big", requests=1,
                                          tokens=5000, defaults=D, now=clock(), ttl=600)
        assert wait == 0 and store.share == pytest.approx(0.9 / 4)
        assert state.limits == D  # the manager still sees Groq's limits: never "too large"
        await store.settle("org", "m", reservation_id="big", requests=1, tokens=5000,
                           defaults=D, now=clock())
        wait, _ = await store.reserve("org", "m", reservation_id="next", requests=1, tokens=10,
                                      defaults=D, now=clock(), ttl=600)
        # In debt: 5000 tokens against a share of 1350 TPM refilling at 22.5 tokens/s; the next
        # 10 tokens fit once the level is down to 1340.
        assert wait == pytest.approx((5000 + 10 - 1350) / 22.5, rel=0.01)
    finally:
        own_redis.start()
        for worker in (store, *others):
            await worker.aclose()


async def test_a_worker_the_others_do_not_count_yet_keeps_to_the_headroom(
    own_redis: RedisServer,
) -> None:
    """b joins after a's last heartbeat: a counts itself alone and takes 0.9 of the budget
    when Redis goes, so b lives on what that leaves, and together they stay within it. Once
    a has beaten again (and b has heard so), both take 0.45."""
    clock = FakeClock(T0)
    a, b = (_quota(own_redis.url, clock, namespace="rs-join") for _ in range(2))
    late = _quota(own_redis.url, clock, namespace="rs-join")
    try:
        assert await a.beat() == 1 and a.counted
        assert await b.beat() == 2 and not b.counted
        own_redis.stop()
        got_a = await _grant_all(a, clock, "a")
        got_b = await _grant_all(b, clock, "b")
        # And one whose first heartbeat never answered: nobody counts it either.
        got_late = await _grant_all(late, clock, "late")
        assert a.share == pytest.approx(0.9)
        assert b.share == pytest.approx(0.1 / 2) and late.share == pytest.approx(0.1 / 2)
        assert (got_a, got_b, got_late) == (27, 1, 1)
        assert got_a + got_b <= 30
        own_redis.start()
        assert await a.recover() and await b.recover()
        clock.advance(1)
        # a's heartbeat now counts b; b hears at its next one that everyone counts it.
        assert await a.beat() == 2 and a.counted
        assert await b.beat() == 2 and b.counted
        own_redis.stop()
        await a.get("org", "m", defaults=D, now=clock())
        await b.get("org", "m", defaults=D, now=clock())
        assert a.share == pytest.approx(0.45) and b.share == pytest.approx(0.45)
    finally:
        own_redis.start()
        for worker in (a, b, late):
            await worker.aclose()


async def test_redis_back_empty_gets_the_ledger_back(own_redis: RedisServer) -> None:
    clock = FakeClock(T0)
    store = _quota(own_redis.url, clock)
    checker = RedisQuotaStore.from_url(own_redis.url, namespace="rs")
    try:
        await store.beat()
        for i in range(20):
            await store.reserve("org", "m", reservation_id=f"r{i}", requests=1, tokens=100,
                                defaults=D, now=clock(), ttl=600)
            await store.settle("org", "m", reservation_id=f"r{i}", requests=1, tokens=150,
                               defaults=D, now=clock(),
                               observation=Observation(limits=(None, 1000, 6000, None)))
        own_redis.stop()  # no persistence: everything in Redis is lost
        for i in range(5):
            wait, _ = await store.reserve("org", "m", reservation_id=f"o{i}", requests=1,
                                          tokens=100, defaults=D, now=clock(), ttl=600)
            assert wait == 0
            await store.settle("org", "m", reservation_id=f"o{i}", requests=1, tokens=150,
                               defaults=D, now=clock())
        own_redis.start()
        assert await checker.get("org", "m", defaults=D, now=clock()) is not None
        assert await store.recover()
        state = await checker.get("org", "m", defaults=D, now=clock())
        # The day's requests as known before the outage are back (floors); the minute buckets
        # hold what the share implies for every worker (here one: 25 used); the day's tokens
        # got this worker's outage use added to what was known.
        assert state.levels[1] >= 20 - 1e-6
        assert state.levels[0] >= 25 - 1e-6
        assert state.levels[3] == pytest.approx(20 * 150 + 5 * 150, rel=1e-6)
        assert state.learned[1] == 1000 and state.learned[2] == 6000
        assert store.stats["reconciled_pairs"] >= 1 and not store.degraded
        # The grace after a recovery: a reservation also needs room in the share (27 RPM, 23
        # used in it), until every worker has had time to reconcile.
        assert store.grace == pytest.approx(90)
        # 27 - 23 = 4 exactly: the ledger's margin keeps an exact fit out (`quota.MARGIN`).
        assert await _grant_all(store, clock, "grace") == 3
        assert all(h.gated for rid, h in store._held.items() if rid.startswith("grace"))
        clock.advance(91)
        wait, _ = await store.reserve("org", "m", reservation_id="later", requests=1, tokens=10,
                                      defaults=D, now=clock(), ttl=600)
        assert wait == 0 and not store._held["later"].gated and not store._seeded
    finally:
        await store.aclose()
        await checker.aclose()


def _execution(n: int, **kw: object) -> Execution:
    fields: dict[str, object] = {
        "agent_name": "agent", "task_type": "testing", "model": "m", "success": True,
        "latency_ms": 10.0 + n, "tokens": 100, "timestamp": T0 + n, "execution_id": f"e{n}",
    }
    fields.update(kw)
    return Execution(**fields)  # type: ignore[arg-type]


async def test_learning_records_are_buffered_and_flushed_once(own_redis: RedisServer) -> None:
    clock = FakeClock(T0)
    primary = RedisLearningStore.from_url(own_redis.url, namespace="rl")
    store = ResilientLearningStore(primary, clock=clock)
    checker = RedisLearningStore.from_url(own_redis.url, namespace="rl")
    try:
        await store.record(_execution(0), origin="me")
        own_redis.stop()
        for n in range(1, 6):
            assert await store.record(_execution(n), origin="me") == 0
        before = await store.feedback("e3", 0.7, timestamp=clock(), origin="me")
        assert before is not None and before.quality is None
        assert (await store.get("e3")).quality == 0.7  # type: ignore[union-attr]
        assert await store.events() == []  # others' evidence waits
        assert store.degraded and store.pending == 6
        own_redis.start()
        await store.recover()  # empty Redis: e0 went with it (Redis's durability)
        assert store.pending == 0 and store.stats["dropped"] == 0
        events = await checker.events()
        assert [e.kind for e in events] == ["execution"] * 5 + ["feedback"]
        assert (await checker.get("e3")).quality == 0.7  # type: ignore[union-attr]
        # A retried write of the same execution is logged once.
        await store.record(_execution(4), origin="me")
        assert len(await checker.events()) == 6
    finally:
        await store.aclose()
        await checker.aclose()


async def test_key_health_changes_during_an_outage_reach_redis(own_redis: RedisServer) -> None:
    clock = FakeClock(T0)
    store = ResilientKeyStateStore(RedisKeyStateStore.from_url(own_redis.url, namespace="rk"),
                                   clock=clock)
    checker = RedisKeyStateStore.from_url(own_redis.url, namespace="rk")
    try:
        await store.update("key1", {"masked": "gsk_…0001", "failures": 1})
        own_redis.stop()
        await store.update("key2", {"disabled": "Groq answered 401", "masked": "gsk_…0002"})
        await store.set_alias("org_b", "org_a")
        assert await store.record_failure("key1", now=clock(), window=60) == 1
        states = await store.load(["key1", "key2"])
        assert states.records["key2"].disabled and states.aliases == {"org_b": "org_a"}
        own_redis.start()
        assert await store.recover()
        states = await checker.load(["key1", "key2"])
        assert states.records["key2"].disabled == "Groq answered 401"
        assert states.aliases == {"org_b": "org_a"}
    finally:
        await store.aclose()
        await checker.aclose()


async def test_a_learner_reading_a_log_that_started_over_catches_up(
    own_redis: RedisServer,
) -> None:
    from ymera_groq_plugin.learning import Learner

    clock = FakeClock(T0)

    def learner() -> Learner:
        store = ResilientLearningStore(
            RedisLearningStore.from_url(own_redis.url, namespace="rw"), clock=clock
        )
        return Learner(store, clock=clock, refresh_interval=1e9)

    writer, reader = learner(), learner()
    try:
        for n in range(5):
            await writer.record(_execution(n))
        await reader.refresh()
        assert reader.evidence("agent", "testing") == 5
        own_redis.restart()  # Redis comes back empty: the log's positions start over
        for n in range(5, 8):
            await writer.record(_execution(n))
        await reader.refresh()
        await reader.refresh()  # and only once
        assert reader.evidence("agent", "testing") == 8
    finally:
        await writer.aclose()
        await reader.aclose()


async def test_outage_requests_stay_in_the_day_count_after_a_restart_with_data(
    own_redis: RedisServer,
) -> None:
    """Requests per day are never charged on recovery: Groq's headers carry its own count.
    On a pair two workers used during the outage and nobody uses after it, no later header
    comes, so the count the workers last heard from Groq must reach the ledger (it used to
    keep only what Redis knew before the outage: under-counting leads to 429s)."""
    import redis

    clock = FakeClock(T0)
    url = own_redis.url
    client = redis.Redis.from_url(url)
    client.config_set("save", "3600 1")  # SHUTDOWN writes an RDB, the restart loads it
    a, b = _quota(url, clock), _quota(url, clock)
    checker = RedisQuotaStore.from_url(url, namespace="rs")
    groq = 0  # Groq's count of the day's requests (nothing drains in these few seconds)

    async def one(store: ResilientQuotaStore, rid: str, *, heard: bool = True) -> None:
        nonlocal groq
        wait, _ = await store.reserve("org", "m", reservation_id=rid, requests=1, tokens=10,
                                      defaults=D, now=clock(), ttl=600)
        assert wait == 0
        groq += 1
        await store.settle("org", "m", reservation_id=rid, requests=1, tokens=10, defaults=D,
                           now=clock(),
                           observation=Observation(floors=(None, groq, None, None)) if heard
                           else None)
        clock.advance(0.5)

    try:
        client.flushall()
        client.set("kept", "yes")
        # b joined after a's first heartbeat: its next one says that a counts it.
        assert await a.beat() == 1 and await b.beat() == 2 and await a.beat() == 2
        assert await b.beat() == 2 and a.counted and b.counted
        for i in range(3):
            await one(a, f"pre{i}")
        # In flight when Redis goes: reserved in Redis, answered (and counted) meanwhile; its
        # reservation has expired there by the time Redis is back (a long outage).
        wait, _ = await b.reserve("org", "m", reservation_id="flying", requests=1, tokens=10,
                                  defaults=D, now=clock(), ttl=2)
        assert wait == 0
        groq += 1
        own_redis.stop()
        await b.settle("org", "m", reservation_id="flying", requests=1, tokens=10, defaults=D,
                       now=clock(), observation=Observation(floors=(None, groq, None, None)))
        for i in range(8):
            await one(a if i % 2 else b, f"out{i}")
        # Answers without headers after the last count: charged on top of it.
        await one(a, "out8", heard=False)
        await one(a, "out9", heard=False)
        assert a.degraded and b.degraded
        # Background retries that failed meanwhile are over: the test picks who goes first.
        await asyncio.gather(*a._fb._tasks, *b._fb._tasks, return_exceptions=True)
        own_redis.start()
        assert client.get("kept") == b"yes"  # Redis came back with its data
        # a first: its count includes b's settle that b replays after it (which must not
        # charge that request again).
        assert await a.recover()
        assert await b.recover()
        assert b.stats["replayed"] == 1
        state = await checker.get("org", "m", defaults=D, now=clock())
        drained = 1000 / 86400 * 7  # at most seven seconds of the day window's drain
        assert groq - drained <= state.used(1) <= groq + 1e-6
    finally:
        own_redis.start()
        redis.Redis.from_url(url).config_set("save", "")
        (own_redis.workdir / "dump.rdb").unlink(missing_ok=True)
        client.close()
        await a.aclose()
        await b.aclose()
        await checker.aclose()


async def test_a_redis_back_empty_does_not_shrink_the_worker_count(own_redis: RedisServer) -> None:
    """The heartbeats went with the data: until every worker has beaten again (one window),
    the count stays at what it was, or this worker would take too large a share at the next
    outage. After that window a worker that really left is no longer counted."""
    clock = FakeClock(T0)
    # A namespace of its own: other tests' workers beat into "rs" at later fake times.
    a, b = (
        ResilientQuotaStore(
            RedisQuotaStore.from_url(own_redis.url, namespace="rs-beat"), clock=clock
        )
        for _ in range(2)
    )
    try:
        assert await a.beat() == 1 and await b.beat() == 2 and await a.beat() == 2
        own_redis.stop()  # no persistence: the heartbeat set is lost
        await a.get("org", "m", defaults=D, now=clock())  # a notices the outage
        own_redis.start()
        assert await a.recover()
        # Only a has beaten into the empty Redis so far: it still counts b.
        assert await a.beat() == 2
        clock.advance(a.worker_window + 1)
        # b never came back within a whole window: a counts itself alone.
        assert await a.beat() == 1
    finally:
        await a.aclose()
        await b.aclose()
