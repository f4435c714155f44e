"""Groq misbehaves: every request succeeds or raises one typed error in time; nothing hangs or
leaks.

The local server injects 10 % 5xx, 5 % 498 (capacity), latency spikes three times the request
timeout on 10 % of requests, broken streams (`event: error` inside a 200) on 10 % of streams,
and, in the middle of the run, a 429 storm with `retry-after` on every request. Requests run
concurrently through one engine, some streamed. Each is bounded by `asyncio.wait_for` with a
generous limit, so a hang fails the test instead of stalling it.

Nothing assumes how fast this machine is: a first wave without faults, in the same run,
measures how long a request takes here now, and the request timeout, the spikes and the
time bounds are set from it (a spike always lasts three timeouts, so it always times out).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ymera_groq_plugin.engine import Engine
from ymera_groq_plugin.errors import QuotaExhaustedError, UpstreamError, YmeraError
from ymera_groq_plugin.testing.server import FaultConfig, GroqTestServer

from .conftest import KEYS, MODEL, closing, make_engine, on_portal, request

TIMEOUT = 0.4
"""Seconds per upstream call at least (more when this machine is slow now: `_calibrate`); the
spikes last three times as long."""
MAX_RETRIES = 2
MAX_WAIT = 1.0
HANG = 60.0
"""Far beyond any legitimate answer: reaching it means something hangs."""



def _faults(timeout: float) -> FaultConfig:
    return FaultConfig(
        error_rate=0.10,
        capacity_rate=0.05,
        spike_rate=0.10,
        spike_latency=3 * timeout,
        stream_error_rate=0.10,
        stream_error_after=2,
        seed=20260,
    )

# Far above the run's needs: the faults, not the quota, are under test.
LIMITS = {"rpm": 10_000, "rpd": 1_000_000, "tpm": 10_000_000, "tpd": 100_000_000}


async def _one(engine: Engine, n: int, stream: bool) -> tuple[str, float, BaseException | None]:
    req = request(f"Fault run {n}: name a colour and a number.", f"fault-{n:04d}", stream=stream)
    started = time.monotonic()
    try:
        if stream:

            async def consume() -> None:
                async for event in engine.astream(req):
                    if event.result is not None:
                        return
                raise AssertionError("a stream ended without its result")

            await asyncio.wait_for(consume(), HANG)
        else:
            await asyncio.wait_for(engine.ainvoke(req), HANG)
    except TimeoutError as exc:
        return "hang", time.monotonic() - started, exc
    except Exception as exc:
        return "error", time.monotonic() - started, exc
    return "ok", time.monotonic() - started, None


async def _wave(
    engine: Engine, start: int, n: int
) -> list[tuple[str, float, BaseException | None]]:
    return list(
        await asyncio.gather(*(_one(engine, i, i % 5 == 0) for i in range(start, start + n)))
    )


async def _calibrate(server: GroqTestServer, data_dir: Path) -> tuple[float, float]:
    """The request timeout and the scheduling slack this machine needs now.

    One wave like the run's (60 concurrent requests, every fifth streamed) without faults and
    without a timeout: its slowest request, twice over, is the timeout (never below
    `TIMEOUT`); the slowest itself is the slack allowed past the engine's budget.
    """
    server.configure_faults(FaultConfig())
    engine = make_engine(
        server.base_url,
        data_dir,
        clock=time.time,
        request_timeout=HANG,
        cache_enabled=False,
        allow_model_fallback=True,
    )
    async with closing(engine):
        outcomes = await _wave(engine, 10_000, 60)
    assert [kind for kind, _, _ in outcomes] == ["ok"] * 60, outcomes
    slowest = max(elapsed for _, elapsed, _ in outcomes)
    server.reset()
    return max(TIMEOUT, 2 * slowest), max(1.5, slowest)


@pytest.mark.timeout(900)  # its timeouts grow with this machine's slowness (`_calibrate`)
async def test_faults_give_answers_or_typed_errors_in_time(tmp_path: Path) -> None:
    with GroqTestServer(KEYS, limits={MODEL: LIMITS}) as server:
        timeout, slack = await _calibrate(server, tmp_path / "calibration")
        server.configure_faults(_faults(timeout))
        engine = make_engine(
            server.base_url,
            tmp_path,
            clock=time.time,
            request_timeout=timeout,
            max_retries=MAX_RETRIES,
            max_wait=MAX_WAIT,
            cache_enabled=False,
            # Pinned requests that may move on (the opt-in): the waves spend more than one
            # model's RPM, as they did before a pinned model meant that model only.
            allow_model_fallback=True,
        )
        budget = engine.budget
        async with closing(engine):

            async def wave(start: int, n: int) -> list[tuple[str, float, BaseException | None]]:
                return await _wave(engine, start, n)

            calm = await wave(0, 60)
            # A storm: every request answered 429 with retry-after for a while, long enough
            # (more than the wait allowed) for the whole wave to reach it on this machine.
            length = MAX_WAIT + 3 * slack
            server.start_429_storm(length)
            storm = await wave(60, 30)
            # Let the cooldowns the storm taught run out, then the plain faults again.
            await asyncio.sleep(length + 0.1)
            after = await wave(90, 60)
            idle = await on_portal(engine, engine.quota.idle())
            outstanding = engine.quota.outstanding
        stats = server.stats()
    outcomes = calm + storm + after

    kinds = Counter(kind for kind, _, _ in outcomes)
    errors = Counter(type(exc).__name__ for kind, _, exc in outcomes if kind == "error")
    slowest = max(elapsed for _, elapsed, _ in outcomes)
    print(
        f"\nfaults: {dict(kinds)}; errors {dict(errors)}; slowest {slowest:.2f}s "
        f"(timeout {timeout:.2f}s, budget {budget:.1f}s, slack {slack:.1f}s); "
        f"server {stats.by_status}, injected {stats.faults}, "
        f"refused {stats.rate_limited}"
    )
    assert kinds["hang"] == 0
    for kind, elapsed, exc in outcomes:
        if kind == "error":
            # One typed error of the package's tree, never a foreign one.
            assert isinstance(exc, YmeraError), repr(exc)
            assert isinstance(exc, (UpstreamError, QuotaExhaustedError)), repr(exc)
        # Within the engine's bound (plus the slack this machine needs for a wave now).
        assert elapsed <= budget + slack, (kind, elapsed, exc)
    # The faults happened, and retries got most requests an answer anyway.
    assert stats.faults.get("5xx", 0) > 0 and stats.faults.get("spike", 0) > 0
    assert stats.rate_limited.get("storm", 0) > 0
    for part in (calm, after):
        assert sum(kind == "ok" for kind, _, _ in part) >= 0.9 * len(part)
    # In the storm: an answer (once it passed) or mostly "no room", saying when to come back.
    refusals = [exc for _, _, exc in storm if isinstance(exc, QuotaExhaustedError)]
    assert refusals and all(exc.retry_after is not None for exc in refusals)
    # No reservation leaked.
    assert idle and outstanding == 0


async def test_a_storm_longer_than_the_wait_gives_quota_exhausted(tmp_path: Path) -> None:
    with GroqTestServer(KEYS, limits={MODEL: LIMITS}) as server:
        timeout, slack = await _calibrate(server, tmp_path / "calibration")
        engine = make_engine(
            server.base_url,
            tmp_path,
            clock=time.time,
            request_timeout=timeout,
            max_wait=0.5,
            cache_enabled=False,
            # Pinned requests that may move on (the opt-in): the waves spend more than one
            # model's RPM, as they did before a pinned model meant that model only.
            allow_model_fallback=True,
        )
        async with closing(engine):
            server.start_429_storm(30)
            started = time.monotonic()
            results: list[Any] = await asyncio.gather(
                *(asyncio.wait_for(engine.ainvoke(request(f"storm {i}", f"s{i}")), HANG)
                  for i in range(8)),
                return_exceptions=True,
            )
            elapsed = time.monotonic() - started
            idle = await on_portal(engine, engine.quota.idle())
    assert all(isinstance(r, QuotaExhaustedError) for r in results), results
    # It says when to come back (the storm's retry-after), and it said so within the engine's
    # budget, not after the 30 s storm.
    assert all(r.retry_after is not None and r.retry_after > 0 for r in results)
    assert elapsed < min(30.0, engine.budget + slack)
    assert idle
