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
from typing import TYPE_CHECKING, Any

from ..errors import StorageError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "KEY_PREFIX",
    "astorage_errors",
    "dumps",
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

        errors.append(redis.exceptions.RedisError)
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
    """A `redis.asyncio.Redis` for a URL, with short timeouts so an outage fails fast.

    Raises:
        ConfigurationError: The `redis` extra is not installed.
    """
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
    options.update(kwargs)
    return Redis.from_url(url, **options)
