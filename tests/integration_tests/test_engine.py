"""The engine and `ChatYmeraGroq` against the local Groq server: real HTTP, real quota.

Each test starts its own `GroqTestServer` (Groq's wire format, limits, headers and injected
faults on loopback) and its own engine on a temporary data directory, so nothing leaks between
tests. Time is real here (the server's windows and `retry-after` are wall-clock), so the tests
that must wait for a window wait about two seconds at most.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from ymera_groq_plugin import ChatYmeraGroq
from ymera_groq_plugin.catalog import load_catalog
from ymera_groq_plugin.config import YmeraSettings
from ymera_groq_plugin.engine import Engine
from ymera_groq_plugin.errors import (
    ContextWindowError,
    InvalidRequestError,
    QuotaExhaustedError,
    StreamError,
    UnknownModelError,
    UpstreamError,
    UpstreamTimeoutError,
    YmeraError,
)
from ymera_groq_plugin.testing.server import GroqTestServer
from ymera_groq_plugin.transport import FallbackTransport
from ymera_groq_plugin.types import ChatRequest

A = "openai/gpt-oss-20b"  # plan for an explicit A: A, then qwen, then 120b (catalog fallbacks)
QWEN = "qwen/qwen3.8-27b"
BIG = "openai/gpt-oss-120b"
K1 = "gsk_engine_test_key_one_00000000000000000000000001"
K2 = "gsk_engine_test_key_two_00000000000000000000000002"
K3 = "gsk_engine_test_key_three_000000000000000000000003"
BAD = "gsk_engine_test_key_unknown_0000000000000000000009"
UNLIMITED = {"rpm": None, "rpd": None, "tpm": None, "tpd": None}


class Rig:
    """A server, an engine and helpers; `model()` makes `ChatYmeraGroq`s on the engine."""

    def __init__(self, server: GroqTestServer, engine: Engine) -> None:
        self.server = server
        self.engine = engine

    def model(self, **kwargs: Any) -> ChatYmeraGroq:
        kwargs.setdefault("model", A)
        kwargs.setdefault("temperature", 0)
        return ChatYmeraGroq(engine=self.engine, **kwargs)

    def idle(self) -> bool:
        return self.engine.portal.run(self.engine.quota.idle())

    async def aidle(self) -> bool:
        return await self.engine.portal.arun(self.engine.quota.idle())

    def requests(self) -> int:
        return self.server.stats().requests


@pytest.fixture
def rig_factory(tmp_path: Path) -> Iterator[Any]:
    """Build a rig: `rig_factory(keys=..., server_limits=..., engine_limits=..., **settings)`."""
    made: list[tuple[GroqTestServer, Engine]] = []

    def make(
        keys: Mapping[str, str] | None = None,
        *,
        server_limits: Mapping[str, Mapping[str, int | None]] | None = None,
        engine_limits: Mapping[str, Mapping[str, int | None]] | None = None,
        faults: Mapping[str, Any] | None = None,
        engine_keys: list[str] | None = None,
        engine_kwargs: Mapping[str, Any] | None = None,
        **settings: Any,
    ) -> Rig:
        keys = dict(keys or {K1: "org_1", K2: "org_2"})
        server = GroqTestServer(keys, limits=server_limits, faults=faults).start()
        settings.setdefault("max_wait", 0.0)
        settings.setdefault("request_timeout", 5.0)
        # These tests exercise failover along models from an explicit one (the opt-in);
        # pinned models are `test_served.py`'s.
        settings.setdefault("allow_model_fallback", True)
        s = YmeraSettings(
            api_keys=engine_keys or list(keys),
            base_url=server.base_url,
            data_dir=tmp_path / f"data{len(made)}",
            **settings,
        )
        overrides = [{"id": m, "limits": v} for m, v in (engine_limits or {}).items()]
        engine = Engine(
            s,
            catalog=load_catalog(overrides=overrides),
            rng=random.Random(7),
            **dict(engine_kwargs or {}),
        )
        engine.start()
        made.append((server, engine))
        return Rig(server, engine)

    yield make
    for server, engine in made:
        engine.close()
        server.stop()


@pytest.fixture
def rig(rig_factory: Any) -> Rig:
    """Two keys in two organisations; limits high enough never to matter."""
    limits = {m: UNLIMITED for m in (A, QWEN, BIG)}
    return rig_factory(server_limits=limits, engine_limits=limits)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# 429, 413: failover along organisations and models
# ---------------------------------------------------------------------------------------------


def test_429_moves_to_the_other_org_then_the_next_model(rig_factory: Any) -> None:
    # Groq allows one request a minute on A; the engine's catalog thinks 30, so Groq says 429.
    r = rig_factory(server_limits={A: {"rpm": 1}})
    llm = r.model()
    first = llm.invoke("first question")
    second = llm.invoke("second question")
    assert {first.response_metadata["key_label"], second.response_metadata["key_label"]} == {
        "key1",
        "key2",
    }
    third = llm.invoke("third question")
    assert third.response_metadata["model_name"] == QWEN
    stats = r.server.stats()
    assert stats.rate_limited == {"RPM": 2}  # once per organisation, then the next model
    # The answer's route says why it came from another model than the plan's first.
    reasons = third.response_metadata["route"]["reasons"]
    assert sum(f"groq: 429 on {A} for key" in why for why in reasons) == 2
    # Both organisations now cool down for A (retry-after ≈ 60 s): no call goes there.
    fourth = llm.invoke("fourth question")
    assert fourth.response_metadata["model_name"] == QWEN
    assert any(
        why.startswith(f"quota: {A} had no room")
        for why in fourth.response_metadata["route"]["reasons"]
    )
    assert r.server.stats().rate_limited == {"RPM": 2}
    assert r.engine.stats.as_dict()["rate_limited_received"] == 2
    assert r.idle()


def test_429_storm_retry_after_is_waited_for_once(rig_factory: Any) -> None:
    r = rig_factory({K1: "org_1"}, max_wait=5.0)
    r.server.start_429_storm(1.2)  # retry-after: 2
    started = time.monotonic()
    msg = r.model().invoke("during a storm")
    elapsed = time.monotonic() - started
    assert isinstance(msg, AIMessage) and msg.content
    # Each model was asked once, then the engine waited for the earliest cooldown to end.
    assert r.server.stats().rate_limited == {"storm": 3}
    assert 1.9 <= elapsed < r.engine.budget
    assert r.engine.stats.as_dict()["rate_limited_avoided"] == 1


def test_quota_exhausted_with_retry_after_when_everything_is_out(rig_factory: Any) -> None:
    r = rig_factory({K1: "org_1"}, max_wait=0.3)
    r.server.start_429_storm(30)
    started = time.monotonic()
    with pytest.raises(QuotaExhaustedError) as info:
        r.model().invoke("nothing has room")
    # Within the engine's bound: it did not wait for the 30 s storm.
    assert time.monotonic() - started < min(r.engine.budget, 25.0)
    assert info.value.retry_after is not None and 25 <= info.value.retry_after <= 31
    assert r.server.stats().rate_limited == {"storm": 3}
    # A second request does not even reach Groq: every (org, model) is cooling down.
    with pytest.raises(QuotaExhaustedError):
        r.model().invoke("still nothing")
    assert r.server.stats().rate_limited == {"storm": 3}
    assert r.idle()


def test_413_is_never_retried_on_the_same_model(rig_factory: Any) -> None:
    # Groq's A takes 20 tokens a minute; the engine's catalog says 8000: Groq answers 413.
    r = rig_factory({K1: "org_1"}, server_limits={A: {"tpm": 20}})
    prompt = "Please summarise the following paragraph about rate limits and quotas " * 3
    msg = r.model().invoke(prompt)
    assert msg.response_metadata["model_name"] == QWEN
    assert r.server.stats().rate_limited == {"413": 1}
    again = r.model().invoke(prompt + " once more")
    assert again.response_metadata["model_name"] == QWEN
    assert r.server.stats().rate_limited == {"413": 1}  # refused locally this time
    assert r.idle()


# ---------------------------------------------------------------------------------------------
# 5xx, 498, timeouts: retried with backoff inside the budget
# ---------------------------------------------------------------------------------------------


def test_5xx_retried_with_backoff_then_typed_error(rig_factory: Any) -> None:
    r = rig_factory(
        {K1: "org_1"},
        faults={"error_rate": 1.0, "seed": 1},
        max_retries=1,
        engine_kwargs={"retry_backoff": 0.05},
    )
    started = time.monotonic()
    with pytest.raises(UpstreamError) as info:
        r.model().invoke("always failing")
    elapsed = time.monotonic() - started
    assert info.value.status_code is not None and info.value.status_code >= 500
    assert r.server.stats().faults == {"5xx": 6}  # 3 models × (1 try + 1 retry)
    assert 3 * 0.05 * 0.5 <= elapsed < r.engine.budget
    assert r.idle()


def test_seeded_5xx_and_498_are_absorbed(rig_factory: Any) -> None:
    r = rig_factory(
        {K1: "org_1", K2: "org_2"},
        faults={"error_rate": 0.3, "capacity_rate": 0.3, "seed": 11},
        max_retries=3,
        engine_kwargs={"retry_backoff": 0.01},
    )
    llm = r.model()
    answers = [llm.invoke(f"question {i}") for i in range(10)]
    assert all(a.content for a in answers)
    faults = r.server.stats().faults
    assert faults.get("5xx", 0) > 0 and faults.get("498", 0) > 0
    assert r.engine.stats.as_dict()["upstream_calls"] == 10 + sum(faults.values())
    assert r.idle()


def test_latency_beyond_the_timeout_raises_within_the_budget(rig_factory: Any) -> None:
    r = rig_factory({K1: "org_1"}, faults={"latency": 0.6}, request_timeout=0.2, max_retries=0)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeoutError):
        r.model().invoke("slow")
    elapsed = time.monotonic() - started
    assert elapsed < r.engine.budget  # 0.2 s per model, three models; budget 1.2 s
    assert r.idle()


# ---------------------------------------------------------------------------------------------
# 401: the key is disabled
# ---------------------------------------------------------------------------------------------


def test_401_disables_the_key(rig_factory: Any) -> None:
    # The server does not know BAD: Groq answers 401 for it.
    r = rig_factory({K1: "org_1"}, engine_keys=[BAD, K1])
    llm = r.model()
    for i in range(4):
        assert llm.invoke(f"question {i}").response_metadata["key_label"] == "key2"
    assert r.server.stats().by_status == {401: 1, 200: 4}
    snap = r.engine.snapshot()
    health = {k["label"]: k["health"] for k in snap["api_keys"]["keys"]}
    assert health == {"key1": "disabled", "key2": "healthy"}
    assert BAD not in repr(snap)


# ---------------------------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------------------------


def test_mid_stream_error_is_an_error_and_is_not_cached(rig_factory: Any) -> None:
    r = rig_factory({K1: "org_1"}, faults={"stream_error_rate": 1.0, "stream_error_after": 6})
    llm = r.model()
    got: list[AIMessageChunk] = []

    def consume() -> None:
        for chunk in llm.stream("tell me something"):
            got.append(chunk)

    with pytest.raises(StreamError):
        consume()
    assert got  # tokens had reached the caller: no failover
    assert r.server.stats().requests == 1
    r.server.configure_faults(stream_error_rate=0.0)
    again = llm.invoke("tell me something")
    assert again.response_metadata["cache_hit"] is False
    assert r.server.stats().requests == 2
    assert r.idle()


def _seed_where(first_breaks: bool, second_breaks: bool) -> int:
    """A fault seed whose first two requests break (or not) as asked, at rate 0.5.

    The server draws four numbers per request, the fourth deciding a stream error
    (`testing/_faults.py`).
    """
    for seed in range(1000):
        rng = random.Random(seed)
        draws = [rng.random() for _ in range(8)]
        if (draws[3] < 0.5) == first_breaks and (draws[7] < 0.5) == second_breaks:
            return seed
    raise AssertionError("no seed found")


def test_stream_fails_over_before_the_first_token(rig_factory: Any) -> None:
    seed = _seed_where(first_breaks=True, second_breaks=False)
    r = rig_factory(
        {K1: "org_1"},
        faults={"stream_error_rate": 0.5, "stream_error_after": 1, "seed": seed},
    )
    full: Any = None
    for chunk in r.model().stream("stream after a false start"):
        full = chunk if full is None else full + chunk
    assert isinstance(full, AIMessageChunk) and full.content
    assert full.response_metadata["model_name"] == QWEN  # A broke before its first token
    assert r.server.stats().faults == {"stream_error": 1}
    assert r.idle()


async def test_astream_tokens_usage_and_callbacks(rig: Rig) -> None:
    tokens: list[str] = []

    class Collect(BaseCallbackHandler):
        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            tokens.append(token)

    llm = rig.model()
    full: Any = None
    async for chunk in llm.astream("stream with callbacks", config={"callbacks": [Collect()]}):
        full = chunk if full is None else full + chunk
    assert isinstance(full, AIMessageChunk)
    assert "".join(tokens) == full.content and len(tokens) > 3
    assert full.usage_metadata is not None and full.usage_metadata["output_tokens"] > 0
    assert full.response_metadata["finish_reason"] == "stop"
    assert full.response_metadata["key_label"] in ("key1", "key2")


def test_streaming_invoke_reports_tokens_to_callbacks(rig: Rig) -> None:
    tokens: list[str] = []

    class Collect(BaseCallbackHandler):
        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            tokens.append(token)

    msg = rig.model(streaming=True).invoke("streamed invoke", config={"callbacks": [Collect()]})
    assert msg.content and "".join(tokens) == msg.content


# ---------------------------------------------------------------------------------------------
# Cancellation gives reservations back
# ---------------------------------------------------------------------------------------------


async def test_cancelled_during_the_call(rig_factory: Any) -> None:
    r = rig_factory({K1: "org_1"}, faults={"latency": 0.5})
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(r.model().ainvoke("cancel me"), 0.1)
    assert await r.aidle()


async def test_cancelled_while_waiting_for_quota(rig_factory: Any) -> None:
    six = {m: {"rpm": 6} for m in (A, QWEN, BIG)}
    r = rig_factory({K1: "org_1"}, server_limits=six, engine_limits=six, max_wait=20.0)
    llm = r.model()
    for i in range(18):  # six requests per model: the next one opens in 10 s
        await llm.ainvoke(f"fill {i}")
    task = asyncio.create_task(llm.ainvoke("waits for quota"))
    await asyncio.sleep(0.2)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await r.aidle()
    assert r.server.stats().requests == 18


async def test_cancelled_during_retry_backoff(rig_factory: Any) -> None:
    r = rig_factory(
        {K1: "org_1"},
        faults={"error_rate": 1.0, "seed": 2},
        max_retries=5,
        engine_kwargs={"retry_backoff": 1.0},
    )
    task = asyncio.create_task(r.model().ainvoke("fails, then sleeps"))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await r.aidle()


async def test_cancelled_mid_stream(rig_factory: Any) -> None:
    r = rig_factory({K1: "org_1"}, faults={"stream_chunk_delay": 0.05})
    seen: list[Any] = []
    first = asyncio.Event()

    async def consume() -> None:
        async for chunk in r.model().astream("a long stream"):
            seen.append(chunk)
            first.set()

    task = asyncio.create_task(consume())
    # Mid-stream: after its first chunk, however long this machine takes to get there.
    await asyncio.wait_for(first.wait(), r.engine.budget)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen
    assert await r.aidle()


def test_sync_stream_closed_early(rig_factory: Any) -> None:
    r = rig_factory({K1: "org_1"}, faults={"stream_chunk_delay": 0.02})
    stream = r.model().stream("a long stream")
    next(stream)
    next(stream)
    stream.close()
    assert r.idle()
    assert r.engine.cache is not None
    assert r.engine.cache.get_l1(_request("a long stream")) is None


def _request(text: str) -> ChatRequest:
    return ChatRequest(
        messages=({"role": "user", "content": text},), model=A, params={"temperature": 1e-8}
    )


# ---------------------------------------------------------------------------------------------
# Fallback providers through LiteLLM
# ---------------------------------------------------------------------------------------------


def test_fallback_provider_when_every_groq_model_is_out(rig_factory: Any) -> None:
    # Two requests a minute on A (one for Groq's org, one spare for the fallback's), one on
    # the others.
    limits = {A: {"rpm": 2}, QWEN: {"rpm": 1}, BIG: {"rpm": 1}}
    keys = {K1: "org_groq", K3: "org_fallback"}
    r = rig_factory(
        keys,
        engine_keys=[K1],
        server_limits=limits,
        engine_limits=limits,
        fallback_models=("openai/openai/gpt-oss-20b",),
    )
    fallback = FallbackTransport(
        timeout=r.engine.settings.request_timeout,
        api_bases={"openai": r.server.openai_base_url},
        api_keys={"openai": K3},
    )
    llm = ChatYmeraGroq(
        engine=Engine(
            r.engine.settings, catalog=r.engine.catalog, quota=None, fallback=fallback
        ).start(),
        model=A,
        temperature=0,
    )
    # The engine started LiteLLM's import on a thread of its own; on a busy machine it can
    # outlast a request's budget, which is not what this test measures.
    fallback.wait_ready()
    assert llm.engine is not None
    try:
        models = [llm.invoke(f"q{i}").response_metadata["model_name"] for i in range(4)]
        assert sorted(models) == sorted([A, A, QWEN, BIG])
        calls = r.requests()
        msg = llm.invoke("every Groq model is out")
        assert msg.response_metadata["model_provider"] == "openai"
        assert msg.response_metadata["key_label"] is None
        assert msg.content
        assert r.requests() == calls + 1  # one call, through LiteLLM, to the fallback org
        chunks = list(llm.stream("streamed from the fallback"))
        assert "".join(str(c.content) for c in chunks)
        assert llm.engine.stats.as_dict()["fallback_used"] == 2
        assert K3 not in repr(llm.engine.snapshot())
    finally:
        llm.engine.close()


# ---------------------------------------------------------------------------------------------
# Bounded time under mixed faults
# ---------------------------------------------------------------------------------------------


async def _timed_wave(llm: ChatYmeraGroq, prefix: str, n: int) -> list[tuple[object, float]]:
    async def one(i: int) -> tuple[object, float]:
        started = time.monotonic()
        try:
            out: object = await llm.ainvoke(f"{prefix} {i}")
        except YmeraError as exc:
            out = exc
        return out, time.monotonic() - started

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def test_every_request_ends_within_its_budget(rig_factory: Any) -> None:
    # How long 12 concurrent requests take on this machine now, without faults: twice the
    # slowest is the request timeout (so healthy calls fit, spikes of twice that never do),
    # the slowest is the scheduling slack allowed past the engine's budget.
    calm = await _timed_wave(rig_factory().model(), "calm", 12)
    assert all(isinstance(out, AIMessage) for out, _ in calm), calm
    slowest = max(elapsed for _, elapsed in calm)
    timeout, slack = max(0.3, 2 * slowest), max(0.5, slowest)
    r = rig_factory(
        faults={
            "error_rate": 0.2,
            "capacity_rate": 0.1,
            "spike_rate": 0.3,
            "spike_latency": 2 * timeout,
            "seed": 5,
        },
        request_timeout=timeout,
        max_retries=1,
        engine_kwargs={"retry_backoff": 0.02},
    )
    results = await _timed_wave(r.model(), "mixed faults", 12)
    for out, elapsed in results:
        assert isinstance(out, AIMessage | YmeraError)
        assert elapsed < r.engine.budget + slack, (elapsed, r.engine.budget, slack)
    assert any(isinstance(out, AIMessage) for out, _ in results)
    assert await r.aidle()


# ---------------------------------------------------------------------------------------------
# The shared engine, hints, metadata, feedback
# ---------------------------------------------------------------------------------------------


def test_equal_settings_share_one_engine_and_its_cache(tmp_path: Path) -> None:
    with GroqTestServer({K1: "org_1"}) as server:
        args = {"api_keys": [K1], "base_url": server.base_url, "data_dir": tmp_path}
        a = ChatYmeraGroq(model=A, temperature=0, **args)
        b = ChatYmeraGroq(model=A, temperature=0, agent_name="other", **args)
        try:
            assert a.engine is b.engine
            first = a.invoke("shared question")
            second = b.invoke("shared question")
            assert second.content == first.content
            assert second.response_metadata["cache_hit"] is True
            assert server.stats().requests == 1
        finally:
            assert a.engine is not None
            a.engine.close()


def test_hints_reach_the_route(rig: Rig) -> None:
    llm = rig.model(model=None, agent_name="validator")
    route = llm.invoke("check this").response_metadata["route"]
    assert route["agent_name"] == "validator"
    bound = llm.bind(agent_name="reviewer", task_type="code_review")
    route = bound.invoke("look at this").response_metadata["route"]
    assert (route["agent_name"], route["task_type"]) == ("reviewer", "code_review")
    meta = {"agent_name": "doc-writer", "task_type": "documentation"}
    route = llm.invoke("write docs", config={"metadata": meta}).response_metadata["route"]
    assert (route["agent_name"], route["task_type"]) == ("doc-writer", "documentation")
    assert any("documentation" in reason for reason in route["reasons"])


def test_response_metadata_and_cache_tiers(rig_factory: Any, tmp_path: Path) -> None:
    r = rig_factory()  # Groq's free-tier limits on both sides
    llm = r.model()
    fresh = llm.invoke("metadata please")
    meta = fresh.response_metadata
    assert meta["model_name"] == A and meta["model_provider"] == "groq"
    assert meta["key_label"] in ("key1", "key2")
    assert meta["cache_hit"] is False and meta["cache_tier"] is None
    assert meta["route"]["plan"][0] == A and meta["route"]["reasons"]
    assert meta["rate_limits"]["remaining_requests"] == 999  # Groq's headers: RPD 1000
    assert meta["finish_reason"] == "stop"
    hit = llm.invoke("metadata please")
    assert hit.content == fresh.content
    assert (hit.response_metadata["cache_hit"], hit.response_metadata["cache_tier"]) == (
        True,
        "l1",
    )
    # A new process (here: a new engine on the same data directory) finds it in L3.
    r.engine.close()
    other = Engine(r.engine.settings, catalog=r.engine.catalog)
    try:
        again = ChatYmeraGroq(engine=other, model=A, temperature=0).invoke("metadata please")
        assert again.response_metadata["cache_tier"] == "l3"
        assert r.requests() == 1
    finally:
        other.close()


def test_feedback_reaches_the_learner(rig: Rig) -> None:
    llm = rig.model()
    msg = llm.invoke("rate this answer")
    llm.feedback(msg, 0.8)
    learner = rig.engine.learner
    assert learner is not None
    execution = rig.engine.portal.run(learner.store.get(msg.response_metadata["request_id"]))
    assert execution is not None and execution.quality == pytest.approx(0.8)
    assert execution.model == A and execution.success
    # Feedback on a cached answer reaches the execution that produced it.
    hit = llm.invoke("rate this answer")
    assert hit.response_metadata["cache_hit"] is True
    llm.feedback(hit, 0.3)
    execution = rig.engine.portal.run(learner.store.get(msg.response_metadata["request_id"]))
    assert execution is not None and execution.quality == pytest.approx(0.3)


async def test_batch_and_abatch(rig: Rig) -> None:
    llm = rig.model()
    out = llm.batch(["one", "two", "three"])
    assert [isinstance(m, AIMessage) and bool(m.content) for m in out] == [True] * 3
    aout = await llm.abatch(["four", "five"])
    assert all(isinstance(m, AIMessage) and m.content for m in aout)
    assert rig.requests() == 5


# ---------------------------------------------------------------------------------------------
# Tools and structured output
# ---------------------------------------------------------------------------------------------


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


def test_tool_call_round_trip(rig: Rig) -> None:
    llm = rig.model().bind_tools([get_weather])
    question = HumanMessage("Use the weather tool for Paris")
    msg = llm.invoke([question])
    assert isinstance(msg, AIMessage) and msg.tool_calls
    call = msg.tool_calls[0]
    assert call["name"] == "get_weather" and "city" in call["args"]
    answer = llm.invoke(
        [question, msg, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    )
    assert answer.content and not answer.tool_calls


def test_streamed_tool_call(rig: Rig) -> None:
    llm = rig.model().bind_tools([get_weather], tool_choice="get_weather")
    full: Any = None
    for chunk in llm.stream("weather in Rome?"):
        full = chunk if full is None else full + chunk
    assert isinstance(full, AIMessageChunk)
    assert full.tool_calls and full.tool_calls[0]["name"] == "get_weather"


class Answer(BaseModel):
    """The local server's JSON-mode shape."""

    answer: str
    ref: str


class City(BaseModel):
    """A city and its country."""

    name: str = Field(description="The city")
    country: str = Field(description="Its country")


@pytest.mark.parametrize("method", ["function_calling", "json_schema"])
def test_structured_output(rig: Rig, method: str) -> None:
    structured = rig.model().with_structured_output(City, method=method)
    city = structured.invoke("Name a city in France")
    assert isinstance(city, City) and city.name and city.country


def test_structured_output_json_mode(rig: Rig) -> None:
    structured = rig.model().with_structured_output(Answer, method="json_mode")
    out = structured.invoke("Answer in JSON: what is a token bucket?")
    assert isinstance(out, Answer) and out.answer


def test_usage_metadata_matches_the_server(rig: Rig) -> None:
    msg = rig.model().invoke("count my tokens")
    usage = msg.usage_metadata
    assert usage is not None
    stats = next(iter(rig.server.stats().by_org_model.values()))
    assert usage["input_tokens"] == stats.prompt_tokens
    assert usage["output_tokens"] == stats.completion_tokens
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


# ---------------------------------------------------------------------------------------------
# Bad input fails before any network call
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "messages", "error"),
    [
        ({}, [], InvalidRequestError),
        ({"model": "nobody/no-such-model"}, "hi", UnknownModelError),
        ({"max_tokens": -5}, "hi", InvalidRequestError),
        ({"max_tokens": 10**7}, "hi", InvalidRequestError),
        ({}, "word " * 120_000, ContextWindowError),
    ],
    ids=["empty", "unknown-model", "negative-max-tokens", "huge-max-tokens", "too-long"],
)
def test_bad_input_fails_before_any_network_call(
    rig: Rig, kwargs: dict[str, Any], messages: Any, error: type[Exception]
) -> None:
    with pytest.raises(error):
        rig.model(**kwargs).invoke(messages)
    with pytest.raises(error):
        list(rig.model(**kwargs).stream(messages))
    assert rig.requests() == 0
    assert rig.idle()
