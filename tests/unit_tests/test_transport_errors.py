"""The transport's error boundary, status by status, over an in-process httpx transport.

`httpx.MockTransport` answers with Groq-shaped bodies so each mapping rule is checked on its
own; the real-HTTP versions are in `tests/integration_tests/test_transport.py`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from ymera_groq_plugin.config import ApiKey
from ymera_groq_plugin.errors import (
    StreamError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimitError,
    UpstreamTimeoutError,
)
from ymera_groq_plugin.transport import GroqTransport, UpstreamResponse

SECRET = "gsk_CANARYunit000000000000000000000000000000000000000000"
KEY = ApiKey(secret=SecretStr(SECRET), label="unit")
HI = [{"role": "user", "content": "hi"}]
MODEL = "openai/gpt-oss-20b"

Handler = Callable[[httpx.Request], httpx.Response]


def _error(message: str, code: str | None, etype: str = "invalid_request_error") -> bytes:
    err: dict[str, Any] = {"message": message, "type": etype}
    if code is not None:
        err["code"] = code
    return json.dumps({"error": err}).encode()


def _transport(handler: Handler) -> GroqTransport:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return GroqTransport(base_url="https://api.groq.test", timeout=5.0, http_client=client)


async def _call(handler: Handler, **params: Any) -> UpstreamResponse:
    transport = _transport(handler)
    try:
        return await transport.acomplete(key=KEY, model=MODEL, messages=HI, params=params)
    finally:
        await transport.aclose()
        assert transport._http_client is not None
        await transport._http_client.aclose()


def _answer(status: int, body: bytes, headers: dict[str, str] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            status, content=body, headers={"content-type": "application/json", **(headers or {})}
        )

    return handler


CASES = [
    # status, body, expected class, retryable, code
    (400, _error("The model `llama3-8b-8192` has been decommissioned and is no longer "
                 "supported.", "model_decommissioned"), UpstreamError, False,
     "model_decommissioned"),
    (400, _error("Please reduce the length of the messages or completion.",
                 "context_length_exceeded"), UpstreamError, False, "context_length_exceeded"),
    (403, _error("Forbidden", "permission_denied"), UpstreamAuthError, False,
     "permission_denied"),
    (404, _error("The model `x` does not exist or you do not have access to it.",
                 "model_not_found"), UpstreamError, False, "model_not_found"),
    (408, _error("Request timeout", None), UpstreamError, True, None),
    (413, b"<html><body>413 Request Entity Too Large</body></html>", UpstreamError, False, None),
    (422, _error("Unprocessable", None), UpstreamError, False, None),
    (498, _error("flex tier capacity exceeded", "capacity_exceeded"), UpstreamError, True,
     "capacity_exceeded"),
    (500, _error("Internal Server Error", "internal_server_error", "internal_server_error"),
     UpstreamError, True, "internal_server_error"),
    (502, b"<html>502 Bad Gateway</html>", UpstreamError, True, None),
    (503, _error("Service Unavailable", None), UpstreamError, True, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("status", "body", "cls", "retryable", "code"),
    CASES,
    ids=[f"{c[0]}-{c[4] or 'plain'}" for c in CASES],
)
async def test_status_mapping(
    status: int, body: bytes, cls: type[UpstreamError], retryable: bool, code: str | None
) -> None:
    answer = _answer(status, body)
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return answer(request)

    with pytest.raises(UpstreamError) as info:
        await _call(handler)
    err = info.value
    assert type(err) is cls
    assert len(calls) == 1  # no hidden retries: the engine decides what happens next
    assert (err.status_code, err.retryable, err.code, err.model) == (status, retryable, code, MODEL)
    assert f"({status}" in str(err) and "key unit" in str(err)
    assert isinstance(err.__cause__, Exception)  # the HTTP status error, kept for debugging


async def test_429_headers_and_text_fill_rate_limits() -> None:
    body = _error(
        "Rate limit reached for model `openai/gpt-oss-20b` in organization `org_x` service tier "
        "`on_demand` on requests per day (RPD): Limit 1000, Used 1000, Requested 1. Please try "
        "again in 1m26.4s.",
        "rate_limit_exceeded",
        "requests",
    )
    headers = {
        "retry-after": "87",
        "x-ratelimit-limit-requests": "1000",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m26.4s",
    }
    with pytest.raises(UpstreamRateLimitError) as info:
        await _call(_answer(429, body, headers))
    rl = info.value.rate_limits
    assert rl is not None
    assert (rl.limit_kind, rl.retry_after, rl.remaining_requests) == ("rpd", 87.0, 0)
    assert rl.reset_requests == pytest.approx(86.4)
    assert info.value.retryable and not info.value.too_large


async def test_413_rate_limit_is_too_large_but_a_plain_413_is_not() -> None:
    body = _error("Request too large for model …", "rate_limit_exceeded", "tokens")
    with pytest.raises(UpstreamRateLimitError) as info:
        await _call(_answer(413, body))
    assert info.value.too_large and not info.value.retryable


async def test_401_message_echoing_the_key_is_scrubbed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    body = _error(f"Invalid API Key: {SECRET} (and Bearer {SECRET})", "invalid_api_key")
    with pytest.raises(UpstreamAuthError) as info:
        await _call(_answer(401, body))
    err = info.value
    assert err.status_code == 401 and err.code == "invalid_api_key"
    assert "Invalid API Key: …0000" in str(err)
    # The SDK's own exception quotes the body, key and all: it must not ride along as the cause.
    assert err.__cause__ is None
    for text in (str(err), repr(err), caplog.text):
        assert SECRET not in text


async def test_a_key_shaped_string_from_elsewhere_is_scrubbed_too() -> None:
    other = "gsk_someoneelse0000000000000000000000000000000000000"
    with pytest.raises(UpstreamError) as info:
        await _call(_answer(400, _error(f"bad header {other}", None)))
    assert other not in str(info.value)


@pytest.mark.parametrize(
    ("exc", "cls"),
    [
        (httpx.ConnectError("connection refused"), UpstreamError),
        (httpx.ReadTimeout("read timed out"), UpstreamTimeoutError),
        (httpx.ConnectTimeout("connect timed out"), UpstreamTimeoutError),
        (httpx.RemoteProtocolError("peer closed connection"), UpstreamError),
    ],
)
async def test_network_failures(exc: Exception, cls: type[UpstreamError]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(UpstreamError) as info:
        await _call(handler)
    err = info.value
    assert type(err) is cls
    assert err.status_code is None and err.retryable


async def test_params_known_by_name_unknown_in_extra_body_none_dropped() -> None:
    seen: dict[str, Any] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(json.loads(request.content))
        seen["_agent"] = request.headers.get("user-agent", "")
        seen["_auth"] = request.headers["authorization"] == f"Bearer {SECRET}"
        return httpx.Response(200, json=_completion())

    await _call(
        handler,
        temperature=0.2,
        reasoning_effort="low",
        stop=None,
        brand_new_groq_param={"x": 1},
        stream=True,  # ignored: acomplete never streams
    )
    assert seen["temperature"] == 0.2 and seen["reasoning_effort"] == "low"
    assert seen["brand_new_groq_param"] == {"x": 1}
    assert "stop" not in seen and seen["stream"] is False
    assert seen["_agent"].startswith("AsyncGroq/Python ") and seen["_auth"]


def _completion(**message: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok", **message},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        "service_tier": "on_demand",
        "x_groq": {"id": "req_1"},
    }


async def test_to_result_keeps_extra_message_fields() -> None:
    resp = await _call(
        lambda request: httpx.Response(
            200, json=_completion(reasoning="because", executed_tools=[{"type": "search"}])
        )
    )
    transport = GroqTransport()
    result = transport.to_result(resp, key_label="unit")
    assert result.message["reasoning"] == "because"
    assert result.message["executed_tools"] == [{"type": "search"}]
    assert result.usage.total_tokens == 4
    assert result.raw["x_groq"] == {"id": "req_1"}
    assert "logprobs" not in result.message  # only what Groq sent


def _sse(*events: str) -> bytes:
    return "".join(f"{e}\n\n" for e in events).encode()


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
    body = {
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return "data: " + json.dumps(body)


async def _stream(body: bytes) -> tuple[list[dict[str, Any]], Any]:
    transport = _transport(
        lambda request: httpx.Response(
            200,
            content=body,
            headers={"content-type": "text/event-stream", "x-ratelimit-limit-tokens": "8000"},
        )
    )
    chunks: list[dict[str, Any]] = []
    handle = await transport.astream(key=KEY, model=MODEL, messages=HI, params={})
    try:
        async for chunk in handle:
            chunks.append(chunk)
    finally:
        await transport.aclose()
        assert transport._http_client is not None
        await transport._http_client.aclose()
    return chunks, handle


async def test_stream_joins_split_tool_call_arguments() -> None:
    body = _sse(
        _chunk({"role": "assistant", "content": ""}, x_groq={"id": "req_s"}),
        _chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                "function": {"name": "get_weather", "arguments": '{"ci'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]}),
        _chunk({"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                                "function": {"name": "get_time", "arguments": "{}"}}]}),
        _chunk({}, "tool_calls", x_groq={"id": "req_s", "usage": {"prompt_tokens": 9,
               "completion_tokens": 5, "total_tokens": 14}}),
        "data: [DONE]",
    )  # fmt: skip
    chunks, handle = await _stream(body)
    assert len(chunks) == 5 == handle.chunks
    result = handle.to_result()
    calls = result.message["tool_calls"]
    assert [c["id"] for c in calls] == ["call_1", "call_2"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert result.usage.total_tokens == 14 and result.finish_reason == "tool_calls"
    assert result.rate_limits is not None and result.rate_limits.limit_tokens == 8000
    assert result.raw["x_groq"] == {"id": "req_s"}


async def test_error_data_line_without_event_is_a_stream_error() -> None:
    body = _sse(
        _chunk({"role": "assistant", "content": "Hel"}),
        'data: {"error": {"message": "upstream overloaded", "type": "server_error", '
        '"status_code": 503}}',
    )
    with pytest.raises(StreamError) as info:
        await _stream(body)
    assert (info.value.status_code, info.value.retryable) == (503, True)
    assert "upstream overloaded" in str(info.value)


async def test_handle_is_iterated_once() -> None:
    chunks, handle = await _stream(_sse(_chunk({"content": "x"}, "stop"), "data: [DONE]"))
    assert len(chunks) == 1
    assert handle.done and handle.to_result().content == "x"
    with pytest.raises(RuntimeError):
        handle.__aiter__()


def test_reprs_hide_the_key() -> None:
    transport = GroqTransport(base_url="https://api.groq.test", timeout=3)
    transport._client(KEY)
    assert repr(transport) == "<GroqTransport https://api.groq.test timeout=3s clients=1>"
    assert SECRET not in repr(transport)


def test_openai_style_base_url_is_accepted() -> None:
    # LiteLLM and OpenAI clients take `…/openai/v1`; the SDK appends that path itself.
    assert GroqTransport(base_url="http://127.0.0.1:8000/openai/v1/").base_url == (
        "http://127.0.0.1:8000"
    )


def test_bad_timeout_is_a_configuration_error() -> None:
    from ymera_groq_plugin.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        GroqTransport(timeout=0)
