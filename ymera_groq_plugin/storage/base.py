"""Storage protocols and the helpers every backend shares.

Each concern has a small Protocol (a few verbs plus `check()` for health) and one class per
backend, named `<Backend><Concern>Store`. Logic classes (`QuotaLedger`, `TieredCache`,
`Learner`) take a store in their constructor and never import a backend's exceptions: each
backend maps its errors to `StorageError` here, at one boundary.

Values are JSON everywhere (no pickle): nothing read from a store is ever executed.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from typing import TYPE_CHECKING, Any, cast

from ..errors import StorageError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "KEY_PREFIX",
    "astorage_errors",
    "dumps",
    "is_cluster",
    "loads",
    "redis_client",
    "storage_errors",
]

KEY_PREFIX = "ymera:"
"""Every Redis key the package writes starts with this."""


def _backend_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [sqlite3.Error, OSError, TimeoutError]
    try:
        import redis.exceptions

        # Cluster failures outside `RedisError`: no reachable startup node, a slot no primary
        # serves (a failed primary with no replica), a cross-slot transaction.
        # `ClusterDownError`, `MasterDownError`, `TryAgainError`, `MovedError`/`AskError`
        # (after redis-py's own retries) and Sentinel's `MasterNotFoundError` are `RedisError`s.
        errors += [redis.exceptions.RedisError, redis.exceptions.RedisClusterException]
    except ImportError:  # the redis extra is not installed
        pass
    return tuple(errors)


_ERRORS: tuple[type[BaseException], ...] | None = None


def _errors() -> tuple[type[BaseException], ...]:
    global _ERRORS
    if _ERRORS is None:
        _ERRORS = _backend_errors()
    return _ERRORS


@contextmanager
def storage_errors(backend: str, operation: str) -> Iterator[None]:
    """Map a backend's exceptions to `StorageError` (sync code)."""
    try:
        yield
    except _errors() as exc:
        raise StorageError(
            f"{backend} {operation} failed: {type(exc).__name__}: {exc}", storage_error=exc
        ) from exc


@asynccontextmanager
async def astorage_errors(backend: str, operation: str) -> AsyncIterator[None]:
    """Map a backend's exceptions to `StorageError` (async code)."""
    try:
        yield
    except _errors() as exc:
        raise StorageError(
            f"{backend} {operation} failed: {type(exc).__name__}: {exc}", storage_error=exc
        ) from exc


def lua_script(*names: str) -> str:
    """The named files under `storage/lua/` joined in order, after the `safe.lua` prelude that
    every script calls (Redis runs one source per script; there is no `require`)."""
    lua = resources.files("ymera_groq_plugin.storage").joinpath("lua")
    return "\n".join(lua.joinpath(n).read_text("utf-8") for n in ("safe.lua", *names))


def dumps(value: Any) -> str:
    """Compact, key-sorted JSON: the only serialisation a store uses."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def loads(text: str | bytes) -> Any:
    """Parse JSON written by `dumps`; raises `ValueError` on anything else."""
    return json.loads(text)


def redis_client(url: str, **kwargs: Any) -> Redis:
    """A Redis client for a URL, with short timeouts so an outage fails fast.

    `redis://`, `rediss://` and `unix://` give a `redis.asyncio.Redis`; `redis+cluster://`
    (`rediss+cluster://`) a `redis.asyncio.cluster.RedisCluster` over the listed startup nodes;
    `redis+sentinel://` (`rediss+sentinel://`) the master of a Sentinel service, re-resolved
    after a failover (see `storage.redis_url` for the forms).

    Raises:
        ConfigurationError: The URL is malformed (named with its password masked), or the
            `redis` extra is not installed.
    """
    from .redis_url import client_options, parse_redis_url

    target = parse_redis_url(url)
    try:
        from redis.asyncio import Redis
    except ImportError:
        from ..errors import ConfigurationError

        raise ConfigurationError(
            "Redis support needs the redis extra: pip install 'ymera-groq-plugin[redis]'",
            setting="YMERA_REDIS_URL",
        ) from None
    options: dict[str, Any] = {
        "socket_timeout": 1.0,
        "socket_connect_timeout": 1.0,
        "health_check_interval": 15,
        "decode_responses": False,
    }
    if target.topology == "server":
        options.update(kwargs)
        return Redis.from_url(url, **options)
    options.update(client_options(target))
    options.update(kwargs)
    if target.topology == "cluster":
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        # A slot without a primary (one died, no replica yet) fails only the keys in it: the
        # client must still start and serve the others.
        options.setdefault("require_full_coverage", False)
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes], **options
        )
        # The stores use the commands both clients share (scripts, pipelines, scans, single
        # keys), so they are typed against `Redis`.
        return cast("Redis", cluster)
    from redis.asyncio.sentinel import Sentinel

    sentinel_kwargs = {k: v for k, v in options.items() if k.startswith("socket_")}
    sentinel_kwargs.update(dict(target.sentinel_auth))
    sentinel = Sentinel(target.nodes, sentinel_kwargs=sentinel_kwargs, **options)
    assert target.service is not None  # parse_redis_url requires it
    client: Redis = sentinel.master_for(target.service, redis_class=_sentinel_redis_class())
    client._ymera_sentinel = sentinel  # type: ignore[attr-defined]
    return client


_SENTINEL_REDIS: type[Redis] | None = None


def _sentinel_redis_class() -> type[Redis]:
    """A `Redis` whose `aclose` also closes the Sentinel connections it found its master
    through (redis-py leaves those open)."""
    global _SENTINEL_REDIS
    if _SENTINEL_REDIS is None:
        from redis.asyncio import Redis

        class SentinelRedis(Redis):
            async def aclose(self, close_connection_pool: bool | None = None) -> None:
                try:
                    await super().aclose(close_connection_pool)
                finally:
                    sentinel = getattr(self, "_ymera_sentinel", None)
                    for s in getattr(sentinel, "sentinels", ()):
                        await s.aclose()

        _SENTINEL_REDIS = SentinelRedis
    return _SENTINEL_REDIS


def is_cluster(client: Any) -> bool:
    """Whether a client is a `RedisCluster` (keys of one command must share a slot)."""
    try:
        from redis.asyncio.cluster import RedisCluster
    except ImportError:
        return False
    return isinstance(client, RedisCluster)
