"""Replay Groq's recorded wire format through `GroqTransport` (and `ChatGroq`, as a check).

Cassettes live in the top-level `cassettes/` (see its README for provenance). They replay
offline (`--record-mode=none`, pytest-recording's default); a developer re-records with
`--record-mode=once` and a real `GROQ_API_KEY`.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from langchain_core.exceptions import ModelRateLimitError
from pydantic import SecretStr

from ymera_groq_plugin.config import ApiKey
from ymera_groq_plugin.errors import (
    StreamError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimitError,
)
from ymera_groq_plugin.transport import GroqTransport, StreamHandle

CASSETTES = Path(__file__).resolve().parents[2] / "cassettes"
# Replays need no key. To re-record, pass a real one in RECORD_GROQ_API_KEY (the conftest clears
# GROQ_* variables) and run with `--record-mode=once`.
SECRET = os.environ.get(
    "RECORD_GROQ_API_KEY", "gsk_replay00000000000000000000000000000000000000000"
)
KEY = ApiKey(secret=SecretStr(SECRET), label="k1")
JOKE = [{"role": "user", "content": "Tell me a joke about opentelemetry"}]

NBA_SYSTEM = (
    "You are a function calling LLM that uses the data extracted from the get_game_score "
    "function to answer questions around NBA game scores. Include the team and their opponent "
    "in your response."
)
NBA_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_game_score",
            "description": "Get the score for a given NBA game",
            "parameters": {
                "type": "object",
                "properties": {"team_name": {"type": "string"}},
                "required": ["team_name"],
            },
        },
    }
]
SOMETHING_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_something_by_name",
            "description": "",
            "parameters": {
                "type": "object",
                "properties": {"name": {"type": "string"}},
                "required": ["name"],
                "additionalProperties": False,
            },
        },
    }
]
SOMETHING_PROMPT = [
    {"role": "system", "content": "Be concise."},
    {"role": "user", "content": 'Please call the "get_something_by_name" tool.'},
]


async def _drain(handle: StreamHandle, into: list[dict[str, Any]]) -> None:
    async for chunk in handle:
        into.append(chunk)


@pytest.fixture
async def transport() -> AsyncIterator[GroqTransport]:
    t = GroqTransport()
    yield t
    await t.aclose()


# ---------------------------------------------------------------------------------------------
# Successful answers
# ---------------------------------------------------------------------------------------------


@pytest.mark.vcr("chat-completion-ratelimit-headers.yaml")
async def test_plain_completion_reads_body_and_rate_limit_headers(
    transport: GroqTransport,
) -> None:
    resp = await transport.acomplete(
        key=KEY, model="llama3-8b-8192", messages=JOKE, params={"temperature": 0.5}
    )
    assert resp.status_code == 200
    assert resp.request_id == "req_01j6y8yaypebqr66bn9r72s63h"
    assert resp.body["x_groq"]["id"] == resp.request_id
    rl = resp.rate_limits
    assert (rl.limit_requests, rl.remaining_requests) == (14400, 14398)
    assert rl.reset_requests == pytest.approx(10.332999999)
    assert (rl.limit_tokens, rl.remaining_tokens) == (30000, 29987)
    assert rl.reset_tokens == pytest.approx(0.026)
    assert rl.retry_after is None and rl.limit_kind is None

    result = transport.to_result(resp, key_label=KEY.label)
    assert result.content.startswith("Here's a joke about OpenTelemetry")
    assert result.model == "llama3-8b-8192"
    assert result.finish_reason == "stop"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (18, 43)
    assert result.usage.total_tokens == 61
    assert result.key_label == "k1" and result.provider == "groq"
    assert result.rate_limits == rl
    assert result.raw["id"] == "chatcmpl-645691ff-34af-4d0f-a1c1-fe888f8685cc"
    assert result.raw["system_fingerprint"] == "fp_af05557ca2"
    assert result.raw["x_groq"] == {"id": "req_01j6y8yaypebqr66bn9r72s63h"}
    assert result.raw["usage"]["queue_time"] == pytest.approx(0.016676449)


@pytest.mark.vcr("chat-completion-ratelimit-headers.yaml")
async def test_consecutive_calls_each_read_their_own_headers(transport: GroqTransport) -> None:
    resets = []
    remaining_tokens = []
    for _ in range(6):
        resp = await transport.acomplete(key=KEY, model="llama3-8b-8192", messages=JOKE, params={})
        resets.append(resp.rate_limits.reset_requests)
        remaining_tokens.append(resp.rate_limits.remaining_tokens)
    assert resets == pytest.approx([10.332999999, 10.593999999, 10.781, 11.354999999, 6.0, 6.0])
    assert remaining_tokens == [29987, 29987, 29987, 29869, 29987, 29987]


@pytest.mark.vcr("chat-stream-ratelimit-headers.yaml")
async def test_stream_has_headers_before_chunks_and_usage_in_the_last(
    transport: GroqTransport,
) -> None:
    handle = await transport.astream(key=KEY, model="llama3-8b-8192", messages=JOKE, params={})
    # Known before the first chunk is read: the quota ledger settles on these.
    assert handle.status_code == 200
    assert handle.request_id == "req_01jmefve36eajb6c1x6k8ppv5m"
    rl = handle.rate_limits
    assert (rl.limit_requests, rl.remaining_requests, rl.reset_requests) == (14400, 14399, 6.0)
    assert (rl.limit_tokens, rl.remaining_tokens) == (6000, 5987)
    assert rl.reset_tokens == pytest.approx(0.13)
    assert handle.chunks == 0 and handle.usage is None

    chunks = [chunk async for chunk in handle]
    assert chunks[0]["x_groq"]["id"] == handle.request_id
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == "stop"
    assert last["x_groq"]["usage"]["total_tokens"] == 91
    assert handle.done and handle.chunks == len(chunks)
    assert handle.usage is not None
    assert (handle.usage.prompt_tokens, handle.usage.completion_tokens) == (18, 73)
    assert handle.finish_reason == "stop"

    result = handle.to_result()
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert result.content == text
    assert text.startswith("A joke about OpenTelemetry!")
    assert result.usage.total_tokens == 91
    assert result.key_label == "k1" and result.rate_limits == rl
    assert result.raw["x_groq"]["id"] == handle.request_id


@pytest.mark.vcr("chat-tool-call-round-trip.yaml")
async def test_tool_call_round_trip(transport: GroqTransport) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": NBA_SYSTEM},
        {"role": "user", "content": "What was the score of the Warriors game?"},
    ]
    first = await transport.acomplete(
        key=KEY,
        model="llama3-70b-8192",
        messages=messages,
        params={"tools": NBA_TOOLS, "tool_choice": "auto", "max_tokens": 4096, "seed": 42},
    )
    call = transport.to_result(first, key_label=KEY.label)
    assert call.finish_reason == "tool_calls"
    (tool_call,) = call.message["tool_calls"]
    assert tool_call["id"] == "call_22p5"
    assert tool_call["function"]["name"] == "get_game_score"
    assert json.loads(tool_call["function"]["arguments"]) == {"team_name": "Golden State Warriors"}
    assert call.usage.prompt_tokens == 973
    assert first.rate_limits.reset_requests == pytest.approx(1.728)
    assert first.rate_limits.reset_tokens == pytest.approx(0.134)

    messages += [
        call.message,
        {
            "role": "tool",
            "tool_call_id": tool_call["id"],
            "name": "get_game_score",
            "content": json.dumps({"home_team_score": 121, "away_team_score": 128}),
        },
    ]
    second = await transport.acomplete(
        key=KEY, model="llama3-70b-8192", messages=messages, params={"seed": 42}
    )
    answer = transport.to_result(second, key_label=KEY.label)
    assert "128-121" in answer.content
    assert answer.finish_reason == "stop"
    assert second.rate_limits.remaining_tokens == 28998
    assert second.rate_limits.reset_tokens == pytest.approx(2.003)


# ---------------------------------------------------------------------------------------------
# Errors Groq answers with
# ---------------------------------------------------------------------------------------------


@pytest.mark.vcr("chat-tool-use-failed-400-then-tool-call.yaml")
async def test_tool_use_failed_400_then_valid_tool_call(transport: GroqTransport) -> None:
    params = {"tools": SOMETHING_TOOLS, "tool_choice": "auto"}
    with pytest.raises(UpstreamError) as info:
        await transport.acomplete(
            key=KEY, model="openai/gpt-oss-120b", messages=SOMETHING_PROMPT, params=params
        )
    err = info.value
    assert type(err) is UpstreamError
    assert (err.status_code, err.code, err.retryable) == (400, "tool_use_failed", False)
    assert err.model == "openai/gpt-oss-120b"
    assert "Tool call validation failed" in str(err)
    assert "k1" in str(err)

    second = transport.to_result(
        await transport.acomplete(
            key=KEY, model="openai/gpt-oss-120b", messages=SOMETHING_PROMPT, params=params
        ),
        key_label=KEY.label,
    )
    assert second.finish_reason == "tool_calls"
    assert second.message["tool_calls"][0]["id"].startswith("fc_")
    assert second.message["reasoning"].startswith("We need to call with correct param")
    assert second.usage.reasoning_tokens == 22

    third = transport.to_result(
        await transport.acomplete(
            key=KEY, model="openai/gpt-oss-120b", messages=SOMETHING_PROMPT, params=params
        ),
        key_label=KEY.label,
    )
    assert third.content.startswith("The first call failed")
    assert (third.usage.cached_tokens, third.usage.reasoning_tokens) == (256, 59)
    assert third.raw["service_tier"] == "on_demand"
    assert third.raw["x_groq"] == {"id": "req_01khrvt137e9qtvva4t9mk7bzr", "seed": 1779532338}


@pytest.mark.vcr("chat-model-not-found-404.yaml")
async def test_model_not_found_404(transport: GroqTransport) -> None:
    with pytest.raises(UpstreamError) as info:
        await transport.acomplete(
            key=KEY,
            model="llama-3.3-70b-versatlie",
            messages=[{"role": "user", "content": "hello"}],
            params={},
        )
    err = info.value
    assert not isinstance(err, UpstreamRateLimitError | UpstreamAuthError)
    assert (err.status_code, err.code, err.retryable) == (404, "model_not_found", False)
    assert "does not exist or you do not have access to it" in str(err)


@pytest.mark.vcr("chat-stream-event-error-then-tool-call.yaml")
async def test_event_error_inside_200_stream_raises_stream_error(
    transport: GroqTransport,
) -> None:
    params = {"tools": SOMETHING_TOOLS, "tool_choice": "auto"}
    handle = await transport.astream(
        key=KEY, model="openai/gpt-oss-120b", messages=SOMETHING_PROMPT, params=params
    )
    assert handle.status_code == 200
    seen: list[dict[str, Any]] = []
    with pytest.raises(StreamError) as info:
        await _drain(handle, seen)
    err = info.value
    assert (err.status_code, err.code, err.retryable) == (400, "tool_use_failed", False)
    assert "Tool call validation failed" in str(err)
    assert err.rate_limits is handle.rate_limits
    # Reasoning deltas came first; none of it is an answer.
    assert seen and seen[1]["choices"][0]["delta"]["reasoning"] == "We"
    assert not handle.done
    assert handle._response.is_closed
    with pytest.raises(RuntimeError):
        handle.to_result()

    # The next call on the same cassette streams a valid tool call (2026 shape: usage both in
    # `x_groq.usage` and top-level `usage` of the final chunk).
    handle = await transport.astream(
        key=KEY, model="openai/gpt-oss-120b", messages=SOMETHING_PROMPT, params=params
    )
    async with handle:
        chunks = [chunk async for chunk in handle]
    result = handle.to_result()
    assert result.finish_reason == "tool_calls"
    (call,) = result.message["tool_calls"]
    assert call["id"] == "fc_bfb39741-3748-4def-9886-a93fc9c64a90"
    assert json.loads(call["function"]["arguments"]) == {"name": "example"}
    assert result.message["reasoning"]
    assert result.usage.prompt_tokens == 304
    assert chunks[-1]["usage"]["prompt_tokens"] == 304

    handle = await transport.astream(
        key=KEY, model="openai/gpt-oss-120b", messages=SOMETHING_PROMPT, params=params
    )
    async for _ in handle:
        pass
    assert handle.to_result().content


# ---------------------------------------------------------------------------------------------
# Synthetic rate-limit answers (bodies verbatim from Groq errors quoted in public issues)
# ---------------------------------------------------------------------------------------------


@pytest.mark.vcr("synthetic-429-tokens-per-minute.yaml")
async def test_429_tokens_per_minute(transport: GroqTransport) -> None:
    with pytest.raises(UpstreamRateLimitError) as info:
        await transport.acomplete(
            key=KEY, model="llama-3.1-8b-instant", messages=JOKE, params={"max_tokens": 100}
        )
    err = info.value
    assert isinstance(err, ModelRateLimitError)  # LangChain's own `except` clauses see it
    assert (err.status_code, err.code, err.retryable, err.too_large) == (
        429,
        "rate_limit_exceeded",
        True,
        False,
    )
    rl = err.rate_limits
    assert rl is not None
    assert rl.retry_after == 5.0
    assert (rl.limit_kind, rl.limit_value, rl.used, rl.requested) == ("tpm", 6000, 5034, 1443)
    assert rl.organization == "org_01synthetic0tpm0000000000"
    assert rl.remaining_tokens == 966
    assert rl.reset_tokens == pytest.approx(50.34)
    assert rl.reset_requests == pytest.approx(378.0)
    assert "tokens per minute (TPM)" in str(err)


@pytest.mark.vcr("synthetic-429-tokens-per-day.yaml")
async def test_429_tokens_per_day_is_told_apart_by_the_text(transport: GroqTransport) -> None:
    with pytest.raises(UpstreamRateLimitError) as info:
        await transport.acomplete(
            key=KEY, model="llama-3.3-70b-versatile", messages=JOKE, params={}
        )
    rl = info.value.rate_limits
    assert rl is not None
    # The per-minute headers show room; only the body names the day limit.
    assert rl.remaining_tokens == 8381
    assert (rl.limit_kind, rl.limit_value, rl.used, rl.requested) == ("tpd", 100000, 97050, 3619)
    assert rl.retry_after == 579.0
    assert rl.reset_requests == pytest.approx(3888.0)


@pytest.mark.vcr("synthetic-413-request-too-large.yaml")
async def test_413_request_too_large(transport: GroqTransport) -> None:
    with pytest.raises(UpstreamRateLimitError) as info:
        await transport.acomplete(
            key=KEY, model="llama-3.3-70b-versatile", messages=JOKE, params={}
        )
    err = info.value
    assert err.too_large
    assert (err.status_code, err.retryable, err.code) == (413, False, "rate_limit_exceeded")
    rl = err.rate_limits
    assert rl is not None
    assert (rl.limit_kind, rl.limit_value, rl.requested) == ("tpm", 6000, 10338)
    assert "Request too large" in str(err)


# ---------------------------------------------------------------------------------------------
# The cassettes are Groq's real wire format: ChatGroq reads them too
# ---------------------------------------------------------------------------------------------


@pytest.mark.vcr("chat-completion-ratelimit-headers.yaml")
def test_chatgroq_replays_the_plain_cassette() -> None:
    from langchain_groq import ChatGroq

    llm = ChatGroq(model="llama3-8b-8192", api_key=SecretStr(SECRET), max_retries=0)
    msg = llm.invoke(JOKE[0]["content"])
    assert isinstance(msg.content, str)
    assert msg.content.startswith("Here's a joke about OpenTelemetry")
    assert msg.usage_metadata is not None
    assert msg.usage_metadata["total_tokens"] == 61
    assert msg.response_metadata["token_usage"]["queue_time"] == pytest.approx(0.016676449)
    assert msg.response_metadata["finish_reason"] == "stop"


@pytest.mark.vcr("chat-stream-ratelimit-headers.yaml")
def test_chatgroq_replays_the_stream_cassette() -> None:
    from langchain_groq import ChatGroq

    llm = ChatGroq(model="llama3-8b-8192", api_key=SecretStr(SECRET), max_retries=0)
    chunks = list(llm.stream(JOKE[0]["content"]))
    text = "".join(str(c.content) for c in chunks)
    assert text.startswith("A joke about OpenTelemetry!")
    usage = [c.usage_metadata for c in chunks if c.usage_metadata]
    assert usage and usage[-1]["total_tokens"] == 91


# ---------------------------------------------------------------------------------------------
# Cassette hygiene
# ---------------------------------------------------------------------------------------------


def _cassettes() -> list[Path]:
    return sorted(CASSETTES.glob("*.yaml"))


def test_cassettes_hold_no_credentials_and_keep_rate_limit_headers() -> None:
    files = _cassettes()
    assert len(files) >= 9
    for path in files:
        text = path.read_text(encoding="utf-8")
        lowered = text.lower()
        for forbidden in ("authorization", "api-key", "gsk_", "bearer ", "set-cookie", "__cf_bm"):
            assert forbidden not in lowered, (path.name, forbidden)
        data = yaml.safe_load(text)
        assert data["version"] == 1 and data["interactions"], path.name
        for interaction in data["interactions"]:
            assert interaction["request"]["uri"].startswith("https://api.groq.com/openai/v1/")
            assert {"status", "headers", "body"} <= set(interaction["response"])


async def test_re_recording_keeps_rate_limit_headers_and_drops_the_key(
    vcr_config: dict[str, Any], tmp_path: Path
) -> None:
    import vcr

    from ymera_groq_plugin.testing.server import GroqTestServer

    canary = "gsk_CANARYrecording00000000000000000000000000000000000"
    recorder = vcr.VCR(**vcr_config, record_mode="all", cassette_library_dir=str(tmp_path))
    with GroqTestServer({canary: "org_rec"}) as server:
        transport = GroqTransport(base_url=server.base_url)
        key = ApiKey(secret=SecretStr(canary), label="rec")
        try:
            with recorder.use_cassette("recorded.yaml"):
                await transport.acomplete(
                    key=key, model="openai/gpt-oss-20b", messages=JOKE, params={}
                )
        finally:
            await transport.aclose()
    text = (tmp_path / "recorded.yaml").read_text(encoding="utf-8")
    assert canary not in text
    request = yaml.safe_load(text)["interactions"][0]["request"]
    auth = {k.lower(): v for k, v in request["headers"].items()}["authorization"]
    assert auth == ["DUMMY"]
    for header in ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-requests", "x-request-id"):
        assert header in text


def test_synthetic_cassettes_are_marked_and_documented() -> None:
    readme = (CASSETTES / "README.md").read_text(encoding="utf-8")
    for path in _cassettes():
        assert f"`{path.name}`" in readme, path.name
        synthetic = path.read_text(encoding="utf-8").startswith("# SYNTHETIC")
        assert synthetic == path.name.startswith("synthetic-"), path.name
        if synthetic:
            headers = yaml.safe_load(path.read_text())["interactions"][0]["response"]["headers"]
            assert {"retry-after", "x-ratelimit-limit-tokens", "x-request-id"} <= set(headers)
