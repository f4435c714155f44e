"""The delayed batcher shared by the engine's learning records and the cache's write-behind."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ymera_groq_plugin.batching import DelayedBatcher

HOUR = 3600.0
"""A delay no test waits out: only `flush` or `aclose` writes the batch."""


class Sink:
    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.fail = fail
        self.wrote = asyncio.Event()

    async def write(self, batch: list[int]) -> None:
        await asyncio.sleep(0)  # a real store suspends
        self.batches.append(list(batch))
        self.wrote.set()
        if self.fail:
            raise OSError("disk full")


async def test_items_wait_and_are_written_together_on_flush() -> None:
    sink = Sink()
    batcher: DelayedBatcher[int] = DelayedBatcher(sink.write, delay=HOUR, name="numbers")
    for i in range(5):
        batcher.add(i)
    await asyncio.sleep(0)
    assert sink.batches == [] and len(batcher) == 5
    assert "5 pending" in repr(batcher)
    await batcher.flush()
    assert sink.batches == [[0, 1, 2, 3, 4]] and len(batcher) == 0
    await batcher.flush()  # nothing pending: no empty write
    assert sink.batches == [[0, 1, 2, 3, 4]]


async def test_the_timer_writes_the_batch_by_itself() -> None:
    sink = Sink()
    batcher: DelayedBatcher[int] = DelayedBatcher(sink.write, delay=0.0)
    batcher.add(1)
    batcher.add(2)
    await asyncio.wait_for(sink.wrote.wait(), 30)
    assert sink.batches == [[1, 2]]


async def test_batches_are_bounded_and_keep_their_order() -> None:
    sink = Sink()
    batcher: DelayedBatcher[int] = DelayedBatcher(sink.write, delay=HOUR, max_batch=3)
    for i in range(7):
        batcher.add(i)
    await batcher.flush()
    assert sink.batches == [[0, 1, 2], [3, 4, 5], [6]]


async def test_items_added_while_writing_land_before_flush_returns() -> None:
    sink = Sink()
    batcher: DelayedBatcher[int] = DelayedBatcher(sink.write, delay=HOUR)
    batcher.add(1)
    flushing = asyncio.ensure_future(batcher.flush())
    await asyncio.sleep(0)  # the write of [1] has started and is suspended
    batcher.add(2)
    await flushing
    assert [x for b in sink.batches for x in b] == [1, 2]


async def test_a_failing_write_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink(fail=True)
    batcher: DelayedBatcher[int] = DelayedBatcher(sink.write, delay=HOUR, name="records")
    batcher.add(1)
    with caplog.at_level(logging.WARNING, logger="ymera_groq_plugin.batching"):
        await batcher.flush()
    assert sink.batches == [[1]]
    assert "records write failed (1 items): OSError: disk full" in caplog.text
    batcher.add(2)  # the batcher still works after a failure
    await batcher.flush()
    assert sink.batches == [[1], [2]]


async def test_close_drains_then_drops_later_items() -> None:
    sink = Sink()
    batcher: DelayedBatcher[int] = DelayedBatcher(sink.write, delay=HOUR)
    batcher.add(1)
    await batcher.aclose()
    assert sink.batches == [[1]] and batcher.closed
    batcher.add(2)
    await batcher.flush()
    assert sink.batches == [[1]] and len(batcher) == 0


async def test_a_cancelled_flush_does_not_cancel_the_write() -> None:
    sink = Sink()
    gate = asyncio.Event()

    async def slow(batch: list[int]) -> None:
        await gate.wait()
        await sink.write(batch)

    batcher: DelayedBatcher[int] = DelayedBatcher(slow, delay=HOUR)
    batcher.add(1)
    flushing = asyncio.ensure_future(batcher.flush())
    await asyncio.sleep(0)
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    gate.set()
    await batcher.flush()
    assert sink.batches == [[1]]


def test_bad_arguments() -> None:
    async def write(batch: list[int]) -> None:
        return None

    with pytest.raises(ValueError, match="delay"):
        DelayedBatcher(write, delay=-1)
    with pytest.raises(ValueError, match="max_batch"):
        DelayedBatcher(write, delay=0, max_batch=0)
