"""The local Groq-compatible server, driven by the real clients: groq SDK, ChatGroq, LiteLLM.

No mocks: every test talks HTTP to a running `GroqTestServer` (one test uses the ASGI app
in-process). Rate-limit windows are crossed with a `FakeClock` or `time_scale`, never by sleeping.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import groq
import httpx
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_groq import ChatGroq
from pydantic import BaseModel

from ymera_groq_plugin.catalog import load_catalog
from ymera_groq_plugin.testing._wire import go_duration
from ymera_groq_plugin.testing.clock import FakeClock
from ymera_groq_plugin.testing.server import FaultConfig, GroqTestServer

MODEL = "openai/gpt-oss-20b"
KEY_A1 = "gsk_test_org_a_key_0001"
KEY_A2 = "gsk_test_org_a_key_0002"
KEY_B1 = "gsk_test_org_b_key_0003"
KEYS = {KEY_A1: "org_a", KEY_A2: "org_a", KEY_B1: "org_b"}
HELLO: Any = [{"role": "user", "content": "Tell me a joke about opentelemetry"}]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(value: str) -> float:
    """Seconds in a Go duration string such as `2m59.56s`."""
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in _DURATION.findall(value))


def sdk(server: GroqTestServer, key: str = KEY_A1) -> groq.Groq:
    return groq.Groq(api_key=key, base_url=server.base_url, max_retries=0)


def exhaust(client: groq.Groq, messages: Any) -> tuple[int, groq.RateLimitError]:
    """Send requests until one is refused; return how many were served and the 429."""
    for served in range(50):
        try:
            client.chat.completions.create(model=MODEL, messages=messages)
        except groq.RateLimitError as exc:
            return served, exc
    raise AssertionError("no request was refused")


def err(exc: groq.APIError) -> dict[str, Any]:
    """The `error` object of a Groq error body."""
    body = exc.body
    assert isinstance(body, dict)
    inner = body.get("error", body)
    assert isinstance(inner, dict)
    return inner


@pytest.fixture(scope="module")
def shared_server() -> Iterator[GroqTestServer]:
    with GroqTestServer(KEYS) as server:
        yield server


@pytest.fixture
def server(shared_server: GroqTestServer) -> GroqTestServer:
    """The module's server, with counters and buckets reset and no faults."""
    shared_server.configure_faults(FaultConfig())
    shared_server.reset()
    return shared_server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000.0)


# -- bodies and headers ----------------------------------------------------------------------


def test_completion_body_and_headers_match_groq(server: GroqTestServer) -> None:
    with sdk(server) as client:
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
    body = json.loads(raw.http_response.text)
    assert list(body) == [
        "id",
        "object",
        "created",
        "model",
        "choices",
        "usage",
        "usage_breakdown",
        "system_fingerprint",
        "x_groq",
        "service_tier",
    ]
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["service_tier"] == "on_demand"
    assert body["usage_breakdown"] is None
    assert body["system_fingerprint"].startswith("fp_")
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert "opentelemetry" in choice["message"]["content"]
    assert choice["message"]["reasoning"]  # gpt-oss models return their reasoning
    usage = body["usage"]
    for field in ("queue_time", "prompt_time", "completion_time", "total_time"):
        assert isinstance(usage[field], float)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] == server.count_prompt_tokens(HELLO)
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    assert usage["completion_tokens_details"]["reasoning_tokens"] > 0

    headers = raw.headers
    assert re.fullmatch(r"req_01[0-9a-z]{24}", headers["x-request-id"])
    assert body["x_groq"]["id"] == headers["x-request-id"]
    assert isinstance(body["x_groq"]["seed"], int)
    assert headers["x-groq-region"] == "local"
    assert headers["content-type"] == "application/json"
    assert headers["x-ratelimit-limit-requests"] == "1000"  # RPD
    assert headers["x-ratelimit-limit-tokens"] == "8000"  # TPM
    assert headers["x-ratelimit-remaining-requests"] == "999"
    assert int(headers["x-ratelimit-remaining-tokens"]) == 8000 - usage["prompt_tokens"]
    assert "retry-after" not in headers

    parsed = raw.parse()
    assert parsed.usage is not None and parsed.usage.queue_time is not None
    assert parsed.x_groq is not None and parsed.x_groq.id == headers["x-request-id"]


def test_reset_headers_follow_linear_refill(clock: FakeClock) -> None:
    with GroqTestServer(KEYS, clock=clock) as server, sdk(server) as client:
        prompt = server.count_prompt_tokens(HELLO)
        first = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
        h = first.headers
        assert h["x-ratelimit-reset-requests"] == "1m26.4s"  # 1 × 86400 / 1000
        assert h["x-ratelimit-reset-tokens"] == go_duration(prompt * 60 / 8000)
        completion = first.parse().usage.completion_tokens  # type: ignore[union-attr]

        second = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
        h = second.headers
        # The first request's completion tokens were charged after admission.
        remaining_tokens = int(h["x-ratelimit-remaining-tokens"])
        assert remaining_tokens == 8000 - 2 * prompt - completion
        for kind, window in (("requests", 86_400), ("tokens", 60)):
            limit = int(h[f"x-ratelimit-limit-{kind}"])
            remaining = int(h[f"x-ratelimit-remaining-{kind}"])
            reset = parse_duration(h[f"x-ratelimit-reset-{kind}"])
            assert reset == pytest.approx((limit - remaining) * window / limit, abs=0.001)

        clock.advance(30)  # half a minute refills half the TPM bucket
        third = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
        assert int(third.headers["x-ratelimit-remaining-tokens"]) == 8000 - prompt
        assert third.headers["x-ratelimit-reset-requests"] == "3m49.2s"  # 3 × 86.4 s − 30 s


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.13, "130ms"),
        (7.66, "7.66s"),
        (86.4, "1m26.4s"),
        (179.56, "2m59.56s"),
        (3723, "1h2m3s"),
        (60, "1m0s"),
        (0.0001, "1ms"),
    ],
)
def test_go_duration_format(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


async def test_async_sdk_streaming_has_usage_in_last_chunk(server: GroqTestServer) -> None:
    async with groq.AsyncGroq(api_key=KEY_A1, base_url=server.base_url, max_retries=0) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=HELLO, stream=True, seed=7
        )
        assert raw.headers["content-type"] == "text/event-stream"
        assert raw.headers["x-ratelimit-remaining-requests"] == "999"
        stream = await raw.parse()
        chunks = [c async for c in stream]
        whole = await client.chat.completions.create(model=MODEL, messages=HELLO, seed=7)
    first, last = chunks[0], chunks[-1]
    assert first.x_groq is not None and first.x_groq.id == raw.headers["x-request-id"]
    assert first.choices[0].delta.role == "assistant"
    assert last.choices[0].finish_reason == "stop"
    assert last.x_groq is not None and last.x_groq.usage is not None
    assert last.usage is not None
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole.choices[0].message.content  # same seed, same answer
    assert last.x_groq.usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]


def test_content_is_deterministic_unless_sampled(server: GroqTestServer) -> None:
    with sdk(server) as client:

        def say(**kw: Any) -> Any:
            r = client.chat.completions.create(model=MODEL, messages=HELLO, **kw)
            return r.choices[0].message.content

        assert say(seed=1) == say(seed=1)
        assert say(temperature=0) == say(temperature=0)
        assert say(temperature=1.0) != say(temperature=1.0)


def test_max_tokens_cuts_with_finish_reason_length(server: GroqTestServer) -> None:
    with sdk(server) as client:
        r = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5)
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 5


# -- LangChain ---------------------------------------------------------------------------------


ChatGroqFactory = Callable[..., ChatGroq]


@pytest.fixture
def chatgroq(server: GroqTestServer) -> Iterator[ChatGroqFactory]:
    """Build `ChatGroq`s on the server whose `httpx` clients record response headers."""
    clients: list[httpx.Client] = []

    def make(seen: list[httpx.Headers] | None = None, **kw: Any) -> ChatGroq:
        def hook(response: httpx.Response) -> None:
            if seen is not None:
                seen.append(response.headers)

        http = httpx.Client(event_hooks={"response": [hook]})
        clients.append(http)
        return ChatGroq(
            model=MODEL,
            base_url=server.base_url,
            api_key=KEY_A1,
            max_retries=0,
            http_client=http,
            **kw,
        )

    yield make
    for http in clients:
        http.close()


def test_chatgroq_reads_rate_limit_headers_through_event_hook(chatgroq: ChatGroqFactory) -> None:
    seen: list[httpx.Headers] = []
    llm = chatgroq(seen)
    msg = llm.invoke("Tell me a joke about opentelemetry")
    assert isinstance(msg, AIMessage) and "opentelemetry" in str(msg.content)
    assert msg.response_metadata["service_tier"] == "on_demand"
    assert msg.response_metadata["token_usage"]["queue_time"] > 0
    assert msg.usage_metadata is not None and msg.usage_metadata["input_tokens"] > 0
    assert msg.additional_kwargs.get("reasoning_content")
    (headers,) = seen
    assert headers["x-ratelimit-remaining-requests"] == "999"
    assert headers["x-ratelimit-reset-requests"] == "1m26.4s"


def test_chatgroq_stream_reports_usage_in_last_chunk(chatgroq: ChatGroqFactory) -> None:
    seen: list[httpx.Headers] = []
    llm = chatgroq(seen)
    chunks = list(llm.stream("Tell me a joke about opentelemetry"))
    assert any(c.content for c in chunks)
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert isinstance(total, AIMessageChunk)
    assert total.usage_metadata is not None and total.usage_metadata["output_tokens"] > 0
    assert total.response_metadata["finish_reason"] == "stop"
    assert seen[0]["x-ratelimit-limit-tokens"] == "8000"


@tool
def get_weather(city: str, unit: str = "celsius") -> str:
    """Current weather in a city."""
    return f"Sunny, 21 degrees {unit} in {city}"


def test_chatgroq_tool_call_round_trip(chatgroq: ChatGroqFactory) -> None:
    llm = chatgroq().bind_tools([get_weather])
    question = HumanMessage("What is the weather in Paris?")
    ai = llm.invoke([question])
    assert isinstance(ai, AIMessage)
    (call,) = ai.tool_calls
    assert call["name"] == "get_weather"
    assert call["args"] == {"city": "example"}  # required properties only
    assert call["id"] is not None and call["id"].startswith("fc_")
    assert ai.response_metadata["finish_reason"] == "tool_calls"

    result = ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])
    final = llm.invoke([question, ai, result])
    assert not final.tool_calls
    assert "Sunny" in str(final.content)

    # A question that names no tool gets a plain answer under tool_choice="auto".
    plain = llm.invoke("Say hello")
    assert not plain.tool_calls


def test_chatgroq_streams_tool_calls_and_forces_named_tool(chatgroq: ChatGroqFactory) -> None:
    llm = chatgroq().bind_tools([get_weather], tool_choice="get_weather")
    chunks = list(llm.stream("Say hello"))
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c  # type: ignore[assignment]
    assert isinstance(total, AIMessageChunk)
    assert [tc["name"] for tc in total.tool_calls] == ["get_weather"]
    assert total.tool_calls[0]["args"] == {"city": "example"}
    assert total.response_metadata["finish_reason"] == "tool_calls"


class Person(BaseModel):
    name: str
    age: int
    tags: list[str]


def test_structured_output_and_json_mode(server: GroqTestServer, chatgroq: ChatGroqFactory) -> None:
    structured = chatgroq().with_structured_output(Person)
    person = structured.invoke("Describe a person")
    assert isinstance(person, Person) and person.age == 1

    with sdk(server) as client:
        r = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Answer in JSON"}],
            response_format={"type": "json_object"},
        )
        assert set(json.loads(r.choices[0].message.content or "")) == {"answer", "ref"}
        r = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "A person, please"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": Person.model_json_schema()},
            },
        )
    assert Person.model_validate_json(r.choices[0].message.content or "") == Person(
        name="example", age=1, tags=[]
    )


# -- errors ------------------------------------------------------------------------------------


def test_unknown_key_is_401_and_never_echoed(server: GroqTestServer) -> None:
    secret = "gsk_not_a_real_key_9999"
    with sdk(server, secret) as client, pytest.raises(groq.AuthenticationError) as info:
        client.chat.completions.create(model=MODEL, messages=HELLO)
    assert err(info.value) == {
        "message": "Invalid API Key",
        "type": "invalid_request_error",
        "code": "invalid_api_key",
    }
    assert secret not in info.value.response.text
    assert KEY_A1 not in repr(server) and "gsk_…0001" in repr(server)
    stats = server.stats()
    assert stats.by_status == {401: 1}
    assert secret not in json.dumps(stats.as_dict())


def test_unknown_model_is_404_verbatim(server: GroqTestServer) -> None:
    with sdk(server) as client, pytest.raises(groq.NotFoundError) as info:
        client.chat.completions.create(model="llama-3.3-70b-versatlie", messages=HELLO)
    assert err(info.value) == {
        "message": "The model `llama-3.3-70b-versatlie` does not exist or you do not have "
        "access to it.",
        "type": "invalid_request_error",
        "code": "model_not_found",
    }


def test_shut_down_model_is_400_decommissioned_unless_catalog_revives_it(
    server: GroqTestServer,
) -> None:
    old = "llama-3.1-8b-instant"
    with sdk(server) as client, pytest.raises(groq.BadRequestError) as info:
        client.chat.completions.create(model=old, messages=HELLO)
    body = err(info.value)
    assert body["code"] == "model_decommissioned"
    assert body["message"].startswith(
        f"The model `{old}` has been decommissioned and is no longer supported."
    )

    revived = load_catalog(
        overrides=[
            {
                "id": old,
                "lifecycle": {"status": "production", "shutdown_on": None, "successor": None},
            }
        ]
    )
    with GroqTestServer(KEYS, catalog=revived) as other, sdk(other) as client:
        raw = client.chat.completions.with_raw_response.create(model=old, messages=HELLO)
        assert raw.headers["x-ratelimit-limit-requests"] == "14400"
        assert raw.headers["x-ratelimit-limit-tokens"] == "6000"


def test_request_larger_than_tpm_is_413(clock: FakeClock) -> None:
    limits = {MODEL: {"tpm": 500}}
    long_prompt: Any = [{"role": "user", "content": "word " * 1000}]
    with GroqTestServer(KEYS, limits=limits, clock=clock) as server, sdk(server) as client:
        requested = server.count_prompt_tokens(long_prompt)
        with pytest.raises(groq.APIStatusError) as info:
            client.chat.completions.create(model=MODEL, messages=long_prompt)
        assert info.value.status_code == 413
        assert err(info.value) == {
            "message": f"Request too large for model `{MODEL}` in organization `org_a` service "
            f"tier `on_demand` on tokens per minute (TPM): Limit 500, Requested {requested}, "
            "please reduce your message size and try again. Visit "
            "https://console.groq.com/docs/rate-limits for more information.",
            "type": "tokens",
            "code": "rate_limit_exceeded",
        }
        assert info.value.response.headers["x-ratelimit-remaining-tokens"] == "500"
        assert server.stats().rate_limited == {"413": 1}


def test_context_length_and_validation_errors(server: GroqTestServer) -> None:
    small = load_catalog(overrides=[{"id": MODEL, "context_window": 1000}])
    with GroqTestServer(KEYS, catalog=small) as other, sdk(other) as client:
        with pytest.raises(groq.BadRequestError) as info:
            client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2000)
        assert err(info.value) == {
            "message": "Please reduce the length of the messages or completion.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    with sdk(server) as client:
        for kwargs, fragment in [
            ({"messages": []}, "'messages' : minimum number of items is 1"),
            ({"messages": HELLO, "n": 2}, "'n' : number must be at most 1"),
            ({"messages": HELLO, "max_tokens": 70_000}, "must be less than or equal to `65536`"),
            ({"messages": HELLO, "temperature": 3}, "'temperature' : number must be at most 2"),
        ]:
            with pytest.raises(groq.BadRequestError) as bad:
                client.chat.completions.create(model=MODEL, **kwargs)
            assert fragment in bad.value.message
    assert server.stats().by_org_model == {}  # nothing was admitted


# -- rate limiting -----------------------------------------------------------------------------

_RATE_LIMIT = re.compile(
    r"Rate limit reached for model `(?P<model>[^`]+)` in organization `(?P<org>[^`]+)` service "
    r"tier `on_demand` on (?P<phrase>[a-z ]+) \((?P<code>[A-Z]{3})\): Limit (?P<limit>\d+), "
    r"Used (?P<used>\d+), Requested (?P<requested>\d+)\. Please try again in (?P<wait>\S+)\. "
    r"Need more (?P<unit>tokens|requests)\? Upgrade to Dev Tier today at "
    r"https://console\.groq\.com/settings/billing"
)


def test_rpm_429_is_per_organisation_with_retry_after(clock: FakeClock) -> None:
    limits = {MODEL: {"rpm": 2}}
    with GroqTestServer(KEYS, limits=limits, clock=clock) as server:
        with sdk(server, KEY_A1) as a1, sdk(server, KEY_A2) as a2, sdk(server, KEY_B1) as b1:
            a1.chat.completions.create(model=MODEL, messages=HELLO)
            a2.chat.completions.create(model=MODEL, messages=HELLO)  # same organisation
            before = server.available("org_a", MODEL)
            with pytest.raises(groq.RateLimitError) as info:
                a1.chat.completions.create(model=MODEL, messages=HELLO)
            assert server.available("org_a", MODEL) == before  # a refusal consumes nothing
            b1.chat.completions.create(model=MODEL, messages=HELLO)  # other organisation

            body = err(info.value)
            assert body["type"] == "requests" and body["code"] == "rate_limit_exceeded"
            match = _RATE_LIMIT.fullmatch(body["message"])
            assert match is not None, body["message"]
            assert match["org"] == "org_a" and match["model"] == MODEL
            assert (match["phrase"], match["code"], match["unit"]) == (
                "requests per minute",
                "RPM",
                "requests",
            )
            assert (match["limit"], match["used"], match["requested"]) == ("2", "2", "1")
            assert match["wait"] == "30s"
            headers = info.value.response.headers
            assert headers["retry-after"] == "30"
            assert headers["x-ratelimit-remaining-requests"] == "998"

            clock.advance(int(headers["retry-after"]))
            a2.chat.completions.create(model=MODEL, messages=HELLO)
        stats = server.stats()
    assert stats.rate_limited == {"RPM": 1}
    assert stats.by_status == {200: 4, 429: 1}
    assert stats.by_org_model[("org_a", MODEL)].requests == 3
    assert stats.by_org_model[("org_a", MODEL)].rate_limited == 1
    assert stats.by_key["gsk_…0001"] == {200: 1, 429: 1}


def test_tpm_bucket_refills_on_the_fake_clock(clock: FakeClock) -> None:
    limits = {MODEL: {"tpm": 300, "rpm": None}}
    prompt: Any = [{"role": "user", "content": "x" * 400}]
    with GroqTestServer(KEYS, limits=limits, clock=clock) as server, sdk(server) as client:
        requested = server.count_prompt_tokens(prompt)
        served, error = exhaust(client, prompt)
        assert served >= 1
        match = _RATE_LIMIT.fullmatch(err(error)["message"])
        assert match is not None
        assert (match["code"], match["unit"], match["limit"]) == ("TPM", "tokens", "300")
        assert int(match["requested"]) == requested
        used = int(match["used"])
        assert used + requested > 300
        wait = parse_duration(match["wait"])
        assert wait == pytest.approx((used + requested - 300) * 60 / 300, abs=0.2)
        assert error.response.headers["retry-after"] == str(math.ceil(wait))

        clock.advance(wait / 2)
        with pytest.raises(groq.RateLimitError):
            client.chat.completions.create(model=MODEL, messages=prompt)
        clock.advance(wait / 2 + 0.01)
        client.chat.completions.create(model=MODEL, messages=prompt)


def test_tpd_limit_names_tokens_per_day(clock: FakeClock) -> None:
    limits = {MODEL: {"tpd": 100, "tpm": None, "rpm": None}}
    with GroqTestServer(KEYS, limits=limits, clock=clock) as server, sdk(server) as client:
        _, error = exhaust(client, HELLO)
    match = _RATE_LIMIT.fullmatch(err(error)["message"])
    assert match is not None and match["phrase"] == "tokens per day" and match["code"] == "TPD"
    assert parse_duration(match["wait"]) > 60  # a day window refills slowly


async def test_concurrent_requests_admit_exactly_the_limit(clock: FakeClock) -> None:
    limits = {MODEL: {"rpm": 10}}
    async with (
        GroqTestServer(KEYS, limits=limits, clock=clock) as server,
        groq.AsyncGroq(api_key=KEY_A1, base_url=server.base_url, max_retries=0) as client,
    ):

        async def one() -> int:
            try:
                await client.chat.completions.create(model=MODEL, messages=HELLO)
            except groq.RateLimitError:
                return 429
            return 200

        results = await asyncio.gather(*(one() for _ in range(30)))
    assert results.count(200) == 10 and results.count(429) == 20


def test_time_scale_reports_wall_clock_durations(clock: FakeClock) -> None:
    limits = {MODEL: {"rpm": 1}}
    scaled = GroqTestServer(KEYS, limits=limits, clock=clock, time_scale=60)
    with scaled as server, sdk(server) as client:
        first = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
        # A day window lasts 24 minutes: one request of 1000 refills in 1.44 s.
        assert first.headers["x-ratelimit-reset-requests"] == "1.44s"
        with pytest.raises(groq.RateLimitError) as info:
            client.chat.completions.create(model=MODEL, messages=HELLO)
        assert "Please try again in 1s." in info.value.message
        assert info.value.response.headers["retry-after"] == "1"
        clock.advance(1.0)  # one clock second = one server minute
        client.chat.completions.create(model=MODEL, messages=HELLO)


def test_time_scale_on_the_real_clock() -> None:
    limits = {MODEL: {"rpm": 1}}
    with GroqTestServer(KEYS, limits=limits, time_scale=1200) as server, sdk(server) as client:
        client.chat.completions.create(model=MODEL, messages=HELLO)
        with pytest.raises(groq.RateLimitError) as info:
            client.chat.completions.create(model=MODEL, messages=HELLO)
        found = re.search(r"try again in (\S+)\.", info.value.message)
        assert found is not None
        wait = parse_duration(found[1])
        assert 0 < wait <= 0.05  # a minute at 1200x is 50 ms of wall-clock time
        time.sleep(wait + 0.01)
        client.chat.completions.create(model=MODEL, messages=HELLO)


# -- faults ------------------------------------------------------------------------------------


def test_mid_stream_error_raises_api_error(server: GroqTestServer) -> None:
    server.configure_faults(stream_error_rate=1.0, stream_error_after=3)
    with sdk(server) as client:
        stream = client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
        received: list[Any] = []
        with pytest.raises(groq.APIError) as info:
            received.extend(stream)
    assert not isinstance(info.value, groq.APIStatusError)
    assert len(received) == 3
    assert err(info.value)["status_code"] == 400
    assert server.stats().faults == {"stream_error": 1}


def test_injected_5xx_are_seeded_and_not_charged(server: GroqTestServer) -> None:
    def run() -> list[int]:
        server.configure_faults(error_rate=0.5, seed=1234)
        statuses = []
        with sdk(server) as client:
            for _ in range(20):
                try:
                    client.chat.completions.create(model=MODEL, messages=HELLO)
                    statuses.append(200)
                except groq.InternalServerError as exc:
                    statuses.append(exc.status_code)
                    limits_seen.append(exc.response.headers["x-ratelimit-limit-requests"])
        return statuses

    limits_seen: list[str] = []

    first = run()
    assert set(first) - {200} and set(first) <= {200, 500, 502, 503}
    assert set(limits_seen) == {"1000"}  # error answers carry the rate-limit headers too
    served = first.count(200)
    assert server.available("org_a", MODEL)["rpd"] == pytest.approx(1000 - served, abs=0.1)
    server.reset()
    assert run() == first


def test_flex_capacity_498(server: GroqTestServer) -> None:
    server.configure_faults(capacity_rate=1.0)
    with sdk(server) as client, pytest.raises(groq.APIStatusError) as info:
        client.chat.completions.create(model=MODEL, messages=HELLO)
    assert info.value.status_code == 498
    assert err(info.value)["code"] == "capacity_exceeded"
    assert "flex tier capacity exceeded" in info.value.message


def test_429_storm_ends_on_the_clock(clock: FakeClock) -> None:
    with GroqTestServer(KEYS, clock=clock) as server, sdk(server) as client:
        server.start_429_storm(5.0)
        with pytest.raises(groq.RateLimitError) as info:
            client.chat.completions.create(model=MODEL, messages=HELLO)
        assert info.value.response.headers["retry-after"] == "5"
        assert _RATE_LIMIT.fullmatch(err(info.value)["message"])
        clock.advance(5.0)
        client.chat.completions.create(model=MODEL, messages=HELLO)
        assert server.stats().rate_limited == {"storm": 1}


def test_latency_is_added(server: GroqTestServer) -> None:
    server.configure_faults(latency=0.05)
    with sdk(server) as client:
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
    assert raw.elapsed.total_seconds() >= 0.05


# -- models, stats, plumbing ------------------------------------------------------------------


def test_models_endpoints(server: GroqTestServer) -> None:
    with sdk(server) as client:
        models = client.models.list()
        ids = [m.id for m in models.data]
        assert MODEL in ids and "llama-3.1-8b-instant" not in ids
        one = client.models.retrieve(MODEL)
        assert one.context_window == 131072  # type: ignore[attr-defined]
        assert one.max_completion_tokens == 65536  # type: ignore[attr-defined]
        assert one.active is True  # type: ignore[attr-defined]
        with pytest.raises(groq.NotFoundError):
            client.models.retrieve("llama-3.1-8b-instant")
    raw = httpx.get(
        server.openai_base_url + "/models", headers={"authorization": f"Bearer {KEY_A1}"}
    )
    entry = raw.json()["data"][0]
    assert list(entry) == [
        "id",
        "object",
        "created",
        "owned_by",
        "active",
        "context_window",
        "public_apps",
        "max_completion_tokens",
    ]


def test_stats_endpoint_and_reset(server: GroqTestServer) -> None:
    with sdk(server, KEY_B1) as client:
        client.chat.completions.create(model=MODEL, messages=HELLO)
    stats = server.stats()
    via_http = httpx.get(server.base_url + "/_ymera/stats").json()
    assert via_http == stats.as_dict()
    pair = via_http["by_org_model"]["org_b"][MODEL]
    assert pair["requests"] == 1 and pair["prompt_tokens"] == server.count_prompt_tokens(HELLO)
    assert pair["completion_tokens"] > 0
    assert list(via_http["by_key"]) == ["gsk_…0003"]
    assert KEY_B1 not in json.dumps(via_http)
    server.reset()
    assert server.stats().requests == 0
    assert server.available("org_b", MODEL)["rpd"] == 1000


def test_unknown_path_is_groq_404(server: GroqTestServer) -> None:
    r = httpx.post(server.openai_base_url + "/completions", json={})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "unknown_url"


async def test_app_runs_in_process_without_a_port() -> None:
    server = GroqTestServer(KEYS)
    transport = httpx.ASGITransport(app=server.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://groq.local") as http:
        r = await http.post(
            "/openai/v1/chat/completions",
            json={"model": MODEL, "messages": HELLO},
            headers={"authorization": f"Bearer {KEY_A2}"},
        )
    assert r.status_code == 200
    assert r.headers["x-ratelimit-remaining-requests"] == "999"
    assert server.stats().by_key == {"gsk_…0002": {200: 1}}
    with pytest.raises(RuntimeError):
        _ = server.base_url


def test_litellm_reads_rate_limit_headers(
    server: GroqTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before the import: LiteLLM would otherwise fetch its cost map from the internet.
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import litellm

    response = litellm.completion(
        model=f"groq/{MODEL}",
        messages=HELLO,
        api_base=server.openai_base_url,
        api_key=KEY_A1,
        max_retries=0,
    )
    assert "opentelemetry" in response.choices[0].message.content
    headers = response._hidden_params["additional_headers"]
    assert headers["x-ratelimit-remaining-requests"] == "999"
    assert headers["x-ratelimit-limit-tokens"] == "8000"
    assert headers["llm_provider-x-ratelimit-reset-requests"] == "1m26.4s"
    assert headers["llm_provider-x-groq-region"] == "local"
