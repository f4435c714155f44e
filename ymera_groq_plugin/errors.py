"""The package's exceptions: one root, a short tree.

```
YmeraError
├── ConfigurationError            bad setting, environment variable, catalog or policy file
├── InvalidRequestError           bad request, refused before any network call
│   ├── UnknownModelError         no catalog entry or alias of that name
│   ├── ModelRetiredError         shut down, and serving its successor is turned off
│   └── ContextWindowError        no model's context window fits the request ("no route fits")
├── QuotaExhaustedError           no room on any key within the wait bound; carries `retry_after`
│   └── RequestTooLargeError      one request larger than a model's tokens-per-minute limit
├── NoUsableKeyError              every key is disabled (401/403) or none is configured
├── StorageError                  a store (Redis, SQLite) failed; keeps `.storage_error`
└── UpstreamError                 Groq (or a fallback provider) failed; carries `status_code`
    ├── UpstreamRateLimitError    Groq answered 429, or 413 "request too large" (rate_limits)
    ├── UpstreamTimeoutError      no answer within the time budget
    ├── UpstreamAuthError         401/403 from the provider
    └── StreamError               an `event: error` inside an HTTP 200 stream
```

Where LangChain has a meaning for an error, ours inherits it too, so existing `except`
clauses keep working (`QuotaExhaustedError` is a `ModelRateLimitError`, `ContextWindowError`
a `ContextOverflowError`, and so on).

Messages never contain an API key: keys are `SecretStr` everywhere and are shown only masked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from langchain_core.exceptions import (
    ContextOverflowError,
    ModelAPIError,
    ModelAuthenticationError,
    ModelInvalidRequestError,
    ModelNotFoundError,
    ModelRateLimitError,
    ModelTimeoutError,
)

if TYPE_CHECKING:
    from .types import RateLimits

__all__ = [
    "ConfigurationError",
    "ContextWindowError",
    "InvalidRequestError",
    "ModelRetiredError",
    "NoUsableKeyError",
    "QuotaExhaustedError",
    "RequestTooLargeError",
    "StorageError",
    "StreamError",
    "UnknownModelError",
    "UpstreamAuthError",
    "UpstreamError",
    "UpstreamRateLimitError",
    "UpstreamTimeoutError",
    "YmeraError",
]


class YmeraError(Exception):
    """Base of every error the package raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigurationError(YmeraError, ValueError):
    """A setting, environment variable, catalog or policy file is invalid."""

    def __init__(
        self, message: str, *, setting: str | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message)
        self.setting = setting
        self.detail = detail
        """What is wrong, without the offending value (for messages about the environment,
        which must not echo what may be a secret)."""


class InvalidRequestError(YmeraError, ModelInvalidRequestError, ValueError):
    """The request is malformed; it was refused before any network call."""


class UnknownModelError(InvalidRequestError, ModelNotFoundError):
    """No catalog entry or alias has that name."""

    def __init__(self, message: str, *, model: str) -> None:
        super().__init__(message)
        self.model = model


class ModelRetiredError(InvalidRequestError):
    """The model is shut down and serving its successor in its place is turned off."""

    def __init__(self, message: str, *, model: str, successor: str | None) -> None:
        super().__init__(message)
        self.model = model
        self.successor = successor


class ContextWindowError(InvalidRequestError, ContextOverflowError):
    """No candidate model's context window fits the prompt plus the completion budget."""

    def __init__(self, message: str, *, required_tokens: int, largest_window: int) -> None:
        super().__init__(message)
        self.required_tokens = required_tokens
        self.largest_window = largest_window


class QuotaExhaustedError(YmeraError, ModelRateLimitError):
    """No key has room for the request within the allowed wait.

    Attributes:
        retry_after: Seconds until the earliest key or model is expected to have room
            (`None` if unknown).
        model: The model (or `None` when every model of a plan was tried).
    """

    def __init__(
        self, message: str, *, retry_after: float | None = None, model: str | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.model = model


class RequestTooLargeError(QuotaExhaustedError):
    """One request needs more tokens than the model's tokens-per-minute limit allows.

    It can never succeed on that model (Groq answers 413); routing picks a model with a
    larger allowance instead.
    """

    def __init__(self, message: str, *, model: str, requested: int, limit: int) -> None:
        super().__init__(message, retry_after=None, model=model)
        self.requested = requested
        self.limit = limit


class NoUsableKeyError(YmeraError, ModelAuthenticationError):
    """Every configured key is disabled, or no key is configured at all."""


class StorageError(YmeraError):
    """A storage backend failed.

    Attributes:
        storage_error: The backend's own exception (also chained as `__cause__`).
    """

    def __init__(self, message: str, *, storage_error: BaseException | None = None) -> None:
        super().__init__(message)
        self.storage_error = storage_error


class UpstreamError(YmeraError, ModelAPIError):
    """Groq, or a fallback provider, answered with an error or not at all.

    Attributes:
        status_code: The HTTP status, or `None` for a connection failure.
        retryable: Whether trying again (elsewhere or later) can succeed.
        model: The model that failed, when known.
        rate_limits: What the error response's headers and body said about limits.
        code: The provider's error code (`rate_limit_exceeded`, `tool_use_failed`, …).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retryable: bool = False,
        model: str | None = None,
        rate_limits: RateLimits | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retryable = retryable
        self.model = model
        self.rate_limits = rate_limits
        self.code = code


class UpstreamRateLimitError(UpstreamError, ModelRateLimitError):
    """Groq refused for a limit: 429 (wait `retry_after`) or 413 (too large for this model).

    The engine handles these (cooling the organisation and model, moving along the plan); a
    caller sees `QuotaExhaustedError` only when every option is spent.
    """

    @property
    def too_large(self) -> bool:
        """A 413: the request can never fit this model's tokens-per-minute limit."""
        return self.status_code == 413


class UpstreamTimeoutError(UpstreamError, ModelTimeoutError):
    """No answer arrived within the time budget."""

    def __init__(self, message: str, *, model: str | None = None) -> None:
        super().__init__(message, status_code=None, retryable=True, model=model)


class UpstreamAuthError(UpstreamError, ModelAuthenticationError):
    """The provider rejected the key (401/403)."""


class StreamError(UpstreamError):
    """An error event arrived inside an HTTP 200 stream; what was streamed is not an answer."""
