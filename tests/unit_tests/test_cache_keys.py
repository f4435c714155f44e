from __future__ import annotations

import dataclasses
import json
import random
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, SecretStr

from ymera_groq_plugin.cache.keys import (
    TRANSPORT_PARAMS,
    UncacheableRequestError,
    canonical_json,
    canonical_request,
    langchain_key,
    request_key,
)
from ymera_groq_plugin.types import OUTPUT_PARAMS, ChatRequest

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
            "required": ["city"],
        },
    },
}


def req(**kwargs: Any) -> ChatRequest:
    base: dict[str, Any] = {
        "messages": ({"role": "user", "content": "Validate this JSON: {}"},),
        "model": "openai/gpt-oss-20b",
        "params": {"temperature": 0, "max_tokens": 100},
    }
    base.update(kwargs)
    return ChatRequest(**base)


def key(request: ChatRequest, namespace: str = "default") -> str:
    return request_key(request, namespace=namespace)


def reorder(value: Any, rng: random.Random) -> Any:
    """The same value with every dict's insertion order shuffled (lists keep their order)."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: reorder(v, rng) for k, v in items}
    if isinstance(value, (list, tuple)):
        return type(value)(reorder(v, rng) for v in value)
    return value


def test_key_is_a_sha256_hex_and_stable() -> None:
    k = key(req())
    assert re.fullmatch(r"[0-9a-f]{64}", k), k
    assert key(req()) == k
    # A golden value: if this changes, KEY_VERSION must be bumped (old entries would otherwise
    # be read under a new meaning).
    assert k == "754630e9393f6cf45217f6633dcec2293242eba8ee9efae309b08e35ab401c43"
    doc = canonical_request(req(), namespace="default")
    assert doc == {
        "v": 1,
        "ns": "default",
        "model": "openai/gpt-oss-20b",
        "messages": [{"role": "user", "content": "Validate this JSON: {}"}],
        "params": {"temperature": 0, "max_completion_tokens": 100},
    }


def test_dict_order_does_not_matter() -> None:
    rng = random.Random(7)
    params = {
        "temperature": 0.2,
        "seed": 3,
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "response_format": {"type": "json_object"},
    }
    messages = (
        {"role": "system", "content": "Be terse."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    )
    a = req(messages=messages, params=params)
    for _ in range(5):
        b = req(messages=reorder(messages, rng), params=reorder(params, rng))
        assert key(a) == key(b)


@pytest.mark.parametrize("name", sorted(OUTPUT_PARAMS))
def test_every_output_parameter_splits_the_key(name: str) -> None:
    values: dict[str, tuple[Any, Any]] = {
        "stop": (["\n"], ["END"]),
        "tools": ([WEATHER_TOOL], []),
        "tool_choice": ("auto", "required"),
        "response_format": ({"type": "json_object"}, {"type": "text"}),
        "logit_bias": ({"50256": -100}, {"50256": 100}),
        "reasoning_effort": ("low", "high"),
        "reasoning_format": ("hidden", "parsed"),
        "service_tier": ("on_demand", "flex"),
        "user": ("alice", "bob"),
        "parallel_tool_calls": (True, False),
        "include_reasoning": (True, False),
        "logprobs": (True, False),
    }
    first, second = values.get(name, (1, 2))
    without = req(params={"temperature": 0})
    one = req(params={"temperature": 0, name: first})
    two = req(params={"temperature": 0, name: second})
    if name == "temperature":
        one, two = req(params={name: 0.3}), req(params={name: 0.7})
    assert key(one) != key(two)
    if name not in ("temperature", "tools", "stop"):
        assert key(without) != key(one)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"temperature": 0}, {"temperature": 0.5}),
        ({"temperature": 0, "tools": [WEATHER_TOOL]}, {"temperature": 0}),
        ({"temperature": 0, "tool_choice": "none"}, {"temperature": 0, "tool_choice": "auto"}),
        ({"temperature": 0, "max_tokens": 100}, {"temperature": 0, "max_tokens": 101}),
        ({"temperature": 0, "seed": 1}, {"temperature": 0, "seed": 2}),
        ({"temperature": 0, "top_p": 0.5}, {"temperature": 0, "top_p": 0.9}),
        ({"temperature": 0, "documents": ["a"]}, {"temperature": 0, "documents": ["b"]}),
    ],
    ids=["temperature", "tools", "tool_choice", "max_tokens", "seed", "top_p", "unknown-param"],
)
def test_output_changing_differences_hash_differently(
    a: dict[str, Any], b: dict[str, Any]
) -> None:
    assert key(req(params=a)) != key(req(params=b))


def test_model_namespace_and_messages_split_the_key() -> None:
    base = req()
    assert key(base) != key(req(model="qwen/qwen3.8-27b"))
    assert key(base) != key(req(model=None))
    assert key(base) != key(base, namespace="tenant-b")
    assert key(base) != key(req(namespace="tenant-b"))
    assert key(req(namespace="tenant-b")) == key(base, namespace="tenant-b")
    for changed in (
        {"role": "system", "content": "Validate this JSON: {}"},
        {"role": "user", "content": "Validate this JSON: {} "},
        {"role": "user", "content": "Validate this JSON: {}", "name": "alice"},
    ):
        assert key(base) != key(req(messages=(changed,)))


def test_tool_call_fields_split_the_key() -> None:
    def convo(call_id: str, arguments: str, tool_call_id: str) -> tuple[dict[str, Any], ...]:
        return (
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call_id, "type": "function",
                 "function": {"name": "weather", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": tool_call_id, "content": "sunny"},
        )

    base = key(req(messages=convo("c1", '{"city":"Oslo"}', "c1")))
    assert base != key(req(messages=convo("c1", '{"city":"Rome"}', "c1")))
    assert base != key(req(messages=convo("c2", '{"city":"Oslo"}', "c1")))
    assert base != key(req(messages=convo("c1", '{"city":"Oslo"}', "c2")))


def test_equivalent_spellings_hash_the_same() -> None:
    assert key(req(params={"temperature": 0})) == key(req(params={"temperature": 0.0}))
    assert key(req(params={"temperature": 0})) == key(req(params={"temperature": 1e-8}))
    assert key(req(params={"temperature": 1})) == key(req(params={"temperature": 1.0}))
    assert key(req(params={"stop": "END"})) == key(req(params={"stop": ["END"]}))
    assert key(req(params={"max_tokens": 50})) == key(req(params={"max_completion_tokens": 50}))
    assert key(req(params={"temperature": 0, "top_p": None})) == key(
        req(params={"temperature": 0})
    )
    plain = ({"role": "user", "content": "hi"},)
    assert key(req(messages=plain)) == key(
        req(messages=({"role": "user", "content": "hi", "name": None, "tool_calls": []},))
    )


def test_transport_params_and_request_plumbing_do_not_split_the_key() -> None:
    base = key(req())
    assert base == key(req(params={"temperature": 0, "max_tokens": 100, "stream": True,
                                   "timeout": 30, "extra_headers": {"x": "1"}}))
    assert base == key(req(stream=True))
    assert base == key(req(request_id="another"))
    assert base == key(req(metadata={"run": "42", "ls_provider": "groq"}))
    assert base == key(req(cache=True))
    assert {"stream", "timeout", "api_key"} <= TRANSPORT_PARAMS


def test_routing_hints_split_only_unpinned_requests() -> None:
    auto = req(model=None)
    assert key(auto) != key(dataclasses.replace(auto, agent_name="validator"))
    assert key(auto) != key(dataclasses.replace(auto, task_type="validation"))
    assert key(auto) != key(dataclasses.replace(auto, metadata={"complexity": "simple"}))
    pinned = req()
    assert key(pinned) == key(dataclasses.replace(pinned, agent_name="validator"))
    assert key(pinned) == key(dataclasses.replace(pinned, task_type="validation"))


def test_the_api_key_never_enters_a_key() -> None:
    secret = "gsk_live_SECRET_0123456789abcdef"
    with_key = req(params={"temperature": 0, "api_key": secret})
    assert key(with_key) == key(req(params={"temperature": 0}))
    assert secret not in canonical_json(canonical_request(with_key, namespace="default"))
    with pytest.raises(UncacheableRequestError) as info:
        key(req(params={"temperature": 0, "extra_body": {"token": SecretStr(secret)}}))
    assert secret not in str(info.value)


def test_opaque_values_make_a_request_uncacheable() -> None:
    with pytest.raises(UncacheableRequestError):
        key(req(params={"temperature": 0, "tools": [object()]}))


def test_pydantic_models_are_keyed_by_their_data() -> None:
    class Answer(BaseModel):
        verdict: str
        score: float

    by_class = key(req(params={"temperature": 0, "response_format": Answer}))
    assert by_class == key(req(params={"temperature": 0, "response_format": Answer}))
    assert by_class != key(req(params={"temperature": 0}))
    instance = Answer(verdict="ok", score=1.0)
    assert key(req(params={"temperature": 0, "x": instance})) == key(
        req(params={"temperature": 0, "x": {"score": 1, "verdict": "ok"}})
    )


def test_langchain_keys_are_namespaced_and_distinct_from_engine_keys() -> None:
    a = langchain_key("prompt", "llm", namespace="default")
    assert a == langchain_key("prompt", "llm", namespace="default")
    assert a != langchain_key("prompt", "llm", namespace="other")
    assert a != langchain_key("prompt2", "llm", namespace="default")
    assert a != langchain_key("prompt", "llm2", namespace="default")
    # No ambiguity from joining: the parts are a JSON array, not concatenated.
    assert langchain_key("a|b", "c", namespace="n") != langchain_key("a", "b|c", namespace="n")


json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.floats(
    allow_nan=False, allow_infinity=False
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                  max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(params=st.dictionaries(st.sampled_from(sorted(OUTPUT_PARAMS)), json_values, max_size=5),
       seed=st.integers(0, 10_000))
def test_property_reordering_never_changes_the_key(params: dict[str, Any], seed: int) -> None:
    shuffled = reorder(params, random.Random(seed))
    assert key(req(params=params)) == key(req(params=shuffled))
    # And the canonical text is plain, sorted JSON: the same for both orders, and what
    # compact key-sorted JSON of its own value gives.
    text = canonical_json(params)
    assert canonical_json(shuffled) == text
    assert text == json.dumps(
        json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


@settings(max_examples=150, deadline=None)
@given(
    a=st.dictionaries(st.sampled_from(["temperature", "top_p", "seed", "max_tokens"]),
                      st.integers(0, 5), min_size=1),
    b=st.dictionaries(st.sampled_from(["temperature", "top_p", "seed", "max_tokens"]),
                      st.integers(0, 5), min_size=1),
)
def test_property_keys_equal_exactly_when_parameters_equal(
    a: dict[str, int], b: dict[str, int]
) -> None:
    def norm(p: dict[str, int]) -> dict[str, int]:
        return {("max_completion_tokens" if k == "max_tokens" else k): v for k, v in p.items()}

    assert (key(req(params=a)) == key(req(params=b))) == (norm(a) == norm(b))
