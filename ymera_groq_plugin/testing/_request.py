"""Parsing and validating chat-completion requests the way Groq does, with Groq's 400 wording.

Groq's validation messages look like `'messages.0' : for 'role:user' the following must be
satisfied[('messages.0.content' : value must be a string)]` or `'messages' : minimum number of
items is 1`; the messages here follow that style so clients see familiar text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..catalog import ModelInfo
from ._wire import error_body

__all__ = ["ChatParams", "RequestError", "parse_body", "validate_chat"]

_ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})
_SERVICE_TIERS = frozenset({"on_demand", "flex", "auto", "performance"})

ResponseKind = Literal["text", "json_object", "json_schema"]


class RequestError(Exception):
    """A request the server answers with an error status instead of serving it."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body["error"]["message"])
        self.status = status
        self.body = body


def _bad(message: str, **kw: Any) -> RequestError:
    return RequestError(400, error_body(message, **kw))


@dataclass(frozen=True, slots=True)
class Tool:
    """A function tool offered by the request."""

    name: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ChatParams:
    """The validated parts of a chat request the server acts on."""

    model: str
    messages: list[dict[str, Any]]
    stream: bool = False
    max_tokens: int | None = None
    temperature: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    tools: tuple[Tool, ...] = ()
    tools_raw: tuple[dict[str, Any], ...] = ()
    tool_choice: str = "auto"
    """`none`, `auto` or `required`; a named function sets `forced_tool` and `required`."""
    forced_tool: str | None = None
    response_kind: ResponseKind = "text"
    response_schema: Mapping[str, Any] | None = None
    show_reasoning: bool = True
    reasoning: bool = True
    """False when `reasoning_effort` is `none`."""


def parse_body(raw: bytes) -> dict[str, Any]:
    """Decode the JSON object of a request body.

    Raises:
        RequestError: 400 when the body is not a JSON object.
    """
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _bad("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object")
    return body


def require_model(body: Mapping[str, Any]) -> str:
    """The `model` field.

    Raises:
        RequestError: 400 when it is missing or not a string.
    """
    if "model" not in body:
        raise _bad("'model' : property 'model' is missing")
    model = body["model"]
    if not isinstance(model, str) or not model:
        raise _bad("'model' : value must be a non-empty string")
    return model


def _number(body: Mapping[str, Any], name: str, lo: float, hi: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"'{name}' : value must be a number")
    if value < lo:
        raise _bad(f"'{name}' : number must be at least {lo:g}")
    if value > hi:
        raise _bad(f"'{name}' : number must be at most {hi:g}")
    return float(value)


def _integer(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"'{name}' : value must be an integer")
    return value


def _validate_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        raise _bad("'messages' : value must be an array")
    if not messages:
        raise _bad("'messages' : minimum number of items is 1")
    for i, m in enumerate(messages):
        where = f"'messages.{i}'"
        if not isinstance(m, dict):
            raise _bad(f"{where} : value must be an object")
        role = m.get("role")
        if role not in _ROLES:
            raise _bad(f"{where} : discriminator property 'role' has invalid value")
        content = m.get("content")
        rule = f"{where} : for 'role:{role}' the following must be satisfied"
        if role in ("user", "system", "developer", "tool"):
            if "content" not in m:
                raise _bad(f"{rule}[('messages.{i}.content' : property 'content' is missing)]")
            if not isinstance(content, str | list):
                raise _bad(f"{rule}[('messages.{i}.content' : value must be a string)]")
        elif role == "assistant" and content is None and not m.get("tool_calls"):
            raise _bad(f"{rule}[('messages.{i}' : 'content' or 'tool_calls' must be provided)]")
        if role == "tool" and not isinstance(m.get("tool_call_id"), str):
            raise _bad(
                f"{rule}[('messages.{i}.tool_call_id' : property 'tool_call_id' is missing)]"
            )
    return messages


def _validate_tools(raw: Any) -> tuple[tuple[Tool, ...], tuple[dict[str, Any], ...]]:
    if raw is None:
        return (), ()
    if not isinstance(raw, list):
        raise _bad("'tools' : value must be an array")
    tools: list[Tool] = []
    for i, t in enumerate(raw):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type", "function") != "function":
            raise _bad(f"'tools.{i}.type' : value must be 'function'")
        if not isinstance(fn, dict):
            raise _bad(f"'tools.{i}' : property 'function' is missing")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"'tools.{i}.function.name' : property 'name' is missing")
        params = fn.get("parameters") or {}
        if not isinstance(params, dict):
            raise _bad(f"'tools.{i}.function.parameters' : value must be an object")
        tools.append(Tool(name, params))
    return tuple(tools), tuple(raw)


def _validate_tool_choice(raw: Any, tools: tuple[Tool, ...]) -> tuple[str, str | None]:
    if raw is None:
        return ("auto", None)
    if isinstance(raw, str):
        if raw not in ("none", "auto", "required"):
            raise _bad("'tool_choice' : value must be one of 'none', 'auto', 'required'")
        if raw != "none" and not tools:
            raise _bad(
                "`tool_choice` is only allowed when `tools` are specified", param="tool_choice"
            )
        return (raw, None)
    fn = raw.get("function") if isinstance(raw, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise _bad("'tool_choice.function.name' : property 'name' is missing")
    if name not in {t.name for t in tools}:
        raise _bad(
            f"Tool choice is set to a function named `{name}`, which is not in the `tools` list",
            param="tool_choice",
        )
    return ("required", name)


def _validate_response_format(raw: Any) -> tuple[ResponseKind, Mapping[str, Any] | None]:
    if raw is None:
        return ("text", None)
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "text":
        return ("text", None)
    if kind == "json_object":
        return ("json_object", None)
    if kind == "json_schema":
        spec = raw.get("json_schema")
        if not isinstance(spec, dict):
            raise _bad("'response_format.json_schema' : property 'json_schema' is missing")
        schema = spec.get("schema")
        if not isinstance(schema, dict):
            raise _bad("'response_format.json_schema.schema' : value must be an object")
        return ("json_schema", schema)
    raise _bad(
        "'response_format.type' : value is not one of the allowed values "
        "['text', 'json_object', 'json_schema']"
    )


def validate_chat(body: Mapping[str, Any], model: ModelInfo) -> ChatParams:
    """Validate a chat request for `model`.

    Args:
        body: The decoded request.
        model: The catalog entry serving it.

    Returns:
        The parameters the server acts on.

    Raises:
        RequestError: 400 with Groq's wording for the first problem found.
    """
    messages = _validate_messages(body.get("messages") if "messages" in body else _missing())
    n = _integer(body, "n")
    if n is not None and n < 1:
        raise _bad("'n' : number must be at least 1")
    if n is not None and n > 1:
        raise _bad("'n' : number must be at most 1")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise _bad("'stream' : value must be a boolean")
    temperature = _number(body, "temperature", 0.0, 2.0)
    _number(body, "top_p", 0.0, 1.0)
    max_tokens: int | None = None
    for name in ("max_completion_tokens", "max_tokens"):
        value = _integer(body, name)
        if value is None:
            continue
        if value < 1:
            raise _bad(f"'{name}' : number must be at least 1")
        if value > model.max_completion_tokens:
            raise _bad(
                f"`{name}` must be less than or equal to `{model.max_completion_tokens}`, the "
                f"maximum value for `{name}` is less than the `context_window` for this model"
            )
        if max_tokens is None:
            max_tokens = value
    seed = _integer(body, "seed")
    stop_raw = body.get("stop")
    if stop_raw is None:
        stop: tuple[str, ...] = ()
    elif isinstance(stop_raw, str):
        stop = (stop_raw,)
    elif isinstance(stop_raw, list) and all(isinstance(s, str) for s in stop_raw):
        if len(stop_raw) > 4:
            raise _bad("'stop' : maximum number of items is 4")
        stop = tuple(stop_raw)
    else:
        raise _bad("'stop' : value must be a string or an array of strings")
    tools, tools_raw = _validate_tools(body.get("tools"))
    tool_choice, forced = _validate_tool_choice(body.get("tool_choice"), tools)
    kind, schema = _validate_response_format(body.get("response_format"))
    tier = body.get("service_tier")
    if tier is not None and tier not in _SERVICE_TIERS:
        raise _bad(
            "'service_tier' : value is not one of the allowed values "
            "['auto', 'on_demand', 'flex', 'performance']"
        )
    include = body.get("include_reasoning")
    fmt = body.get("reasoning_format")
    if fmt is not None and fmt not in ("hidden", "raw", "parsed"):
        raise _bad(
            "'reasoning_format' : value is not one of the allowed values "
            "['hidden', 'raw', 'parsed']"
        )
    return ChatParams(
        model=model.id,
        messages=messages,
        stream=bool(stream),
        max_tokens=max_tokens,
        temperature=1.0 if temperature is None else temperature,
        seed=seed,
        stop=stop,
        tools=tools,
        tools_raw=tools_raw,
        tool_choice=tool_choice,
        forced_tool=forced,
        response_kind=kind,
        response_schema=schema,
        show_reasoning=include is not False and fmt != "hidden",
        reasoning=model.capabilities.reasoning and body.get("reasoning_effort") != "none",
    )


def _missing() -> Any:
    raise _bad("'messages' : property 'messages' is missing")
