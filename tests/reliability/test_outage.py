"""Redis goes away in the middle of a run and comes back: callers never notice.

Two engines (two "workers", each with its own quota manager, cache and learner) share one
Redis and one local Groq server whose limits bind (RPM). A ticker moves the shared fake clock
at 50× real time, so a minute window passes in 1.2 s. Mid-run Redis is stopped, the run goes
on, Redis is started again and the run goes on. What must hold:

- no caller sees an error, and Groq (the local server) never answers 429: while Redis is away
  each worker uses its share of every budget (0.9 / 2 here), seeded from what Redis said last;
- when Redis is back the shared ledger resumes (both quota stores reconcile and close their
  breakers) and every reservation is settled or released;
- L2 is skipped meanwhile (the cache's breaker), and every learning record made meanwhile is
  flushed to Redis once it is back: counted one by one against the requests served.

The first test restarts Redis with its data (an RDB written on shutdown, as a production Redis
with persistence does). The second wipes it (no persistence): the reconcile then restores the
ledger from what each worker last knew, so a burst right after the restart still gets no 429.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from ymera_groq_plugin.engine import Engine
from ymera_groq_plugin.monitor import monitor_for
from ymera_groq_plugin.storage.redis_learning import RedisLearningStore
from ymera_groq_plugin.storage.resilient import ResilientLearningStore, ResilientQuotaStore
from ymera_groq_plugin.testing import FakeClock, RedisServer
from ymera_groq_plugin.testing.server import GroqTestServer
from ymera_groq_plugin.types import ChatResult

from .conftest import KEYS, MODEL, Ticker, catalog_with, closing, make_engine, on_portal, request

pytestmark = pytest.mark.redis

LIMITS = {"rpm": 20, "rpd": 5000, "tpm": 20_000, "tpd": 1_000_000}


async def until(predicate: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def quota_store(engine: Engine) -> ResilientQuotaStore:
    store = engine.quota.ledger.store
    assert isinstance(store, ResilientQuotaStore)
    return store


def learning_store(engine: Engine) -> ResilientLearningStore:
    assert engine.learner is not None
    store = engine.learner.store
    assert isinstance(store, ResilientLearningStore)
    return store


def two_workers(base_url: str, url: str, clock: FakeClock, tmp_path: Path) -> list[Engine]:
    """Two engines ("workers") on one Redis at `url` and the local server, under `LIMITS`."""
    catalog = catalog_with(LIMITS)
    return [
        make_engine(
            base_url,
            tmp_path / f"worker{n}",
            clock=clock,
            catalog=catalog,
            redis_url=url,
            max_wait=600,
            request_timeout=10,
        )
        for n in range(2)
    ]


async def until_reconciled(engines: list[Engine], what: str, limit: float = 30.0) -> None:
    """Wait until every engine's quota and learning stores are back on Redis, nothing pending."""
    await until(
        lambda: all(
            not quota_store(e).degraded
            and not learning_store(e).degraded
            and learning_store(e).pending == 0
            for e in engines
        ),
        what,
        limit=limit,
    )


class Run:
    """Workers that keep sending distinct requests until told to stop; every outcome kept."""

    def __init__(self, engines: list[Engine], per_engine: int) -> None:
        self.engines = engines
        self.per_engine = per_engine
        self.phase = "before"
        self.done: list[tuple[str, str, ChatResult]] = []
        self.errors: list[tuple[str, str, str]] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _worker(self, engine: Engine, name: str) -> None:
        i = 0
        while not self._stop.is_set():
            rid = f"{name}-{i:04d}"
            i += 1
            phase = self.phase
            req = request(f"Outage run {rid}: give one fact about the number {i}.", rid)
            try:
                result = await asyncio.wait_for(engine.ainvoke(req), 60)
            except Exception as exc:  # every error is a finding
                self.errors.append((rid, phase, f"{type(exc).__name__}: {exc}"))
            else:
                self.done.append((rid, phase, result))

    def start(self) -> None:
        for n, engine in enumerate(self.engines):
            for k in range(self.per_engine):
                self._tasks.append(asyncio.create_task(self._worker(engine, f"w{n}t{k}")))

    async def more(self, n: int, what: str) -> None:
        target = len(self.done) + n
        await until(lambda: len(self.done) >= target, what)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), 90)


def _persist(url: str, on: bool) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.config_set("save", "3600 1" if on else "")
    finally:
        client.close()


async def _redis_executions(url: str) -> Counter[str]:
    """Execution records per id in Redis's learning log."""
    store = RedisLearningStore.from_url(url)
    seen: Counter[str] = Counter()
    try:
        after = 0
        while True:
            events = await store.events(after, limit=1000)
            for ev in events:
                if ev.kind == "execution":
                    seen[str(ev.data["execution_id"])] += 1
                after = ev.seq
            if len(events) < 1000:
                return seen
    finally:
        await store.aclose()


async def _run_with_outage(
    own_redis: RedisServer, url: str, clock: FakeClock, tmp_path: Path, *, persist: bool
) -> dict[str, Any]:
    _persist(url, persist)
    with GroqTestServer(KEYS, limits={MODEL: LIMITS}, clock=clock) as server, Ticker(clock):
        engines = two_workers(server.base_url, url, clock, tmp_path)
        run = Run(engines, per_engine=6)
        async with closing(*engines):
            run.start()
            await run.more(30, "requests before the outage")
            refused = [dict(server.stats().rate_limited)]
            await asyncio.to_thread(own_redis.stop)
            run.phase = "outage"
            await run.more(40, "requests during the outage")
            degraded = [quota_store(e).degraded for e in engines]
            # The dashboard says so, and what it means for the quota.
            during = await monitor_for(engines[0]).asnapshot()
            assert during["storage"]["quota"]["state"] == "degraded"
            assert during["storage"]["quota"]["local_share"] == pytest.approx(0.45)
            (alert,) = [a for a in during["alerts"] if a["source"] == "storage"]
            assert alert["level"] == "critical" and "quota" in alert["stores"]
            refused.append(dict(server.stats().rate_limited))
            await asyncio.to_thread(own_redis.start)
            run.phase = "after"
            await until_reconciled(engines, "the stores to reconcile after Redis came back")
            refused.append(dict(server.stats().rate_limited))
            after = await monitor_for(engines[0]).asnapshot()
            assert {e["state"] for e in after["storage"].values()} == {"ok"}
            assert after["storage"]["quota"]["recoveries"] >= 1
            assert not [a for a in after["alerts"] if a["source"] == "storage"]
            # A second wave on the shared ledger again.
            await run.more(40, "requests after Redis came back")
            await run.stop()
            idle = [await on_portal(e, e.quota.idle()) for e in engines]
            for e in engines:
                assert e.cache is not None
                await e.cache.aflush()
            cache_l2 = [e.cache.stats()["l2"] for e in engines if e.cache is not None]
            quota = [(quota_store(e).stats, quota_store(e).outages) for e in engines]
            learning = [dict(learning_store(e).stats) for e in engines]
            shares = [quota_store(e).share for e in engines]
            workers = [quota_store(e).workers for e in engines]
            # The day's requests per (organisation, model): the shared ledger's count and
            # the server's own bucket, both drained to now.
            now = clock()
            pairs = sorted(server.stats().by_org_model)
            states = await on_portal(
                engines[0], engines[0].quota.ledger.states(pairs, now=now)
            )
            ledger = {
                pair: (
                    st.used(1),
                    server.limits_for(pair[1]).rpd - server.available(*pair)["rpd"],  # type: ignore[operator]
                )
                for pair, st in zip(pairs, states, strict=True)
            }
        stats = server.stats()
    return {
        "run": run,
        "stats": stats,
        "degraded": degraded,
        "idle": idle,
        "cache_l2": cache_l2,
        "quota": quota,
        "learning": learning,
        "shares": shares,
        "workers": workers,
        "ledger": ledger,
        "refused": refused,
    }


def _print(title: str, out: dict[str, Any]) -> None:
    run: Run = out["run"]
    by_phase = Counter(phase for _, phase, _ in run.done)
    stats = out["stats"]
    print(
        f"\n{title}: served {dict(by_phase)}, errors {len(run.errors)}, "
        f"server statuses {stats.by_status}, refused {stats.rate_limited}; refused so far "
        f"before the outage, at its end, at the reconcile: {out['refused']}"
    )
    for n, ((q, outages), lrn) in enumerate(zip(out["quota"], out["learning"], strict=True)):
        print(
            f"  worker{n}: share {out['shares'][n]:.2f} of {out['workers'][n]} workers, "
            f"outages {outages}, quota {q}, learning {lrn}, L2 {out['cache_l2'][n]['errors']} "
            f"errors / {out['cache_l2'][n]['skipped']} skipped"
        )


def _common_checks(out: dict[str, Any]) -> None:
    run: Run = out["run"]
    stats = out["stats"]
    assert run.errors == []
    assert 429 not in stats.by_status and stats.rate_limited == {}
    # Every request reached the server once, and only once.
    assert stats.by_status.get(200, 0) == len(run.done)
    assert all(out["degraded"])  # both workers noticed the outage
    assert all(out["idle"])
    assert out["workers"] == [2, 2]
    assert out["shares"] == [pytest.approx(0.45), pytest.approx(0.45)]
    for q, outages in out["quota"]:
        assert outages >= 1 and q["local_reservations"] > 0 and q["replays_dropped"] == 0
    for l2 in out["cache_l2"]:
        assert l2["errors"] + l2["skipped"] > 0
    for lrn in out["learning"]:
        assert lrn["buffered"] > 0 and lrn["flushed"] == lrn["buffered"] and lrn["dropped"] == 0
    # RPM is the binding limit: what the server admitted stays within its buckets.
    phases = Counter(phase for _, phase, _ in run.done)
    assert phases["outage"] >= 40 and phases["after"] >= 40


async def test_redis_restart_with_its_data_loses_nothing(
    own_redis: RedisServer, own_redis_url: str, fake_clock: FakeClock, tmp_path: Path
) -> None:
    out = await _run_with_outage(own_redis, own_redis_url, fake_clock, tmp_path, persist=True)
    _print("outage, Redis restarted with its data", out)
    _common_checks(out)
    # Nothing lost: every request served has exactly one execution record in Redis, the
    # ones recorded during the outage included.
    records = await _redis_executions(own_redis_url)
    served = {rid for rid, _, _ in out["run"].done}
    assert set(records) == served
    assert set(records.values()) == {1}
    _ledger_matches_the_server(out)


def _ledger_matches_the_server(out: dict[str, Any]) -> None:
    """The shared ledger is live again and counts the day's requests as Groq does: the
    outage's included, nothing counted twice, except (conservatively) the few requests in
    flight when Redis came back, whose estimate the reconcile charges while Groq's headers may
    already have counted them."""
    in_flight = sum(q["charged_in_flight"] for q, _ in out["quota"])
    for pair, (ledger, server) in out["ledger"].items():
        assert server - 0.5 <= ledger <= server + in_flight + 1, (pair, ledger, server)


async def test_redis_restart_without_its_data_is_reconciled(
    own_redis: RedisServer, own_redis_url: str, fake_clock: FakeClock, tmp_path: Path
) -> None:
    out = await _run_with_outage(own_redis, own_redis_url, fake_clock, tmp_path, persist=False)
    _print("outage, Redis restarted empty", out)
    _common_checks(out)
    # Redis lost everything written before the outage; what the workers knew was put back
    # and Groq's headers did the rest: the day's requests in the ledger are the server's.
    _ledger_matches_the_server(out)
    # The records made during and after the outage are all in Redis (those written before
    # it went with Redis's data, which is Redis's own durability, not ours).
    records = await _redis_executions(own_redis_url)
    after_stop = {rid for rid, phase, _ in out["run"].done if phase != "before"}
    assert after_stop <= set(records)
