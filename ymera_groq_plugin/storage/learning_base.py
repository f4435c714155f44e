"""The learning store's protocol: an append-only, sequenced log of learning events.

The `Learner` keeps its aggregate in memory (so recommending is pure and fast) and the store
keeps the evidence every process shares. Three kinds of event are logged, each with a
sequence number that only grows (SQLite `AUTOINCREMENT`, a Redis counter incremented in the
same Lua script as the append):

- `execution`: one recorded `Execution` (its fields, as JSON);
- `feedback`: a quality score attached to an earlier execution, with that execution and its
  previous quality, so a reader needs no second lookup;
- `summary`: an aggregate of many executions (imported training data).

A learner replays the events after the last sequence number it has seen (`events(after=…)`),
skipping its own (`origin`). Executions are also kept by id, so feedback can find them;
`feedback` is atomic (read, update and append in one transaction or one Lua script).
Old events go with `prune(before)`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from ..errors import InvalidRequestError
from ..types import Execution

__all__ = [
    "EventKind",
    "LearningEvent",
    "LearningStore",
    "check_execution_id",
    "check_quality",
    "execution_from_dict",
    "execution_to_dict",
]

EventKind = Literal["execution", "feedback", "summary"]


@dataclass(frozen=True, slots=True)
class LearningEvent:
    """One entry of the learning log.

    Attributes:
        seq: Position in the log (only grows).
        kind: `execution`, `feedback` or `summary`.
        timestamp: When it happened (the execution's time for `execution`, the feedback's or
            import's time otherwise), seconds since the epoch.
        origin: The writing learner's id (a learner skips its own events on replay).
        data: The payload (JSON values).
    """

    seq: int
    kind: EventKind
    timestamp: float
    origin: str
    data: Mapping[str, Any]


def execution_to_dict(e: Execution) -> dict[str, Any]:
    """The JSON form of an execution (every field)."""
    return {
        "agent_name": e.agent_name,
        "task_type": e.task_type,
        "model": e.model,
        "success": e.success,
        "latency_ms": e.latency_ms,
        "tokens": e.tokens,
        "quality": e.quality,
        "timestamp": e.timestamp,
        "execution_id": e.execution_id,
        "error": e.error,
    }


def execution_from_dict(d: Mapping[str, Any]) -> Execution:
    """Rebuild an execution from `execution_to_dict`'s output (unknown keys are ignored)."""
    quality = d.get("quality")
    return Execution(
        agent_name=str(d["agent_name"]),
        task_type=str(d["task_type"]),
        model=str(d["model"]),
        success=bool(d["success"]),
        latency_ms=float(d.get("latency_ms") or 0.0),
        tokens=int(d.get("tokens") or 0),
        quality=None if quality is None else float(quality),
        timestamp=float(d["timestamp"]),
        execution_id=str(d["execution_id"]),
        error=None if d.get("error") is None else str(d["error"]),
    )


def check_quality(quality: float) -> float:
    """A quality score must be a finite number in [0, 1].

    Raises:
        InvalidRequestError: It is not.
    """
    if isinstance(quality, bool) or not isinstance(quality, (int, float)):
        raise InvalidRequestError(f"quality must be a number in [0, 1], got {quality!r}")
    q = float(quality)
    if not math.isfinite(q) or not 0.0 <= q <= 1.0:
        raise InvalidRequestError(f"quality must be in [0, 1], got {quality!r}")
    return q


def check_execution_id(execution_id: str) -> str:
    """Execution ids are non-empty and contain no tab or newline (stores use them as fields).

    Raises:
        InvalidRequestError: It is not a usable id.
    """
    if not isinstance(execution_id, str) or not execution_id or any(
        c in execution_id for c in "\t\r\n"
    ):
        raise InvalidRequestError(f"invalid execution id {execution_id!r}")
    return execution_id


@runtime_checkable
class LearningStore(Protocol):
    """Where learning evidence lives, shared by every process that uses the same store."""

    async def record(self, execution: Execution, *, origin: str) -> int:
        """Keep `execution` (by id, replacing an earlier one with that id) and log it.

        Returns:
            The event's sequence number.
        """
        ...

    async def add_summary(
        self, summary: Mapping[str, Any], *, timestamp: float, origin: str
    ) -> int:
        """Log an aggregate of many executions (training-data import)."""
        ...

    async def feedback(
        self, execution_id: str, quality: float, *, timestamp: float, origin: str
    ) -> Execution | None:
        """Attach a quality score to an execution and log it, atomically.

        Returns:
            The execution as it was *before* (so the caller knows the previous quality), or
            `None` when no execution has that id.
        """
        ...

    async def get(self, execution_id: str) -> Execution | None:
        """The execution with that id (with its current quality), if kept."""
        ...

    async def events(self, after: int = 0, *, limit: int = 1000) -> list[LearningEvent]:
        """Events with a sequence number above `after`, in order, at most `limit`."""
        ...

    async def prune(self, before: float) -> int:
        """Drop events (and kept executions) older than `before`; returns events dropped."""
        ...

    async def check(self) -> bool:
        """Whether the store answers."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
