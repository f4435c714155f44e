"""One behaviour for every learning store: memory (SQLite :memory:), SQLite file, Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.utils import REDIS_BACKENDS, redis_url_for
from ymera_groq_plugin.errors import InvalidRequestError, StorageError
from ymera_groq_plugin.storage import store_from_url
from ymera_groq_plugin.storage.learning_base import LearningStore
from ymera_groq_plugin.storage.redis_learning import RedisLearningStore
from ymera_groq_plugin.storage.sqlite_learning import SqliteLearningStore
from ymera_groq_plugin.types import Execution

BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    *REDIS_BACKENDS,
]

StoreFactory = Callable[..., LearningStore]


@pytest.fixture(params=BACKENDS)
async def make_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    """A factory of stores on one backend; stores made with the same namespace share data
    (except `memory`, which is private to each store by design)."""
    backend: str = request.param
    made: list[LearningStore] = []
    if backend == "memory":
        url = "memory://"
    elif backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'learning.db'}"
    else:
        url = redis_url_for(request, backend)

    def factory(namespace: str = "default") -> LearningStore:
        store: LearningStore = store_from_url("learning", url, namespace=namespace)
        made.append(store)
        return store

    factory.backend = backend  # type: ignore[attr-defined]
    yield factory
    for s in made:
        await s.aclose()


def ex(i: int, *, model: str = "m1", ts: float = 1_000.0, **kw: Any) -> Execution:
    fields: dict[str, Any] = {
        "agent_name": "coding_agent",
        "task_type": "code_generation",
        "model": model,
        "success": True,
        "latency_ms": 100.0 + i,
        "tokens": 10 * i,
        "timestamp": ts + i,
        "execution_id": f"exec-{i}",
    }
    fields.update(kw)
    return Execution(**fields)


async def test_url_picks_the_backend_class(make_store: StoreFactory) -> None:
    store = make_store()
    embedded = make_store.backend in ("memory", "sqlite")  # type: ignore[attr-defined]
    expected = SqliteLearningStore if embedded else RedisLearningStore
    assert isinstance(store, expected)
    assert isinstance(store, LearningStore)
    assert await store.check() is True


async def test_record_then_get_and_events_in_order(make_store: StoreFactory) -> None:
    store = make_store()
    seqs = [
        await store.record(ex(i, quality=0.5 if i == 2 else None), origin="o1") for i in range(3)
    ]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3

    got = await store.get("exec-2")
    assert got == ex(2, quality=0.5)
    assert await store.get("nope") is None

    events = await store.events()
    assert [e.seq for e in events] == seqs
    assert [e.kind for e in events] == ["execution"] * 3
    assert events[1].origin == "o1"
    assert events[1].timestamp == pytest.approx(1001.0)
    assert events[1].data["model"] == "m1" and events[1].data["latency_ms"] == 101.0

    after = await store.events(seqs[0])
    assert [e.seq for e in after] == seqs[1:]
    assert [e.seq for e in await store.events(seqs[0], limit=1)] == [seqs[1]]
    assert await store.events(seqs[-1]) == []


async def test_feedback_is_atomic_and_returns_the_execution_before(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    await store.record(ex(1), origin="o1")

    before = await store.feedback("exec-1", 0.8, timestamp=5_000.0, origin="o2")
    assert before is not None and before.quality is None and before.model == "m1"
    assert (await store.get("exec-1")).quality == 0.8  # type: ignore[union-attr]

    again = await store.feedback("exec-1", 0.25, timestamp=5_001.0, origin="o2")
    assert again is not None and again.quality == 0.8
    assert (await store.get("exec-1")).quality == 0.25  # type: ignore[union-attr]

    events = [e for e in await store.events() if e.kind == "feedback"]
    assert [e.data["quality"] for e in events] == [0.8, 0.25]
    assert [e.data["previous"] for e in events] == [None, 0.8]
    assert events[0].data["execution"]["execution_id"] == "exec-1"
    assert events[0].timestamp == 5_000.0 and events[0].origin == "o2"


async def test_feedback_for_an_unknown_id_changes_nothing(make_store: StoreFactory) -> None:
    store = make_store()
    assert await store.feedback("missing", 0.5, timestamp=1.0, origin="o") is None
    assert await store.events() == []


async def test_recording_an_id_again_replaces_the_kept_execution(make_store: StoreFactory) -> None:
    # The engine records a failed attempt and the successful retry under one request id;
    # feedback belongs to the last one.
    store = make_store()
    await store.record(ex(1, model="a", success=False, quality=0.1), origin="o")
    await store.record(ex(1, model="b"), origin="o")
    kept = await store.get("exec-1")
    assert kept is not None and kept.model == "b" and kept.success and kept.quality is None
    assert len(await store.events()) == 2


async def test_summaries_are_logged(make_store: StoreFactory) -> None:
    store = make_store()
    summary = {"agent_name": "a", "task_type": "testing", "model": "m", "executions": 40,
               "successes": 38, "avg_latency_ms": 900.0, "quality_score": 0.9,
               "quality_samples": 40}
    seq = await store.add_summary(summary, timestamp=7.0, origin="importer")
    (event,) = await store.events()
    assert event.seq == seq and event.kind == "summary" and dict(event.data) == summary
    assert event.timestamp == 7.0 and event.origin == "importer"


async def test_prune_drops_old_events_and_executions(make_store: StoreFactory) -> None:
    store = make_store()
    for i in range(5):
        await store.record(ex(i, ts=100.0 * i - i), origin="o")  # timestamps 0, 100, …, 400
    assert await store.prune(250.0) == 3
    left = await store.events()
    assert [e.data["execution_id"] for e in left] == ["exec-3", "exec-4"]
    assert await store.get("exec-1") is None
    assert await store.get("exec-4") is not None
    assert await store.prune(250.0) == 0


async def test_concurrent_records_get_distinct_increasing_sequence_numbers(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    seqs = await asyncio.gather(*(store.record(ex(i), origin="o") for i in range(40)))
    assert len(set(seqs)) == 40
    assert [e.seq for e in await store.events()] == sorted(seqs)


async def test_stores_on_one_backend_share_a_namespace_and_only_it(
    make_store: StoreFactory,
) -> None:
    if make_store.backend == "memory":  # type: ignore[attr-defined]
        # memory:// is a private in-process database per store, by design.
        a, b = make_store(), make_store()
        await a.record(ex(1), origin="a")
        assert await b.events() == []
        return
    a, b, other = make_store(), make_store(), make_store("tenant2")
    await a.record(ex(1), origin="a")
    await b.feedback("exec-1", 0.9, timestamp=9.0, origin="b")
    assert [e.kind for e in await a.events()] == ["execution", "feedback"]
    assert (await a.get("exec-1")).quality == 0.9  # type: ignore[union-attr]
    assert await other.events() == [] and await other.get("exec-1") is None


async def test_bad_execution_ids_are_refused(make_store: StoreFactory) -> None:
    store = make_store()
    for bad in ("", "with\ttab", "two\nlines"):
        with pytest.raises(InvalidRequestError):
            await store.record(ex(1, execution_id=bad), origin="o")
    assert await store.events() == []


def test_sqlite_urls() -> None:
    assert SqliteLearningStore.from_url("memory://").path == ":memory:"
    assert SqliteLearningStore.from_url("sqlite:///:memory:").path == ":memory:"
    assert SqliteLearningStore.from_url("sqlite:///tmp/x/learning.db").path == "/tmp/x/learning.db"
    assert SqliteLearningStore.from_url("sqlite:////tmp/x/learning.db").path == "/tmp/x/learning.db"


async def test_sqlite_failure_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    store = SqliteLearningStore(blocker / "learning.db")
    with pytest.raises(StorageError) as info:
        await store.record(ex(1), origin="o")
    assert info.value.storage_error is not None
    assert await store.check() is False


@pytest.mark.redis
async def test_redis_outage_is_a_storage_error(redis_server: Any, redis_url: str) -> None:
    store = RedisLearningStore.from_url(redis_url)
    try:
        await store.record(ex(1), origin="o")
        redis_server.stop()
        with pytest.raises(StorageError):
            await store.record(ex(2), origin="o")
        assert await store.check() is False
        redis_server.start()
        # Nothing persisted across the restart; the store works again.
        await store.record(ex(3), origin="o")
        assert [e.data["execution_id"] for e in await store.events()] == ["exec-3"]
    finally:
        await store.aclose()


@pytest.mark.redis
async def test_redis_keys_are_prefixed_and_hash_tagged(redis_url: str) -> None:
    import redis.asyncio as aredis

    store = RedisLearningStore.from_url(redis_url, namespace="team-a")
    client = aredis.Redis.from_url(redis_url)
    try:
        await store.record(ex(1, quality=0.5), origin="o")
        keys = sorted(k.decode() for k in await client.keys("*"))
        assert keys == [
            "ymera:team-a:learning:{team-a}:events",
            "ymera:team-a:learning:{team-a}:exec",
            "ymera:team-a:learning:{team-a}:quality",
            "ymera:team-a:learning:{team-a}:seq",
        ]
    finally:
        await client.aclose()
        await store.aclose()
