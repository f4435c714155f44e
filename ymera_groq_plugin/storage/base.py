"""Storage protocols and the helpers every backend shares.

Each concern has a small Protocol (a few verbs plus `check()` for health) and one class per
backend, named `<Backend><Concern>Store`. Logic classes (`QuotaLedger`, `TieredCache`,
`Learner`) take a store in their constructor and never import a backend's exceptions: each
backend maps its errors to `StorageError` here, at one boundary.

Values are JSON everywhere (no pickle): nothing read from a store is ever executed.
"""

from __future__ import annotations

import json
import math
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


def redis_client(url: str, *, master_check: float | None = None, **kwargs: Any) -> Redis:
    """A Redis client for a URL, with short timeouts so an outage fails fast.

    `redis://`, `rediss://` and `unix://` give a `redis.asyncio.Redis`; `redis+cluster://`
    (`rediss+cluster://`) a `redis.asyncio.cluster.RedisCluster` over the listed startup nodes;
    `redis+sentinel://` (`rediss+sentinel://`) the master of a Sentinel service, re-resolved
    after a failover (see `storage.redis_url` for the forms).

    Args:
        url: The Redis URL.
        master_check: Sentinel only: how often (seconds, while commands flow) the client asks
            the Sentinel which server is the primary, so pooled connections leave an old
            primary that still accepts writes after a switch (0: before every command);
            default: the URL's `master_check=`, else 0.5.
        **kwargs: Further `redis-py` client options.

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
    sentinel_class, pool_class = _sentinel_classes()
    sentinel_kwargs = {k: v for k, v in options.items() if k.startswith("socket_")}
    sentinel_kwargs.update(dict(target.sentinel_auth))
    sentinel = sentinel_class(target.nodes, sentinel_kwargs=sentinel_kwargs, **options)
    assert target.service is not None  # parse_redis_url requires it
    client: Redis = sentinel.master_for(
        target.service,
        redis_class=_sentinel_redis_class(),
        connection_pool_class=pool_class,
        master_check=next(
            c for c in (master_check, target.master_check, _MASTER_CHECK) if c is not None
        ),
    )
    client._ymera_sentinel = sentinel  # type: ignore[attr-defined]
    return client


_MASTER_CHECK = 0.5
_SENTINEL_CLASSES: tuple[type[Any], type[Any]] | None = None


def _sentinel_classes() -> tuple[type[Any], type[Any]]:
    """A Sentinel manager and a connection pool that never write to a primary being replaced.

    Seen on redis-server 7 with one Sentinel (`SENTINEL FAILOVER`): for about a second the
    Sentinel's record still names the old primary, flagged `failover_in_progress`, while the
    replica already accepts writes as the new one; for about ten more seconds the old primary
    still says it is a primary (until the Sentinel's next look at it turns it into a replica,
    which drops what it took meanwhile). redis-py 8 trusts the record during the first window
    and keeps pooled connections to the old primary through the second. So the first window
    is an outage here (`MasterNotFoundError`, a `StorageError`: the resilient stores serve a
    local share and reconcile, as for any outage) and the pool asks the Sentinel again every
    `master_check` seconds while commands flow, leaving the old primary when the name changes.
    """
    global _SENTINEL_CLASSES
    if _SENTINEL_CLASSES is not None:
        return _SENTINEL_CLASSES
    import time

    from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool

    class CheckedSentinel(Sentinel):
        def check_master_state(self, state: dict[str, Any], service_name: str) -> bool:
            flags = str(state.get("flags", "")).split(",")
            if "failover_in_progress" in flags or "promoted" in flags:
                return False
            return bool(super().check_master_state(state, service_name))

    class CheckedPool(SentinelConnectionPool):
        def __init__(self, service_name: str, sentinel_manager: Any, **kwargs: Any) -> None:
            self._check_every = float(kwargs.pop("master_check", _MASTER_CHECK))
            self._next_check = -math.inf
            super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]

        async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
            now = time.monotonic()
            if self.is_master and now >= self._next_check:
                self._next_check = now + self._check_every
                try:
                    address = await self.sentinel_manager.discover_master(self.service_name)
                except MasterNotFoundError:
                    # Ask again on every command until a primary is named, and use none of
                    # the connections made before.
                    self._next_check = -math.inf
                    self.master_address = None
                    await self._leave_primary()
                    raise
                if address != self.master_address:
                    self.master_address = address
                    await self._leave_primary()
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]

        async def _leave_primary(self) -> None:
            # Connections in use finish their command and are closed when given back.
            for connection in list(self._in_use_connections):
                connection.mark_for_reconnect()  # type: ignore[no-untyped-call]
            await self.disconnect(inuse_connections=False)

    _SENTINEL_CLASSES = (CheckedSentinel, CheckedPool)
    return _SENTINEL_CLASSES


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
