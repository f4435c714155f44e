"""Stores that keep serving while Redis is away, and catch up when it is back.

Quota, key health and learning live in Redis when several processes share them. Redis can go
away (a restart, a network cut); the package must not. Each `Resilient*Store` here wraps the
Redis store (the *primary*) with a local stand-in and a `Fallback` (`fallback.py`) holding the
package's `CircuitBreaker` on the injected clock:

- **closed**: every call goes to the primary; the first `StorageError` opens the breaker and
  that call is served locally instead, so a caller never sees the outage.
- **open**: calls are served locally; once `retry_after` has passed (doubling per failed try up
  to `max_retry_after`), one background task probes the primary and *reconciles* (below). It
  never runs on a caller's path, so a dead Redis costs requests no latency.
- back to **closed** once the reconcile went through.

What "locally" and "reconcile" mean is each store's own: `quota.py` (a conservative share of
every budget, and the ordered reconcile of the shared ledger), `keys.py` (the last key health
read, changes replayed in order), `learning.py` (records buffered and flushed in order).
"""

from __future__ import annotations

from ...breaker import CircuitBreaker
from .keys import ResilientKeyStateStore
from .learning import ResilientLearningStore
from .quota import ResilientQuotaStore

Breaker = CircuitBreaker
"""The breaker's name here before the cache's and the stores' breakers became one."""

__all__ = [
    "Breaker",
    "ResilientKeyStateStore",
    "ResilientLearningStore",
    "ResilientQuotaStore",
]
