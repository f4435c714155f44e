"""`TieredCache` as a LangChain `BaseCache`: the standard `langchain-tests` cache suites, sync
and async, with Redis configured; and a LangChain chat model answered from the tiers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from langchain_core.globals import get_llm_cache, set_llm_cache
from langchain_core.language_models import FakeListChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation
from langchain_tests.integration_tests.cache import AsyncCacheTestSuite, SyncCacheTestSuite

from ymera_groq_plugin.cache import LRUCache, TieredCache
from ymera_groq_plugin.storage.redis_cache import RedisCacheStore
from ymera_groq_plugin.storage.sqlite_cache import SqliteCacheStore

pytestmark = pytest.mark.redis


def make_cache(redis_url: str, tmp_path: Path, *, l1: bool = True) -> TieredCache:
    return TieredCache(
        l1=LRUCache(1000, 300) if l1 else None,
        l2=RedisCacheStore.from_url(redis_url),
        l3=SqliteCacheStore(tmp_path / "cache.db"),
    )


class TestTieredCacheSync(SyncCacheTestSuite):
    """All three tiers (L1, Redis L2, SQLite L3)."""

    @pytest.fixture
    def cache(self, redis_url: str, tmp_path: Path) -> Iterator[TieredCache]:
        cache = make_cache(redis_url, tmp_path)
        yield cache
        cache.close()


class TestTieredCacheSyncWithoutL1(SyncCacheTestSuite):
    """Every lookup goes through Redis and SQLite: the JSON round trip must be exact."""

    @pytest.fixture
    def cache(self, redis_url: str, tmp_path: Path) -> Iterator[TieredCache]:
        cache = make_cache(redis_url, tmp_path, l1=False)
        yield cache
        cache.close()


class TestTieredCacheAsync(AsyncCacheTestSuite):
    """All three tiers, through the async methods."""

    @pytest.fixture
    async def cache(self, redis_url: str, tmp_path: Path) -> AsyncIterator[TieredCache]:
        cache = make_cache(redis_url, tmp_path)
        yield cache
        await cache.aclose()


class TestTieredCacheAsyncWithoutL1(AsyncCacheTestSuite):
    """Async, every lookup through Redis and SQLite."""

    @pytest.fixture
    async def cache(self, redis_url: str, tmp_path: Path) -> AsyncIterator[TieredCache]:
        cache = make_cache(redis_url, tmp_path, l1=False)
        yield cache
        await cache.aclose()


def test_a_langchain_model_is_answered_from_every_tier(redis_url: str, tmp_path: Path) -> None:
    first = make_cache(redis_url, tmp_path)
    other_process = make_cache(redis_url, tmp_path)  # its own L1, the same Redis and file
    previous = get_llm_cache()
    set_llm_cache(first)  # every LangChain model without its own `cache=` now uses the tiers
    try:
        model = FakeListChatModel(responses=["upstream 1", "upstream 2"])
        assert model.invoke("Validate {}").content == "upstream 1"
        assert model.invoke("Validate {}").content == "upstream 1"  # L1
        assert first.stats()["l1"]["hits"] == 1

        twin = FakeListChatModel(responses=["upstream 1", "upstream 2"], cache=other_process)
        assert twin.invoke("Validate {}").content == "upstream 1"  # from Redis
        assert other_process.stats()["l2"]["hits"] == 1
        assert twin.invoke("Something else").content == "upstream 1"  # a miss calls the model
    finally:
        set_llm_cache(previous)
        first.close()
        other_process.close()


async def test_chat_generations_round_trip_through_json(redis_url: str, tmp_path: Path) -> None:
    cache = make_cache(redis_url, tmp_path, l1=False)
    try:
        message = AIMessage(
            content="",
            tool_calls=[{"name": "weather", "args": {"city": "Oslo"}, "id": "fc_1"}],
            usage_metadata={"input_tokens": 12, "output_tokens": 7, "total_tokens": 19},
            response_metadata={"model_name": "openai/gpt-oss-20b", "finish_reason": "tool_calls"},
        )
        value = [
            ChatGeneration(message=message, generation_info={"finish_reason": "tool_calls"}),
            Generation(text="plain"),
        ]
        await cache.aupdate("prompt", "llm", value)
        back = await cache.alookup("prompt", "llm")
        assert back == value
        assert isinstance(back[0], ChatGeneration)  # type: ignore[index]
        assert back[0].message.tool_calls == message.tool_calls  # type: ignore[index]
    finally:
        await cache.aclose()
