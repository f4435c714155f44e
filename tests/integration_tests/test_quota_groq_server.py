"""The quota manager in front of the local Groq server: a burst far beyond one key's limit gets
through with zero 429s, spread over the keys.

The server and the manager share one `FakeClock`; a ticker moves it while calls wait, so a
minute window passes in well under a second of real time. Every call goes through the official
`groq.AsyncGroq` client (`max_retries=0`, so a 429 would surface instead of being retried), with
`with_raw_response` to read Groq's rate-limit headers, which are folded into the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

import groq
from pydantic import SecretStr

from ymera_groq_plugin.catalog import load_catalog
from ymera_groq_plugin.config import ApiKey
from ymera_groq_plugin.errors import QuotaExhaustedError
from ymera_groq_plugin.headers import parse_rate_limits
from ymera_groq_plugin.quota import QuotaManager
from ymera_groq_plugin.storage.memory import MemoryKeyStateStore, MemoryQuotaStore
from ymera_groq_plugin.testing import FakeClock
from ymera_groq_plugin.testing.server import GroqTestServer
from ymera_groq_plugin.tokens import estimate_prompt_tokens
from ymera_groq_plugin.types import Usage

MODEL = "openai/gpt-oss-20b"
LIMITS = {"rpm": 4, "rpd": 1000, "tpm": 3000, "tpd": 200_000}
KEYS = {
    "gsk_burstkeyaaaaaaaaaaaaaaaa01": "org_a",
    "gsk_burstkeybbbbbbbbbbbbbbbb02": "org_b",
    "gsk_burstkeycccccccccccccccc03": "org_c",
}
BURST = 36  # nine times one key's requests per minute


def _error_message(exc: groq.APIStatusError) -> str | None:
    body: Any = exc.body
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else None


async def _tick(clock: FakeClock, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await asyncio.sleep(0.004)
        clock.advance(0.5)


async def test_a_burst_beyond_every_key_gets_zero_429s() -> None:
    clock = FakeClock(1_800_000_000.0)
    # The user's catalog knows the organisation's limits (RPM has no header); the rest are
    # learned from Groq's answers.
    catalog = load_catalog(overrides=[{"id": MODEL, "limits": LIMITS}])
    keys = [
        ApiKey(secret=SecretStr(secret), label=f"key{n}", org=org)
        for n, (secret, org) in enumerate(KEYS.items(), start=1)
    ]
    manager = QuotaManager(
        keys,
        catalog,
        quota_store=MemoryQuotaStore(),
        key_store=MemoryKeyStateStore(),
        clock=clock,
        max_poll=0.005,
    )
    statuses: Counter[int] = Counter()
    used_keys: Counter[str] = Counter()

    with GroqTestServer(KEYS, limits={MODEL: LIMITS}, clock=clock) as server:
        clients = {
            k.label: groq.AsyncGroq(
                api_key=k.secret.get_secret_value(), base_url=server.base_url, max_retries=0
            )
            for k in keys
        }

        async def call(n: int) -> None:
            messages: list[Any] = [
                {"role": "user", "content": f"Question {n}: what is {n} times {n + 1}?"}
            ]
            grant = await manager.acquire(MODEL, estimate_prompt_tokens(messages), wait=3600)
            client = clients[grant.key.label]
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model=MODEL,
                    messages=messages,
                    max_tokens=64,
                )
            except groq.APIStatusError as exc:
                statuses[exc.status_code] += 1
                message = _error_message(exc)
                await manager.report_failure(
                    grant,
                    status=exc.status_code,
                    rate_limits=parse_rate_limits(exc.response.headers, message),
                    message=message,
                )
                return
            statuses[raw.status_code] += 1
            used_keys[grant.key.label] += 1
            completion = await raw.parse()
            usage = completion.usage.model_dump() if completion.usage else None
            await manager.settle(grant, Usage.from_openai(usage), parse_rate_limits(raw.headers))

        stop = asyncio.Event()
        ticker = asyncio.create_task(_tick(clock, stop))
        try:
            await asyncio.wait_for(asyncio.gather(*(call(n) for n in range(BURST))), 60)
        finally:
            stop.set()
            await ticker
            for c in clients.values():
                with contextlib.suppress(Exception):
                    await c.close()
        stats = server.stats()

    assert statuses == Counter({200: BURST})
    assert stats.rate_limited == {}
    assert 429 not in stats.by_status and 413 not in stats.by_status
    # Spread over the keys: each organisation served its share of the burst.
    assert sum(used_keys.values()) == BURST
    assert set(used_keys) == {"key1", "key2", "key3"}
    assert min(used_keys.values()) >= BURST // 3 - 2
    assert await manager.idle()
    # What Groq reported was folded in: the day's requests as the server counts them.
    usage = await manager.usage()
    remaining = usage["models"][MODEL]["remaining"]
    assert set(remaining) == {"org_a", "org_b", "org_c"}
    assert sum(1000 - r["requests"] for r in remaining.values()) >= BURST - 3
    await manager.aclose()


async def test_a_limit_learned_from_a_429_stops_the_next_ones() -> None:
    """A catalog that overstates RPM: the first 429 teaches the real limit (from its text) and
    no call is refused again. Time moves only when the manager says to wait, by that much."""
    clock = FakeClock(1_800_000_000.0)
    catalog = load_catalog(overrides=[{"id": MODEL, "limits": {**LIMITS, "rpm": 30}}])
    secret, org = next(iter(KEYS.items()))
    key = ApiKey(secret=SecretStr(secret), label="key1", org=org)
    manager = QuotaManager(
        [key],
        catalog,
        quota_store=MemoryQuotaStore(),
        key_store=MemoryKeyStateStore(),
        clock=clock,
    )
    statuses: Counter[int] = Counter()
    waited = 0.0
    with GroqTestServer({secret: org}, limits={MODEL: LIMITS}, clock=clock) as server:
        async with groq.AsyncGroq(
            api_key=secret, base_url=server.base_url, max_retries=0
        ) as client:
            for n in range(12):
                messages: list[Any] = [{"role": "user", "content": f"hello {n}"}]
                while True:
                    try:
                        grant = await manager.acquire(MODEL, estimate_prompt_tokens(messages))
                        break
                    except QuotaExhaustedError as exc:
                        wait = exc.retry_after
                    assert wait is not None
                    clock.advance(wait)
                    waited += wait
                try:
                    raw = await client.chat.completions.with_raw_response.create(
                        model=MODEL,
                        messages=messages,
                        max_tokens=16,
                    )
                except groq.RateLimitError as exc:
                    statuses[429] += 1
                    message = _error_message(exc)
                    await manager.report_failure(
                        grant,
                        status=429,
                        rate_limits=parse_rate_limits(exc.response.headers, message),
                        message=message,
                    )
                    continue
                statuses[200] += 1
                completion = await raw.parse()
                usage = completion.usage.model_dump() if completion.usage else None
                await manager.settle(
                    grant, Usage.from_openai(usage), parse_rate_limits(raw.headers)
                )
    assert statuses == Counter({200: 11, 429: 1})
    state = await manager.ledger.state(org, MODEL)
    assert state.learned[0] == 4 and state.limits[0] == 4
    # After the 429, one request per 15 s: the pace RPM 4 allows, and no faster.
    assert waited >= (11 - 4) * 15 - 1e-6
    assert await manager.idle()
    await manager.aclose()
