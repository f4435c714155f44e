"""Engine events (subscribe, emit, a failing subscriber) and the latency histogram."""

from __future__ import annotations

import logging

import pytest

from ymera_groq_plugin.events import EngineClosed, EngineEvent, RequestFinished, Subscribers
from ymera_groq_plugin.latency import LATENCY_BUCKETS_MS, LatencyTally, LatencyWindow


def test_subscribers_get_the_kinds_they_asked_for() -> None:
    subs = Subscribers()
    every: list[EngineEvent] = []
    closed: list[EngineEvent] = []
    subs.subscribe(every.append)
    unsubscribe = subs.subscribe(closed.append, EngineClosed)
    assert subs.wants(RequestFinished) and subs.wants(EngineClosed)

    done, bye = RequestFinished(12.5), EngineClosed()
    subs.emit(done)
    subs.emit(bye)
    assert every == [done, bye]
    assert closed == [bye]

    unsubscribe()
    unsubscribe()  # idempotent: the other subscriber stays
    subs.emit(bye)
    assert closed == [bye] and every == [done, bye, bye]


def test_an_event_nobody_listens_to_is_not_wanted() -> None:
    subs = Subscribers()
    assert not subs.wants(RequestFinished)
    unsubscribe = subs.subscribe(lambda e: None, EngineClosed)
    assert not subs.wants(RequestFinished) and subs.wants(EngineClosed)
    unsubscribe()
    assert not subs.wants(EngineClosed)


def test_a_failing_subscriber_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    subs = Subscribers()
    seen: list[EngineEvent] = []

    def broken(event: EngineEvent) -> None:
        raise ValueError("subscriber bug")

    subs.subscribe(broken)
    subs.subscribe(seen.append)
    event = RequestFinished(3.0, error=TimeoutError("slow"))
    with caplog.at_level(logging.ERROR, logger="ymera_groq_plugin.events"):
        subs.emit(event)  # does not raise
    assert seen == [event] and not event.ok
    assert "subscriber bug" in caplog.text


def test_only_engine_events_can_be_subscribed_to() -> None:
    with pytest.raises(TypeError, match="not an engine event"):
        Subscribers().subscribe(lambda e: None, int)  # type: ignore[arg-type]


def test_closing_collects_the_work_subscribers_hand_over() -> None:
    event = EngineClosed()

    async def last_publish() -> None:
        return None

    work = last_publish()
    event.wait_until(work)
    assert event.pending == [work]
    work.close()


def test_tally_buckets_are_prometheus_le_buckets() -> None:
    tally = LatencyTally()
    # On a bound counts in that bound's bucket; just above goes to the next; past the last
    # bound to +Inf.
    for ms in (0.0, 5.0, 5.0001, 60000.0, 60000.5, 1e9):
        tally.observe(ms)
    counts = tally.counts
    assert len(counts) == len(LATENCY_BUCKETS_MS) + 1
    assert counts[0] == 2  # 0 and 5
    assert counts[1] == 1  # just over 5
    assert counts[len(LATENCY_BUCKETS_MS) - 1] == 1  # 60000 exactly
    assert counts[-1] == 2  # +Inf
    assert tally.count == 6 == sum(counts)
    d = tally.as_dict()
    assert d["bounds_ms"] == [float(b) for b in LATENCY_BUCKETS_MS]
    assert d["sum_ms"] == round(0.0 + 5.0 + 5.0001 + 60000.0 + 60000.5 + 1e9, 3)


def test_the_window_forgets_but_the_histogram_counts_every_append() -> None:
    tally = LatencyTally()
    window = LatencyWindow(maxlen=3, tally=tally)
    for ms in (1.0, 2.0, 30.0, 400.0, 7000.0):
        window.append(ms)
    assert list(window) == [30.0, 400.0, 7000.0]
    assert tally.count == 5
    assert sum(tally.counts) == 5


def test_a_latency_appended_by_another_writer_reaches_the_engines_histogram() -> None:
    # The LiteLLM adapter times its calls by appending to `engine.stats.latencies_ms` under
    # the stats lock; the histogram the monitor publishes must count those too.
    from ymera_groq_plugin.engine import _Stats

    stats = _Stats()
    with stats.lock:
        stats.latencies_ms.append(42.0)
    window, histogram = stats.latency(512)
    assert window == [42.0]
    assert histogram["count"] == 1 and histogram["sum_ms"] == 42.0
