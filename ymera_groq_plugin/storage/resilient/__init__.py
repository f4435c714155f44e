"""Stores that keep serving while Redis is away, and catch up when it is back."""

from __future__ import annotations

from .quota import (
    Breaker,
    ResilientKeyStateStore,
    ResilientLearningStore,
    ResilientQuotaStore,
)

__all__ = [
    "Breaker",
    "ResilientKeyStateStore",
    "ResilientLearningStore",
    "ResilientQuotaStore",
]
