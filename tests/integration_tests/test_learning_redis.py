"""Learners of two processes share their evidence through Redis (loopback TCP: not a unit
test; the learner's own behaviour is in `tests/unit_tests/test_learning.py`)."""

from __future__ import annotations

import pytest

from tests.unit_tests.test_learning import AGENT, TASK, learner, run
from ymera_groq_plugin.storage.redis_learning import RedisLearningStore
from ymera_groq_plugin.testing import FakeClock

pytestmark = pytest.mark.redis


async def test_learners_share_evidence_through_redis(redis_url: str, clock: FakeClock) -> None:
    a = learner(clock, RedisLearningStore.from_url(redis_url))
    b = learner(clock, RedisLearningStore.from_url(redis_url))
    await run(a, clock, "m", 10)
    await b.refresh()
    assert b.evidence(AGENT, TASK) == 10
    await a.aclose()
    await b.aclose()
