"""Test helpers shipped with the package, so users can test their own agents offline.

- `GroqTestServer`: a local Groq-compatible HTTP server with Groq's limits, headers, errors and
  injectable faults.
- `RedisServer`: a real `redis-server` on a free loopback port that can be stopped and restarted.
- `RedisClusterServer`, `RedisSentinelServer`: a real Redis Cluster (3 primaries, optionally
  replicas) and a Sentinel group (primary, replica, Sentinel) from the same binary.
- `FakeClock`: a clock that moves only when told to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .clock import FakeClock
from .redis_server import RedisServer, find_redis_server
from .redis_topologies import RedisClusterServer, RedisSentinelServer

if TYPE_CHECKING:
    from ._faults import FaultConfig
    from ._stats import ServerStats
    from .server import GroqTestServer

__all__ = [
    "FakeClock",
    "FaultConfig",
    "GroqTestServer",
    "RedisClusterServer",
    "RedisSentinelServer",
    "RedisServer",
    "ServerStats",
    "find_redis_server",
]

_SERVER_NAMES = ("GroqTestServer", "FaultConfig", "ServerStats")


def __getattr__(name: str) -> Any:
    # The server pulls in starlette and uvicorn; import it only when asked for.
    if name in _SERVER_NAMES:
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
