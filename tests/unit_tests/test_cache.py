"""The tiered cache in embedded mode (L1 + SQLite L3): policy, promotion, TTLs, coalescing,
streams and statistics. Redis (L2) is covered in tests/integration_tests/test_cache_tiers.py."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from ymera_groq_plugin.cache import LRUCache, TieredCache
from ymera_groq_plugin.cache.codec import assemble_stream
from ymera_groq_plugin.cache.lru import CoarseTime
from ymera_groq_plugin.cache.stats import CircuitBreaker
from ymera_groq_plugin.config import YmeraSettings
from ymera_groq_plugin.errors import UpstreamError
from ymera_groq_plugin.storage.sqlite_cache import SqliteCacheStore
from ymera_groq_plugin.testing import FakeClock
from ymera_groq_plugin.types import ChatRequest, ChatResult, Plan, Profile, RateLimits, Usage

TTL = {"l1": 300.0, "l2": 3600.0, "l3": 7200.0}


def request(content: str = "Validate: {}", **params: Any) -> ChatRequest:
    return ChatRequest(
        messages=({"role": "user", "content": content},),
        model="openai/gpt-oss-20b",
        params={"temperature": 0, **params},
    )


def answer(text: str = "valid", **kwargs: Any) -> ChatResult:
    fields: dict[str, Any] = {
        "message": {"role": "assistant", "content": text},
        "model": "openai/gpt-oss-20b",
        "usage": Usage(prompt_tokens=12, completion_tokens=3, total_tokens=15),
        "finish_reason": "stop",
        "key_label": "key1",
        "raw": {"id": "chatcmpl-1", "system_fingerprint": "fp_1", "x_groq": {"id": "req_1"}},
    }
    fields.update(kwargs)
    return ChatResult(**fields)


@pytest.fixture
def make_cache(tmp_path: Path, clock: FakeClock) -> Iterator[Any]:
    made: list[TieredCache] = []

    def make(*, l3: bool = True, **kwargs: Any) -> TieredCache:
        store = SqliteCacheStore(tmp_path / "cache.db", clock=clock) if l3 else None
        cache = TieredCache(
            l1=LRUCache(100, TTL["l1"], clock=clock),
            l2=None,
            l3=store,
            ttl=TTL,
            clock=clock,
            **kwargs,
        )
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


# -- L1 -----------------------------------------------------------------------------------------


def test_lru_ttl_and_bound(clock: FakeClock) -> None:
    lru: LRUCache[str, int] = LRUCache(3, 10, clock=clock)
    lru.set("a", 1)
    lru.set("b", 2, ttl=100)
    assert lru.get("a") == 1
    clock.advance(10)
    assert lru.get("a") is None  # expired at exactly its TTL
    assert lru.get("b") == 2
    assert "b" in lru
    assert "a" not in lru
    assert lru.purge_expired() == 1
    lru.set("c", 3)
    lru.set("d", 4)
    lru.set("e", 5)
    assert len(lru) == 3
    assert repr(lru) == "<LRUCache 3/3 entries, ttl 10s>"


def test_lru_evicts_least_recently_used_first(clock: FakeClock) -> None:
    lru: LRUCache[str, int] = LRUCache(3, None, clock=clock)
    for k, v in (("a", 1), ("b", 2), ("c", 3)):
        lru.set(k, v)
    assert lru.get("a") == 1  # a is used, b is not
    lru.set("d", 4)
    assert lru.get("b") is None
    assert [lru.get(k) for k in ("a", "c", "d")] == [1, 3, 4]
    lru.set("e", 5)  # every entry was used since it was last looked at: oldest-written goes
    assert len(lru) == 3
    assert lru.evictions == 2


def test_lru_counts_hits_across_replacement_and_eviction(clock: FakeClock) -> None:
    lru: LRUCache[str, int] = LRUCache(2, None, clock=clock)
    lru.set("a", 1)
    for _ in range(3):
        lru.get("a")
    lru.set("a", 2)  # replacing keeps the count
    lru.get("a")
    lru.set("b", 1)
    lru.set("c", 1)
    lru.delete("b")
    lru.clear()
    assert lru.hits == 4
    assert lru.info()["hits"] == 4


def test_lru_zero_ttl_stores_nothing(clock: FakeClock) -> None:
    lru: LRUCache[str, int] = LRUCache(2, 10, clock=clock)
    lru.set("a", 1)
    lru.set("a", 2, ttl=0)
    assert lru.get("a") is None
    with pytest.raises(ValueError, match="max_entries"):
        LRUCache(0)
    with pytest.raises(ValueError, match="ttl"):
        LRUCache(1, 0)


def test_lru_default_clock_is_the_shared_coarse_clock() -> None:
    lru: LRUCache[str, int] = LRUCache(10, 60)
    assert lru.timer is CoarseTime.shared()
    lru.set("a", 1)
    assert lru.get("a") == 1
    coarse = CoarseTime.shared()
    assert abs(coarse.now - time.time()) < 1.0
    first = coarse.now
    deadline = time.monotonic() + 2
    while coarse.now == first and time.monotonic() < deadline:
        time.sleep(0.005)
    assert coarse.now > first  # the daemon thread keeps it moving


def test_lru_is_safe_under_threads(clock: FakeClock) -> None:
    lru: LRUCache[int, int] = LRUCache(50, 100, clock=clock)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(3000):
                k = (i * 7 + seed) % 120
                if lru.get(k) is None:
                    lru.set(k, k)
                elif i % 11 == 0:
                    lru.delete(k)
        except BaseException as exc:  # pragma: no cover - the assertion reports it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(lru) <= 50
    assert all(lru.get(k) in (None, k) for k in range(120))


def test_circuit_breaker_opens_doubles_and_closes(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock, retry_after=5, max_retry_after=12)
    assert breaker.allow() and breaker.state == "closed"
    assert breaker.failure() is True
    assert not breaker.allow() and breaker.state == "open"
    clock.advance(5)
    assert breaker.allow() and breaker.state == "half-open"
    assert breaker.failure() is False  # the trial failed: 10 s this time
    clock.advance(9.9)
    assert not breaker.allow()
    clock.advance(0.1)
    breaker.failure()  # capped at 12 s
    assert breaker.open_until == clock() + 12
    clock.advance(12)
    assert breaker.success() is True
    assert breaker.state == "closed"
    assert repr(breaker) == "<CircuitBreaker closed failures=0>"


# -- policy ---------------------------------------------------------------------------------


def test_policy(make_cache: Any) -> None:
    cache = make_cache()
    assert cache.should_cache(request())
    sampling = request(temperature=0.7)
    assert not cache.should_cache(sampling)
    assert not cache.should_cache(ChatRequest(messages=({"role": "user", "content": "x"},)))
    assert cache.should_cache(request(temperature=0.7, seed=7))
    assert cache.should_cache(dataclasses.replace(sampling, cache=True))
    assert not cache.should_cache(dataclasses.replace(request(), cache=False))
    assert make_cache(l3=False, cache_sampled=True).should_cache(sampling)
    assert not make_cache(l3=False, enabled=False).should_cache(request())
    assert not cache.should_cache(request(tools=[object()]))  # cannot be keyed safely


async def test_store_promote_and_tiers(make_cache: Any) -> None:
    cache = make_cache()
    req = request()
    assert await cache.aget_result(req) is None
    assert cache.get_l1(req) is None
    await cache.aput_result(req, answer())
    hit = cache.get_l1(req)
    assert hit is not None and hit.cache_tier == "l1" and hit.content == "valid"
    assert hit.request_id == req.request_id
    cache._l1.clear()  # as if another process had stored it: only L3 has it
    other = request()  # same content, another request object and id
    from_l3 = await cache.aget_result(other)
    assert from_l3 is not None and from_l3.cache_tier == "l3"
    assert from_l3.request_id == other.request_id
    assert from_l3.key_label == "key1"
    assert from_l3.usage == Usage(prompt_tokens=12, completion_tokens=3, total_tokens=15)
    promoted = cache.get_l1(other)
    assert promoted is not None and promoted.cache_tier == "l1"


async def test_call_specific_fields_are_not_stored(make_cache: Any) -> None:
    cache = make_cache()
    req = request()
    profile = Profile(task_type="validation", complexity="simple", estimated_tokens=5)
    result = answer(
        rate_limits=RateLimits(remaining_tokens=7000),
        plan=Plan(models=("openai/gpt-oss-20b",), profile=profile),
        latency_ms=123.0,
        request_id="upstream-id",
    )
    await cache.aput_result(req, result)
    for hit in (cache.get_l1(req), await _from_l3(cache, req)):
        assert hit is not None
        assert hit.rate_limits is None and hit.plan is None
        assert hit.latency_ms == 0.0
        assert hit.message == result.message and hit.raw == result.raw


async def _from_l3(cache: TieredCache, req: ChatRequest) -> ChatResult | None:
    cache._l1.clear()
    return await cache.aget_result(req)


async def test_errors_partial_and_cached_results_are_never_stored(make_cache: Any) -> None:
    cache = make_cache()
    req = request()
    await cache.aput_result(req, answer(finish_reason=None))  # a stream that broke
    await cache.aput_result(req, answer(finish_reason="error"))
    await cache.aput_result(req, answer(cache_tier="l3"))  # a hit is not re-stored
    assert await cache.aget_result(req) is None

    async def failing() -> ChatResult:
        raise UpstreamError("Groq said 500", status_code=500)

    with pytest.raises(UpstreamError):
        await cache.coalesce(req, failing)
    assert await cache.aget_result(req) is None
    assert (await cache.astats())["l3"]["size"] == 0


async def test_sampling_requests_are_not_cached_unless_asked(make_cache: Any) -> None:
    cache = make_cache()
    sampling = request(temperature=0.9)
    await cache.aput_result(sampling, answer("random"))
    assert await cache.aget_result(sampling) is None
    forced = dataclasses.replace(sampling, cache=True)
    await cache.aput_result(forced, answer("random"))
    hit = await cache.aget_result(forced)
    assert hit is not None and hit.content == "random"
    bypass = dataclasses.replace(request(), cache=False)
    await cache.aput_result(bypass, answer())
    assert await cache.aget_result(bypass) is None
    assert await cache.aget_result(request()) is None


async def test_no_hit_across_parameters_models_and_namespaces(make_cache: Any) -> None:
    cache = make_cache()
    base = request()
    await cache.aput_result(base, answer("base"))
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    others = [
        request(temperature=0.5, seed=1),
        request(tools=[tool]),
        request(tool_choice="none"),
        request(max_tokens=10),
        request(response_format={"type": "json_object"}),
        dataclasses.replace(base, model="qwen/qwen3.8-27b"),
        dataclasses.replace(base, model=None),
        dataclasses.replace(base, namespace="tenant-b"),
        request("Validate: {} "),
    ]
    for other in others:
        assert await cache.aget_result(other) is None, other
        assert cache.get_l1(other) is None
    hit = await cache.aget_result(request())
    assert hit is not None and hit.content == "base"
    assert await make_cache(namespace="tenant-b").aget_result(request()) is None


async def test_ttls_and_promotion_never_outlive_the_entry(
    make_cache: Any, clock: FakeClock
) -> None:
    cache = make_cache()
    req = request()
    await cache.aput_result(req, answer())
    clock.advance(TTL["l1"])
    assert cache.get_l1(req) is None  # L1's TTL is over…
    hit = await cache.aget_result(req)
    assert hit is not None and hit.cache_tier == "l3"  # …L3 still has it, and promotes it
    clock.advance(TTL["l3"] - TTL["l1"] - 100)  # 100 s of the entry's life left
    cache._l1.clear()
    hit = await cache.aget_result(req)
    assert hit is not None and hit.cache_tier == "l3"
    clock.advance(100)
    assert cache.get_l1(req) is None  # the promoted copy ended with the entry, not 300 s later
    assert await cache.aget_result(req) is None


async def test_invalidate(make_cache: Any) -> None:
    cache = make_cache()
    req = request()
    await cache.aput_result(req, answer())
    await cache.ainvalidate(req)
    assert cache.get_l1(req) is None
    assert await cache.aget_result(req) is None
    await cache.ainvalidate(request(tools=[object()]))  # uncacheable: nothing to do


async def test_unserialisable_answer_stays_in_l1_only(make_cache: Any) -> None:
    cache = make_cache()
    req = request()
    await cache.aput_result(req, answer(raw={"opaque": object()}))
    assert cache.get_l1(req) is not None
    assert await _from_l3(cache, req) is None


async def test_disabled_cache_never_hits(tmp_path: Path) -> None:
    cache = TieredCache.from_settings(YmeraSettings(data_dir=tmp_path, cache_enabled=False))
    req = request()
    await cache.aput_result(req, answer())
    assert await cache.aget_result(req) is None
    cache.update("prompt", "llm", [])
    assert cache.lookup("prompt", "llm") is None
    assert await cache.alookup("prompt", "llm") is None
    assert "disabled" in repr(cache)
    await cache.aclose()


async def test_from_settings_embedded(tmp_path: Path, clock: FakeClock) -> None:
    settings = YmeraSettings(data_dir=tmp_path / "data", namespace="team-a", cache_l1_ttl=60)
    cache = TieredCache.from_settings(settings, clock=clock)
    try:
        assert repr(cache) == "<TieredCache l1+l3:sqlite namespace=team-a>"
        assert cache.ttl == {"l1": 60, "l2": 3600, "l3": 7 * 86400}
        await cache.aput_result(request(), answer())
        assert (tmp_path / "data" / "cache.db").exists()
        stats = await cache.astats()
        assert stats["l2"]["enabled"] is False
        assert stats["l3"]["size"] == 1
    finally:
        await cache.aclose()


# -- coalescing -------------------------------------------------------------------------------


async def _until(predicate: Any) -> None:
    """Let other tasks (and threads) run until `predicate()` holds; fail after 5 s."""
    async with asyncio.timeout(5):
        # Followers on other threads and loops change this state; there is no event of ours
        # to await for "n followers have joined", so poll, yielding each time.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0)


async def test_ten_identical_requests_make_one_call(make_cache: Any) -> None:
    cache = make_cache()
    gate = asyncio.Event()
    calls = 0

    async def upstream() -> ChatResult:
        nonlocal calls
        calls += 1
        await gate.wait()
        return answer("shared")

    requests = [request() for _ in range(10)]
    tasks = [asyncio.create_task(cache.coalesce(r, upstream)) for r in requests]
    await _until(lambda: cache.stats()["coalesced"]["followers"] == 9)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert calls == 1
    assert {r.content for r in results} == {"shared"}
    # The leader returns what it got; each follower gets it with its own request id.
    assert results[0].request_id is None
    assert [r.request_id for r in results[1:]] == [r.request_id for r in requests[1:]]
    # The answer was stored before the flight landed: the next one is a cache hit.
    hit = await cache.aget_result(request())
    assert hit is not None and hit.content == "shared"
    assert await cache.coalesce(request(), upstream) is not None
    assert calls == 1


async def test_a_failed_call_fails_every_waiter(make_cache: Any) -> None:
    cache = make_cache()
    gate = asyncio.Event()
    calls = 0

    async def upstream() -> ChatResult:
        nonlocal calls
        calls += 1
        await gate.wait()
        raise UpstreamError("Groq said 503", status_code=503, retryable=True)

    tasks = [asyncio.create_task(cache.coalesce(request(), upstream)) for _ in range(10)]
    await _until(lambda: cache.stats()["coalesced"]["followers"] == 9)
    gate.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert calls == 1
    assert all(isinstance(o, UpstreamError) and o.status_code == 503 for o in outcomes)
    assert await cache.aget_result(request()) is None


async def test_a_cancelled_leader_does_not_strand_its_followers(make_cache: Any) -> None:
    cache = make_cache()
    calls = 0
    release = asyncio.Event()

    async def upstream() -> ChatResult:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.Event().wait()  # the first leader never finishes on its own
        await release.wait()
        return answer("second try")

    leader = asyncio.create_task(cache.coalesce(request(), upstream))
    await _until(lambda: calls == 1)
    followers = [asyncio.create_task(cache.coalesce(request(), upstream)) for _ in range(3)]
    await _until(lambda: cache.stats()["coalesced"]["followers"] == 3)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    await _until(lambda: calls == 2)  # one follower took over
    release.set()
    async with asyncio.timeout(5):
        results = await asyncio.gather(*followers)
    assert {r.content for r in results} == {"second try"}
    assert calls == 2


async def test_coalescing_across_threads_and_loops(make_cache: Any) -> None:
    cache = make_cache()
    calls = 0
    started = threading.Event()
    gate = threading.Event()

    async def upstream() -> ChatResult:
        nonlocal calls
        calls += 1
        started.set()
        await asyncio.to_thread(gate.wait)
        return answer("from the leader")

    leader = asyncio.create_task(cache.coalesce(request(), upstream))
    await asyncio.to_thread(started.wait)
    results: list[ChatResult] = []

    def follower() -> None:
        results.append(asyncio.run(cache.coalesce(request(), upstream)))

    threads = [threading.Thread(target=follower) for _ in range(4)]
    for t in threads:
        t.start()
    await _until(lambda: cache.stats()["coalesced"]["followers"] == 4)
    gate.set()
    await leader
    for t in threads:
        await asyncio.to_thread(t.join)
    assert calls == 1
    assert [r.content for r in results] == ["from the leader"] * 4


async def test_uncacheable_requests_are_not_coalesced(make_cache: Any) -> None:
    cache = make_cache()
    calls = 0

    async def upstream() -> ChatResult:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        return answer()

    await asyncio.gather(*(cache.coalesce(request(temperature=0.8), upstream) for _ in range(3)))
    assert calls == 3


# -- streams ----------------------------------------------------------------------------------


def test_replay_stream_shape_and_round_trip(make_cache: Any, clock: FakeClock) -> None:
    cache = make_cache(l3=False)
    result = answer(
        "x" * 150,
        message={
            "role": "assistant",
            "content": "x" * 150,
            "reasoning": "think first",
        },
    )
    chunks = cache.replay_stream(result)
    first, last = chunks[0], chunks[-1]
    assert first["object"] == "chat.completion.chunk"
    assert first["id"] == "chatcmpl-1"
    assert first["created"] == int(clock())
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["x_groq"] == {"id": "req_1"}
    assert first["system_fingerprint"] == "fp_1"
    assert last["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                  "finish_reason": "stop"}
    assert last["usage"]["total_tokens"] == 15
    assert last["x_groq"]["usage"] == last["usage"]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("content", "") for d in deltas) == "x" * 150
    assert len([d for d in deltas if d.get("content")]) == 3  # 64-character pieces
    again = assemble_stream(chunks)
    assert again is not None
    assert again.message == result.message
    assert (again.usage, again.finish_reason, again.model) == (
        result.usage, result.finish_reason, result.model)


def test_replay_and_assemble_tool_calls(make_cache: Any) -> None:
    cache = make_cache(l3=False)
    calls = [
        {"id": "fc_1", "type": "function",
         "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}},
        {"id": "fc_2", "type": "function", "function": {"name": "time", "arguments": "{}"}},
    ]
    result = answer(message={"role": "assistant", "content": None, "tool_calls": calls},
                    finish_reason="tool_calls")
    rebuilt = assemble_stream(cache.replay_stream(result))
    assert rebuilt is not None
    assert rebuilt.message == {"role": "assistant", "content": None, "tool_calls": calls}
    assert rebuilt.finish_reason == "tool_calls"


async def _agen(chunks: list[Mapping[str, Any]], fail_at: int | None = None) -> AsyncIterator[Any]:
    for i, c in enumerate(chunks):
        if i == fail_at:
            raise UpstreamError("connection reset mid-stream")
        yield c


async def test_a_streamed_answer_is_stored_once_complete(make_cache: Any) -> None:
    cache = make_cache()
    chunks = cache.replay_stream(answer("streamed answer"))
    req = request()
    out = [c async for c in cache.arecord_stream(req, _agen(chunks))]
    assert out == chunks
    hit = await _from_l3(cache, req)
    assert hit is not None and hit.content == "streamed answer"


async def test_a_broken_stream_is_never_stored(make_cache: Any) -> None:
    cache = make_cache()
    chunks = cache.replay_stream(answer("streamed answer"))
    req = request()
    with pytest.raises(UpstreamError):
        async for _ in cache.arecord_stream(req, _agen(chunks, fail_at=2)):
            pass
    assert await cache.aget_result(req) is None
    # Ended without a finish reason, or with an error event: not stored either.
    async for _ in cache.arecord_stream(req, _agen(chunks[:-1])):
        pass
    error_event = [*chunks[:2], {"error": {"message": "tool_use_failed", "status_code": 400}}]
    async for _ in cache.arecord_stream(req, _agen(error_event)):
        pass
    # The consumer stopped early.
    stream = cache.arecord_stream(req, _agen(chunks))
    async for _ in stream:
        break
    await stream.aclose()  # type: ignore[attr-defined]
    assert await cache.aget_result(req) is None


# -- statistics -------------------------------------------------------------------------------


async def test_stats_shape_and_counts(make_cache: Any) -> None:
    cache = make_cache()
    req = request()
    assert await cache.aget_result(req) is None  # miss everywhere
    await cache.aput_result(req, answer())
    assert await cache.aget_result(req) is not None  # l1 hit
    cache._l1.clear()
    assert await cache.aget_result(req) is not None  # l3 hit
    stats = await cache.astats()
    assert set(stats) == {"l1", "l2", "l3", "total", "coalesced"}
    for tier in ("l1", "l2", "l3"):
        assert {"hits", "misses", "hit_rate", "mean_lookup_ms", "size"} <= set(stats[tier])
    assert stats["total"] == {"hits": 2, "misses": 1, "hit_rate": 2 / 3}
    assert (stats["l1"]["hits"], stats["l1"]["misses"]) == (1, 2)
    assert (stats["l3"]["hits"], stats["l3"]["misses"]) == (1, 1)
    assert stats["l1"]["size"] == 1 and stats["l3"]["size"] == 1
    assert stats["l1"]["mean_lookup_ms"] > 0 and stats["l3"]["mean_lookup_ms"] > 0
    assert stats["l2"] == {"enabled": False, "hits": 0, "misses": 0, "hit_rate": 0.0,
                           "mean_lookup_ms": 0.0, "size": 0, "errors": 0, "skipped": 0,
                           "corrupt": 0}


def test_no_secret_reaches_a_tier(make_cache: Any, tmp_path: Path) -> None:
    secret = "gsk_live_DO_NOT_STORE_0123456789"
    cache = make_cache()
    req = request(api_key=secret)
    asyncio.run(cache.aput_result(req, answer(key_label="key1")))
    cache.update("prompt", "llm", [])
    cache.close()
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("cache.db*"))
    assert b"key1" in stored  # the label is kept …
    assert secret.encode() not in stored  # … the key never
    assert secret not in repr(cache)
