"""`GroqTransport` against the local Groq-compatible server: limits, faults and error mapping.

The server (`ymera_groq_plugin.testing.GroqTestServer`) speaks Groq's wire format over real
HTTP on loopback, so these tests go through the real `groq` SDK and httpx, not a mock.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from ymera_groq_plugin.config import ApiKey
from ymera_groq_plugin.errors import (
    StreamError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimitError,
    UpstreamTimeoutError,
    YmeraError,
)
from ymera_groq_plugin.testing import FakeClock
from ymera_groq_plugin.testing.server import GroqTestServer
from ymera_groq_plugin.transport import FallbackTransport, GroqTransport, StreamHandle

MODEL = "openai/gpt-oss-20b"
# Recognisable, so a leak anywhere shows up in a plain substring search.
SECRET_A = "gsk_CANARYkeyA0000000000000000000000000000000000000000"
SECRET_B = "gsk_CANARYkeyB0000000000000000000000000000000000000000"
UNKNOWN = "gsk_CANARYunknown000000000000000000000000000000000000"
KEY_A = ApiKey(secret=SecretStr(SECRET_A), label="key-a", org="org_a")
KEY_B = ApiKey(secret=SecretStr(SECRET_B), label="key-b", org="org_a")
HI = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000.0)


@pytest.fixture
def server(clock: FakeClock) -> Iterator[GroqTestServer]:
    with GroqTestServer(
        {SECRET_A: "org_a", SECRET_B: "org_a"},
        limits={MODEL: {"rpm": 3, "tpm": 400}},
        clock=clock,
        faults={"seed": 7},
    ) as srv:
        yield srv


@pytest.fixture
async def transport(server: GroqTestServer) -> AsyncIterator[GroqTransport]:
    t = GroqTransport(base_url=server.base_url, timeout=5.0)
    yield t
    await t.aclose()


async def _drain(handle: StreamHandle, into: list[dict[str, Any]] | None = None) -> None:
    async for chunk in handle:
        if into is not None:
            into.append(chunk)


# ---------------------------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------------------------


async def test_completion_reads_headers_and_maps_the_body(transport: GroqTransport) -> None:
    resp = await transport.acomplete(
        key=KEY_A, model=MODEL, messages=HI, params={"temperature": 0, "max_tokens": 50}
    )
    assert resp.status_code == 200
    assert resp.request_id is not None and resp.request_id.startswith("req_")
    assert resp.body["x_groq"]["id"] == resp.request_id
    rl = resp.rate_limits
    assert rl.limit_tokens == 400 and rl.remaining_tokens is not None and rl.remaining_tokens < 400
    assert rl.limit_requests is not None and rl.reset_tokens is not None
    assert resp.latency_ms > 0

    result = transport.to_result(resp, key_label=KEY_A.label)
    assert "Say hello" in result.content
    assert result.message["reasoning"]  # gpt-oss reasons; the field survives
    assert result.usage.total_tokens == resp.body["usage"]["total_tokens"] > 0
    assert result.usage.reasoning_tokens > 0
    assert result.raw["service_tier"] == "on_demand"
    assert result.key_label == "key-a"


async def test_stream_accumulates_tool_calls_and_usage(transport: GroqTransport) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    handle = await transport.astream(
        key=KEY_A,
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        params={"tools": tools, "tool_choice": "auto"},
    )
    assert handle.rate_limits.limit_tokens == 400  # before any chunk
    chunks: list[dict[str, Any]] = []
    await _drain(handle, chunks)
    result = handle.to_result()
    assert result.finish_reason == "tool_calls"
    (call,) = result.message["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "example"}
    assert handle.usage is not None and handle.usage == result.usage
    assert result.usage.prompt_tokens > 0
    assert handle.first_chunk_ms is not None and handle.latency_ms >= handle.first_chunk_ms


async def test_unknown_params_go_in_extra_body_and_none_is_unset(transport: GroqTransport) -> None:
    # `stream_options` is not a named SDK parameter; a `None` must not be sent as JSON null.
    handle = await transport.astream(
        key=KEY_A,
        model=MODEL,
        messages=HI,
        params={"stream_options": {"include_usage": True}, "stop": None, "seed": 3},
    )
    await _drain(handle)
    assert handle.done and handle.usage is not None


async def test_one_client_per_key_label(transport: GroqTransport) -> None:
    for key in (KEY_A, KEY_B, KEY_A):
        await _drain(await transport.astream(key=key, model=MODEL, messages=HI, params={}))
    assert len(transport._clients) == 2
    assert "clients=2" in repr(transport)


# ---------------------------------------------------------------------------------------------
# Errors the server answers with
# ---------------------------------------------------------------------------------------------


async def test_401_unknown_key(transport: GroqTransport) -> None:
    bad = ApiKey(secret=SecretStr(UNKNOWN), label="stale")
    with pytest.raises(UpstreamAuthError) as info:
        await transport.acomplete(key=bad, model=MODEL, messages=HI, params={})
    err = info.value
    assert (err.status_code, err.code, err.retryable) == (401, "invalid_api_key", False)
    assert "key stale" in str(err)
    assert UNKNOWN not in str(err) and UNKNOWN not in repr(err)


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_injected_5xx_is_retryable(
    server: GroqTestServer, transport: GroqTransport, status: int
) -> None:
    server.configure_faults(error_rate=1.0, error_statuses=(status,))
    with pytest.raises(UpstreamError) as info:
        await transport.acomplete(key=KEY_A, model=MODEL, messages=HI, params={})
    err = info.value
    assert type(err) is UpstreamError
    assert (err.status_code, err.retryable) == (status, True)
    assert "Groq server error" in str(err)


async def test_498_flex_capacity_is_retryable(
    server: GroqTestServer, transport: GroqTransport
) -> None:
    server.configure_faults(capacity_rate=1.0)
    with pytest.raises(UpstreamError) as info:
        await transport.acomplete(key=KEY_A, model=MODEL, messages=HI, params={})
    assert (info.value.status_code, info.value.retryable) == (498, True)
    assert info.value.code == "capacity_exceeded"


async def test_latency_beyond_timeout_raises_within_the_budget(
    server: GroqTestServer, transport: GroqTransport
) -> None:
    server.configure_faults(latency=1.2)
    started = time.perf_counter()
    with pytest.raises(UpstreamTimeoutError) as info:
        await transport.acomplete(key=KEY_A, model=MODEL, messages=HI, params={}, timeout=0.3)
    elapsed = time.perf_counter() - started
    assert 0.25 < elapsed < 1.5
    err = info.value
    assert err.retryable and err.status_code is None and err.model == MODEL
    assert "within 0.3 s" in str(err)


async def test_stream_waiting_for_headers_times_out(
    server: GroqTestServer, transport: GroqTransport
) -> None:
    server.configure_faults(latency=1.2)
    started = time.perf_counter()
    with pytest.raises(UpstreamTimeoutError):
        await transport.astream(key=KEY_A, model=MODEL, messages=HI, params={}, timeout=0.3)
    assert time.perf_counter() - started < 1.5


async def test_stalled_stream_times_out_between_chunks(
    server: GroqTestServer, transport: GroqTransport
) -> None:
    server.configure_faults(stream_chunk_delay=2.0)
    handle = await transport.astream(key=KEY_A, model=MODEL, messages=HI, params={}, timeout=0.3)
    started = time.perf_counter()
    with pytest.raises(UpstreamTimeoutError):
        await _drain(handle)
    assert time.perf_counter() - started < 1.5
    assert handle._response.is_closed


async def test_connection_refused_is_retryable_without_status() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t = GroqTransport(base_url=f"http://127.0.0.1:{port}", timeout=2.0)
    try:
        with pytest.raises(UpstreamError) as info:
            await t.acomplete(key=KEY_A, model=MODEL, messages=HI, params={})
    finally:
        await t.aclose()
    err = info.value
    assert type(err) is UpstreamError
    assert (err.status_code, err.retryable) == (None, True)
    assert "Could not reach Groq" in str(err)


async def test_429_carries_the_limits(
    server: GroqTestServer, transport: GroqTransport, clock: FakeClock
) -> None:
    for _ in range(3):
        await transport.acomplete(key=KEY_A, model=MODEL, messages=HI, params={})
    # The fourth request in the minute: the organisation's RPM bucket is empty, whichever of
    # its keys asks.
    with pytest.raises(UpstreamRateLimitError) as info:
        await transport.acomplete(key=KEY_B, model=MODEL, messages=HI, params={})
    err = info.value
    assert (err.status_code, err.retryable, err.too_large) == (429, True, False)
    rl = err.rate_limits
    assert rl is not None
    assert (rl.limit_kind, rl.limit_value, rl.organization) == ("rpm", 3, "org_a")
    assert rl.retry_after is not None and 0 < rl.retry_after <= 20
    assert rl.limit_requests is not None and rl.remaining_tokens is not None
    assert "key key-b" in str(err)

    clock.advance(rl.retry_after)
    resp = await transport.acomplete(key=KEY_B, model=MODEL, messages=HI, params={})
    assert resp.status_code == 200


async def test_413_when_one_request_exceeds_the_tpm(transport: GroqTransport) -> None:
    huge = [{"role": "user", "content": "word " * 2_000}]
    with pytest.raises(UpstreamRateLimitError) as info:
        await transport.acomplete(key=KEY_A, model=MODEL, messages=huge, params={})
    err = info.value
    assert err.too_large and not err.retryable
    assert err.rate_limits is not None and err.rate_limits.limit_value == 400


async def test_mid_stream_error_after_headers(
    server: GroqTestServer, transport: GroqTransport
) -> None:
    server.configure_faults(stream_error_rate=1.0, stream_error_after=3)
    handle = await transport.astream(key=KEY_A, model=MODEL, messages=HI, params={})
    assert handle.status_code == 200 and handle.rate_limits.limit_tokens == 400
    seen: list[dict[str, Any]] = []
    with pytest.raises(StreamError) as info:
        await _drain(handle, seen)
    err = info.value
    assert len(seen) == 3 == handle.chunks
    assert err.status_code is not None and err.code
    assert err.rate_limits == handle.rate_limits
    assert not handle.done and handle._response.is_closed


async def test_closing_a_stream_early_releases_it(transport: GroqTransport) -> None:
    handle = await transport.astream(key=KEY_A, model=MODEL, messages=HI, params={})
    async with handle:
        async for _ in handle:
            break
    assert handle._response.is_closed
    # The connection pool is usable afterwards.
    assert (await transport.acomplete(key=KEY_A, model=MODEL, messages=HI, params={})).body


# ---------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------


async def test_no_error_message_repr_or_log_contains_a_key(
    server: GroqTestServer, transport: GroqTransport, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []

    async def collect(call: Any) -> None:
        try:
            await call
        except YmeraError as exc:
            errors.append(exc)

    bad = ApiKey(secret=SecretStr(UNKNOWN), label="stale")
    await collect(transport.acomplete(key=bad, model=MODEL, messages=HI, params={}))
    await collect(transport.acomplete(key=KEY_A, model="no/such-model", messages=HI, params={}))
    server.configure_faults(error_rate=1.0)
    await collect(transport.acomplete(key=KEY_A, model=MODEL, messages=HI, params={}))
    server.configure_faults(error_rate=0.0, stream_error_rate=1.0, stream_error_after=1)
    await collect(_drain(await transport.astream(key=KEY_B, model=MODEL, messages=HI, params={})))
    server.configure_faults(stream_error_rate=0.0, latency=1.0)
    await collect(transport.acomplete(key=KEY_A, model=MODEL, messages=HI, params={}, timeout=0.2))
    server.configure_faults(latency=0.0)
    for _ in range(4):
        await collect(transport.acomplete(key=KEY_A, model=MODEL, messages=HI, params={}))

    kinds = {type(e) for e in errors}
    assert {UpstreamAuthError, UpstreamError, StreamError, UpstreamTimeoutError} <= kinds
    assert UpstreamRateLimitError in kinds
    assert caplog.records  # the SDK, httpx and the transport all logged at DEBUG
    texts = [caplog.text, repr(transport)]
    for exc in errors:
        texts += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    for text in texts:
        for secret in (SECRET_A, SECRET_B, UNKNOWN):
            assert secret not in text


# ---------------------------------------------------------------------------------------------
# Fallback through LiteLLM
# ---------------------------------------------------------------------------------------------


def test_importing_the_transport_does_not_import_litellm() -> None:
    code = "import sys, ymera_groq_plugin.transport; print('litellm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_fallback_through_litellm_openai_compatible(server: GroqTestServer) -> None:
    fallback = FallbackTransport(
        timeout=5.0,
        api_keys={"openai": SecretStr(SECRET_A)},
        api_bases={"openai": server.base_url + "/openai/v1"},
    )
    result = await fallback.acomplete(
        model=f"openai/{MODEL}", messages=HI, params={"temperature": 0, "max_tokens": 60}
    )
    assert result.provider == "openai" and result.key_label is None
    assert "Say hello" in result.content
    assert result.usage.total_tokens > 0
    assert result.rate_limits is not None and result.rate_limits.limit_tokens == 400
    assert SECRET_A not in repr(fallback)


async def test_fallback_maps_litellm_errors(server: GroqTestServer) -> None:
    base = {"openai": server.base_url + "/openai/v1"}
    bad = FallbackTransport(timeout=5.0, api_keys={"openai": UNKNOWN}, api_bases=base)
    with pytest.raises(UpstreamAuthError) as auth:
        await bad.acomplete(model=f"openai/{MODEL}", messages=HI, params={})
    assert auth.value.status_code == 401
    assert UNKNOWN not in str(auth.value)

    good = FallbackTransport(timeout=5.0, api_keys={"openai": SECRET_A}, api_bases=base)
    server.configure_faults(error_rate=1.0, error_statuses=(503,))
    with pytest.raises(UpstreamError) as down:
        await good.acomplete(model=f"openai/{MODEL}", messages=HI, params={})
    assert (down.value.status_code, down.value.retryable) == (503, True)

    server.configure_faults(error_rate=0.0)
    for _ in range(3):  # the server's RPM for this model is 3
        await good.acomplete(model=f"openai/{MODEL}", messages=HI, params={})
    with pytest.raises(UpstreamRateLimitError) as limited:
        await good.acomplete(model=f"openai/{MODEL}", messages=HI, params={})
    err = limited.value
    assert (err.status_code, err.retryable) == (429, True)
    assert err.rate_limits is not None and err.rate_limits.limit_kind == "rpm"
    assert err.rate_limits.retry_after is not None
