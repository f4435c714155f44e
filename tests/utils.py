"""Test helpers: the store matrix and small utilities shared by test modules."""

from __future__ import annotations

import pytest

from ymera_groq_plugin.testing import FakeClock

__all__ = ["ALL_BACKENDS", "FakeClock", "all_backends"]

ALL_BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("redis", marks=pytest.mark.redis, id="redis"),
]
"""Every backend a shared-state concern runs on; a contract suite runs once per entry."""

all_backends = pytest.mark.parametrize("backend", ALL_BACKENDS)
