"""Shared pieces of the reliability suite: a local Groq server on a fake clock that a ticker
moves, engines wired to it, and a Redis of our own that tests may stop, wipe and restart."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import SecretStr

from ymera_groq_plugin.catalog import Catalog, load_catalog
from ymera_groq_plugin.config import ApiKey, YmeraSettings
from ymera_groq_plugin.engine import Engine
from ymera_groq_plugin.testing import FakeClock, RedisServer
from ymera_groq_plugin.types import ChatRequest

T = TypeVar("T")

T0 = 1_800_000_000.0
MODEL = "openai/gpt-oss-20b"
KEYS = {
    "gsk_reliabilityaaaaaaaaaaaaa01": "org_a",
    "gsk_reliabilitybbbbbbbbbbbbb02": "org_b",
}


def api_keys(keys: Mapping[str, str] = KEYS) -> list[ApiKey]:
    return [
        ApiKey(secret=SecretStr(secret), label=f"key{n}", org=org)
        for n, (secret, org) in enumerate(keys.items(), start=1)
    ]


def catalog_with(limits: Mapping[str, int | None], model: str = MODEL) -> Catalog:
    """The embedded catalog with `model`'s limits replaced (what the server enforces)."""
    return load_catalog(overrides=[{"id": model, "limits": dict(limits)}])


def make_engine(
    server_url: str,
    data_dir: Path,
    *,
    clock: Any,
    catalog: Catalog | None = None,
    keys: Mapping[str, str] = KEYS,
    **settings: Any,
) -> Engine:
    s = YmeraSettings(
        api_keys=api_keys(keys), base_url=server_url, data_dir=data_dir, **settings
    )
    return Engine(s, catalog=catalog, clock=clock)


def request(
    text: str, rid: str, *, model: str | None = MODEL, stream: bool = False, **params: Any
) -> ChatRequest:
    return ChatRequest(
        messages=({"role": "user", "content": text},),
        model=model,
        params={"temperature": 0, "max_tokens": 32, **params},
        request_id=rid,
        stream=stream,
    )


async def on_portal(engine: Engine, coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine where the engine's state lives."""
    return await engine.portal.arun(coro)


class Ticker:
    """Moves a fake clock in real time (`speed` clock seconds per real second), so minute
    windows pass in about a second while everything still reads one consistent clock."""

    def __init__(self, clock: FakeClock, speed: float = 50.0, step: float = 0.005) -> None:
        self.clock = clock
        self.speed = speed
        self.step = step
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.step):
            self.clock.advance(self.speed * self.step)

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this module's own, so stopping, wiping or persisting it never
    disturbs the session's shared one."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def own_redis_url(own_redis: RedisServer) -> str:
    import redis

    if not own_redis.running:
        own_redis.start()
    client = redis.Redis.from_url(own_redis.url)
    try:
        client.config_set("save", "")
        client.flushall()
    finally:
        client.close()
    with contextlib.suppress(FileNotFoundError):
        (Path(own_redis.workdir) / "dump.rdb").unlink()
    return own_redis.url


@contextlib.asynccontextmanager
async def closing(*engines: Engine) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for e in engines:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(e.aclose(), 20)


def redis_dump(url: str, pattern: str = "*") -> dict[bytes, Any]:
    """Every key's type and value (not its TTL), for before/after comparisons and scans."""
    import redis

    client = redis.Redis.from_url(url)
    out: dict[bytes, Any] = {}
    try:
        for key in client.scan_iter(match=pattern, count=1000):
            kind = client.type(key)
            if kind == b"string":
                out[key] = client.get(key)
            elif kind == b"hash":
                out[key] = client.hgetall(key)
            elif kind == b"zset":
                out[key] = client.zrange(key, 0, -1, withscores=True)
            elif kind == b"list":
                out[key] = client.lrange(key, 0, -1)
            elif kind == b"set":
                out[key] = client.smembers(key)
            else:
                out[key] = kind
    finally:
        client.close()
    return out


async def background_done(engine: Engine) -> None:
    """Let the engine's background work (write-behind cache stores, learning records) end."""
    await engine.aflush()
