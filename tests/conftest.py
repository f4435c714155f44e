"""Shared fixtures: a real redis-server, cassettes, and a hermetic environment."""

from __future__ import annotations

import os

# LiteLLM downloads its price map at import and a Llama tokenizer for Groq models unless told
# not to; tests never touch the internet.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["HF_HUB_OFFLINE"] = "1"
# A developer's real keys and settings must not leak into tests.
for _name in list(os.environ):
    if _name.startswith(("GROQ_", "YMERA_")):
        del os.environ[_name]

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from hypothesis import HealthCheck, settings

from ymera_groq_plugin.testing import FakeClock, RedisServer
from ymera_groq_plugin.testing.redis_topologies import RedisClusterServer, RedisSentinelServer

# A test must pass on a busy machine: no per-example deadline and no "generation too slow"
# health check (both measure wall time). Tests' own `@settings` inherit this profile.
settings.register_profile("busy", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("busy")

ROOT = Path(__file__).resolve().parent.parent


class ExternalRedis:
    """A Redis given by `REDIS_URL`: usable, but this process cannot stop or restart it."""

    restartable = False

    def __init__(self, url: str) -> None:
        self.url = url
        self.port = urlparse(url).port or 6379

    def stop(self) -> None:
        pytest.skip("REDIS_URL points at an external server that tests cannot stop")

    start = restart = stop


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    """A real Redis for the whole session: `REDIS_URL` if set, else a redis-server we start.

    The started server has `.stop()`, `.start()` and `.restart()` for outage tests.
    """
    if url := os.environ.get("REDIS_URL"):
        yield ExternalRedis(url)
        return
    server = RedisServer()
    server.restartable = True  # type: ignore[attr-defined]
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: Any) -> str:
    """The URL of a flushed, running Redis (restarted first if an earlier test stopped it)."""
    import redis

    if getattr(redis_server, "restartable", False) and not redis_server.running:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return str(redis_server.url)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServer]:
    """A real 3-primary Redis Cluster for the whole session (same binary as `redis_server`;
    the launcher assigns the slots). Started on first use only."""
    with RedisClusterServer(primaries=3) as cluster:
        yield cluster


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterServer) -> str:
    """The `redis+cluster://` URL of the session's cluster, every node running, emptied."""
    for node in redis_cluster.nodes:
        if not node.running:
            node.start()
    redis_cluster.wait_ok()
    redis_cluster.flushall()
    return redis_cluster.url


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[RedisSentinelServer]:
    """A real Sentinel group (one primary, one replica, one Sentinel) for the whole session."""
    with RedisSentinelServer() as group:
        yield group


@pytest.fixture
def redis_sentinel_url(redis_sentinel: RedisSentinelServer) -> str:
    """The `redis+sentinel://` URL of the session's group, settled on one primary (a test
    may have switched or stopped one), emptied."""
    for server in redis_sentinel.servers:
        if not server.running:
            server.start()
    redis_sentinel.settle()
    redis_sentinel.flushall()
    return redis_sentinel.url


@pytest.fixture
def clock() -> FakeClock:
    """A fake wall clock; advance it instead of sleeping."""
    return FakeClock()


def _drop_cookies(response: dict[str, Any]) -> dict[str, Any]:
    headers = response.get("headers") or {}
    for name in list(headers):
        if name.lower() == "set-cookie":
            del headers[name]
    return response


@pytest.fixture(scope="module")
def vcr_config() -> dict[str, Any]:
    """Keep `x-ratelimit-*` and `retry-after`; drop request credentials and cookies."""
    return {
        "filter_headers": [
            ("authorization", "DUMMY"),
            ("api-key", "DUMMY"),
            ("x-api-key", "DUMMY"),
            ("cookie", None),
        ],
        "before_record_response": _drop_cookies,
        "match_on": ["method", "scheme", "host", "port", "path", "query"],
        "decode_compressed_response": False,
    }


@pytest.fixture(scope="module")
def vcr_cassette_dir() -> str:
    return str(ROOT / "cassettes")
