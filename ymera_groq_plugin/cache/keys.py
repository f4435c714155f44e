"""Canonical cache keys: equal requests hash equal, any output-changing difference does not.

A key is the SHA-256 of a canonical JSON document built from

- the key schema version and the tenant namespace,
- the model choice inputs: the requested model, or `"auto"` plus the hints that steer routing
  (agent name, task type and the routing entries of `metadata`),
- the messages: every field except `None` values (role, content, name, tool calls,
  `tool_call_id`, …),
- every generation parameter except the few known to leave the answer alone (transport,
  streaming and credentials: `TRANSPORT_PARAMS`). Unknown parameters are kept: a parameter the
  key does not know about must split the key, never merge two different answers.

Canonical means: dict order is irrelevant (keys are sorted), integral floats equal their ints
(`1.0` ≡ `1`), `stop="x"` ≡ `stop=["x"]`, `max_tokens` ≡ `max_completion_tokens` (Groq treats
them as one), and a temperature below 1e-6 is 0 (LangChain's `ChatGroq` sends `1e-8` for 0).

The API key is never part of a key: it is not a request field, credential parameter names are
dropped, and a `SecretStr` anywhere in the request makes the request uncacheable rather than
hashed. Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import YmeraError

if TYPE_CHECKING:
    from ..types import ChatRequest

__all__ = [
    "KEY_VERSION",
    "ROUTING_METADATA_KEYS",
    "TRANSPORT_PARAMS",
    "UncacheableRequestError",
    "canonical_json",
    "canonical_request",
    "langchain_key",
    "request_key",
]

KEY_VERSION = 1
"""Bumped whenever the canonical form changes, so old entries simply stop matching."""

TRANSPORT_PARAMS: frozenset[str] = frozenset(
    {
        # how the answer travels, not what it says
        "stream",
        "stream_options",
        "timeout",
        "request_timeout",
        "max_retries",
        "extra_headers",
        "extra_query",
        "default_headers",
        "default_query",
        "http_client",
        "http_async_client",
        "base_url",
        # credentials: never hashed, never stored
        "api_key",
        "groq_api_key",
        "organization",
        # LangChain run plumbing
        "callbacks",
        "run_manager",
        "run_name",
        "run_id",
        "tags",
        "metadata",
    }
)
"""Parameter names left out of the key: they change neither the model's answer nor who may see
it. Everything else in `ChatRequest.params` (including `types.OUTPUT_PARAMS`) is hashed."""

ROUTING_METADATA_KEYS: frozenset[str] = frozenset(
    {"agent_name", "task_type", "complexity", "ymera_model", "ymera_task_type"}
)
"""`metadata` entries that can change which model answers an unpinned (`model=None`) request."""

_GREEDY_TEMPERATURE = 1e-6


class UncacheableRequestError(YmeraError, TypeError):
    """The request holds a value that cannot be keyed safely (a secret, or an opaque object).

    Such a request is served normally but bypasses the cache; `TieredCache.should_cache`
    answers `False` for it.
    """


def _normalise(value: Any) -> Any:
    """Turn a value into plain JSON types, canonically (see the module docstring)."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        return int(value)  # an IntEnum or int subclass hashes as its number
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return int(value)
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                k = str(_normalise(k))
            out[k] = _normalise(v)
        return out
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [_normalise(v) for v in value]
        return sorted(items, key=canonical_json)
    if isinstance(value, enum.Enum):
        return _normalise(value.value)
    name = type(value).__name__
    if name in ("SecretStr", "SecretBytes"):
        raise UncacheableRequestError(
            "A secret value is part of the request; it is never hashed into a cache key."
        )
    if isinstance(value, type):
        # A pydantic class as `response_format` or a tool: keyed by its JSON schema.
        schema = getattr(value, "model_json_schema", None)
        if callable(schema):
            return _normalise(schema())
    else:
        dump = getattr(value, "model_dump", None)
        if callable(dump):  # a pydantic instance: keyed by its data
            return _normalise(dump(mode="json"))
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return _normalise(dataclasses.asdict(value))
    raise UncacheableRequestError(
        f"A {name} value in the request has no canonical JSON form; the request is not cached."
    )


def canonical_json(value: Any) -> str:
    """Compact, key-sorted JSON of a normalised value: the text that is hashed."""
    return json.dumps(
        _normalise(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def _canonical_message(message: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in message.items() if v is not None}
    if not out.get("tool_calls", True):
        del out["tool_calls"]  # [] and absent mean the same to Groq
    return out


def _canonical_params(params: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in params.items() if v is not None and k not in TRANSPORT_PARAMS}
    if "max_tokens" in out:
        out.setdefault("max_completion_tokens", out["max_tokens"])
        del out["max_tokens"]
    stop = out.get("stop")
    if isinstance(stop, str):
        out["stop"] = [stop]
    elif stop is not None and not stop:
        del out["stop"]
    temperature = out.get("temperature")
    if (
        isinstance(temperature, (int, float))
        and not isinstance(temperature, bool)
        and temperature < _GREEDY_TEMPERATURE
    ):
        out["temperature"] = 0
    return out


def canonical_request(request: ChatRequest, *, namespace: str) -> dict[str, Any]:
    """The document a request's key is the hash of (useful to explain why two keys differ).

    Args:
        request: The request.
        namespace: The tenant namespace (`request.namespace` wins when set).

    Raises:
        UncacheableRequestError: A secret or an opaque object is part of the request.
    """
    doc: dict[str, Any] = {
        "v": KEY_VERSION,
        "ns": request.namespace or namespace,
        "model": request.model or "auto",
        "messages": [_canonical_message(m) for m in request.messages],
        "params": _canonical_params(request.params),
    }
    if request.model is None:
        # Only an unpinned request is routed, so only then do the hints choose the model.
        hints = {k: v for k, v in request.metadata.items() if k in ROUTING_METADATA_KEYS}
        if request.agent_name is not None:
            hints["agent_name"] = request.agent_name
        if request.task_type is not None:
            hints["task_type"] = request.task_type
        doc["route"] = {k: v for k, v in hints.items() if v is not None}
    return doc


def request_key(request: ChatRequest, *, namespace: str) -> str:
    """The cache key of an engine request: 64 hex characters.

    Args:
        request: The request.
        namespace: The cache's namespace; `request.namespace` overrides it.

    Raises:
        UncacheableRequestError: The request cannot be keyed safely.
    """
    text = canonical_json(canonical_request(request, namespace=namespace))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def langchain_key(prompt: str, llm_string: str, *, namespace: str) -> str:
    """The lower-tier key of a LangChain `BaseCache` entry (`prompt`, `llm_string`).

    LangChain already serialises the messages and the model's parameters into the two
    strings; they are hashed as given, with the namespace and a marker that keeps them apart
    from engine keys.
    """
    text = json.dumps(
        ["langchain", KEY_VERSION, namespace, prompt, llm_string],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
