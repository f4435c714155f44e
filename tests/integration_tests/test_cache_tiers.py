"""All three tiers with a real redis-server: promotion, persistence across processes, a Redis
outage in the middle of a run, corrupt and foreign entries, bounds and tenants."""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
from langchain_core.outputs import Generation

from ymera_groq_plugin.cache import LRUCache, TieredCache
from ymera_groq_plugin.config import YmeraSettings
from ymera_groq_plugin.storage.redis_cache import RedisCacheStore
from ymera_groq_plugin.storage.sqlite_cache import SqliteCacheStore
from ymera_groq_plugin.testing import FakeClock
from ymera_groq_plugin.types import ChatRequest, ChatResult, Usage

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]
TTL = {"l1": 300.0, "l2": 3600.0, "l3": 7200.0}


def request(content: str = "Format this table", **kwargs: Any) -> ChatRequest:
    return ChatRequest(
        messages=({"role": "user", "content": content},),
        model="openai/gpt-oss-20b",
        params={"temperature": 0},
        **kwargs,
    )


def answer(text: str = "| a | b |") -> ChatResult:
    return ChatResult(
        message={"role": "assistant", "content": text},
        model="openai/gpt-oss-20b",
        usage=Usage(prompt_tokens=9, completion_tokens=4, total_tokens=13),
        finish_reason="stop",
        key_label="key2",
    )


@pytest.fixture
def raw(redis_url: str) -> Iterator[sync_redis.Redis]:
    client = sync_redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def make_cache(redis_url: str, tmp_path: Path, clock: FakeClock) -> Iterator[Any]:
    made: list[TieredCache] = []

    def make(namespace: str = "default", l2_max: int = 1000) -> TieredCache:
        cache = TieredCache(
            l1=LRUCache(100, TTL["l1"], clock=clock),
            l2=RedisCacheStore.from_url(redis_url, clock=clock, max_entries=l2_max),
            l3=SqliteCacheStore(tmp_path / "cache.db", clock=clock),
            namespace=namespace,
            ttl=TTL,
            clock=clock,
        )
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


def entry_key(cache: TieredCache, req: ChatRequest, namespace: str = "default") -> str:
    return f"ymera:{namespace}:cache:{{{namespace}}}:e:{cache.key_for(req)}"


async def test_write_through_and_promotion_l3_to_l2_to_l1(
    make_cache: Any, raw: sync_redis.Redis, clock: FakeClock
) -> None:
    cache = make_cache()
    req = request()
    await cache.aput_result(req, answer())
    l2_key = entry_key(cache, req)
    assert raw.exists(l2_key)
    assert 3599_000 < raw.pttl(l2_key) <= 3600_000  # L2's TTL, not L3's
    stats = await cache.astats()
    assert (stats["l1"]["size"], stats["l2"]["size"], stats["l3"]["size"]) == (1, 1, 1)

    cache._l1.clear()
    hit = await cache.aget_result(req)
    assert hit is not None and hit.cache_tier == "l2"

    cache._l1.clear()
    raw.delete(l2_key)
    hit = await cache.aget_result(req)
    assert hit is not None and hit.cache_tier == "l3"
    assert hit.content == "| a | b |" and hit.key_label == "key2"
    assert raw.exists(l2_key)  # promoted into L2 …
    l1_hit = cache.get_l1(req)  # … and into L1
    assert l1_hit is not None and l1_hit.cache_tier == "l1"


async def test_another_process_shares_l2(make_cache: Any) -> None:
    writer, reader = make_cache(), make_cache()  # two processes: separate L1s
    await writer.aput_result(request(), answer("shared through Redis"))
    hit = await reader.aget_result(request())
    assert hit is not None and hit.cache_tier == "l2" and hit.content == "shared through Redis"
    writer.update("prompt", "llm", [Generation(text="lc answer")])
    assert reader.lookup("prompt", "llm") == [Generation(text="lc answer")]
    assert reader.stats()["l2"]["hits"] == 2


def _write_in_subprocess(data_dir: Path, redis_url: str | None) -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        from ymera_groq_plugin.cache import TieredCache
        from ymera_groq_plugin.config import YmeraSettings
        from ymera_groq_plugin.types import ChatRequest, ChatResult

        settings = YmeraSettings(data_dir=sys.argv[1], redis_url=sys.argv[2] or None)
        cache = TieredCache.from_settings(settings)
        req = ChatRequest(
            messages=({"role": "user", "content": "persist me"},),
            model="openai/gpt-oss-20b",
            params={"temperature": 0},
        )
        result = ChatResult(
            message={"role": "assistant", "content": "persisted"},
            model="openai/gpt-oss-20b",
            finish_reason="stop",
        )

        async def main():
            await cache.aput_result(req, result)
            await cache.aclose()

        cache.update("lc prompt", "lc llm", [])
        asyncio.run(main())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script, str(data_dir), redis_url or ""],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


async def test_l3_survives_a_process_restart_and_promotes(
    tmp_path: Path, redis_url: str, raw: sync_redis.Redis
) -> None:
    _write_in_subprocess(tmp_path, redis_url)
    raw.flushall()  # Redis lost everything meanwhile (it keeps nothing on disk)
    cache = TieredCache.from_settings(YmeraSettings(data_dir=tmp_path, redis_url=redis_url))
    try:
        assert repr(cache) == "<TieredCache l1+l2:redis+l3:sqlite namespace=default>"
        req = ChatRequest(
            messages=({"role": "user", "content": "persist me"},),
            model="openai/gpt-oss-20b",
            params={"temperature": 0},
        )
        assert cache.get_l1(req) is None
        hit = await cache.aget_result(req)
        assert hit is not None and hit.cache_tier == "l3" and hit.content == "persisted"
        l1 = cache.get_l1(req)
        assert l1 is not None and l1.cache_tier == "l1"
        assert raw.exists(entry_key(cache, req))  # and back in L2
    finally:
        await cache.aclose()


async def test_embedded_l3_survives_a_process_restart(tmp_path: Path) -> None:
    _write_in_subprocess(tmp_path, None)
    cache = TieredCache.from_settings(YmeraSettings(data_dir=tmp_path))
    try:
        assert repr(cache) == "<TieredCache l1+l3:sqlite namespace=default>"
        assert cache.lookup("lc prompt", "lc llm") == []
        req = ChatRequest(
            messages=({"role": "user", "content": "persist me"},),
            model="openai/gpt-oss-20b",
            params={"temperature": 0},
        )
        hit = await cache.aget_result(req)
        assert hit is not None and hit.cache_tier == "l3"
        assert cache.get_l1(req) is not None
    finally:
        await cache.aclose()


async def test_redis_outage_is_invisible_and_l2_comes_back(
    make_cache: Any, redis_server: Any, raw: sync_redis.Redis, clock: FakeClock
) -> None:
    cache = make_cache()
    await cache.aput_result(request(), answer("before the outage"))
    redis_server.stop()

    cache._l1.clear()
    hit = await cache.aget_result(request())  # L2 fails: served from L3, no error
    assert hit is not None and hit.cache_tier == "l3"
    stats = cache.stats()
    assert stats["l2"]["errors"] == 1 and stats["l2"]["state"] == "open"

    await cache.aput_result(request("during"), answer("during the outage"))
    cache.update("prompt", "llm", [Generation(text="lc during")])
    cache._l1.clear()
    assert (await cache.aget_result(request("during"))).cache_tier == "l3"  # type: ignore[union-attr]
    assert cache.lookup("prompt", "llm") == [Generation(text="lc during")]
    assert await cache.aget_result(request("never stored")) is None
    stats = await cache.astats()
    assert stats["l2"]["errors"] == 1  # skipped while open, not retried on every call
    assert stats["l2"]["skipped"] >= 4

    redis_server.start()
    cache._l1.clear()
    assert (await cache.aget_result(request())).cache_tier == "l3"  # type: ignore[union-attr]
    assert cache.stats()["l2"]["state"] == "open"  # still waiting out the retry time
    clock.advance(5)
    cache._l1.clear()
    hit = await cache.aget_result(request())
    assert hit is not None and hit.cache_tier == "l3"  # the restarted Redis is empty …
    assert cache.stats()["l2"]["state"] == "closed"  # … but answers again
    assert raw.exists(entry_key(cache, request()))  # and the hit was promoted into it
    cache._l1.clear()
    assert (await cache.aget_result(request())).cache_tier == "l2"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "payload",
    [
        b"not json at all",
        pickle.dumps({"message": "pickled"}),
        json.dumps(
            {
                "ymera_cache": 1,
                "kind": "chat",
                "key": "someone-else",
                "stored_at": 0,
                "expires_at": 4e9,
                "value": {},
            }
        ).encode(),
        json.dumps(
            {
                "ymera_cache": 1,
                "kind": "chat",
                "key": "<key>",
                "stored_at": 0,
                "expires_at": 4e9,
                "value": {"message": "not a dict", "model": 1},
            }
        ).encode(),
    ],
    ids=["garbage", "pickle", "foreign-key", "malformed-body"],
)
async def test_corrupt_entries_are_misses_and_removed(
    make_cache: Any, raw: sync_redis.Redis, tmp_path: Path, payload: bytes
) -> None:
    cache = make_cache()
    req = request()
    await cache.aput_result(req, answer())
    key = cache.key_for(req)
    payload = payload.replace(b"<key>", key.encode())
    raw.set(entry_key(cache, req), payload)
    with sqlite3.connect(tmp_path / "cache.db") as conn:
        text = payload.decode("latin-1")
        conn.execute("UPDATE ymera_cache SET value = ? WHERE key = ?", (text, key))
    cache._l1.clear()
    assert await cache.aget_result(req) is None
    assert not raw.exists(entry_key(cache, req))
    stats = await cache.astats()
    # (Bytes that are not even UTF-8 are dropped by the store itself, before decoding.)
    assert stats["l2"]["corrupt"] == (0 if payload.startswith(b"\x80") else 1)
    assert stats["l3"]["corrupt"] == 1
    assert stats["l3"]["size"] == 0
    # The corrupt L2 entry did not shadow a good L3 one either.
    await cache.aput_result(req, answer("good"))
    raw.set(entry_key(cache, req), b"garbage")
    cache._l1.clear()
    hit = await cache.aget_result(req)
    assert hit is not None and hit.cache_tier == "l3" and hit.content == "good"


async def test_l2_is_bounded(make_cache: Any, clock: FakeClock) -> None:
    cache = make_cache(l2_max=5)
    for i in range(8):
        await cache.aput_result(request(f"prompt {i}"), answer())
        clock.advance(1)
    stats = await cache.astats()
    assert stats["l2"]["size"] == 5
    assert stats["l3"]["size"] == 8


async def test_tenants_never_share_answers(make_cache: Any) -> None:
    a, b = make_cache("tenant-a"), make_cache("tenant-b")
    await a.aput_result(request(), answer("for tenant a"))
    a.update("prompt", "llm", [Generation(text="a")])
    assert await b.aget_result(request()) is None
    assert b.lookup("prompt", "llm") is None
    await b.aput_result(request(), answer("for tenant b"))
    await b.aclear()
    hit = await a.aget_result(request())
    assert hit is not None and hit.content == "for tenant a"
    a._l1.clear()
    hit = await a.aget_result(request())
    assert hit is not None and hit.cache_tier == "l2"


async def test_a_foreign_langchain_entry_is_never_revived(
    make_cache: Any, raw: sync_redis.Redis
) -> None:
    from langchain_core.load import dumpd
    from langchain_core.prompts import PromptTemplate

    from ymera_groq_plugin.cache.keys import langchain_key

    cache = make_cache()
    cache.update("prompt", "llm", [Generation(text="ours")])
    key = langchain_key("prompt", "llm", namespace="default")
    envelope = json.loads(raw.get(f"ymera:default:cache:{{default}}:e:{key}"))
    # Someone with write access to Redis slips in an object outside the allow-list.
    envelope["value"] = [{"class": "ChatGeneration", "info": None,
                          "message": dumpd(PromptTemplate.from_template("{x}"))}]
    raw.set(f"ymera:default:cache:{{default}}:e:{key}", json.dumps(envelope))
    cache._l1.clear()
    hit = cache.lookup("prompt", "llm")
    assert hit == [Generation(text="ours")]  # L2's entry was refused; L3 answered
    assert cache.stats()["l2"]["corrupt"] == 1
    assert cache.stats()["l3"]["hits"] == 1


async def test_sync_calls_from_the_portal_thread_do_not_deadlock(make_cache: Any) -> None:
    from ymera_groq_plugin._portal import get_portal

    cache = make_cache()
    cache.update("prompt", "llm", [Generation(text="stored")])
    cache._l1.clear()

    async def on_portal() -> Any:
        # A sync LangChain call made on the portal's own thread cannot block on the portal:
        # it answers from L1 only and lets the lower-tier work run in the background.
        return cache.lookup("prompt", "llm")

    assert await get_portal().arun(on_portal()) is None
    cache.close()  # waits for the background work: the L2 hit was promoted into L1
    assert cache.lookup("prompt", "llm") == [Generation(text="stored")]


async def test_write_behind_batches_answers_into_one_sqlite_transaction(tmp_path: Path) -> None:
    """On the portal (the engine's case), answers land in L1 at once and reach L2/L3 together:
    one `set_many` per tier for a burst, flushed by `aflush`."""
    from ymera_groq_plugin._portal import get_portal

    l3 = SqliteCacheStore(tmp_path / "cache.db")
    batches: list[int] = []
    set_many = l3.set_many

    async def counting(items: Any) -> None:
        batches.append(len(items))
        await set_many(items)

    l3.set_many = counting  # type: ignore[method-assign]
    cache = TieredCache(l1=LRUCache(100, 300), l2=None, l3=l3, ttl=TTL)
    cache.write_behind = True
    requests = [request(f"Format table {i}") for i in range(20)]

    async def burst() -> None:
        for req in requests:
            await cache.aput_result(req, answer(f"| {req.messages[0]['content']} |"))
        # Every answer is in L1 before any lower-tier write happened.
        assert all(cache.get_l1(req) is not None for req in requests)
        assert batches == []

    await get_portal().arun(burst())
    await cache.aflush()
    assert batches == [20]
    cache._l1.clear()
    for req in requests:
        hit = await cache.aget_result(req)
        assert hit is not None and hit.cache_tier == "l3"
        assert hit.content == f"| {req.messages[0]['content']} |"
    await cache.aclose()
