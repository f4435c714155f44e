"""Pure parsers for Groq's rate-limit signals: `x-ratelimit-*`, `retry-after` and 429/413 texts.

`x-ratelimit-*-requests` always describes requests per day and `x-ratelimit-*-tokens` tokens
per minute; reset values are Go durations (`2m59.56s`, `7.66s`, `10.332999999s`, `130ms`). No
header reports RPM or TPD: those are learned from the 429 text, which names the limit
(`on tokens per day (TPD): Limit 100000, Used 97050, Requested 3619`). Malformed values are
ignored (a header is evidence, never a reason to fail a request).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Literal, cast

from .types import RateLimits

__all__ = ["format_go_duration", "parse_error_text", "parse_go_duration", "parse_rate_limits"]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ns|us|µs|ms|h|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_MAX_SECONDS = 10 * 86400.0  # nothing Groq reports is longer than its day window

_LIMIT_TEXT = re.compile(
    r"on (?:requests|tokens) per (?:minute|day) \((?P<kind>RPM|RPD|TPM|TPD|ITPM|OTPM)\)"
    r":\s*Limit (?P<limit>\d+)(?:, Used (?P<used>\d+))?(?:, Requested (?P<requested>\d+))?",
    re.IGNORECASE,
)
_ORG_TEXT = re.compile(r"in organization `(?P<org>[^`]+)`")
_TRY_AGAIN = re.compile(r"try again in (?P<wait>[0-9.hmsµun]+)", re.IGNORECASE)


def parse_go_duration(value: str | None) -> float | None:
    """Seconds in a Go duration (`1h2m3.5s`, `130ms`) or a bare number; `None` if malformed."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pos = 0
        seconds = 0.0
        for m in _DURATION_PART.finditer(text):
            if m.start() != pos:
                return None
            seconds += float(m.group(1)) * _UNIT[m.group(2)]
            pos = m.end()
        if pos != len(text) or pos == 0:
            return None
    if not math.isfinite(seconds) or seconds < 0 or seconds > _MAX_SECONDS:
        return None
    return seconds


def format_go_duration(seconds: float) -> str:
    """Format seconds the way Groq does: `2m59.56s`, `7.66s`, `130ms`, `0s`."""
    # Round to Groq's precision first, so a carry (119.9999 s) becomes 2m0s, not 1m60s.
    millis = round(seconds * 1000)
    if millis <= 0:
        return "0s" if seconds <= 0 else "1ms"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis / 1000, 3600)
    minutes, secs = divmod(rest, 60)
    out = ""
    if hours >= 1:
        out += f"{int(hours)}h"
    if minutes >= 1 or hours >= 1:
        out += f"{int(minutes)}m"
    s = f"{secs:.3f}".rstrip("0").rstrip(".")
    return out + f"{s or '0'}s"


def _bounded(text: str | None) -> int | None:
    """An integer from a message, or `None` when absent or implausibly large."""
    if not text or len(text) > 13:
        return None
    value = int(text)
    return value if value <= 10**12 else None


def _int(headers: Mapping[str, Any], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = float(str(raw).strip())
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0 or value > 1e12:
        return None
    return int(value)


def _retry_after(headers: Mapping[str, Any]) -> float | None:
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            v = float(str(ms)) / 1000
            if math.isfinite(v) and 0 <= v <= _MAX_SECONDS:
                return v
        except ValueError:
            pass
    raw = headers.get("retry-after")
    return parse_go_duration(str(raw)) if raw is not None else None


def parse_error_text(message: str | None) -> dict[str, Any]:
    """Facts in a 429/413 message: limit kind, limit, used, requested, organisation, wait."""
    out: dict[str, Any] = {}
    if not message:
        return out
    if m := _LIMIT_TEXT.search(message):
        kind = m.group("kind").lower()
        if kind in ("itpm", "otpm"):
            kind = "tpm"
        limit = _bounded(m.group("limit"))
        if limit is not None:
            out["limit_kind"] = kind
            out["limit_value"] = limit
            for field in ("used", "requested"):
                if (value := _bounded(m.group(field))) is not None:
                    out[field] = value
    if m := _ORG_TEXT.search(message):
        out["organization"] = m.group("org")
    if m := _TRY_AGAIN.search(message):
        wait = parse_go_duration(m.group("wait").rstrip("."))
        if wait is not None:
            out["wait"] = wait
    return out


def parse_rate_limits(
    headers: Mapping[str, Any] | None, error_message: str | None = None
) -> RateLimits:
    """Build `RateLimits` from response headers (case-insensitive) and an error text.

    Args:
        headers: Response headers; `httpx.Headers` or any mapping. LiteLLM's
            `llm_provider-` prefixed copies are understood too.
        error_message: The `error.message` of a 429/413 body, if any.
    """
    h: dict[str, Any] = {}
    for k, v in (headers or {}).items():
        key = str(k).lower()
        key = key.removeprefix("llm_provider-")
        h[key] = v
    facts = parse_error_text(error_message)
    retry_after = _retry_after(h)
    if retry_after is None and "wait" in facts:
        retry_after = facts["wait"]
    kind = facts.get("limit_kind")
    return RateLimits(
        limit_requests=_int(h, "x-ratelimit-limit-requests"),
        remaining_requests=_int(h, "x-ratelimit-remaining-requests"),
        reset_requests=parse_go_duration(_str(h.get("x-ratelimit-reset-requests"))),
        limit_tokens=_int(h, "x-ratelimit-limit-tokens"),
        remaining_tokens=_int(h, "x-ratelimit-remaining-tokens"),
        reset_tokens=parse_go_duration(_str(h.get("x-ratelimit-reset-tokens"))),
        retry_after=retry_after,
        limit_kind=cast(Literal["rpm", "rpd", "tpm", "tpd"] | None, kind),
        limit_value=facts.get("limit_value"),
        used=facts.get("used"),
        requested=facts.get("requested"),
        organization=facts.get("organization"),
    )


def _str(value: Any) -> str | None:
    return None if value is None else str(value)
