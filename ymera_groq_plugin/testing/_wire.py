"""Groq's wire details for the local server: ids, durations, masks and error bodies.

Every error message here copies the wording of a recorded Groq answer (see
`shared/reference/groq-api.md` §1) so client code that parses messages — for instance to tell a
tokens-per-day 429 from a tokens-per-minute one — behaves as it would against Groq.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

__all__ = [
    "JSON_HEADERS",
    "dumps",
    "error_body",
    "go_duration",
    "mask_key",
    "new_completion_id",
    "new_request_id",
    "new_tool_call_id",
    "retry_after_seconds",
]

JSON_HEADERS: tuple[tuple[str, str], ...] = (
    ("cache-control", "private, max-age=0, no-store, no-cache, must-revalidate"),
    ("vary", "Origin"),
)
"""Headers Groq puts on every JSON answer besides the rate-limit ones."""

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def dumps(obj: Any) -> bytes:
    """Compact JSON, as Groq sends it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def new_request_id() -> str:
    """A Groq request id: `req_` and a lowercase ULID-like string (`req_01khrvt2r6e9rb7e8q…`)."""
    n = int.from_bytes(os.urandom(16), "big")
    chars = []
    for _ in range(24):
        n, r = divmod(n, 32)
        chars.append(_CROCKFORD[r])
    return "req_01" + "".join(chars)


def new_completion_id() -> str:
    """A completion id: `chatcmpl-<uuid4>`."""
    return "chatcmpl-" + _uuid4()


def new_tool_call_id() -> str:
    """A tool-call id in the gpt-oss style: `fc_<uuid4>`."""
    return "fc_" + _uuid4()


def _uuid4() -> str:
    # uuid.uuid4() does the same with more overhead; ids are made on the hot path.
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def go_duration(seconds: float) -> str:
    """Format seconds as Groq does: a Go `time.Duration` string at millisecond precision.

    Examples: `0s`, `130ms`, `7.66s`, `1m26.4s`, `2m59.56s`, `1h2m3s`. A positive duration below
    one millisecond is shown as `1ms`, not in microseconds, so parsers that only know
    `h`/`m`/`s`/`ms` (every recorded Groq value) keep working.

    Args:
        seconds: The duration; zero or negative gives `0s`.

    Returns:
        The duration string.
    """
    if not seconds > 0:
        return "0s"
    ms = max(1, round(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    sec = f"{whole}.{frac:03d}".rstrip("0").rstrip(".") if frac else str(whole)
    out = f"{hours}h" if hours else ""
    if hours or minutes:
        out += f"{minutes}m"
    return f"{out}{sec}s"


def retry_after_seconds(seconds: float) -> int:
    """The `retry-after` value for a wait: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(round(seconds, 3)))


def mask_key(key: str) -> str:
    """Show a key the way the package does everywhere: `gsk_…a1b2`.

    Args:
        key: The secret.

    Returns:
        The prefix `gsk_` (when present), an ellipsis and the last four characters; keys of
        eight characters or fewer show no tail at all.
    """
    prefix = "gsk_" if key.startswith("gsk_") else ""
    tail = key[-4:] if len(key) > 8 else ""
    return f"{prefix}…{tail}"


def error_body(
    message: str,
    *,
    kind: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A Groq error object: `{"error": {"message", "type", ["param"], ["code"], ...}}`.

    Args:
        message: The human-readable message.
        kind: The error's `type` field.
        code: The machine-readable `code`, if Groq sends one for this error.
        param: The request field at fault, if any.
        **extra: More fields (`failed_generation`, `status_code`).
    """
    err: dict[str, Any] = {"message": message, "type": kind}
    if param is not None:
        err["param"] = param
    if code is not None:
        err["code"] = code
    err.update(extra)
    return {"error": err}


# -- verbatim Groq messages ------------------------------------------------------------------

RATE_LIMIT_UPGRADE = "Upgrade to Dev Tier today at https://console.groq.com/settings/billing"


def rate_limit_message(
    *,
    model: str,
    org: str,
    phrase: str,
    code: str,
    unit: str,
    limit: int,
    used: int,
    requested: int,
    wait: str,
) -> str:
    """The 429 message, word for word as Groq writes it for TPM/TPD (and, by analogy, RPM/RPD)."""
    return (
        f"Rate limit reached for model `{model}` in organization `{org}` service tier "
        f"`on_demand` on {phrase} ({code}): Limit {limit}, Used {used}, Requested {requested}. "
        f"Please try again in {wait}. Need more {unit}? {RATE_LIMIT_UPGRADE}"
    )


def too_large_message(*, model: str, org: str, limit: int, requested: int) -> str:
    """The 413 message for one request larger than the model's tokens-per-minute limit."""
    return (
        f"Request too large for model `{model}` in organization `{org}` service tier `on_demand` "
        f"on tokens per minute (TPM): Limit {limit}, Requested {requested}, please reduce your "
        "message size and try again. Visit https://console.groq.com/docs/rate-limits for more "
        "information."
    )


def model_not_found_body(model: str) -> dict[str, Any]:
    """404 for a model Groq does not know (recorded in the pydantic-ai cassette)."""
    return error_body(
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
    )


def decommissioned_body(model: str) -> dict[str, Any]:
    """400 for a model that has been shut down."""
    return error_body(
        f"The model `{model}` has been decommissioned and is no longer supported. Please refer "
        "to https://console.groq.com/docs/deprecations for a recommendation on which model to "
        "use instead.",
        code="model_decommissioned",
    )


def invalid_key_body() -> dict[str, Any]:
    """401 for a missing or unknown API key."""
    return error_body("Invalid API Key", code="invalid_api_key")


def context_length_body() -> dict[str, Any]:
    """400 when prompt plus completion budget exceed the model's context window."""
    return error_body(
        "Please reduce the length of the messages or completion.",
        param="messages",
        code="context_length_exceeded",
    )


def unknown_url_body(method: str, path: str) -> dict[str, Any]:
    """404 for a path Groq does not serve."""
    return error_body(
        f"Unknown request URL: {method} {path}. Please check the URL for typos, or see the docs "
        "at https://console.groq.com/docs/",
        code="unknown_url",
    )


SERVER_ERRORS: dict[int, dict[str, Any]] = {
    500: error_body("Internal Server Error", kind="internal_server_error"),
    502: error_body("Bad Gateway", kind="internal_server_error"),
    503: error_body(
        "Service Unavailable: the server is over capacity or down for maintenance, please try "
        "again later",
        kind="internal_server_error",
        code="service_unavailable",
    ),
    504: error_body("Gateway Timeout", kind="internal_server_error"),
}
"""Bodies for injected 5xx answers (no Groq 5xx body was ever recorded; these follow the
documented error object)."""

FLEX_CAPACITY_BODY = error_body(
    "flex tier capacity exceeded", kind="internal_server_error", code="capacity_exceeded"
)
"""Body of the 498 answer (documented status and code; the message is the substring clients
match on)."""
