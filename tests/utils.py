"""Test helpers: the store matrix and small utilities shared by test modules."""

from __future__ import annotations

import pytest

from ymera_groq_plugin.testing import FakeClock

__all__ = ["ALL_BACKENDS", "REDIS_BACKENDS", "FakeClock", "all_backends", "redis_url_for"]

REDIS_BACKENDS = [
    pytest.param("redis", marks=pytest.mark.redis, id="redis"),
    pytest.param("cluster", marks=pytest.mark.redis, id="cluster"),
    pytest.param("sentinel", marks=pytest.mark.redis, id="sentinel"),
]
"""The Redis deployments a store must work on: one server, a 3-primary Redis Cluster, and a
Sentinel group (one primary, one replica)."""

ALL_BACKENDS = [pytest.param("memory", id="memory"), *REDIS_BACKENDS]
"""Every backend a shared-state concern runs on; a contract suite runs once per entry."""

_URL_FIXTURES = {
    "redis": "redis_url",
    "cluster": "redis_cluster_url",
    "sentinel": "redis_sentinel_url",
}


def redis_url_for(request: pytest.FixtureRequest, backend: str) -> str:
    """The URL of an emptied, running Redis deployment of kind `backend` (a Redis param id)."""
    return str(request.getfixturevalue(_URL_FIXTURES[backend]))


all_backends = pytest.mark.parametrize("backend", ALL_BACKENDS)
