"""The only module that talks to Groq: per-key SDK clients, raw responses, one error boundary.

A non-streaming call is one JSON POST through the official `groq` SDK's httpx client, sent
and read directly: the SDK's request transform and response models cost about 1.2 ms a call,
more than the whole engine (`benchmarks/bench_engine.py`), and the body is kept as Groq sent
it (tools, JSON mode and reasoning fields pass through untouched). Streams go through the SDK
(`with_raw_response`, for the `x-ratelimit-*` headers the parsed objects hide) and its SSE
decoder. The SDK's own retries are off: a 429 must reach the engine, which moves to another
key or model instead of sleeping on the same one.

Every `groq.*` and `httpx.*` exception is translated into the package's tree in
`map_exceptions`, the single boundary (httpcore's `map_exceptions` pattern):

| Groq answer                                      | raised                                    |
|--------------------------------------------------|-------------------------------------------|
| 429                                              | `UpstreamRateLimitError` (retry-after…)   |
| 413 `rate_limit_exceeded` ("Request too large")  | `UpstreamRateLimitError` (`.too_large`)   |
| 401, 403                                         | `UpstreamAuthError`                       |
| 5xx, 498 (flex capacity), 408, 409               | `UpstreamError`, retryable                |
| timeout (connect, read, or the whole budget)     | `UpstreamTimeoutError`                    |
| connection failure                               | `UpstreamError`, no status, retryable     |
| 400, 404, 413 (other), 422, …                    | `UpstreamError`, not retryable, `code`    |
| `event: error` inside an HTTP 200 stream         | `StreamError` (payload status and code)   |

Messages carry Groq's own error text, the model and the key *label*; never the key. Any text
that came from the wire is scrubbed of the key before it is shown.

`FallbackTransport` is the cross-provider escape hatch through LiteLLM; `litellm` is imported
inside its methods only, so importing this module (or the package) never loads it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, cast

import groq
import httpx
from groq.resources.chat.completions import AsyncCompletions

from .errors import (
    ConfigurationError,
    InvalidRequestError,
    StreamError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimitError,
    UpstreamTimeoutError,
)
from .headers import parse_rate_limits
from .types import ChatResult, Message, RateLimits, Usage

if TYPE_CHECKING:
    from pydantic import SecretStr

    from .config import ApiKey

__all__ = [
    "FallbackTransport",
    "GroqTransport",
    "StreamHandle",
    "UpstreamResponse",
    "map_exceptions",
]

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.groq.com"
_CONNECT_TIMEOUT = 5.0  # the SDK's own default; a dead host should fail fast
_MAX_TEXT = 600  # longest wire text (an HTML error page, say) quoted in a message

# Parameters the SDK's `create` knows by name; anything else rides in `extra_body` so new Groq
# parameters work before the SDK learns them.
_SDK_PARAMS: frozenset[str] = frozenset(inspect.signature(AsyncCompletions.create).parameters) - {
    "self",
    "messages",
    "model",
    "stream",
    "extra_headers",
    "extra_query",
    "extra_body",
    "timeout",
}
_RETRYABLE_STATUS = frozenset({408, 409, 498})
_KEY_LIKE = re.compile(r"\b(gsk_|sk-|Bearer\s+)([A-Za-z0-9_\-]{12,})")
_RAW_FIELDS = ("id", "created", "system_fingerprint", "x_groq", "service_tier", "usage")


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    """One non-streaming answer from Groq, as received.

    Attributes:
        body: The `ChatCompletion` as a dict: the fields Groq sent (including `x_groq`,
            `usage`, `service_tier` and extras such as `message.reasoning`).
        rate_limits: What the response headers said (`parse_rate_limits`).
        status_code: The HTTP status (200).
        latency_ms: Wall time from sending the request to the parsed body.
        request_id: Groq's `x-request-id` (equal to `x_groq.id`), if sent.
    """

    body: dict[str, Any]
    rate_limits: RateLimits
    status_code: int
    latency_ms: float
    request_id: str | None


def _redact(text: str, secrets: Sequence[str] = ()) -> str:
    """Remove every known secret, and anything shaped like a key, from wire text."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "…" + secret[-4:] if len(secret) >= 12 else "…")
    return _KEY_LIKE.sub(lambda m: f"{m.group(1)}…{m.group(2)[-4:]}", text)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


def _error_fields(body: object) -> tuple[str | None, str | None, str | None, int | None]:
    """`(message, code, type, status_code)` of a Groq error body (`{"error": {...}}` or the
    inner dict, as the SDK's stream errors carry it)."""
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping):
            message = inner.get("message")
            code = inner.get("code")
            etype = inner.get("type")
            status = inner.get("status_code")
            return (
                str(message) if message is not None else None,
                str(code) if code is not None else None,
                str(etype) if etype is not None else None,
                int(status)
                if isinstance(status, int | float | str) and str(status).isdigit()
                else None,
            )
        if isinstance(inner, str):
            return inner, None, None, None
    if isinstance(body, str) and body.strip():
        return body, None, None, None
    return None, None, None, None


def _describe(
    what: str,
    *,
    status: int | str | None = None,
    code: str | None = None,
    model: str | None = None,
    key_label: str | None = None,
    detail: str | None = None,
) -> str:
    """`Groq rate limit (429, rate_limit_exceeded) for model `m` on key k1: <Groq's text>`."""
    tags = ", ".join(str(t) for t in (status, code) if t)
    text = f"{what} ({tags})" if tags else what
    where = [f"model `{model}`"] if model else []
    if key_label:
        where.append(f"key {key_label}")
    if where:
        text += " for " + " on ".join(where)
    return f"{text}: {detail}" if detail else text


def _status_error(
    status: int,
    body: object,
    headers: Mapping[str, str],
    *,
    model: str | None,
    key_label: str | None,
    secrets: Sequence[str],
) -> UpstreamError:
    message, code, etype, _ = _error_fields(body)
    detail = _short(_redact(message, secrets)) if message else None
    # Rate limits are read from every error: a 401 or 404 still reports the buckets.
    rate_limits = parse_rate_limits(headers, message if status in (413, 429) else None)
    common: dict[str, Any] = {
        "status_code": status,
        "model": model,
        "rate_limits": rate_limits,
        "code": code,
    }

    def describe(what: str) -> str:
        return _describe(
            what, status=status, code=code, model=model, key_label=key_label, detail=detail
        )

    if status == 429:
        return UpstreamRateLimitError(describe("Groq rate limit"), retryable=True, **common)
    if status == 413 and (code == "rate_limit_exceeded" or etype == "tokens"):
        # One request larger than the model's tokens-per-minute limit: retrying the same model
        # can never work (and the `retry-after` Groq sometimes adds is misleading).
        return UpstreamRateLimitError(
            describe("Groq request too large for this model"), retryable=False, **common
        )
    if status in (401, 403):
        return UpstreamAuthError(describe("Groq rejected the key"), retryable=False, **common)
    if status == 498:
        what = "Groq flex capacity exceeded"
    elif status >= 500:
        what = "Groq server error"
    else:
        what = "Groq refused the request"
    return UpstreamError(
        describe(what), retryable=status >= 500 or status in _RETRYABLE_STATUS, **common
    )


def _stream_error(
    exc: groq.APIError,
    *,
    model: str | None,
    key_label: str | None,
    secrets: Sequence[str],
    rate_limits: RateLimits | None,
) -> StreamError:
    message, code, _, status = _error_fields(exc.body)
    return StreamError(
        _describe(
            "Groq error inside the stream",
            status=status,
            code=code,
            model=model,
            key_label=key_label,
            detail=_short(_redact(message or exc.message, secrets)),
        ),
        status_code=status,
        # A server-side failure may pass on a retry; a 400 (e.g. `tool_use_failed`) is the
        # model's answer being invalid, which the engine may choose to retry on its own terms.
        retryable=status is None or status >= 500,
        model=model,
        rate_limits=rate_limits,
        code=code,
    )


@contextlib.contextmanager
def map_exceptions(
    *,
    model: str | None = None,
    key_label: str | None = None,
    secrets: Sequence[str] = (),
    rate_limits: RateLimits | None = None,
    timeout: float | None = None,
) -> Iterator[None]:
    """Translate `groq`/`httpx` exceptions raised inside the block into `UpstreamError`s.

    Args:
        model: The model called, for the message and the error's `model`.
        key_label: The label (never the secret) of the key used.
        secrets: Strings to scrub from any wire text quoted in the message.
        rate_limits: Limits already known (a stream's 200 headers) for stream errors.
        timeout: The time budget, for the message of a timeout.

    Raises:
        UpstreamError: Or one of its subclasses; the SDK exception is kept as `__cause__`
            unless its own text contains a secret.
    """

    def timed_out() -> UpstreamTimeoutError:
        within = f" within {timeout:g} s" if timeout is not None else " in time"
        return UpstreamTimeoutError(
            _describe(f"Groq did not answer{within}", model=model, key_label=key_label),
            model=model,
        )

    try:
        yield
    except groq.APIStatusError as exc:
        error = _status_error(
            exc.status_code,
            exc.body,
            exc.response.headers,
            model=model,
            key_label=key_label,
            secrets=secrets,
        )
        _raise(error, exc, secrets)
    except groq.APIConnectionError as exc:
        # `APITimeoutError` is a connection error too; the SDK wraps httpx's exception.
        if isinstance(exc, groq.APITimeoutError) or isinstance(
            exc.__cause__, httpx.TimeoutException
        ):
            _raise(timed_out(), exc, secrets)
        _raise(_connection_error(exc, model, key_label, secrets), exc, secrets)
    except groq.APIResponseValidationError as exc:
        error = UpstreamError(
            _describe(
                "Groq sent an answer the SDK could not read",
                status=exc.status_code,
                model=model,
                key_label=key_label,
            ),
            status_code=exc.status_code,
            retryable=False,
            model=model,
        )
        _raise(error, exc, secrets)
    except groq.APIError as exc:
        # The SDK raises a bare `APIError` for an error event inside a 200 stream (and for
        # nothing else that reaches this point): no status attribute, the payload in `.body`.
        error = _stream_error(
            exc, model=model, key_label=key_label, secrets=secrets, rate_limits=rate_limits
        )
        _raise(error, exc, secrets)
    except (httpx.TimeoutException, TimeoutError) as exc:
        # httpx raises its own exceptions while a stream is read; `TimeoutError` is the
        # whole-call budget (`asyncio.timeout`) running out.
        _raise(timed_out(), exc, secrets)
    except httpx.TransportError as exc:
        _raise(_connection_error(exc, model, key_label, secrets), exc, secrets)


def _connection_error(
    exc: Exception,
    model: str | None,
    key_label: str | None,
    secrets: Sequence[str],
    target: str = "Groq",
) -> UpstreamError:
    root = exc.__cause__ if isinstance(exc, groq.APIConnectionError) and exc.__cause__ else exc
    detail = _short(_redact(f"{type(root).__name__}: {root}".rstrip(": "), secrets))
    return UpstreamError(
        _describe(f"Could not reach {target}", model=model, key_label=key_label, detail=detail),
        status_code=None,
        retryable=True,
        model=model,
    )


def _raise(error: UpstreamError, cause: BaseException | None, secrets: Sequence[str]) -> NoReturn:
    logger.debug("groq call failed: %s", error.message)
    text = f"{cause!s} {cause!r}"
    if cause is None or any(s and s in text for s in secrets):
        raise error from None
    raise error from cause


def _response_body(response: httpx.Response) -> object:
    """The decoded JSON of a response, else its text (as the SDK keeps error bodies)."""
    try:
        return json.loads(response.content)
    except ValueError:
        return response.text.strip()


# ---------------------------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------------------------


class StreamHandle:
    """An open Groq stream: headers already read, chunks still to come.

    Iterate it (`async for chunk in handle`) for chunk dicts (the `ChatCompletionChunk` fields
    Groq sent). `rate_limits`, `status_code` and `request_id` are known before the first chunk.
    After the last chunk, `usage`, `finish_reason` and `to_result()` describe the whole answer.
    Close it with `aclose()` (or `async with`) if you stop early; the HTTP stream is released.

    Raises (while iterating):
        StreamError: An `event: error` arrived inside the 200 stream.
        UpstreamTimeoutError: No chunk arrived within the timeout.
        UpstreamError: The connection broke.
    """

    def __init__(
        self,
        *,
        stream: groq.AsyncStream[Any],
        response: httpx.Response,
        model: str,
        key_label: str,
        secret: str,
        started: float,
        timeout: float | None = None,
    ) -> None:
        self._stream = stream
        self._timeout = timeout
        self._response = response
        self._secret = secret
        self._started = started
        self.model = model
        """The model asked for."""
        self.key_label = key_label
        """The label of the key the stream runs on."""
        self.status_code: int = response.status_code
        self.rate_limits: RateLimits = parse_rate_limits(response.headers)
        self.request_id: str | None = response.headers.get("x-request-id")
        self.headers_ms: float = (time.perf_counter() - started) * 1000
        """Milliseconds until the response headers arrived."""
        self.first_chunk_ms: float | None = None
        self.latency_ms: float = self.headers_ms
        """Milliseconds from the request to the last chunk read so far."""
        self.chunks = 0
        self.done = False
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self._acc = _Accumulator()
        self._iterating = False

    def __repr__(self) -> str:
        state = "done" if self.done else f"{self.chunks} chunks"
        return f"<StreamHandle {self.model} key={self.key_label} {state}>"

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        if self._iterating:
            raise RuntimeError("a StreamHandle can be iterated only once")
        self._iterating = True
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[dict[str, Any]]:
        try:
            with map_exceptions(
                model=self.model,
                key_label=self.key_label,
                secrets=(self._secret,),
                rate_limits=self.rate_limits,
                timeout=self._timeout,
            ):
                async for chunk in self._stream:
                    data = chunk.model_dump(mode="json", exclude_unset=True)
                    now = time.perf_counter()
                    if self.first_chunk_ms is None:
                        self.first_chunk_ms = (now - self._started) * 1000
                    self.latency_ms = (now - self._started) * 1000
                    self.chunks += 1
                    self._acc.add(data)
                    yield data
            self.done = True
            self.usage = self._acc.usage()
            self.finish_reason = self._acc.finish_reason
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP stream (safe to call more than once)."""
        if not self._response.is_closed:
            with contextlib.suppress(Exception):
                await self._response.aclose()

    async def __aenter__(self) -> StreamHandle:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def to_result(self) -> ChatResult:
        """The streamed answer as one `ChatResult` (content, reasoning and tool calls joined).

        Raises:
            RuntimeError: The stream has not been read to its end.
        """
        if not self.done:
            raise RuntimeError("the stream has not been read to its end")
        body = self._acc.body()
        return _result_from_body(
            body,
            key_label=self.key_label,
            rate_limits=self.rate_limits,
            latency_ms=self.latency_ms,
            fallback_model=self.model,
        )


class _Accumulator:
    """Joins chunk deltas into one `ChatCompletion`-shaped body."""

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self.role = "assistant"
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.raw_usage: dict[str, Any] | None = None
        self.x_groq: dict[str, Any] = {}

    def add(self, chunk: Mapping[str, Any]) -> None:
        for name in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if chunk.get(name) is not None:
                self.head.setdefault(name, chunk[name])
        x_groq = chunk.get("x_groq")
        if isinstance(x_groq, Mapping):
            self.x_groq.update({k: v for k, v in x_groq.items() if v is not None})
            if isinstance(x_groq.get("usage"), Mapping):
                self.raw_usage = dict(x_groq["usage"])
        # The 2026 API also sends a top-level `usage` in the final chunk; it wins.
        if isinstance(chunk.get("usage"), Mapping):
            self.raw_usage = dict(chunk["usage"])
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            delta = choice.get("delta") or {}
            if delta.get("role"):
                self.role = delta["role"]
            if delta.get("content"):
                self.content.append(delta["content"])
            if delta.get("reasoning"):
                self.reasoning.append(delta["reasoning"])
            for call in delta.get("tool_calls") or ():
                slot = self.tool_calls.setdefault(
                    int(call.get("index", len(self.tool_calls))),
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if call.get("id"):
                    slot["id"] = call["id"]
                if call.get("type"):
                    slot["type"] = call["type"]
                fn = call.get("function") or {}
                if fn.get("name"):
                    slot["function"]["name"] += fn["name"]
                if fn.get("arguments"):
                    slot["function"]["arguments"] += fn["arguments"]

    def usage(self) -> Usage:
        return Usage.from_openai(self.raw_usage)

    def body(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self.role, "content": "".join(self.content) or None}
        if self.reasoning:
            message["reasoning"] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        body: dict[str, Any] = {
            **self.head,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
        }
        if self.raw_usage is not None:
            body["usage"] = self.raw_usage
        if self.x_groq:
            body["x_groq"] = {k: v for k, v in self.x_groq.items() if k != "usage"}
        return body


# ---------------------------------------------------------------------------------------------
# The Groq transport
# ---------------------------------------------------------------------------------------------


def _body_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The generation parameters that go into the request body."""
    return {
        name: value
        for name, value in params.items()
        # `None` is "unset", not JSON null (Groq rejects null for several parameters);
        # stream, model and messages are decided by the transport call itself.
        if value is not None and name not in ("stream", "model", "messages")
    }


def _split_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`(sdk_kwargs, extra_body)`: known SDK parameters by name, the rest in `extra_body`."""
    known: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, value in _body_params(params).items():
        (known if name in _SDK_PARAMS else extra)[name] = value
    return known, extra


def _result_from_body(
    body: Mapping[str, Any],
    *,
    key_label: str | None,
    rate_limits: RateLimits | None,
    latency_ms: float,
    fallback_model: str | None = None,
    provider: str = "groq",
) -> ChatResult:
    choices = body.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], Mapping) else {}
    message = dict(choice.get("message") or {"role": "assistant", "content": None})
    raw_usage = body.get("usage")
    if not raw_usage and isinstance(body.get("x_groq"), Mapping):
        raw_usage = body["x_groq"].get("usage")
    raw = {name: body[name] for name in _RAW_FIELDS if body.get(name) is not None}
    return ChatResult(
        message=message,
        model=str(body.get("model") or fallback_model or ""),
        usage=Usage.from_openai(raw_usage if isinstance(raw_usage, Mapping) else None),
        finish_reason=choice.get("finish_reason"),
        key_label=key_label,
        rate_limits=rate_limits,
        latency_ms=latency_ms,
        provider=provider,
        raw=raw,
    )


class GroqTransport:
    """Calls Groq's chat completions API with one SDK client per key.

    Args:
        base_url: Groq's base URL; the SDK appends `/openai/v1/...`.
        timeout: Default seconds for one call (connect at most 5 s of it).
        default_headers: Headers added to every request (a `User-Agent`, say).
        http_client: An `httpx.AsyncClient` to share (proxies, event hooks, tests); by default
            the transport makes one on first use and shares it between all keys' clients.

    Example:
        ```python
        transport = GroqTransport()
        resp = await transport.acomplete(key=key, model="openai/gpt-oss-20b",
                                         messages=[{"role": "user", "content": "hi"}], params={})
        result = transport.to_result(resp, key_label=key.label)
        ```
    """

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 60.0,
        default_headers: Mapping[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        if timeout <= 0:
            raise ConfigurationError("timeout must be positive", setting="timeout")
        # Accept the OpenAI-style base (`…/openai/v1`) LiteLLM users have: the SDK adds it.
        self.base_url = base_url.rstrip("/").removesuffix("/openai/v1")
        self.timeout = float(timeout)
        self.default_headers = dict(default_headers or {})
        self._http_client = http_client
        self._owns_http_client = http_client is None
        self._clients: dict[str, groq.AsyncGroq] = {}
        self._completions_url = self.base_url + "/openai/v1/chat/completions"
        # What the SDK sends on every call, so Groq sees the same client either way.
        self._base_headers = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": f"AsyncGroq/Python {groq.__version__}",
            **self.default_headers,
        }

    def __repr__(self) -> str:
        return (
            f"<GroqTransport {self.base_url} timeout={self.timeout:g}s "
            f"clients={len(self._clients)}>"
        )

    # -- clients ----------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._http_client is None:
            self._http_client = groq.DefaultAsyncHttpxClient()
        return self._http_client

    def _client(self, key: ApiKey) -> groq.AsyncGroq:
        secret = key.secret.get_secret_value()
        client = self._clients.get(key.label)
        if client is None or client.api_key != secret:
            self._http()
            client = groq.AsyncGroq(
                api_key=secret,
                base_url=self.base_url,
                max_retries=0,
                timeout=self._httpx_timeout(self.timeout),
                default_headers=self.default_headers or None,
                http_client=self._http_client,
            )
            self._clients[key.label] = client
        return client

    @staticmethod
    def _httpx_timeout(seconds: float) -> httpx.Timeout:
        return httpx.Timeout(seconds, connect=min(_CONNECT_TIMEOUT, seconds))

    async def aclose(self) -> None:
        """Close the shared HTTP client (if this transport made it) and forget the clients."""
        self._clients.clear()
        if self._http_client is not None and self._owns_http_client:
            await self._http_client.aclose()
            self._http_client = None

    async def __aenter__(self) -> GroqTransport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- calls ------------------------------------------------------------------------------

    async def acomplete(
        self,
        *,
        key: ApiKey,
        model: str,
        messages: Sequence[Message],
        params: Mapping[str, Any],
        timeout: float | None = None,  # noqa: ASYNC109 - also the httpx per-read timeout
    ) -> UpstreamResponse:
        """One non-streaming chat completion.

        Args:
            key: The key to call with.
            model: The Groq model id.
            messages: OpenAI-style messages.
            params: Generation parameters in Groq's names; unknown ones go in `extra_body`.
            timeout: Seconds for the whole call (default: the transport's).

        Returns:
            The body, the parsed rate-limit headers, status, latency and request id.

        Raises:
            UpstreamError: Or a subclass, as the module docstring's table says.
        """
        budget = self.timeout if timeout is None else float(timeout)
        secret = key.secret.get_secret_value()
        # The SDK's per-call request transform and response model construction cost more
        # than the rest of the engine together (about 1.2 ms a call, `benchmarks/
        # bench_engine.py`); a non-streaming call is one JSON POST, so it goes straight
        # through the SDK's own httpx client. The SDK's exceptions never arise on this path,
        # so the status is mapped here with the same rules (`_status_error`).
        payload = {
            **_body_params(params),
            "model": model,
            "messages": list(messages),
            "stream": False,
        }
        try:
            content = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"The request is not JSON-serialisable: {exc}") from None
        http = self._http()
        headers = {
            **self._base_headers,
            "Authorization": f"Bearer {secret}",
        }
        started = time.perf_counter()
        with map_exceptions(model=model, key_label=key.label, secrets=(secret,), timeout=budget):
            async with asyncio.timeout(budget):
                response = await http.post(
                    self._completions_url,
                    content=content.encode(),
                    headers=headers,
                    timeout=self._httpx_timeout(budget),
                )
        latency_ms = (time.perf_counter() - started) * 1000
        status = response.status_code
        body = _response_body(response)
        if not 200 <= status < 300:
            error = _status_error(
                status,
                body,
                response.headers,
                model=model,
                key_label=key.label,
                secrets=(secret,),
            )
            # Kept for debugging, unless the body it carries echoes the key.
            cause = (
                None
                if secret in response.text
                else httpx.HTTPStatusError(
                    f"HTTP {status} from {self._completions_url}",
                    request=response.request,
                    response=response,
                )
            )
            _raise(error, cause, (secret,))
        if not isinstance(body, dict):
            error = UpstreamError(
                _describe(
                    "Groq sent an answer that is not a JSON object",
                    status=status,
                    model=model,
                    key_label=key.label,
                    detail=_short(_redact(str(body), (secret,))),
                ),
                status_code=status,
                retryable=False,
                model=model,
            )
            _raise(error, None, (secret,))
        request_id = response.headers.get("x-request-id")
        logger.debug(
            "groq %s on key %s: %s in %.1f ms (request %s)",
            model,
            key.label,
            status,
            latency_ms,
            request_id,
        )
        return UpstreamResponse(
            body=body,
            rate_limits=parse_rate_limits(response.headers),
            status_code=status,
            latency_ms=latency_ms,
            request_id=request_id,
        )

    async def alist_models(
        self,
        *,
        key: ApiKey,
        timeout: float | None = None,  # noqa: ASYNC109 - also the httpx per-read timeout
    ) -> dict[str, Any]:
        """`GET /openai/v1/models` with one key: the models its organisation is served.

        Args:
            key: The key to ask with (any key of the organisation answers the same).
            timeout: Seconds for the whole call (default: the transport's).

        Returns:
            Groq's answer (`{"object": "list", "data": [...]}`).

        Raises:
            UpstreamError: Or a subclass, as for chat calls; a body without a `data` list is an
                `UpstreamError` too.
        """
        budget = self.timeout if timeout is None else float(timeout)
        secret = key.secret.get_secret_value()
        url = self.base_url + "/openai/v1/models"
        headers = {**self._base_headers, "Authorization": f"Bearer {secret}"}
        headers.pop("Content-Type", None)
        with map_exceptions(key_label=key.label, secrets=(secret,), timeout=budget):
            async with asyncio.timeout(budget):
                response = await self._http().get(
                    url, headers=headers, timeout=self._httpx_timeout(budget)
                )
        body = _response_body(response)
        status = response.status_code
        if not 200 <= status < 300:
            error = _status_error(
                status, body, response.headers, model=None, key_label=key.label, secrets=(secret,)
            )
            _raise(error, None, (secret,))
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            _raise(
                UpstreamError(
                    _describe(
                        "Groq's model listing has no 'data' list",
                        status=status,
                        key_label=key.label,
                    ),
                    status_code=status,
                    retryable=False,
                ),
                None,
                (secret,),
            )
        return body

    async def astream(
        self,
        *,
        key: ApiKey,
        model: str,
        messages: Sequence[Message],
        params: Mapping[str, Any],
        timeout: float | None = None,  # noqa: ASYNC109 - also the httpx per-read timeout
    ) -> StreamHandle:
        """Open a streaming chat completion; returns once the response headers arrived.

        Args:
            key: The key to call with.
            model: The Groq model id.
            messages: OpenAI-style messages.
            params: Generation parameters in Groq's names; unknown ones go in `extra_body`.
            timeout: Seconds until the headers arrive, and at most between two chunks.

        Returns:
            A `StreamHandle` with `rate_limits` set; iterate it for chunk dicts.

        Raises:
            UpstreamError: Or a subclass, for an error status before the stream starts.
        """
        budget = self.timeout if timeout is None else float(timeout)
        client = self._client(key)
        known, extra = _split_params(params)
        secret = key.secret.get_secret_value()
        started = time.perf_counter()
        with map_exceptions(model=model, key_label=key.label, secrets=(secret,), timeout=budget):
            async with asyncio.timeout(budget):
                raw = await client.chat.completions.with_raw_response.create(
                    model=model,
                    messages=list(messages),  # type: ignore[arg-type]
                    stream=True,
                    timeout=self._httpx_timeout(budget),
                    extra_body=extra or None,
                    **known,
                )
                stream = cast("groq.AsyncStream[Any]", await raw.parse())
        handle = StreamHandle(
            stream=stream,
            response=raw.http_response,
            model=model,
            key_label=key.label,
            secret=secret,
            started=started,
            timeout=budget,
        )
        logger.debug(
            "groq stream %s on key %s: %s after %.1f ms (request %s)",
            model,
            key.label,
            handle.status_code,
            handle.headers_ms,
            handle.request_id,
        )
        return handle

    def to_result(self, resp: UpstreamResponse, *, key_label: str | None) -> ChatResult:
        """Turn a raw answer into the engine's `ChatResult`.

        The message keeps every field Groq sent (`content`, `tool_calls`, `reasoning`,
        `executed_tools`, …); `raw` keeps `id`, `created`, `system_fingerprint`, `x_groq`,
        `service_tier` and Groq's full `usage` (with its timings). Only the first choice is
        used.
        """
        return _result_from_body(
            resp.body,
            key_label=key_label,
            rate_limits=resp.rate_limits,
            latency_ms=resp.latency_ms,
        )


# ---------------------------------------------------------------------------------------------
# Cross-provider fallback (LiteLLM)
# ---------------------------------------------------------------------------------------------


def _import_litellm() -> Any:
    try:
        import litellm
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigurationError(
            "fallback providers need LiteLLM: install `ymera-groq-plugin[litellm]`",
            setting="fallback_models",
        ) from None
    return litellm


class FallbackTransport:
    """Calls another provider through LiteLLM when every Groq model is out.

    Only used when fallback models are configured. `litellm` takes seconds to import (tens on a
    busy machine), so `warm()` imports it on a thread of its own as the engine starts, and a
    call awaits that import instead of running it on the event loop, where it would stall
    every other request of the process.
    Provider keys come from LiteLLM's usual environment variables (`MISTRAL_API_KEY`, …) unless
    given here.

    Args:
        timeout: Default seconds for one call.
        api_keys: Provider prefix (`"mistral"`) → key, overriding the environment.
        api_bases: Provider prefix → base URL (a proxy, or a local server in tests).
    """

    def __init__(
        self,
        *,
        timeout: float = 60.0,
        api_keys: Mapping[str, SecretStr | str] | None = None,
        api_bases: Mapping[str, str] | None = None,
    ) -> None:
        if timeout <= 0:
            raise ConfigurationError("timeout must be positive", setting="timeout")
        self.timeout = float(timeout)
        self._api_keys = {
            k: v if isinstance(v, str) else v.get_secret_value()
            for k, v in (api_keys or {}).items()
        }
        self._api_bases = dict(api_bases or {})
        self._loading: concurrent.futures.Future[Any] | None = None
        self._loading_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<FallbackTransport providers={sorted(self._api_keys) or 'env'}>"

    def warm(self) -> concurrent.futures.Future[Any]:
        """Start importing LiteLLM on a daemon thread (once); returns the import's future."""
        with self._loading_lock:
            if self._loading is None:
                loading: concurrent.futures.Future[Any] = concurrent.futures.Future()

                def load() -> None:
                    try:
                        loading.set_result(_import_litellm())
                    except BaseException as exc:  # handed to whoever awaits the import
                        loading.set_exception(exc)

                self._loading = loading
                threading.Thread(target=load, name="ymera-litellm-import", daemon=True).start()
            return self._loading

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until LiteLLM is imported (starting the import if needed).

        Raises:
            ConfigurationError: LiteLLM is not installed.
            TimeoutError: The import did not finish within `timeout` seconds.
        """
        self.warm().result(timeout)

    async def acomplete(
        self,
        *,
        model: str,
        messages: Sequence[Message],
        params: Mapping[str, Any],
        timeout: float | None = None,  # noqa: ASYNC109 - also the httpx per-read timeout
    ) -> ChatResult:
        """One non-streaming completion on a LiteLLM model string (`mistral/mistral-small`).

        Raises:
            ConfigurationError: LiteLLM is not installed, or the model string has no provider.
            UpstreamError: Or a subclass, mapped from LiteLLM's exceptions like Groq's.
        """
        provider, sep, _ = model.partition("/")
        if not sep or not provider:
            raise ConfigurationError(
                f"fallback model {model!r} needs a provider prefix, e.g. `mistral/…`",
                setting="fallback_models",
            )
        litellm = await asyncio.wrap_future(self.warm())
        budget = self.timeout if timeout is None else float(timeout)
        kwargs: dict[str, Any] = {k: v for k, v in params.items() if v is not None}
        kwargs.pop("stream", None)
        secret = self._api_keys.get(provider)
        if secret is not None:
            kwargs["api_key"] = secret
        if provider in self._api_bases:
            kwargs["api_base"] = self._api_bases[provider]
        started = time.perf_counter()
        with _map_litellm_exceptions(litellm, model=model, secrets=(secret or "",), timeout=budget):
            async with asyncio.timeout(budget):
                response = await litellm.acompletion(
                    model=model,
                    messages=list(messages),
                    timeout=budget,
                    max_retries=0,
                    num_retries=0,
                    drop_params=True,
                    **kwargs,
                )
        latency_ms = (time.perf_counter() - started) * 1000
        body: dict[str, Any] = response.model_dump()
        hidden = getattr(response, "_hidden_params", None) or {}
        headers = hidden.get("additional_headers") if isinstance(hidden, Mapping) else None
        logger.debug("fallback %s answered in %.1f ms", model, latency_ms)
        result = _result_from_body(
            body,
            key_label=None,
            rate_limits=parse_rate_limits(headers) if headers else None,
            latency_ms=latency_ms,
            fallback_model=model,
            provider=provider,
        )
        return result


@contextlib.contextmanager
def _map_litellm_exceptions(
    litellm: Any, *, model: str, secrets: Sequence[str], timeout: float
) -> Iterator[None]:
    """LiteLLM's exceptions (all `openai.APIError`s) → ours, like `map_exceptions` for Groq."""
    import openai  # a LiteLLM dependency; loaded only with it

    try:
        yield
    except (TimeoutError, httpx.TimeoutException, openai.APITimeoutError) as exc:
        timed_out = UpstreamTimeoutError(
            _describe(f"Fallback provider did not answer within {timeout:g} s", model=model),
            model=model,
        )
        _raise(timed_out, exc, secrets)
    except httpx.TransportError as exc:
        error = _connection_error(exc, model, None, secrets, target="the fallback provider")
        _raise(error, exc, secrets)
    except openai.APIError as exc:
        _raise(_litellm_error(litellm, exc, model=model, secrets=secrets), exc, secrets)


def _litellm_error(
    litellm: Any, exc: Exception, *, model: str, secrets: Sequence[str]
) -> UpstreamError:
    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) else None
    text = str(getattr(exc, "message", None) or exc)
    detail = _short(_redact(text, secrets))
    if "Request too large" in text and status in (413, 429):
        status = 413  # LiteLLM reports Groq's 413 "request too large" as a 429
    response = getattr(exc, "response", None)
    headers = response.headers if isinstance(response, httpx.Response) else None
    limited = status in (413, 429) or isinstance(exc, litellm.RateLimitError)
    parsed = parse_rate_limits(headers, text if limited else None)
    rate_limits = None if parsed.empty else parsed

    def describe(what: str) -> str:
        return _describe(what, status=status, model=model, detail=detail)

    if limited:
        return UpstreamRateLimitError(
            describe("Fallback provider rate limit"),
            status_code=status or 429,
            retryable=status != 413,
            model=model,
            rate_limits=rate_limits,
            code="rate_limit_exceeded",
        )
    if isinstance(exc, litellm.AuthenticationError | litellm.PermissionDeniedError) or status in (
        401,
        403,
    ):
        return UpstreamAuthError(
            describe("Fallback provider rejected the key"),
            status_code=status,
            model=model,
            rate_limits=rate_limits,
        )
    if isinstance(exc, litellm.APIConnectionError) and status in (None, 500):
        # LiteLLM labels connection failures 500; nothing answered.
        return UpstreamError(
            describe("Could not reach the fallback provider"),
            status_code=None,
            retryable=True,
            model=model,
        )
    return UpstreamError(
        describe("Fallback provider failed"),
        status_code=status,
        retryable=status is None or status >= 500 or status in _RETRYABLE_STATUS,
        model=model,
        rate_limits=rate_limits,
    )
