"""One contract for every `CacheStore` (SQLite L3, Redis L2), plus each backend's own faults."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis

from tests.utils import REDIS_BACKENDS, redis_url_for
from ymera_groq_plugin.cache.base import CacheStore
from ymera_groq_plugin.errors import StorageError
from ymera_groq_plugin.storage import store_from_url
from ymera_groq_plugin.storage.redis_cache import RedisCacheStore
from ymera_groq_plugin.storage.sqlite_cache import SqliteCacheStore
from ymera_groq_plugin.testing import FakeClock

CACHE_BACKENDS = [pytest.param("sqlite", id="sqlite"), *REDIS_BACKENDS]


@pytest.fixture(params=CACHE_BACKENDS)
async def make_store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[Any]:
    """A factory of empty stores of one backend, created in the test's own loop."""
    made: list[CacheStore] = []

    def make(max_entries: int = 100) -> CacheStore:
        store: CacheStore
        if request.param == "sqlite":
            store = SqliteCacheStore(tmp_path / "cache.db", max_entries=max_entries, clock=clock)
        else:
            url = redis_url_for(request, request.param)
            store = RedisCacheStore.from_url(url, max_entries=max_entries, clock=clock)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()


async def test_is_a_cache_store(make_store: Any) -> None:
    assert isinstance(make_store(), CacheStore)


async def test_round_trip_and_miss(make_store: Any) -> None:
    store = make_store()
    assert await store.get("ns", "k") is None
    await store.set("ns", "k", '{"a": "é ✓ 漢字"}', 60)
    assert await store.get("ns", "k") == '{"a": "é ✓ 漢字"}'
    await store.set("ns", "k", "second", 60)
    assert await store.get("ns", "k") == "second"
    assert await store.check() is True


async def test_ttl_by_the_injected_clock(make_store: Any, clock: FakeClock) -> None:
    store = make_store()
    await store.set("ns", "short", "s", 10)
    await store.set("ns", "long", "l", 100)
    clock.advance(9.9)
    assert await store.get("ns", "short") == "s"
    clock.advance(0.2)
    assert await store.get("ns", "short") is None
    assert await store.get("ns", "long") == "l"
    assert await store.size("ns") == 1
    # Writing again restarts the entry's life.
    clock.advance(80)
    await store.set("ns", "long", "l2", 100)
    clock.advance(50)
    assert await store.get("ns", "long") == "l2"


async def test_zero_ttl_removes(make_store: Any) -> None:
    store = make_store()
    await store.set("ns", "k", "v", 60)
    await store.set("ns", "k", "v", 0)
    assert await store.get("ns", "k") is None


async def test_delete_and_clear_are_per_namespace(make_store: Any) -> None:
    store = make_store()
    for ns in ("a", "b"):
        for k in ("1", "2", "3"):
            await store.set(ns, k, f"{ns}{k}", 60)
    assert await store.size("a") == 3
    assert await store.size(None) == 6
    await store.delete("a", "1")
    await store.delete("a", "missing")
    assert await store.get("a", "1") is None
    assert await store.get("b", "1") == "b1"
    await store.clear("a")
    assert await store.size("a") == 0
    assert await store.get("a", "2") is None
    assert await store.size("b") == 3
    assert await store.get("b", "3") == "b3"


async def test_bounded_evicts_the_oldest(make_store: Any, clock: FakeClock) -> None:
    store = make_store(max_entries=3)
    for i in range(6):
        await store.set("ns", f"k{i}", str(i), 60)
        clock.advance(1)
    assert await store.size("ns") == 3
    assert [await store.get("ns", f"k{i}") for i in range(6)] == [None, None, None, "3", "4", "5"]


async def test_registered_by_url(tmp_path: Path) -> None:
    store = store_from_url("cache", f"sqlite:///{tmp_path}/by-url.db", max_entries=5)
    assert isinstance(store, SqliteCacheStore)
    assert store.path == f"{tmp_path}/by-url.db"
    assert store.max_entries == 5
    await store.aclose()
    memory = SqliteCacheStore.from_url("sqlite:///:memory:")
    assert memory.path == ":memory:"
    await memory.set("ns", "k", "v", 10)
    assert await memory.get("ns", "k") == "v"
    await memory.aclose()


# -- SQLite ------------------------------------------------------------------------------------


async def test_sqlite_uses_wal_and_persists(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "sub" / "cache.db"
    first = SqliteCacheStore(path, clock=clock)
    await first.set("ns", "k", "kept", 3600)
    assert await first.journal_mode() == "wal"
    await first.aclose()
    second = SqliteCacheStore(path, clock=clock)
    try:
        assert await second.get("ns", "k") == "kept"
    finally:
        await second.aclose()


async def test_sqlite_corrupt_file_is_replaced_not_fatal(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.db"
    path.write_bytes(b"this is not a database" * 200)
    store = SqliteCacheStore(path, clock=clock)
    try:
        assert await store.get("ns", "k") is None  # a miss, not an exception
        await store.set("ns", "k", "fresh", 60)
        assert await store.get("ns", "k") == "fresh"
        assert store.recoveries == 1
        assert (tmp_path / "cache.db.corrupt").read_bytes().startswith(b"this is not")
        assert "unreadable" in caplog.text
    finally:
        await store.aclose()


async def test_sqlite_corruption_while_open_recovers(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "cache.db"
    store = SqliteCacheStore(path, clock=clock)
    try:
        for i in range(50):
            await store.set("ns", f"k{i}", "x" * 500, 60)
        await store.aclose()
        # Scribble over every page after the header, then reopen.
        data = bytearray(path.read_bytes())
        for i in range(100, len(data)):
            data[i] = 0x5A
        path.write_bytes(bytes(data))
        store = SqliteCacheStore(path, clock=clock)
        assert await store.get("ns", "k1") is None
        await store.set("ns", "k1", "again", 60)
        assert await store.get("ns", "k1") == "again"
        assert store.recoveries >= 1
    finally:
        await store.aclose()


async def test_sqlite_reads_inline_from_any_thread_and_sees_every_write(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A get reads on the caller's thread (no hop to the worker), and sees the worker's
    writes at once, from any thread, including batches and expiry."""
    store = SqliteCacheStore(tmp_path / "cache.db", clock=clock)
    try:
        await store.set("ns", "a", "one", 60)
        assert await store.get("ns", "a") == "one"
        reader = store._local.conn
        assert reader is not None and reader is not store._conn
        await store.set_many([("ns", "a", "two", 60), ("ns", "b", "bee", 60), ("ns", "c", "x", 0)])
        assert (await store.get("ns", "a"), await store.get("ns", "b")) == ("two", "bee")
        assert await store.get("ns", "c") is None
        assert store._local.conn is reader  # the same inline reader throughout

        # Another thread (another event loop) gets its own reader and the same answers.
        def elsewhere() -> tuple[str | None, str | None]:
            async def both() -> tuple[str | None, str | None]:
                return await store.get("ns", "a"), await store.get("ns", "zz")

            return asyncio.run(both())

        assert await asyncio.to_thread(elsewhere) == ("two", None)
        assert len(store._readers) == 2
        # An expired row found inline is handed to the worker, which deletes it.
        clock.advance(61)
        assert await store.get("ns", "a") is None
        assert await store.size("ns") == 0
    finally:
        await store.aclose()
    assert store._readers == []


async def test_sqlite_replaced_file_is_not_read_through_an_old_reader(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "cache.db"
    store = SqliteCacheStore(path, clock=clock)
    try:
        await store.set("ns", "k", "old", 60)
        assert await store.get("ns", "k") == "old"  # opens the inline reader
        # The worker finds the file corrupt and starts a fresh one (as on a real fault).
        fault = sqlite3.DatabaseError("file is not a database")
        store._executor.submit(store._recover, fault).result()
        await store.set("ns", "k2", "new", 60)
        assert await store.get("ns", "k") is None  # not the old file's row
        assert await store.get("ns", "k2") == "new"
    finally:
        await store.aclose()


async def test_sqlite_undecodable_row_is_removed(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "cache.db"
    store = SqliteCacheStore(path, clock=clock)
    try:
        await store.set("ns", "k", "ok", 60)
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE ymera_cache SET value = ? WHERE key = 'k'", (b"\xff\xfe\x00",))
        assert await store.get("ns", "k") is None
        assert await store.size("ns") == 0
    finally:
        await store.aclose()


async def test_sqlite_closed_store_raises_storage_error(tmp_path: Path) -> None:
    store = SqliteCacheStore(tmp_path / "cache.db")
    await store.aclose()
    await store.aclose()  # idempotent
    with pytest.raises(StorageError):
        await store.get("ns", "k")
    assert await store.check() is False


# -- Redis -------------------------------------------------------------------------------------


@pytest.mark.redis
async def test_redis_key_layout(redis_url: str, clock: FakeClock) -> None:
    store = RedisCacheStore.from_url(redis_url, clock=clock)
    raw = aredis.Redis.from_url(redis_url)
    try:
        await store.set("tenant-a", "abc", "v", 30)
        keys = sorted(k.decode() for k in await raw.keys("*"))
        assert keys == [
            "ymera:tenant-a:cache:{tenant-a}:e:abc",
            "ymera:tenant-a:cache:{tenant-a}:idx",
        ]
        # Redis reclaims the entry on its own too (PX), even if nobody reads it again.
        pttl = await raw.pttl("ymera:tenant-a:cache:{tenant-a}:e:abc")
        assert 29_000 < pttl <= 30_000
        assert await raw.zscore("ymera:tenant-a:cache:{tenant-a}:idx", "abc") == clock() + 30
    finally:
        await raw.aclose()
        await store.aclose()


@pytest.mark.redis
async def test_redis_entry_gone_underneath_cleans_the_index(
    redis_url: str, clock: FakeClock
) -> None:
    store = RedisCacheStore.from_url(redis_url, clock=clock)
    raw = aredis.Redis.from_url(redis_url)
    try:
        await store.set("ns", "k", "v", 30)
        await raw.delete("ymera:ns:cache:{ns}:e:k")  # as if Redis expired or evicted it
        assert await store.get("ns", "k") is None
        assert await raw.zcard("ymera:ns:cache:{ns}:idx") == 0
        await raw.set("ymera:ns:cache:{ns}:e:bad", b"\xff\xfe")
        await raw.zadd("ymera:ns:cache:{ns}:idx", {"bad": clock() + 30})
        assert await store.get("ns", "bad") is None
        assert not await raw.exists("ymera:ns:cache:{ns}:e:bad")
    finally:
        await raw.aclose()
        await store.aclose()


@pytest.mark.redis
async def test_redis_clear_in_batches(redis_url: str, clock: FakeClock) -> None:
    store = RedisCacheStore.from_url(redis_url, clock=clock, max_entries=10_000)
    raw = aredis.Redis.from_url(redis_url)
    try:
        async with raw.pipeline(transaction=False) as pipe:
            for i in range(1200):
                pipe.set(f"ymera:ns:cache:{{ns}}:e:{i}", "v")
                pipe.zadd("ymera:ns:cache:{ns}:idx", {str(i): clock() + 60})
            await pipe.execute()
        assert await store.size("ns") == 1200
        await store.clear("ns")
        assert await store.size("ns") == 0
        assert await raw.dbsize() == 0
    finally:
        await raw.aclose()
        await store.aclose()


@pytest.mark.redis
async def test_redis_down_raises_storage_error(redis_server: Any, redis_url: str) -> None:
    store = RedisCacheStore.from_url(redis_url)
    try:
        await store.set("ns", "k", "v", 30)
        redis_server.stop()
        with pytest.raises(StorageError):
            await store.get("ns", "k")
        assert await store.check() is False
        redis_server.start()
        assert await store.check() is True
    finally:
        await store.aclose()
