"""Groq's rate-limit signals: Go durations, `x-ratelimit-*` headers and 429/413 texts.

Values come from recorded responses (shared/reference/groq-api.md §1). Malformed input is fuzzed:
a header is evidence, never a reason to fail a request, so the parsers never raise.
"""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ymera_groq_plugin.headers import (
    format_go_duration,
    parse_error_text,
    parse_go_duration,
    parse_rate_limits,
)
from ymera_groq_plugin.types import RateLimits

TPM_429 = (
    "Rate limit reached for model `llama-3.1-8b-instant` in organization `org_01j5abc` service "
    "tier `on_demand` on tokens per minute (TPM): Limit 6000, Used 5034, Requested 1443. Please "
    "try again in 4.77s. Need more tokens? Upgrade to Dev Tier today at "
    "https://console.groq.com/settings/billing"
)
TPD_429 = (
    "Rate limit reached for model `llama-3.3-70b-versatile` in organization `org_01xyz` service "
    "tier `on_demand` on tokens per day (TPD): Limit 100000, Used 97050, Requested 3619. Please "
    "try again in 9m38.016s. Need more tokens? Upgrade to Dev Tier today at "
    "https://console.groq.com/settings/billing"
)
TOO_LARGE_413 = (
    "Request too large for model `llama-3.3-70b-versatile` in organization `org_01xyz` service "
    "tier `on_demand` on tokens per minute (TPM): Limit 6000, Requested 10338, please reduce "
    "your message size and try again. Visit https://console.groq.com/docs/rate-limits for more "
    "information."
)
RPM_429 = (
    "Rate limit reached for model `openai/gpt-oss-20b` in organization `org_01r` service tier "
    "`on_demand` on requests per minute (RPM): Limit 30, Used 30, Requested 1. Please try again "
    "in 2s. Need more requests? Upgrade to Dev Tier today at "
    "https://console.groq.com/settings/billing"
)

# -- Go durations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2m59.56s", 179.56),
        ("7.66s", 7.66),
        ("6s", 6.0),
        ("130ms", 0.13),
        ("26ms", 0.026),
        ("10.332999999s", 10.332999999),
        ("1m26.4s", 86.4),
        ("1h2m3s", 3723.0),
        ("1.728s", 1.728),
        ("0s", 0.0),
        ("9", 9.0),
        (" 35 ", 35.0),
        ("2.5", 2.5),
        ("1h", 3600.0),
        ("500us", 0.0005),
        ("500µs", 0.0005),
        ("100ns", 1e-7),
        (".5s", 0.5),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "   ",
        "s",
        "ms",
        "abc",
        "-5s",
        "-1",
        "5x",
        "5s garbage",
        "1.5.5s",
        "1m-2s",
        "nan",
        "inf",
        "infs",
        "1e400",
        "11d",
        "999h",
        "5 s",
        "1h 2m",
        "0x10",
        "五秒",
    ],
)
def test_malformed_durations_give_none(text: str | None) -> None:
    assert parse_go_duration(text) is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-3, "0s"),
        (0.13, "130ms"),
        (7.66, "7.66s"),
        (179.56, "2m59.56s"),
        (86.4, "1m26.4s"),
        (3723, "1h2m3s"),
        (60, "1m0s"),
        (3600, "1h0m0s"),
    ],
)
def test_format_go_duration(seconds: float, text: str) -> None:
    assert format_go_duration(seconds) == text


@settings(max_examples=500)
@given(st.floats(min_value=0.001, max_value=9 * 86400, allow_nan=False))
def test_formatted_durations_parse_back(seconds: float) -> None:
    text = format_go_duration(seconds)
    back = parse_go_duration(text)
    assert back is not None
    # Milliseconds below one second, thousandths of a second above.
    assert back == pytest.approx(seconds, abs=0.0011)


# -- headers -----------------------------------------------------------------------------------


def test_recorded_headers() -> None:
    # The openllmetry streaming recording (2025-02).
    headers = {
        "x-ratelimit-limit-requests": "14400",
        "x-ratelimit-limit-tokens": "6000",
        "x-ratelimit-remaining-requests": "14399",
        "x-ratelimit-remaining-tokens": "5987",
        "x-ratelimit-reset-requests": "6s",
        "x-ratelimit-reset-tokens": "130ms",
        "x-request-id": "req_01jn3xyz",
        "x-groq-region": "us-west-1",
    }
    rl = parse_rate_limits(headers)
    assert rl == RateLimits(
        limit_requests=14400,
        remaining_requests=14399,
        reset_requests=6.0,
        limit_tokens=6000,
        remaining_tokens=5987,
        reset_tokens=0.13,
    )
    assert not rl.empty
    # Groq's resets fit (limit - remaining) × window / limit.
    assert rl.reset_requests == pytest.approx(1 * 86400 / 14400)
    assert rl.reset_tokens == pytest.approx(13 * 60 / 6000)


def test_headers_are_case_insensitive_and_accept_httpx_and_litellm_shapes() -> None:
    raw = httpx.Headers(
        {
            "X-RateLimit-Limit-Tokens": "8000",
            "X-RateLimit-Remaining-Tokens": "7990",
            "Retry-After": "9",
        }
    )
    rl = parse_rate_limits(raw)
    assert (rl.limit_tokens, rl.remaining_tokens, rl.retry_after) == (8000, 7990, 9.0)
    litellm = {
        "llm_provider-x-ratelimit-limit-requests": "1000",
        "llm_provider-x-ratelimit-reset-requests": "1m26.4s",
        "llm_provider-retry-after": "35",
    }
    rl = parse_rate_limits(litellm)
    assert (rl.limit_requests, rl.reset_requests, rl.retry_after) == (1000, 86.4, 35.0)


def test_retry_after_forms() -> None:
    assert parse_rate_limits({"retry-after-ms": "1500", "retry-after": "9"}).retry_after == 1.5
    assert parse_rate_limits({"retry-after-ms": "junk", "retry-after": "9"}).retry_after == 9.0
    assert parse_rate_limits({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}).retry_after is None
    # Without a header, the text's "try again in" is used.
    assert parse_rate_limits({}, TPD_429).retry_after == pytest.approx(578.016)
    assert parse_rate_limits({"retry-after": "2"}, TPD_429).retry_after == 2.0


def test_absent_or_empty_headers() -> None:
    assert parse_rate_limits(None).empty
    assert parse_rate_limits({}).empty
    assert parse_rate_limits({"content-type": "application/json"}) == RateLimits()


@pytest.mark.parametrize(
    "value",
    ["", "abc", "-1", "nan", "inf", "1e13", "1,000", "12 000", "0x10", "None", "[]"],
)
def test_malformed_numbers_give_none(value: str) -> None:
    headers = {
        name: value
        for name in (
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-requests",
            "x-ratelimit-reset-tokens",
            "retry-after",
        )
    }
    assert parse_rate_limits(headers) == RateLimits()


def test_numbers_that_are_not_strings() -> None:
    rl = parse_rate_limits(
        {"x-ratelimit-limit-requests": 1000, "x-ratelimit-remaining-tokens": 12.0}
    )
    assert (rl.limit_requests, rl.remaining_tokens) == (1000, 12)


# -- 429 / 413 texts ---------------------------------------------------------------------------


def test_tpm_429_text() -> None:
    assert parse_error_text(TPM_429) == {
        "limit_kind": "tpm",
        "limit_value": 6000,
        "used": 5034,
        "requested": 1443,
        "organization": "org_01j5abc",
        "wait": pytest.approx(4.77),
    }


def test_tpd_429_text_is_the_only_source_for_the_day_limit() -> None:
    rl = parse_rate_limits({"retry-after": "2", "x-ratelimit-limit-tokens": "12000"}, TPD_429)
    assert (rl.limit_kind, rl.limit_value, rl.used, rl.requested) == ("tpd", 100000, 97050, 3619)
    assert rl.organization == "org_01xyz"
    assert rl.limit_tokens == 12000  # the header still speaks of the minute


def test_413_text_has_no_used() -> None:
    facts = parse_error_text(TOO_LARGE_413)
    assert facts == {
        "limit_kind": "tpm",
        "limit_value": 6000,
        "requested": 10338,
        "organization": "org_01xyz",
    }


def test_rpm_text() -> None:
    rl = parse_rate_limits({}, RPM_429)
    assert (rl.limit_kind, rl.limit_value, rl.used, rl.retry_after) == ("rpm", 30, 30, 2.0)


@pytest.mark.parametrize(
    "message",
    [
        None,
        "",
        "Invalid API Key",
        "Service Unavailable",
        "Rate limit reached, try again later",
        "on tokens per eon (TPE): Limit 5",
        "try again in soon",
    ],
)
def test_texts_without_facts(message: str | None) -> None:
    assert parse_error_text(message) == {}
    assert parse_rate_limits({}, message) == RateLimits()


# -- fuzzing -----------------------------------------------------------------------------------

HEADER_NAMES = [
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "retry-after",
    "retry-after-ms",
    "llm_provider-x-ratelimit-limit-tokens",
    "X-RateLimit-Remaining-Tokens",
]
junk_values = st.one_of(
    st.text(max_size=30),
    st.text(alphabet="0123456789.hmsuµn-+eE ,_", max_size=20),
    st.from_regex(r"\A-?[0-9]{1,15}(\.[0-9]{0,12})?(h|m|s|ms|us|ns)?\Z"),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.booleans(),
)


def _check(rl: RateLimits) -> None:
    for name in (
        "limit_requests",
        "remaining_requests",
        "limit_tokens",
        "remaining_tokens",
        "limit_value",
        "used",
        "requested",
    ):
        v = getattr(rl, name)
        assert v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)
    for name in ("reset_requests", "reset_tokens", "retry_after"):
        v = getattr(rl, name)
        assert v is None or (isinstance(v, float) and math.isfinite(v) and 0 <= v <= 10 * 86400)
    assert rl.limit_kind in (None, "rpm", "rpd", "tpm", "tpd")
    assert rl.organization is None or isinstance(rl.organization, str)


@settings(max_examples=1000)
@given(
    headers=st.dictionaries(
        st.one_of(st.sampled_from(HEADER_NAMES), st.text(max_size=20)), junk_values, max_size=12
    ),
    message=st.one_of(st.none(), st.text(max_size=200)),
)
def test_malformed_headers_never_raise(headers: dict[str, Any], message: str | None) -> None:
    _check(parse_rate_limits(headers, message))


@settings(max_examples=500)
@given(
    kind=st.sampled_from(["RPM", "RPD", "TPM", "TPD", "ITPM", "rpm"]),
    limit=st.integers(0, 10**12),
    used=st.integers(0, 10**12),
    wait=st.text(alphabet="0123456789.hmsµun", max_size=15),
    noise=st.text(max_size=40),
)
def test_mangled_429_texts_never_raise(
    kind: str, limit: int, used: int, wait: str, noise: str
) -> None:
    unit = "requests" if kind.upper().startswith("R") else "tokens"
    span = "minute" if kind.upper().endswith("M") else "day"
    message = (
        f"{noise}Rate limit reached in organization `{noise}` on {unit} per {span} ({kind}): "
        f"Limit {limit}, Used {used}, Requested {noise}. Please try again in {wait}.{noise}"
    )
    rl = parse_rate_limits({}, message)
    _check(rl)
    assert rl.limit_value == limit and rl.used == used


@settings(max_examples=300)
@given(st.text(max_size=40))
def test_parse_go_duration_never_raises(text: str) -> None:
    v = parse_go_duration(text)
    assert v is None or (math.isfinite(v) and 0 <= v <= 10 * 86400)
