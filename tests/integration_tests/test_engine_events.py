"""The engine's events against the local Groq server: what a subscriber hears, and the monitor
learning of the engine's closing through them (its last publish lands before `aclose` returns).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ymera_groq_plugin.config import YmeraSettings
from ymera_groq_plugin.engine import Engine
from ymera_groq_plugin.errors import UpstreamError
from ymera_groq_plugin.events import EngineClosed, EngineEvent, RequestFinished
from ymera_groq_plugin.latency import LatencyWindow
from ymera_groq_plugin.monitor import FleetStore, monitor_for
from ymera_groq_plugin.testing import FakeClock, GroqTestServer
from ymera_groq_plugin.types import ChatRequest

KEYS = {"gsk_events_test_key_000000000000000000000001": "org_events"}
MODEL = "openai/gpt-oss-20b"


@pytest.fixture
def groq() -> Iterator[GroqTestServer]:
    with GroqTestServer(KEYS) as server:
        yield server


def settings(groq: GroqTestServer, tmp_path: Path, **extra: Any) -> YmeraSettings:
    return YmeraSettings(
        api_keys=[{"secret": s, "org": o, "label": "events"} for s, o in KEYS.items()],
        base_url=groq.base_url,
        data_dir=tmp_path,
        max_retries=0,
        allow_model_fallback=False,
        **extra,
    )


def ask(text: str, request_id: str) -> ChatRequest:
    return ChatRequest(
        messages=({"role": "user", "content": text},),
        model=MODEL,
        params={"temperature": 0, "max_tokens": 32},
        request_id=request_id,
    )


def test_subscribers_hear_each_request_and_the_close(groq: GroqTestServer, tmp_path: Path) -> None:
    engine = Engine(settings(groq, tmp_path))
    heard: list[EngineEvent] = []
    closed_while_open: list[bool] = []

    def broken(event: EngineEvent) -> None:
        raise RuntimeError("a subscriber's bug never reaches a request")

    def on_close(event: EngineEvent) -> None:
        assert isinstance(event, EngineClosed)

        async def check() -> None:
            # Awaited by the engine before its parts close: the quota still answers.
            closed_while_open.append(engine.closed and await engine.quota.idle())

        event.wait_until(check())

    engine.subscribe(heard.append)
    engine.subscribe(broken, RequestFinished)
    engine.subscribe(on_close, EngineClosed)
    try:
        first = engine.invoke(ask("Summarise the events design", "ev-1"))
        assert first.content
        again = engine.invoke(ask("Summarise the events design", "ev-2"))  # an L1 hit
        assert again.content
        groq.configure_faults(error_rate=1.0, seed=3)
        with pytest.raises(UpstreamError):
            engine.invoke(ask("This one meets a server error", "ev-3"))
        groq.configure_faults(error_rate=0.0)

        finished = [e for e in heard if isinstance(e, RequestFinished)]
        # The L1 hit never left the caller's thread: counted, neither timed nor announced.
        assert [e.ok for e in finished] == [True, False]
        assert finished[0].latency_ms > 0 and finished[1].latency_ms > 0
        assert isinstance(finished[1].error, UpstreamError)
        stats = engine.stats.as_dict()
        assert stats["requests"] == 3 and stats["succeeded"] == 2 and stats["failed"] == 1
        # The engine keeps the histogram itself: every timed answer, nothing swapped in.
        assert isinstance(engine.stats.latencies_ms, LatencyWindow)
        window, histogram = engine.stats.latency(512)
        assert histogram["count"] == len(window) == 1
        assert window == [pytest.approx(finished[0].latency_ms)]
    finally:
        engine.close()
    assert isinstance(heard[-1], EngineClosed)
    assert closed_while_open == [True]


@pytest.mark.redis
def test_closing_the_engine_publishes_the_monitors_last_record(
    redis_url: str, groq: GroqTestServer, tmp_path: Path
) -> None:
    clock = FakeClock(1_800_000_000.0)
    namespace = f"events-{time.monotonic_ns()}"
    engine = Engine(settings(groq, tmp_path, redis_url=redis_url, namespace=namespace), clock=clock)
    store = FleetStore.from_url(redis_url, namespace=namespace)
    try:
        assert engine.invoke(ask("Validate order 7", "pub-1")).content
        monitor = monitor_for(engine)  # attached when the engine started

        def published() -> dict[str, Any]:
            records = engine.portal.run(store.records())
            return records.get(monitor.proc_id, {})

        # The publisher's own round (about once a second) sends the new counters.
        deadline = time.monotonic() + 30
        while not published() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert published()["updated"] == clock()
        # Counters unchanged and the heartbeat far off: only a publish at close sends this.
        clock.advance(10)
        engine.close()
        last = published()
        assert last["updated"] == clock()
        assert last["total"]["requests"] == 1
        assert last["latency"]["histogram"]["count"] == 1
    finally:
        engine.close()
        engine.portal.run(store.aclose())
