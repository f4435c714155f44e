"""Bad input fails early with one clear, typed error, and loses nothing already stored.

Three kinds of bad input:

1. **Requests and configuration** (empty messages, unknown models, prompts too long for every
   model, impossible `max_tokens`, malformed environment, no keys, a catalog override missing
   fields): a typed error before any network call (the local server sees no request), and
   every store (Redis, both SQLite files) exactly as it was.
2. **Malformed rate-limit headers**, fuzzed with hypothesis: the parser never raises, and the
   quota ledger that folds them in stays finite and usable.
3. **Corrupt stores** (an SQLite file that is not a database; foreign or garbled entries under
   the package's Redis prefix, including keys of the wrong type): requests are served as usual,
   the corrupt entry is dropped (or, for a file, kept aside byte for byte) and every valid entry
   survives.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from ymera_groq_plugin.catalog import load_catalog
from ymera_groq_plugin.config import ApiKey, YmeraSettings
from ymera_groq_plugin.engine import Engine
from ymera_groq_plugin.errors import (
    ConfigurationError,
    ContextWindowError,
    InvalidRequestError,
    NoUsableKeyError,
    UnknownModelError,
    YmeraError,
)
from ymera_groq_plugin.headers import parse_error_text, parse_rate_limits
from ymera_groq_plugin.quota import QuotaManager
from ymera_groq_plugin.storage.memory import MemoryKeyStateStore, MemoryQuotaStore
from ymera_groq_plugin.storage.resilient import ResilientQuotaStore
from ymera_groq_plugin.testing import FakeClock
from ymera_groq_plugin.testing.server import GroqTestServer
from ymera_groq_plugin.types import TASK_TYPES, ChatRequest, Usage

from .conftest import (
    KEYS,
    MODEL,
    T0,
    background_done,
    closing,
    make_engine,
    on_portal,
    redis_dump,
    request,
)

pytestmark = pytest.mark.redis

SECRET_FRAGMENT = "reliability"
"""Part of every test key: no error message may contain it."""


def _sqlite_rows(path: Path) -> list[Any]:
    if not path.exists():
        return []
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return [(t, sorted(conn.execute(f"SELECT * FROM {t}").fetchall())) for t in sorted(tables)]
    finally:
        conn.close()


class Stored:
    """A snapshot of everything the package keeps (Redis and both SQLite files)."""

    def __init__(self, url: str, data_dir: Path) -> None:
        self.url = url
        self.data_dir = data_dir

    def take(self) -> Any:
        return (
            redis_dump(self.url, "ymera:*"),
            _sqlite_rows(self.data_dir / "cache.db"),
            _sqlite_rows(self.data_dir / "learning.db"),
        )


@pytest.fixture
def served(redis_url: str, tmp_path: Path) -> Iterator[tuple[GroqTestServer, Engine, ChatRequest]]:
    """A server and an engine holding stored state: one answer cached in every tier, its
    execution learned, its quota settled. The server's counters are then reset."""
    with GroqTestServer(KEYS) as server:
        engine = make_engine(server.base_url, tmp_path, clock=time.time, redis_url=redis_url)
        seed = request("Seed question: what is two plus two?", "seed-1")

        async def prime() -> None:
            await engine.ainvoke(seed)
            await background_done(engine)

        asyncio.run(prime())
        server.reset()
        try:
            yield server, engine, seed
        finally:
            engine.close()


def _huge_prompt() -> str:
    largest = max(m.context_window for m in load_catalog().served())
    return "word " * (largest + 5_000)


BAD_REQUESTS: list[tuple[str, dict[str, Any], type[YmeraError]]] = [
    ("empty messages", {"messages": ()}, InvalidRequestError),
    ("a message that is not a mapping", {"messages": ("hello",)}, InvalidRequestError),
    ("an invalid role", {"messages": ({"role": "wizard", "content": "x"},)}, InvalidRequestError),
    ("a message without content", {"messages": ({"role": "user"},)}, InvalidRequestError),
    ("an unknown model", {"model": "no-such/model-9000"}, UnknownModelError),
    ("an unknown alias", {"model": "gpt-4o"}, UnknownModelError),
    ("negative max_tokens", {"params": {"max_tokens": -1}}, InvalidRequestError),
    ("zero max_tokens", {"params": {"max_tokens": 0}}, InvalidRequestError),
    ("huge max_tokens", {"params": {"max_tokens": 10**9}}, InvalidRequestError),
    ("max_tokens as text", {"params": {"max_tokens": "100"}}, InvalidRequestError),
    ("max_tokens as a bool", {"params": {"max_completion_tokens": True}}, InvalidRequestError),
    ("temperature out of range", {"params": {"temperature": 7}}, InvalidRequestError),
    ("several completions", {"params": {"n": 3}}, InvalidRequestError),
    ("a prompt longer than every context window", {"huge": True}, ContextWindowError),
]


async def test_bad_requests_fail_before_any_call_and_keep_the_stores(
    served: tuple[GroqTestServer, Engine, ChatRequest], redis_url: str, tmp_path: Path
) -> None:
    server, engine, seed = served
    stored = Stored(redis_url, tmp_path)
    before = stored.take()
    for name, change, expected in BAD_REQUESTS:
        fields: dict[str, Any] = {
            "messages": ({"role": "user", "content": f"bad input: {name}"},),
            "model": MODEL,
            "params": {"temperature": 0},
        }
        if change.pop("huge", False):
            fields["messages"] = ({"role": "user", "content": _huge_prompt()},)
            fields["model"] = None
        fields.update(change)
        req = ChatRequest(**fields)
        with pytest.raises(expected) as info:
            await asyncio.wait_for(engine.ainvoke(req), 30)
        message = str(info.value)
        assert message and SECRET_FRAGMENT not in message, (name, message)
        if expected is ContextWindowError:
            err = info.value
            assert isinstance(err, ContextWindowError)
            assert err.required_tokens > err.largest_window
    # Not one request reached the server, and nothing stored changed.
    assert server.stats().requests == 0
    assert stored.take() == before
    assert await on_portal(engine, engine.quota.idle())
    # What was stored is still served.
    hit = await engine.ainvoke(request(seed.messages[0]["content"], "seed-again"))
    assert hit.cache_tier is not None and server.stats().requests == 0


async def test_no_keys_at_all_is_a_typed_error_before_any_call(tmp_path: Path) -> None:
    with GroqTestServer(KEYS) as server:
        settings = YmeraSettings(api_keys=(), base_url=server.base_url, data_dir=tmp_path)
        assert settings.api_keys == ()
        engine = Engine(settings)
        async with closing(engine):
            with pytest.raises(NoUsableKeyError, match="GROQ_API_KEY"):
                await engine.ainvoke(request("hello", "no-keys"))
        assert server.stats().requests == 0


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"GROQ_BASE_URL": "not a url"}, "GROQ_BASE_URL"),
        ({"GROQ_BASE_URL": "ftp://api.groq.com"}, "GROQ_BASE_URL"),
        ({"YMERA_REDIS_URL": "http://localhost:6379"}, "YMERA_REDIS_URL"),
        ({"YMERA_REDIS_URL": "redis://localhost:port/0"}, "YMERA_REDIS_URL"),
        ({"YMERA_MAX_WAIT": "soon"}, "YMERA_MAX_WAIT"),
        ({"YMERA_REQUEST_TIMEOUT": "-5"}, "YMERA_REQUEST_TIMEOUT"),
        ({"YMERA_CACHE_L1_MAX_ENTRIES": "lots"}, "YMERA_CACHE_L1_MAX_ENTRIES"),
        ({"YMERA_MAX_RETRIES": "1e9"}, "YMERA_MAX_RETRIES"),
        ({"YMERA_ALERT_THRESHOLDS": "0.9,abc"}, "YMERA_ALERT_THRESHOLDS"),
        ({"YMERA_CONTEXT_MARGIN": "NaN"}, "YMERA_CONTEXT_MARGIN"),
        ({"GROQ_API_KEY": "gsk_reliability has spaces"}, "GROQ_API_KEY"),
    ],
)
def test_a_malformed_environment_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], setting: str
) -> None:
    monkeypatch.setenv("GROQ_API_KEY_2", "gsk_reliabilityzzzzzzzzzzzzz99")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as info:
        YmeraSettings()
    assert setting in str(info.value)
    assert SECRET_FRAGMENT not in str(info.value)
    # The offending value is never echoed (it may be a key).
    for value in env.values():
        assert value not in str(info.value)


@pytest.mark.parametrize(
    "catalog",
    [
        [{"id": "brand/new-model"}],  # a new model without its window, completion or limits
        [{"id": MODEL, "limits": {"rpm": "many"}}],
        [{"limits": {"rpm": 1}}],  # no id
        {"models": "not a list"},
        "not json at all",
    ],
)
def test_a_malformed_catalog_override_is_a_configuration_error(
    tmp_path: Path, catalog: Any
) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(catalog if isinstance(catalog, str) else json.dumps(catalog))
    with GroqTestServer(KEYS) as server:
        settings = YmeraSettings(
            api_keys=[ApiKey(secret=SecretStr(k), label=f"k{i}") for i, k in enumerate(KEYS)],
            base_url=server.base_url,
            data_dir=tmp_path,
            catalog_path=path,
        )
        with pytest.raises(ConfigurationError, match="atalog"):
            Engine(settings)
        assert server.stats().requests == 0


# -- malformed rate-limit headers (fuzzed) ---------------------------------------------------

_HEADER_NAMES = [
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "retry-after",
    "retry-after-ms",
    "llm_provider-x-ratelimit-remaining-tokens",
]
_NASTY = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["", "-1", "NaN", "nan", "inf", "-inf", "1e309", "1e12", "99999999999999999999",
         "2m59.56s", "1h2m3.5s", "130ms", "10.332999999s", "5m-3s", "1.2.3s", "s", "ms",
         "1h1h1h", "٣s", "0x10", "1_000", " 7 ", "7s ", "\x00", "9" * 400 + "h"]
    ),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)
_HEADERS = st.dictionaries(
    st.one_of(st.sampled_from(_HEADER_NAMES), st.sampled_from([n.upper() for n in _HEADER_NAMES])),
    _NASTY,
    max_size=9,
)
_TEXTS = st.one_of(
    st.none(),
    st.text(max_size=200),
    st.builds(
        lambda kind, limit, used, req, wait, org: (
            f"Rate limit reached for model `m` in organization `{org}` service tier `on_demand` "
            f"on tokens per day ({kind}): Limit {limit}, Used {used}, Requested {req}. "
            f"Please try again in {wait}."
        ),
        st.sampled_from(["TPD", "TPM", "RPM", "RPD", "ITPM", "XYZ"]),
        st.sampled_from(["0", "1", "99999999999999", "-3", "abc", "1e5"]),
        st.sampled_from(["0", "5", "99999999999999999", "x"]),
        st.sampled_from(["1", "0", "123456789012345"]),
        _NASTY,
        st.text(max_size=12),
    ),
)


def _finite_or_none(value: Any) -> bool:
    return value is None or isinstance(value, str) or (
        not isinstance(value, bool) and math.isfinite(value) and value >= 0
    )


@settings(max_examples=400, deadline=None)
@given(headers=_HEADERS, text=_TEXTS)
def test_parse_rate_limits_never_raises(headers: dict[str, str], text: str | None) -> None:
    rl = parse_rate_limits(headers, text)
    for name in rl.__slots__:
        assert _finite_or_none(getattr(rl, name)), (name, getattr(rl, name))
    facts = parse_error_text(text)
    assert all(_finite_or_none(v) for v in facts.values())


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(headers=_HEADERS, text=_TEXTS, status=st.sampled_from([200, 429, 413, 500, 498, 401]))
def test_the_ledger_folds_in_any_headers_and_stays_usable(
    headers: dict[str, str], text: str | None, status: int
) -> None:
    async def run() -> None:
        clock = FakeClock(T0)
        keys = [
            ApiKey(secret=SecretStr(k), label=f"key{i}", org=o)
            for i, (k, o) in enumerate(KEYS.items(), start=1)
        ]
        manager = QuotaManager(
            keys,
            load_catalog(),
            quota_store=MemoryQuotaStore(),
            key_store=MemoryKeyStateStore(),
            clock=clock,
        )
        rl = parse_rate_limits(headers, text)
        grant = await manager.acquire(MODEL, 100)
        if status == 200:
            await manager.settle(grant, Usage(prompt_tokens=100, completion_tokens=20), rl)
        else:
            await manager.report_failure(grant, status=status, rate_limits=rl, message=text)
        assert await manager.idle()
        for org in ("org_a", "org_b"):
            state = await manager.ledger.state(org, MODEL)
            values = (*state.levels, state.pending_requests, state.pending_tokens, state.cool_until)
            assert all(math.isfinite(v) and v >= 0 for v in values), state
        # Still usable: a later request is granted or told when to come back, finitely.
        clock.advance(86_400 * 2)
        wait = await manager.time_until_room(MODEL, 100)
        assert wait == 0 or math.isfinite(wait) or status in (401, 413)

    asyncio.run(run())


# -- corrupt stores ----------------------------------------------------------------------------


async def test_corrupt_sqlite_files_are_kept_aside_and_replaced(tmp_path: Path) -> None:
    garbage = b"this is not a database\x00" * 400
    (tmp_path / "learning.db").write_bytes(garbage)
    (tmp_path / "cache.db").write_bytes(garbage)
    with GroqTestServer(KEYS) as server:
        engine = make_engine(server.base_url, tmp_path, clock=time.time)
        async with closing(engine):
            first = await engine.ainvoke(request("corrupt sqlite: first", "sq-1"))
            await background_done(engine)
            again = await engine.ainvoke(request("corrupt sqlite: first", "sq-2"))
            assert first.content and again.cache_tier is not None
            assert engine.learner is not None
            kept = await on_portal(engine, engine.learner.store.get("sq-1"))  # type: ignore[attr-defined]
            assert kept is not None and kept.success
    # The corrupt bytes are kept, whole; fresh files took their place.
    asides = sorted(p.name for p in tmp_path.iterdir() if ".corrupt" in p.name)  # noqa: ASYNC240
    assert any(n.startswith("learning.db.corrupt") for n in asides)
    assert "cache.db.corrupt" in asides
    for name in asides:
        if not name.endswith(("-wal", "-shm")):
            assert (tmp_path / name).read_bytes() == garbage
    assert _sqlite_rows(tmp_path / "learning.db") and _sqlite_rows(tmp_path / "cache.db")


def _plant(url: str, entries: dict[str, Any]) -> None:
    client = redis.Redis.from_url(url)
    try:
        for key, value in entries.items():
            client.delete(key)
            if isinstance(value, dict):
                client.hset(key, mapping=value)
            elif isinstance(value, list):
                client.rpush(key, *value)
            elif isinstance(value, set):
                client.sadd(key, *value)
            else:
                client.set(key, value)
    finally:
        client.close()


async def test_corrupt_and_foreign_redis_entries_are_dropped_and_nothing_else(
    redis_url: str, tmp_path: Path
) -> None:
    ns = "default"
    with GroqTestServer(KEYS) as server:
        engine = make_engine(server.base_url, tmp_path, clock=time.time, redis_url=redis_url)
        async with closing(engine):
            # Valid state first: an answer cached, an execution learned, the quota settled.
            keep = request("valid entry that must survive", "keep-1")
            await engine.ainvoke(keep)
            assert engine.cache is not None
            await engine.cache.aflush()
            await background_done(engine)
            valid = redis_dump(redis_url, "ymera:*")
            poisoned = [request(f"a request to be poisoned {i}", f"poison-{i}") for i in range(3)]
            k0, k1, k2 = (engine.cache.key_for(r) for r in poisoned)
            tag = "{" + ns + "}"
            foreign = json.dumps(
                {"ymera_cache": 1, "kind": "chat", "key": k0, "stored_at": 0,
                 "expires_at": 4e9, "value": {"message": {"role": "assistant",
                 "content": "an answer to another question"}, "model": MODEL, "usage": {}}}
            )
            pair = f"ymera:{ns}:quota:{{org_b|{MODEL}}}"
            planted = {
                # Cache: a value of the wrong type, bytes that are not text, and an answer
                # that belongs to another request (a foreign envelope).
                f"ymera:{ns}:cache:{tag}:e:{k0}": {"not": "a string"},
                f"ymera:{ns}:cache:{tag}:e:{k1}": b"\x80\x04garbage",
                f"ymera:{ns}:cache:{tag}:e:{k2}": foreign,
                # Quota: garbled fields, a garbled reservation, an expiry "zset" that is a list.
                f"{pair}:b": {"l1": "lots", "l3": "NaN", "t": "yesterday", "m3": "x"},
                f"{pair}:r": {"ghost": "no-numbers-here"},
                f"{pair}:x": ["not", "a", "zset"],
                f"ymera:{ns}:quota:workers": "not a zset",
                # Key health and merges of the wrong type.
                f"ymera:{ns}:key:key2": ["a", "list"],
                f"ymera:{ns}:orgs": {"members"},
            }
            _plant(redis_url, planted)
            learning = f"ymera:{ns}:learning:{tag}"
            client = redis.Redis.from_url(redis_url)
            try:
                client.zadd(f"{learning}:events", {"not an event": 10_000, "7\tx\ty": 10_001})
                client.hset(f"{learning}:exec", "poison-exec", "{broken json")
            finally:
                client.close()
            # Requests go on: on both organisations, through every store.
            results = await asyncio.gather(
                *(engine.ainvoke(request(f"after poisoning {i}", f"after-{i}")) for i in range(8)),
                *(engine.ainvoke(r) for r in poisoned),
            )
            assert all(r.content for r in results)
            # The poisoned entries were misses: answered upstream, not from the cache.
            assert all(r.cache_tier is None for r in results[-3:])
            assert "another question" not in results[-1].content
            assert {r.key_label for r in results} == {"key1", "key2"}
            quota_store = engine.quota.ledger.store
            assert isinstance(quota_store, ResilientQuotaStore)
            assert not quota_store.degraded  # bad data is not an outage
            assert not engine.quota.pool.store.degraded  # type: ignore[attr-defined]
            assert await on_portal(engine, quota_store.beat()) == 1
            await engine.cache.aflush()
            await background_done(engine)
            learner = engine.learner
            assert learner is not None
            await on_portal(engine, learner.refresh())
            # The poisoned log entries were skipped, and every answer served upstream is
            # learned once: keep-1, the eight after the poisoning, the three poisoned entries.
            assert sum(learner.evidence(None, t) for t in TASK_TYPES) == 12
            assert await on_portal(engine, learner.store.get("poison-exec")) is None
            with pytest.raises(InvalidRequestError):
                await engine.afeedback("poison-exec", 0.5)
            await engine.afeedback("after-1", 0.9)
            again = await engine.ainvoke(request("valid entry that must survive", "keep-2"))
            assert again.cache_tier is not None
    after = redis_dump(redis_url, "ymera:*")
    # The foreign values are gone or replaced by the package's own.
    for key, value in planted.items():
        assert after.get(key.encode()) != (value if not isinstance(value, str) else value.encode())
    # Every valid cache entry and learning record from before is still there, unchanged.
    for key, value in valid.items():
        if b":cache:" in key and b":e:" in key:
            assert after.get(key) == value
    events = dict(after[f"{learning}:events".encode()])
    for member, score in dict(valid[f"{learning}:events".encode()]).items():
        assert events.get(member) == score
    assert server.stats().by_status.get(200, 0) == 12
