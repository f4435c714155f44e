"""The fallback every resilient store shares (`storage/resilient/fallback.py`), on its own.

The stores' tests (`tests/reliability/test_resilient_stores.py`) show what each store serves
while Redis is away; here, what `Fallback.call` decides for all of them: where a call goes,
which errors fall back, what is counted, and when the hooks run.
"""

from __future__ import annotations

import pytest

from ymera_groq_plugin.breaker import CircuitBreaker
from ymera_groq_plugin.cache import CircuitBreaker as CacheBreaker
from ymera_groq_plugin.errors import StorageError
from ymera_groq_plugin.storage.resilient import Breaker
from ymera_groq_plugin.storage.resilient.fallback import Fallback
from ymera_groq_plugin.testing import FakeClock


class _Primary:
    """A primary that is up or down, and counts the calls that reached it."""

    def __init__(self) -> None:
        self.up = True
        self.calls = 0

    async def get(self) -> str:
        self.calls += 1
        if not self.up:
            raise StorageError("redis: connection refused")
        return "primary"

    async def recover(self) -> None:
        if not self.up:
            raise StorageError("redis: still unreachable")


async def _local() -> str:
    return "local"


def test_the_cache_and_the_stores_share_one_breaker() -> None:
    assert Breaker is CircuitBreaker and CacheBreaker is CircuitBreaker


async def test_a_failure_falls_back_then_recovers_in_the_background(clock: FakeClock) -> None:
    primary = _Primary()
    opened: list[int] = []
    closed: list[int] = []
    fb = Fallback(
        "test store",
        clock,
        1.0,
        4.0,
        recover=primary.recover,
        on_open=lambda: opened.append(fb.outages),
        on_close=lambda: closed.append(fb.recoveries),
    )
    assert await fb.call("get", primary.get, _local) == "primary"
    primary.up = False
    # The failing call itself is served locally: the caller never sees the outage.
    assert await fb.call("get", primary.get, _local) == "local"
    assert fb.degraded and fb.outages == 1 and opened == [1]
    assert fb.last_error == "get: redis: connection refused"
    # While open, the primary is not tried on a caller's path.
    assert await fb.call("get", primary.get, _local) == "local"
    assert primary.calls == 2
    # Due, but still down: the background try fails and the wait doubles.
    clock.advance(1)
    assert await fb.call("get", primary.get, _local) == "local"
    await fb.drain()
    assert fb.degraded and fb.breaker.failures == 2 and fb.outages == 1 and opened == [1]
    assert fb.breaker.open_until == clock() + 2
    # Back: the next due call starts the recovery, which closes the breaker.
    primary.up = True
    clock.advance(2)
    assert await fb.call("get", primary.get, _local) == "local"
    await fb.drain()
    assert not fb.degraded and fb.recoveries == 1 and closed == [1]
    assert await fb.call("get", primary.get, _local) == "primary"
    await fb.aclose()


async def test_only_storage_errors_fall_back(clock: FakeClock) -> None:
    fb = Fallback("test store", clock, 1.0, 4.0, recover=_Primary().recover)

    async def bad() -> str:
        raise ValueError("not a storage problem")

    with pytest.raises(ValueError, match="not a storage problem"):
        await fb.call("get", bad, _local)
    assert not fb.degraded and fb.outages == 0 and fb.last_error is None


async def test_a_store_that_is_not_ready_is_served_locally_without_opening(
    clock: FakeClock,
) -> None:
    primary = _Primary()
    ready = [False]
    fb = Fallback("test store", clock, 1.0, 4.0, recover=primary.recover, ready=lambda: ready[0])
    assert await fb.call("get", primary.get, _local) == "local"
    assert primary.calls == 0 and not fb.degraded and fb.outages == 0
    ready[0] = True
    assert await fb.call("get", primary.get, _local) == "primary"
