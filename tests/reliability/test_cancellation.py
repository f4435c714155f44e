"""Cancellation and timeouts at any await point leave nothing behind.

The local server answers after a fixed latency (streams chunk by chunk), so cancelling after
N ms for a range of N strikes every stage of a request: the cache lookups (L1, Redis L2,
SQLite L3), routing, the quota reservation, the upstream call, settling, the cache store.
After each cancellation the engine must hold no reservation (in the manager and in the shared
ledger itself), no in-flight coalescing entry, and no half-written cache entry: every entry
any tier holds is complete and decodes. Identical concurrent requests are coalesced; when the
leader is cancelled, its followers must neither hang nor see the cancellation.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from ymera_groq_plugin.cache import TieredCache, codec
from ymera_groq_plugin.engine import Engine
from ymera_groq_plugin.testing.server import GroqTestServer
from ymera_groq_plugin.types import ChatRequest

from .conftest import KEYS, MODEL, background_done, closing, make_engine, on_portal, request

pytestmark = pytest.mark.redis

LATENCY = 0.12
DELAYS_MS = (0, 1, 3, 10, 30, 60, 100, 115, 125, 140, 200)
"""Cancel points: before and around the answer's arrival (`LATENCY`) and after it."""


async def _no_leftovers(engine: Engine, requests: list[ChatRequest]) -> None:
    assert await on_portal(engine, engine.quota.idle())
    assert engine.quota.outstanding == 0
    # The shared ledger itself holds no reservation either.
    quota = engine.quota
    pairs = [(org, MODEL) for org in ("org_a", "org_b")]
    states = await on_portal(engine, quota.ledger.states(pairs))
    assert all(st.pending_requests == 0 and st.outstanding == 0 for st in states), states
    cache = engine.cache
    assert isinstance(cache, TieredCache)
    assert cache._inflight == {}
    # Every entry a lower tier holds for these requests is whole.
    for req in requests:
        key = cache.key_for(req)
        for tier in cache._lower:
            text = await on_portal(engine, tier.store.get(cache.namespace, key))
            if text is not None:
                result, _ = codec.decode_result(text, key=key, tier=tier.name)
                assert result.finish_reason in ("stop", "length") and result.content


async def _cancel_after(coro: object, delay_ms: float) -> str:
    task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
    await asyncio.sleep(delay_ms / 1000)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return "cancelled"
    return "finished"


async def test_cancelling_at_every_point_leaves_nothing_behind(
    redis_url: str, tmp_path: Path
) -> None:
    with GroqTestServer(KEYS, faults={"latency": LATENCY, "stream_chunk_delay": 0.01}) as server:
        engine = make_engine(server.base_url, tmp_path, clock=time.time, redis_url=redis_url)
        async with closing(engine):
            seen: list[ChatRequest] = []
            outcomes: dict[str, int] = {"cancelled": 0, "finished": 0}
            for i, delay in enumerate(DELAYS_MS):
                # A plain request, cancelled.
                req = request(f"cancel plain {i}", f"c-plain-{i}")
                seen.append(req)
                outcomes[await _cancel_after(engine.ainvoke(req), delay)] += 1
                # A timeout (the same as a cancellation, raised as TimeoutError).
                req = request(f"cancel timeout {i}", f"c-timeout-{i}")
                seen.append(req)
                try:
                    await asyncio.wait_for(engine.ainvoke(req), delay / 1000)
                except TimeoutError:
                    outcomes["cancelled"] += 1
                else:
                    outcomes["finished"] += 1
                # A stream, cancelled while its chunks arrive.
                req = request(f"cancel stream {i}", f"c-stream-{i}", stream=True)
                seen.append(req)

                async def consume(r: ChatRequest = req) -> None:
                    async for _ in engine.astream(r):
                        pass

                outcomes[await _cancel_after(consume(), delay)] += 1
                # Coalesced twins: the leader is cancelled, the followers must still answer.
                req = request(f"cancel twins {i}", f"c-twins-{i}")
                seen.append(req)
                leader = asyncio.ensure_future(engine.ainvoke(req))
                await asyncio.sleep(0.002)
                followers = [
                    asyncio.ensure_future(
                        engine.ainvoke(request(f"cancel twins {i}", f"c-twins-{i}-{k}"))
                    )
                    for k in range(3)
                ]
                await asyncio.sleep(delay / 1000)
                leader.cancel()
                answers = await asyncio.wait_for(asyncio.gather(*followers), 10)
                assert all(a.content for a in answers)
                try:
                    assert (await leader).content  # finished before the cancel came
                except asyncio.CancelledError:
                    outcomes["cancelled"] += 1
                await background_done(engine)
                await _no_leftovers(engine, seen)
            print(f"\ncancellation outcomes over {len(DELAYS_MS)} cancel points: {outcomes}")
            # The range spans the whole request: some were cut short, some had finished.
            assert outcomes["cancelled"] > 0 and outcomes["finished"] > 0
            # Each request is served normally afterwards (from the cache, or upstream).
            again = await asyncio.wait_for(
                asyncio.gather(*(engine.ainvoke(r) for r in seen if not r.stream)), 20
            )
            assert all(a.content for a in again)
            await background_done(engine)
            await _no_leftovers(engine, seen)


async def test_callers_waiting_for_a_cancelled_first_call_to_start_the_engine_are_served(
    tmp_path: Path,
) -> None:
    """The first call starts the engine (quota, learner, transport); calls arriving meanwhile
    wait for that start. Cancelling the first call must not cancel them: they are served
    (they used to end with the first call's `CancelledError`, when a busy machine made the
    start slow enough for a cancellation to land in it). The order is the test's: the start
    is held until every caller waits for it and the first one has been cancelled."""
    with GroqTestServer(KEYS) as server:
        engine = make_engine(server.base_url, tmp_path, clock=time.time)
        entered, release = threading.Event(), threading.Event()
        arrived = threading.Semaphore(0)  # one per call waiting for the start
        build, ensure_started = engine._build, engine._ensure_started

        async def held_build() -> None:
            entered.set()
            assert await asyncio.to_thread(release.wait, 30)
            await build()

        async def counted_ensure_started() -> None:
            arrived.release()
            await ensure_started()

        engine._build = held_build  # type: ignore[method-assign]
        engine._ensure_started = counted_ensure_started  # type: ignore[method-assign]
        async with closing(engine):
            first = asyncio.ensure_future(engine.ainvoke(request("start twins", "start-0")))
            assert await asyncio.to_thread(entered.wait, 30)
            # Its coalesced twins, a different request and an explicit start.
            others = [
                asyncio.ensure_future(engine.ainvoke(request("start twins", f"start-{k}")))
                for k in (1, 2)
            ]
            others.append(asyncio.ensure_future(engine.ainvoke(request("other", "start-3"))))
            others.append(asyncio.ensure_future(engine.astart()))
            for _ in range(5):
                assert await asyncio.to_thread(arrived.acquire, timeout=30)
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            assert not any(t.done() for t in others)  # still waiting for the start
            release.set()
            *answers, started = await asyncio.wait_for(asyncio.gather(*others), 30)
            assert started is engine
            assert [a.request_id for a in answers] == ["start-1", "start-2", "start-3"]
            assert all(a.content for a in answers)
            assert await on_portal(engine, engine.quota.idle())
