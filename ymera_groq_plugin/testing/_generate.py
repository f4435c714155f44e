"""Synthesised completions: deterministic, short, shaped exactly like Groq's recorded bodies.

What the "model" answers, in order of precedence:

1. **Tool call** when the request offers `tools` and either `tool_choice` is `required` or names a
   function, or `tool_choice` is `auto`/absent and the *last* message is a user message that asks
   for a tool: it contains the word "tool"/"tools", a tool's full name, or a part of a tool's name
   of four letters or more (`get_weather` → "weather"). The tool called is the named one, else the
   first one the message mentions, else the first one. Arguments fill the schema's `required`
   properties with simple typed values (`"example"`, `1`, `1.0`, `true`, `[]`, nested objects;
   `enum`/`const`/`default` win). One call per answer, id `fc_<uuid>`.
2. **JSON** for `response_format` `json_object` (`{"answer": …, "ref": …}`) or `json_schema`
   (the schema's required properties, as for tool arguments).
3. **Text** otherwise: a one-sentence answer quoting the start of the last user message (or of the
   tool result when the last message is one), tagged with a short hash `ref`.

Models with the `reasoning` capability also return a short `reasoning` (hidden with
`include_reasoning: false` or `reasoning_format: "hidden"`, absent with
`reasoning_effort: "none"`), counted in `completion_tokens_details.reasoning_tokens`.

Determinism: the answer is a function of (model, messages, tools, response format, seed). When
`seed` is absent and `temperature` is above 0.001 (Groq's default temperature is 1), a per-server
counter joins the hash, so repeated calls differ like sampled ones. `ChatGroq` turns
`temperature=0` into `1e-8`, which counts as greedy.

Tokens: text is split into pieces of at most four non-space characters (with their leading
space); each piece is one completion token and one streaming delta. `max_tokens` /
`max_completion_tokens` cut reasoning first, then content, with `finish_reason: "length"`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..catalog import ModelInfo
from ._request import ChatParams, Tool
from ._tokens import text_of
from ._wire import dumps, error_body, new_tool_call_id

__all__ = [
    "Completion",
    "generate",
    "render_chunks",
    "render_completion",
    "synthesize",
    "synthetic_quality",
]

_PIECE = re.compile(r"\s*\S{1,4}")
_WORD = re.compile(r"[a-z0-9]+")
_NAME_PARTS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_GREEDY_BELOW = 1e-3

_TEMPLATES = (
    'Here is a short answer to "{s}" (ref {r}).',
    'Short answer on "{s}": it depends on the details, but the usual approach works (ref {r}).',
    'Regarding "{s}": yes, that is the expected behaviour (ref {r}).',
)


def pieces(text: str) -> list[str]:
    """Split text into token-sized pieces whose concatenation is the text."""
    out = _PIECE.findall(text)
    rest = text[sum(len(p) for p in out) :]
    if rest:
        out.append(rest)
    return out


@dataclass(frozen=True, slots=True)
class Completion:
    """One synthesised answer, before rendering."""

    content: str | None
    reasoning: str | None
    """Reasoning as shown (None when hidden or absent)."""
    tool_calls: tuple[dict[str, Any], ...]
    finish_reason: str
    completion_tokens: int
    reasoning_tokens: int
    content_pieces: tuple[str, ...] = ()
    reasoning_pieces: tuple[str, ...] = ()
    """Shown reasoning pieces (empty when hidden)."""
    ref: str = ""


def _snippet(text: str, words: int) -> str:
    parts = text.replace('"', "'").split()
    out = " ".join(parts[:words])
    return out + "…" if len(parts) > words else out


def _digest(params: ChatParams, nonce: int | None) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps(
            [
                params.model,
                params.messages,
                params.tools_raw,
                params.response_kind,
                params.response_schema,
                params.seed,
                nonce,
            ],
            sort_keys=True,
            default=str,
            separators=(",", ":"),
        ).encode()
    )
    return h.hexdigest()


def _name_parts(name: str) -> set[str]:
    words = {
        w.lower() for chunk in re.split(r"[_\-.\s]+", name) for w in _NAME_PARTS.findall(chunk)
    }
    return {w for w in words if len(w) >= 4}


def choose_tool(params: ChatParams) -> Tool | None:
    """The tool the model calls, by the rules in the module docstring."""
    if not params.tools or params.tool_choice == "none":
        return None
    if params.forced_tool is not None:
        return next(t for t in params.tools if t.name == params.forced_tool)
    last = params.messages[-1]
    text = text_of(last.get("content")).lower() if last.get("role") == "user" else ""
    words = set(_WORD.findall(text))
    mentioned = next(
        (t for t in params.tools if t.name.lower() in text or _name_parts(t.name) & words),
        None,
    )
    if mentioned is not None:
        return mentioned
    if params.tool_choice == "required" or ("tool" in words or "tools" in words):
        return params.tools[0]
    return None


def synthesize(
    schema: Mapping[str, Any], root: Mapping[str, Any] | None = None, depth: int = 0
) -> Any:
    """A simple value satisfying a JSON schema's types and required properties.

    Args:
        schema: The (sub)schema.
        root: The root schema, for local `$ref`s (`#/$defs/…`, `#/definitions/…`).
        depth: Recursion depth (bounded against cyclic references).

    Returns:
        A JSON-ready value.
    """
    root = schema if root is None else root
    if depth > 8:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, Mapping) else {}
        return synthesize(target if isinstance(target, Mapping) else {}, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            usable = [o for o in options if isinstance(o, Mapping) and o.get("type") != "null"]
            return synthesize(usable[0] if usable else options[0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        props = schema.get("properties") or {}
        required = schema.get("required") or []
        return {
            name: synthesize(
                props.get(name, {}) if isinstance(props, Mapping) else {}, root, depth + 1
            )
            for name in required
            if isinstance(name, str)
        }
    if kind == "array":
        items = schema.get("items")
        count = schema.get("minItems") or 0
        item = synthesize(items if isinstance(items, Mapping) else {}, root, depth + 1)
        return [item] * int(count)
    if kind == "integer":
        return _clamp(1, schema)
    if kind == "number":
        return float(_clamp(1.0, schema))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    fmt = schema.get("format")
    value = {
        "date-time": "2026-01-01T00:00:00Z",
        "date": "2026-01-01",
        "time": "00:00:00",
        "email": "user@example.com",
        "uri": "https://example.com",
        "uuid": "00000000-0000-4000-8000-000000000000",
    }.get(fmt if isinstance(fmt, str) else "", "example")
    min_len = schema.get("minLength")
    if isinstance(min_len, int) and len(value) < min_len:
        value = value + "x" * (min_len - len(value))
    return value


def _clamp(value: float, schema: Mapping[str, Any]) -> float:
    lo, hi = schema.get("minimum"), schema.get("maximum")
    if isinstance(lo, int | float) and value < lo:
        value = lo
    if isinstance(hi, int | float) and value > hi:
        value = hi
    return value


def _apply_stop(text: str, stop: Sequence[str]) -> str:
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return text[:cut] if cut >= 0 else text


def generate(params: ChatParams, model: ModelInfo, *, nonce: int | None) -> Completion:
    """Synthesise the answer to a validated request.

    Args:
        params: The request.
        model: The serving model (its capabilities decide about reasoning).
        nonce: A per-request counter for sampled requests, `None` for deterministic ones.

    Returns:
        The completion, already cut to the token budget.
    """
    sampled = params.seed is None and params.temperature > _GREEDY_BELOW
    digest = _digest(params, nonce if sampled else None)
    ref = digest[:6]
    last = params.messages[-1]
    user_text = next(
        (text_of(m.get("content")) for m in reversed(params.messages) if m.get("role") == "user"),
        "",
    )
    topic = _snippet(user_text, 12) or "your request"
    tool = choose_tool(params)
    budget = params.max_tokens if params.max_tokens is not None else model.max_completion_tokens

    reasoning_text = ""
    if params.reasoning:
        plan = f"Call {tool.name}." if tool else "Answer briefly."
        reasoning_text = f"User asks: {_snippet(user_text, 3) or 'something'}. {plan}"
    r_pieces = pieces(reasoning_text)[:budget]
    budget -= len(r_pieces)
    shown_reasoning = r_pieces if params.show_reasoning else []
    reasoning = "".join(shown_reasoning) if shown_reasoning else None

    if tool is not None:
        arguments = json.dumps(synthesize(tool.parameters), separators=(",", ":"))
        needed = len(pieces(tool.name + " " + arguments))
        if needed > budget:
            return Completion(
                content="",
                reasoning=reasoning,
                tool_calls=(),
                finish_reason="length",
                completion_tokens=len(r_pieces) + max(budget, 0),
                reasoning_tokens=len(r_pieces),
                reasoning_pieces=tuple(shown_reasoning),
                ref=ref,
            )
        call = {
            "id": new_tool_call_id(),
            "type": "function",
            "function": {"name": tool.name, "arguments": arguments},
        }
        return Completion(
            content=None,
            reasoning=reasoning,
            tool_calls=(call,),
            finish_reason="tool_calls",
            completion_tokens=len(r_pieces) + needed,
            reasoning_tokens=len(r_pieces),
            reasoning_pieces=tuple(shown_reasoning),
            ref=ref,
        )

    if last.get("role") == "tool":
        result = _snippet(text_of(last.get("content")), 10) or "empty"
        answer = f'Based on the tool result "{result}", here is the answer (ref {ref}).'
    else:
        answer = _TEMPLATES[int(digest[6:8], 16) % len(_TEMPLATES)].format(s=topic, r=ref)
    if params.response_kind == "json_object":
        answer = json.dumps({"answer": answer, "ref": ref})
    elif params.response_kind == "json_schema" and params.response_schema is not None:
        answer = json.dumps(synthesize(params.response_schema))
    answer = _apply_stop(answer, params.stop)
    c_all = pieces(answer)
    c_pieces = c_all[: max(budget, 0)]
    return Completion(
        content="".join(c_pieces),
        reasoning=reasoning,
        tool_calls=(),
        finish_reason="length" if len(c_pieces) < len(c_all) else "stop",
        completion_tokens=len(r_pieces) + len(c_pieces),
        reasoning_tokens=len(r_pieces),
        content_pieces=tuple(c_pieces),
        reasoning_pieces=tuple(shown_reasoning),
        ref=ref,
    )


# -- rendering ---------------------------------------------------------------------------------


def synthetic_quality(model: ModelInfo, task_type: str, salt: str = "") -> float:
    """A stand-in for a quality judge that follows the model's card, for offline learning.

    Work the card says the model is not for (catalog `only_for` leaves the task type out: a
    safety classifier asked for a code review) scores 0.15-0.25: what a user would see live
    is an answer that misses the point. Work it is built for (a task type in its `only_for`)
    scores as a top-tier model would. Otherwise `0.45 + 0.08 * quality_tier`, plus 0.05
    when the task type is among the model's `strengths`. A stable offset of up to ±0.05 per
    (model, task type, salt) keeps models of one tier apart, so a learner has something to
    learn; the result is in [0, 1].
    """
    h = hashlib.sha256(f"{model.id}|{task_type}|{salt}".encode()).digest()[0] / 255
    if not model.serves_task(task_type):
        return round(0.15 + 0.1 * h, 4)
    tier = 5 if task_type in model.only_for else model.quality_tier
    base = 0.45 + 0.08 * tier + (0.05 if task_type in model.strengths else 0.0)
    return round(min(1.0, max(0.0, base + 0.1 * (h - 0.5))), 4)


def fingerprint(model_id: str) -> str:
    """A stable `system_fingerprint` per model (`fp_` and ten hex digits)."""
    return "fp_" + hashlib.sha1(model_id.encode()).hexdigest()[:10]


def usage(prompt_tokens: int, c: Completion, model: ModelInfo, ref: str) -> dict[str, Any]:
    """Groq's `usage` object with plausible timings derived from the token counts."""
    tokens_per_second = 150.0 * model.speed_tier + 250.0
    queue_time = 0.002 + int(ref[:2] or "0", 16) / 64_000 if ref else 0.002
    prompt_time = prompt_tokens / 25_000.0 + 0.0004
    completion_time = c.completion_tokens / tokens_per_second
    return {
        "queue_time": round(queue_time, 9),
        "prompt_tokens": prompt_tokens,
        "prompt_time": round(prompt_time, 9),
        "completion_tokens": c.completion_tokens,
        "completion_time": round(completion_time, 9),
        "total_tokens": prompt_tokens + c.completion_tokens,
        "total_time": round(prompt_time + completion_time, 9),
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": c.reasoning_tokens},
    }


def render_completion(
    c: Completion,
    *,
    completion_id: str,
    created: int,
    model_id: str,
    request_id: str,
    seed: int,
    usage_obj: dict[str, Any],
) -> dict[str, Any]:
    """The non-streaming `chat.completion` body, keys in Groq's order."""
    message: dict[str, Any] = {"role": "assistant"}
    if c.content is not None:
        message["content"] = c.content
    if c.reasoning is not None:
        message["reasoning"] = c.reasoning
    if c.tool_calls:
        message["tool_calls"] = list(c.tool_calls)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model_id,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": c.finish_reason}
        ],
        "usage": usage_obj,
        "usage_breakdown": None,
        "system_fingerprint": fingerprint(model_id),
        "x_groq": {"id": request_id, "seed": seed},
        "service_tier": "on_demand",
    }


def stream_error_body(params: ChatParams) -> dict[str, Any]:
    """The `event: error` payload of a broken stream (shape of the pydantic-ai recording)."""
    if params.tools:
        name = params.tools[0].name
        return error_body(
            f"Tool call validation failed: tool call validation failed: parameters for tool "
            f"{name} did not match schema: errors: [additionalProperties 'invalid_param' not "
            "allowed]",
            code="tool_use_failed",
            failed_generation=json.dumps(
                {"name": name, "arguments": {"invalid_param": "value"}}, indent=None
            ),
            status_code=400,
        )
    return error_body(
        "Generation failed: the model produced output that could not be processed. Please try "
        "again.",
        code="generation_failed",
        status_code=400,
    )


def render_chunks(
    c: Completion,
    params: ChatParams,
    *,
    completion_id: str,
    created: int,
    model_id: str,
    request_id: str,
    seed: int,
    usage_obj: dict[str, Any],
    error_after: int | None = None,
) -> tuple[list[bytes], int]:
    """The SSE events of a streamed answer.

    Args:
        c: The completion.
        params: The request (for the mid-stream error's shape).
        completion_id: `chatcmpl-…`.
        created: Unix time.
        model_id: The model.
        request_id: `req_…` (in the first and last chunk's `x_groq`).
        seed: The sampling seed reported in the first chunk.
        usage_obj: The final usage.
        error_after: Break with `event: error` after this many chunks (no `[DONE]`).

    Returns:
        The encoded events, and the completion tokens actually sent.
    """
    fp = fingerprint(model_id)
    head = (
        f'{{"id":"{completion_id}","object":"chat.completion.chunk","created":{created},'
        f'"model":{json.dumps(model_id)},"system_fingerprint":"{fp}","choices":['
    ).encode()

    def chunk(delta: dict[str, Any], finish: str | None = None, tail: bytes = b"") -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + head + dumps(choice) + b"]" + tail + b"}\n\n"

    deltas: list[tuple[bytes, int]] = [
        (
            chunk(
                {"role": "assistant", "content": ""},
                tail=b',"x_groq":' + dumps({"id": request_id, "seed": seed}),
            ),
            0,
        )
    ]
    deltas += [(chunk({"reasoning": p, "channel": "analysis"}), 1) for p in c.reasoning_pieces]
    deltas += [(chunk({"content": p}), 1) for p in c.content_pieces]
    for i, call in enumerate(c.tool_calls):
        deltas.append((chunk({"tool_calls": [{**call, "index": i}]}), 0))
    final = chunk(
        {},
        c.finish_reason,
        tail=b',"x_groq":'
        + dumps({"id": request_id, "usage": usage_obj})
        + b',"usage":'
        + dumps(usage_obj),
    )
    if error_after is not None and error_after < len(deltas):
        sent = deltas[:error_after]
        events = [d for d, _ in sent]
        events.append(b"event: error\ndata: " + dumps(stream_error_body(params)) + b"\n\n")
        hidden = c.reasoning_tokens - len(c.reasoning_pieces)
        return events, hidden + sum(n for _, n in sent)
    return [d for d, _ in deltas] + [final, b"data: [DONE]\n\n"], c.completion_tokens
