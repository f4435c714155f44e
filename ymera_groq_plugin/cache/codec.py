"""What a lower tier holds, and the stream shape of a cached answer.

Every L2/L3 value is one JSON envelope (never pickle):

```
{"ymera_cache": 1, "kind": "chat" | "langchain", "key": "<the entry's key>",
 "stored_at": <seconds>, "expires_at": <seconds>, "value": {...}}
```

`kind` and `key` are checked on the way back: a value that does not parse, is not an
envelope, belongs to another key, or has a malformed body is "foreign" and decodes to an
error, which the tiered cache treats as a miss and deletes. `expires_at` is the end of the
entry's life in the deepest tier; a copy promoted into a faster tier never outlives it.

A chat value keeps what describes the answer (message, model, usage, finish reason, key label,
provider, raw response fields) and drops what describes one call (rate limits, the plan,
latency, the request id). A LangChain value is the generations in `langchain_core.load.dumpd`
form, revived with `allowed_objects="messages"` (LangChain's mode for untrusted input).

`replay_stream` turns a `ChatResult` into chunk dicts in Groq's streaming shape, and
`assemble_stream` turns chunks back into a `ChatResult`, or `None` for a stream that never
finished (which is therefore never stored).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..types import ChatResult, Usage

__all__ = [
    "ENVELOPE_VERSION",
    "CorruptEntryError",
    "Envelope",
    "assemble_stream",
    "decode",
    "decode_generations",
    "decode_result",
    "encode",
    "encode_generations",
    "encode_result",
    "generations_from_value",
    "replay_stream",
    "result_from_value",
    "result_value",
    "storable",
]

ENVELOPE_VERSION = 1

_USAGE_FIELDS = tuple(f.name for f in dataclasses.fields(Usage))


class CorruptEntryError(ValueError):
    """A stored value is not a well-formed entry for the key it was found under."""


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded lower-tier value."""

    kind: str
    key: str
    stored_at: float
    expires_at: float
    value: Any


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode(kind: str, key: str, value: Any, *, stored_at: float, expires_at: float) -> str:
    """The envelope text for a value (raises `TypeError`/`ValueError` if not JSON-able)."""
    return _dumps(
        {
            "ymera_cache": ENVELOPE_VERSION,
            "kind": kind,
            "key": key,
            "stored_at": stored_at,
            "expires_at": expires_at,
            "value": value,
        }
    )


def decode(text: str, *, kind: str, key: str) -> Envelope:
    """Parse and check an envelope.

    Raises:
        CorruptEntryError: Not JSON, not an envelope, another kind or another key.
    """
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise CorruptEntryError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("ymera_cache") != ENVELOPE_VERSION:
        raise CorruptEntryError("not a cache envelope of this version")
    if doc.get("kind") != kind or doc.get("key") != key:
        raise CorruptEntryError("an entry of another kind or key")
    stored_at, expires_at = doc.get("stored_at"), doc.get("expires_at")
    if not isinstance(stored_at, (int, float)) or not isinstance(expires_at, (int, float)):
        raise CorruptEntryError("no valid timestamps")
    return Envelope(kind, key, float(stored_at), float(expires_at), doc.get("value"))


# -- chat results ----------------------------------------------------------------------------


def storable(result: ChatResult) -> bool:
    """Whether a result is a complete answer worth keeping.

    A result without a finish reason (a stream that broke), an `error` finish, or a result
    that itself came from the cache is not stored.
    """
    return (
        result.finish_reason is not None
        and result.finish_reason != "error"
        and result.cache_tier is None
        and isinstance(result.message, Mapping)
    )


def result_value(result: ChatResult) -> dict[str, Any]:
    """The JSON body of a chat entry."""
    return {
        "message": dict(result.message),
        "model": result.model,
        "usage": dataclasses.asdict(result.usage),
        "finish_reason": result.finish_reason,
        "key_label": result.key_label,
        "provider": result.provider,
        "raw": dict(result.raw),
    }


def encode_result(result: ChatResult, *, key: str, stored_at: float, expires_at: float) -> str:
    """The envelope text of a chat result."""
    return encode("chat", key, result_value(result), stored_at=stored_at, expires_at=expires_at)


def _opt_str(value: Any, name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise CorruptEntryError(f"{name} is not a string")
    return value


def result_from_value(value: Any, *, tier: str) -> ChatResult:
    """Rebuild a `ChatResult` from a chat entry's body.

    Raises:
        CorruptEntryError: The body is malformed.
    """
    if not isinstance(value, dict):
        raise CorruptEntryError("the body is not an object")
    message, model, usage = value.get("message"), value.get("model"), value.get("usage")
    raw = value.get("raw", {})
    if not isinstance(message, dict) or not isinstance(model, str):
        raise CorruptEntryError("no message or model")
    if not isinstance(usage, dict) or not isinstance(raw, dict):
        raise CorruptEntryError("malformed usage or raw fields")
    counts: dict[str, int] = {}
    for name in _USAGE_FIELDS:
        n = usage.get(name, 0)
        if not isinstance(n, int) or isinstance(n, bool):
            raise CorruptEntryError(f"usage.{name} is not an integer")
        counts[name] = n
    provider = _opt_str(value.get("provider", "groq"), "provider") or "groq"
    return ChatResult(
        message=message,
        model=model,
        usage=Usage(**counts),
        finish_reason=_opt_str(value.get("finish_reason"), "finish_reason"),
        key_label=_opt_str(value.get("key_label"), "key_label"),
        cache_tier=tier,
        provider=provider,
        raw=raw,
    )


def decode_result(text: str, *, key: str, tier: str) -> tuple[ChatResult, Envelope]:
    """Parse a chat entry found under `key` in `tier`."""
    env = decode(text, kind="chat", key=key)
    return result_from_value(env.value, tier=tier), env


# -- LangChain generations -----------------------------------------------------------------


def encode_generations(
    generations: Sequence[Any], *, key: str, stored_at: float, expires_at: float
) -> str:
    """The envelope text of a LangChain return value (a list of `Generation`).

    Each generation is kept as its class name, its text (plain generations) or message
    (chat generations, in `dumpd` form) and its `generation_info` (in `dumpd` form, which
    escapes any dict that looks like a serialised object).
    """
    from langchain_core.load import dumpd
    from langchain_core.outputs import ChatGeneration

    body = []
    for g in generations:
        item: dict[str, Any] = {"class": type(g).__name__, "info": dumpd(g.generation_info)}
        if isinstance(g, ChatGeneration):
            item["message"] = dumpd(g.message)
        else:
            item["text"] = g.text
        body.append(item)
    return encode("langchain", key, body, stored_at=stored_at, expires_at=expires_at)


def _generation_classes() -> dict[str, Any]:
    from langchain_core.outputs import (
        ChatGeneration,
        ChatGenerationChunk,
        Generation,
        GenerationChunk,
    )

    return {c.__name__: c for c in (Generation, GenerationChunk, ChatGeneration,
                                    ChatGenerationChunk)}


def generations_from_value(value: Any) -> list[Any]:
    """Revive generations from a LangChain entry's body.

    Only the four generation classes are built here, and messages are revived by
    `langchain_core.load.load` with `allowed_objects="messages"`, the mode LangChain documents
    as safe for untrusted input: an entry written by someone else can at worst be a miss.

    Raises:
        CorruptEntryError: The body is malformed or names anything else.
    """
    from langchain_core._api import suppress_langchain_beta_warning
    from langchain_core.load import load
    from langchain_core.messages import BaseMessage

    classes = _generation_classes()
    if not isinstance(value, list) or not all(
        isinstance(item, dict) and item.get("class") in classes for item in value
    ):
        raise CorruptEntryError("the body is not a list of generations")
    try:
        with suppress_langchain_beta_warning():
            # One call for all messages and infos: it is the revival's fixed cost.
            parts = load(
                [[item.get("message"), item.get("info")] for item in value],
                allowed_objects="messages",
            )
        revived = []
        for item, (message, info) in zip(value, parts, strict=True):
            cls = classes[item["class"]]
            if "message" in item:
                if not isinstance(message, BaseMessage):
                    raise CorruptEntryError("a chat generation without a message")
                revived.append(cls(message=message, generation_info=info))
            else:
                revived.append(cls(text=item["text"], generation_info=info))
    except CorruptEntryError:
        raise
    except Exception as exc:  # any revival failure means the entry is unusable
        raise CorruptEntryError(f"cannot revive generations: {type(exc).__name__}") from None
    return revived


def decode_generations(text: str, *, key: str) -> tuple[list[Any], Envelope]:
    """Parse a LangChain entry found under `key`."""
    env = decode(text, kind="langchain", key=key)
    return generations_from_value(env.value), env


# -- streams ------------------------------------------------------------------------------


def _usage_dict(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def replay_stream(
    result: ChatResult, *, created: int = 0, chunk_chars: int = 64
) -> list[dict[str, Any]]:
    """A result as the chunk dicts Groq would have streamed for it.

    The first chunk carries the role and `x_groq.id`; then reasoning (`delta.reasoning`),
    content in pieces of `chunk_chars`, one chunk per tool call; the last chunk carries the
    finish reason and the usage (top-level `usage` and `x_groq.usage`, as Groq sends both).

    Args:
        result: The answer to replay.
        created: The `created` timestamp to stamp on each chunk.
        chunk_chars: Content characters per chunk.
    """
    raw = result.raw
    completion_id = str(raw.get("id") or f"chatcmpl-{uuid.uuid4()}")
    x_groq = raw.get("x_groq")
    request_id = (
        str(x_groq["id"])
        if isinstance(x_groq, Mapping) and x_groq.get("id")
        else f"req_{uuid.uuid4().hex}"
    )
    base: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": result.model,
    }
    if raw.get("system_fingerprint"):
        base["system_fingerprint"] = raw["system_fingerprint"]

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**base, "choices": [choice], **extra}

    message = result.message
    chunks = [chunk({"role": "assistant", "content": ""}, x_groq={"id": request_id})]
    reasoning = message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        chunks += [chunk({"reasoning": p}) for p in _pieces(reasoning, chunk_chars)]
    content = message.get("content")
    if isinstance(content, str) and content:
        chunks += [chunk({"content": p}) for p in _pieces(content, chunk_chars)]
    for i, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") or {}
        chunks.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": i,
                            "id": call.get("id"),
                            "type": call.get("type", "function"),
                            "function": {
                                "name": function.get("name"),
                                "arguments": function.get("arguments", ""),
                            },
                        }
                    ]
                }
            )
        )
    usage = _usage_dict(result.usage)
    chunks.append(
        chunk(
            {},
            result.finish_reason or "stop",
            x_groq={"id": request_id, "usage": usage},
            usage=usage,
        )
    )
    return chunks


def assemble_stream(chunks: Iterable[Mapping[str, Any]]) -> ChatResult | None:
    """Rebuild the answer a stream of Groq chunk dicts carried.

    Returns:
        The result, or `None` when the stream never reached a finish reason or carried an
        error (a partial answer, which must not be cached).
    """
    content: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish: str | None = None
    model = ""
    usage: Mapping[str, Any] | None = None
    raw: dict[str, Any] = {}
    for c in chunks:
        x_groq = c.get("x_groq") if isinstance(c.get("x_groq"), Mapping) else {}
        if c.get("error") or (x_groq and x_groq.get("error")):
            return None
        model = str(c.get("model") or model)
        for name in ("id", "system_fingerprint"):
            if c.get(name) and name not in raw:
                raw[name] = c[name]
        if x_groq and x_groq.get("id"):
            raw.setdefault("x_groq", {"id": x_groq["id"]})
        usage = c.get("usage") or (x_groq.get("usage") if x_groq else None) or usage
        for choice in c.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                content.append(delta["content"])
            if isinstance(delta.get("reasoning"), str):
                reasoning.append(delta["reasoning"])
            for call in delta.get("tool_calls") or ():
                slot = calls.setdefault(
                    int(call.get("index", len(calls))),
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if call.get("id"):
                    slot["id"] = call["id"]
                function = call.get("function") or {}
                if function.get("name"):
                    slot["function"]["name"] += function["name"]
                if function.get("arguments"):
                    slot["function"]["arguments"] += function["arguments"]
            if choice.get("finish_reason"):
                finish = str(choice["finish_reason"])
    if finish is None:
        return None
    text = "".join(content)
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    if reasoning:
        message["reasoning"] = "".join(reasoning)
    return ChatResult(
        message=message,
        model=model,
        usage=Usage.from_openai(usage),
        finish_reason=finish,
        raw=raw,
    )
