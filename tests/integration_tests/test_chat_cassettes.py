"""`ChatYmeraGroq` replaying Groq's recorded wire format (vcrpy cassettes in `cassettes/`).

The whole engine runs: routing, the quota ledger (fed by the recorded `x-ratelimit-*`
headers), the official SDK, LangChain's message conversion. The recordings name models Groq
has since shut down (`llama3-8b-8192`, …), so the engine's catalog is told they are served
(`load_catalog(overrides=…)`) and which model follows which.

The 429 failover combines two cassettes: the synthetic 429 (a verbatim Groq TPM error body;
see `cassettes/README.md`) answers the first call, the recorded completion the second.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from ymera_groq_plugin import ChatYmeraGroq
from ymera_groq_plugin.catalog import load_catalog
from ymera_groq_plugin.config import YmeraSettings
from ymera_groq_plugin.engine import Engine
from ymera_groq_plugin.errors import ModelRetiredError, StreamError, UpstreamError

SECRET = "gsk_replay00000000000000000000000000000000000000000"
JOKE = "Tell me a joke about opentelemetry"
NBA_SYSTEM = (
    "You are a function calling LLM that uses the data extracted from the get_game_score "
    "function to answer questions around NBA game scores. Include the team and their opponent "
    "in your response."
)
NBA_TOOL = {
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
SOMETHING_TOOL = {
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


def _old(model_id: str, context: int, fallbacks: tuple[str, ...] = ()) -> dict[str, Any]:
    """A catalog entry that serves a model Groq shut down, as it was when recorded."""
    return {
        "id": model_id,
        "context_window": context,
        "max_completion_tokens": context,
        "limits": {"rpm": 30, "rpd": 14400, "tpm": 30000, "tpd": 500000},
        "capabilities": {"tool_use": True, "json_mode": True, "reasoning": False},
        "lifecycle": {
            "status": "production",
            "deprecated_on": None,
            "shutdown_on": None,
            "successor": None,
            "note": None,
        },
        "fallbacks": list(fallbacks),
    }


CATALOG = load_catalog(
    overrides=[
        _old("llama3-8b-8192", 8192),
        _old("llama3-70b-8192", 8192),
        _old("llama-3.1-8b-instant", 131072, fallbacks=("llama3-8b-8192",)),
        _old("llama-3.3-70b-versatile", 131072, fallbacks=("llama3-8b-8192",)),
    ]
)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    # Some tests here fail over from an explicit model (the opt-in).
    settings = YmeraSettings(
        api_keys=[SECRET], data_dir=tmp_path, max_wait=0.0, allow_model_fallback=True
    )
    eng = Engine(settings, catalog=CATALOG).start()
    yield eng
    eng.close()


@pytest.mark.vcr("chat-completion-ratelimit-headers.yaml")
def test_invoke(engine: Engine) -> None:
    llm = ChatYmeraGroq(engine=engine, model="llama3-8b-8192", temperature=0.5)
    msg = llm.invoke(JOKE)
    assert isinstance(msg.content, str) and msg.content.startswith(
        "Here's a joke about OpenTelemetry"
    )
    meta = msg.response_metadata
    assert (meta["model_name"], meta["key_label"], meta["finish_reason"]) == (
        "llama3-8b-8192",
        "key1",
        "stop",
    )
    assert meta["rate_limits"]["remaining_requests"] == 14398
    assert msg.usage_metadata is not None
    assert (msg.usage_metadata["input_tokens"], msg.usage_metadata["output_tokens"]) == (18, 43)
    # The recorded headers reached the ledger: Groq's own count of the day's requests.
    usage = engine.portal.run(engine.quota.usage())
    remaining = usage["models"]["llama3-8b-8192"]["remaining"]
    assert [r["requests"] for r in remaining.values()] == [14398]


@pytest.mark.vcr("chat-stream-ratelimit-headers.yaml")
async def test_astream(engine: Engine) -> None:
    llm = ChatYmeraGroq(engine=engine, model="llama3-8b-8192")
    chunks = [c async for c in llm.astream(JOKE)]
    full: Any = None
    for c in chunks:
        full = c if full is None else full + c
    assert isinstance(full, AIMessageChunk)
    assert isinstance(full.content, str) and full.content.startswith("A joke about OpenTelemetry")
    assert len(chunks) > 5
    assert full.usage_metadata is not None and full.usage_metadata["output_tokens"] > 0
    assert full.response_metadata["finish_reason"] == "stop"
    assert full.response_metadata["rate_limits"]["remaining_tokens"] is not None


@pytest.mark.vcr("chat-tool-call-round-trip.yaml")
def test_tool_call_round_trip(engine: Engine) -> None:
    llm = ChatYmeraGroq(
        engine=engine, model="llama3-70b-8192", max_tokens=4096, model_kwargs={"seed": 42}
    ).bind_tools([NBA_TOOL], tool_choice="auto")
    question = [SystemMessage(NBA_SYSTEM), HumanMessage("What was the score of the Warriors game?")]
    msg = llm.invoke(question)
    assert isinstance(msg, AIMessage) and len(msg.tool_calls) == 1
    call = msg.tool_calls[0]
    assert call["name"] == "get_game_score"
    assert call["args"] == {"team_name": "Golden State Warriors"}
    result = ToolMessage(
        '{"game_id": "401585601", "status": "Final", "home_team": "Los Angeles Lakers", '
        '"home_team_score": 121, "away_team": "Golden State Warriors", "away_team_score": 128}',
        tool_call_id=call["id"],
    )
    answer = llm.invoke([*question, msg, result])
    assert isinstance(answer.content, str) and "128" in answer.content


@pytest.mark.vcr("chat-tool-call-round-trip.yaml")
def test_structured_output_from_a_recorded_tool_call(engine: Engine) -> None:
    llm = ChatYmeraGroq(engine=engine, model="llama3-70b-8192", model_kwargs={"seed": 42})
    structured = llm.with_structured_output(NBA_TOOL, method="function_calling")
    out = structured.invoke(
        [SystemMessage(NBA_SYSTEM), HumanMessage("What was the score of the Warriors game?")]
    )
    assert out == {"team_name": "Golden State Warriors"}


@pytest.mark.vcr("synthetic-429-tokens-per-minute.yaml", "chat-completion-ratelimit-headers.yaml")
def test_429_fails_over_to_the_next_model(engine: Engine) -> None:
    llm = ChatYmeraGroq(engine=engine, model="llama-3.1-8b-instant")
    msg = llm.invoke(JOKE)
    meta = msg.response_metadata
    assert meta["model_name"] == "llama3-8b-8192"
    assert meta["route"]["plan"] == ["llama-3.1-8b-instant", "llama3-8b-8192"]
    assert engine.stats.as_dict()["rate_limited_received"] == 1
    # Groq said "try again in 4.77s" (retry-after: 5): the organisation cools for that model.
    usage = engine.portal.run(engine.quota.usage())
    cooling = usage["models"]["llama-3.1-8b-instant"]["cooling_until"]
    assert len(cooling) == 1


@pytest.mark.vcr("synthetic-413-request-too-large.yaml", "chat-completion-ratelimit-headers.yaml")
def test_413_moves_on_and_never_retries_that_model(engine: Engine) -> None:
    llm = ChatYmeraGroq(engine=engine, model="llama-3.3-70b-versatile")
    msg = llm.invoke(JOKE)
    assert msg.response_metadata["model_name"] == "llama3-8b-8192"
    # A second request as large goes straight to the next model (the cassette's second answer).
    again = llm.invoke(JOKE + "!")
    assert again.response_metadata["model_name"] == "llama3-8b-8192"
    assert engine.stats.as_dict()["rate_limited_received"] == 1


@pytest.mark.vcr("chat-stream-event-error-then-tool-call.yaml")
def test_event_error_inside_a_200_stream_is_not_an_answer(engine: Engine) -> None:
    llm = ChatYmeraGroq(engine=engine, model="openai/gpt-oss-120b", temperature=0).bind_tools(
        [SOMETHING_TOOL], tool_choice="auto"
    )
    got: list[Any] = []

    def consume() -> None:
        for chunk in llm.stream('Please call the "get_something_by_name" tool.'):
            got.append(chunk)

    with pytest.raises(StreamError) as info:
        consume()
    assert got  # reasoning tokens had reached the caller: no failover
    assert info.value.code == "tool_use_failed" and info.value.status_code == 400
    assert engine.portal.run(engine.quota.idle())


@pytest.mark.vcr("chat-model-not-found-404.yaml")
def test_unknown_upstream_model_is_a_typed_error(engine: Engine) -> None:
    # The catalog knows the id (here), Groq does not: the 404 on the only organisation ends
    # the plan with a typed error (no successor), Groq's 404 as its cause.
    catalog = load_catalog(overrides=[_old("llama-3.3-70b-versatlie", 131072)])
    other = Engine(engine.settings, catalog=catalog).start()
    try:
        with pytest.raises(ModelRetiredError) as info:
            ChatYmeraGroq(engine=other, model="llama-3.3-70b-versatlie").invoke("Hello")
        cause = info.value.__cause__
        assert isinstance(cause, UpstreamError) and cause.status_code == 404
    finally:
        other.close()
