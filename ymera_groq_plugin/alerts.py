"""Quota alerts: a limit crossed 80 %, 90 %, 95 % (by default) of its allowance."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from .config import ApiKey
from .ledger import EPSILON
from .storage.quota_base import KINDS, QuotaState

__all__ = ["Alert", "AlertLevel", "AlertWatch"]

# The quota's logger: alerts are what users filter for under that name.
logger = logging.getLogger("ymera_groq_plugin.quota")


AlertLevel = Literal["warning", "critical", "emergency"]
_LEVEL_NAMES: tuple[AlertLevel, AlertLevel, AlertLevel] = ("warning", "critical", "emergency")
_LOG_LEVEL = {"warning": logging.WARNING, "critical": logging.ERROR, "emergency": logging.CRITICAL}
_REARM_MARGIN = 0.05
"""An alert fires again only after use fell this far (absolute share) below its threshold."""


@dataclass(frozen=True, slots=True)
class Alert:
    """A limit crossed a threshold (80 %, 90 %, 95 % by default).

    Attributes:
        level: `warning`, `critical` or `emergency` (first, second, third threshold).
        threshold: The threshold crossed (a fraction).
        fraction: Consumed plus reserved, as a share of the limit.
        org: The organisation.
        model: The model.
        kind: `rpm`, `rpd`, `tpm` or `tpd`.
        used: Consumed plus reserved.
        limit: The limit in force.
        at: When (epoch seconds).
        keys: Labels of the organisation's keys.
    """

    level: AlertLevel
    threshold: float
    fraction: float
    org: str
    model: str
    kind: str
    used: float
    limit: int
    at: float
    keys: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        return (
            f"{self.level.upper()}: {self.kind} of {self.model} for {self.org} at "
            f"{self.fraction:.0%} ({math.ceil(self.used - EPSILON)}/{self.limit}; "
            f"threshold {self.threshold:.0%})"
        )


class AlertWatch:
    """Fires an `Alert` once per upward crossing of each threshold, per (organisation, model,
    limit kind); re-arms once use falls `_REARM_MARGIN` below it. Alerts are logged and handed
    to every callback (a failing callback is logged, never raised).

    Args:
        thresholds: Shares of a limit at which warning, critical and emergency alerts fire.
    """

    def __init__(self, thresholds: Sequence[float]) -> None:
        self._thresholds = tuple(sorted(thresholds))
        self._armed: dict[tuple[str, str, int], int] = {}
        self._callbacks: list[Callable[[Alert], None]] = []

    def add_callback(self, cb: Callable[[Alert], None]) -> None:
        """Call `cb` with every `Alert`."""
        self._callbacks.append(cb)

    def check(
        self,
        org: str,
        model: str,
        state: QuotaState,
        now: float,
        keys: Callable[[], Iterable[ApiKey]],
    ) -> None:
        thresholds = self._thresholds
        if not thresholds:
            return
        for i in range(4):
            lim = state.limits[i]
            if not lim:
                continue
            used = state.levels[i] + (state.pending_requests if i < 2 else state.pending_tokens)
            frac = used / lim
            slot = (org, model, i)
            fired = self._armed.get(slot, -1)
            if fired >= 0 and frac < thresholds[fired] - _REARM_MARGIN:
                fired = -1
                for j, th in enumerate(thresholds):
                    if frac >= th - _REARM_MARGIN:
                        fired = j
                self._armed[slot] = fired
            if frac < thresholds[0]:
                continue
            crossed = -1
            for j, th in enumerate(thresholds):
                if frac >= th:
                    crossed = j
            if crossed > fired:
                self._armed[slot] = crossed
                self._fire(
                    Alert(
                        level=_LEVEL_NAMES[min(crossed, 2)],
                        threshold=thresholds[crossed],
                        fraction=frac,
                        org=org,
                        model=model,
                        kind=KINDS[i],
                        used=used,
                        limit=lim,
                        at=now,
                        keys=tuple(k.label for k in keys()),
                    )
                )

    def _fire(self, alert: Alert) -> None:
        logger.log(_LOG_LEVEL[alert.level], "Quota alert %s", alert.message)
        for cb in list(self._callbacks):
            try:
                cb(alert)
            except Exception:
                logger.exception("Quota alert callback %r failed", cb)
