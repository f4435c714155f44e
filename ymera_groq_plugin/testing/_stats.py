"""Counters of what the local Groq server served and refused."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OrgModelStats", "ServerStats", "StatsRecorder"]


@dataclass(frozen=True, slots=True)
class OrgModelStats:
    """Traffic of one (organisation, model) pair."""

    requests: int = 0
    """Requests admitted (charged to the request buckets)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rate_limited: int = 0
    """429 answers (storms included) and 413 answers."""


@dataclass(frozen=True, slots=True)
class ServerStats:
    """A snapshot of the server's counters.

    Keys are shown masked (`gsk_…a1b2`), never in full.
    """

    requests: int = 0
    """Every HTTP request answered, any path, any status."""
    by_status: dict[int, int] = field(default_factory=dict)
    rate_limited: dict[str, int] = field(default_factory=dict)
    """429s by limit: `RPM`, `RPD`, `TPM`, `TPD`, `storm`; and `413` for too-large requests."""
    by_org_model: dict[tuple[str, str], OrgModelStats] = field(default_factory=dict)
    by_key: dict[str, dict[int, int]] = field(default_factory=dict)
    """Answers per masked key, by status."""
    faults: dict[str, int] = field(default_factory=dict)
    """Injected faults: `5xx`, `498`, `spike`, `stream_error`."""
    arrived: int = 0
    """Chat requests received, counted on arrival (before any injected latency): a test can
    wait until a call is on the wire."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (string keys; organisations nest their models)."""
        nested: dict[str, dict[str, dict[str, int]]] = {}
        for (org, model), s in sorted(self.by_org_model.items()):
            nested.setdefault(org, {})[model] = {
                "requests": s.requests,
                "prompt_tokens": s.prompt_tokens,
                "completion_tokens": s.completion_tokens,
                "rate_limited": s.rate_limited,
            }
        return {
            "requests": self.requests,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "rate_limited": dict(sorted(self.rate_limited.items())),
            "by_org_model": nested,
            "by_key": {
                k: {str(s): n for s, n in sorted(v.items())} for k, v in sorted(self.by_key.items())
            },
            "faults": dict(sorted(self.faults.items())),
        }


class StatsRecorder:
    """Thread-safe counters behind `ServerStats`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._requests = 0
            self._by_status: Counter[int] = Counter()
            self._rate_limited: Counter[str] = Counter()
            self._pairs: dict[tuple[str, str], list[int]] = {}
            self._by_key: dict[str, Counter[int]] = {}
            self._faults: Counter[str] = Counter()
            self._arrived = 0

    def arrival(self) -> None:
        with self._lock:
            self._arrived += 1

    def answered(self, status: int, key_label: str | None) -> None:
        with self._lock:
            self._requests += 1
            self._by_status[status] += 1
            if key_label is not None:
                self._by_key.setdefault(key_label, Counter())[status] += 1

    def admitted(self, org: str, model: str, prompt_tokens: int) -> None:
        with self._lock:
            pair = self._pairs.setdefault((org, model), [0, 0, 0, 0])
            pair[0] += 1
            pair[1] += prompt_tokens

    def completed(self, org: str, model: str, completion_tokens: int) -> None:
        with self._lock:
            self._pairs.setdefault((org, model), [0, 0, 0, 0])[2] += completion_tokens

    def refused(self, org: str, model: str, kind: str) -> None:
        with self._lock:
            self._rate_limited[kind] += 1
            self._pairs.setdefault((org, model), [0, 0, 0, 0])[3] += 1

    def fault(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] += 1

    def snapshot(self) -> ServerStats:
        with self._lock:
            return ServerStats(
                requests=self._requests,
                by_status=dict(self._by_status),
                rate_limited=dict(self._rate_limited),
                by_org_model={k: OrgModelStats(*v) for k, v in self._pairs.items()},
                by_key={k: dict(v) for k, v in self._by_key.items()},
                faults=dict(self._faults),
                arrived=self._arrived,
            )
