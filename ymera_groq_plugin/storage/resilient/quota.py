"""Stores that keep serving while Redis is away, and catch up when it is back.

Quota, key health and learning live in Redis when several processes share them. Redis can go
away (a restart, a network cut); the package must not. Each `Resilient*Store` here wraps the
Redis store (the *primary*) with a local stand-in and a `Breaker` on the injected clock:

- **closed**: every call goes to the primary; the first `StorageError` opens the breaker and
  that call is served locally instead, so a caller never sees the outage.
- **open**: calls are served locally; once `retry_after` has passed (doubling per failed try up
  to `max_retry_after`), one background task probes the primary and *reconciles* (below). It
  never runs on a caller's path, so a dead Redis costs requests no latency.
- back to **closed** once the reconcile went through.

**Quota** (`ResilientQuotaStore`). While Redis is up, every process records a heartbeat in it
(`RedisQuotaStore.heartbeat`), so each knows how many workers share the budgets. When it goes
away, each process falls back to a conservative *share* of every (organisation, model) budget:
`safety / workers` of the limits, seeded from the last state Redis reported (consumed plus
reserved, drained forward), refilling at the same share of Groq's rate. So together the
workers never take more than the budget, and Groq's headers (remaining requests and tokens,
429 texts) keep correcting each share from what Groq itself counts. A request larger than a
whole share is not refused: it waits until the share is empty and then puts it in debt, which
keeps the rate right. When Redis is back, the shared ledger is brought up to date before it is
used again, in an order that neither loses nor double-counts what happened meanwhile:

1. learned limits, cooldowns and the day buckets' last known levels (floors: they only raise a
   level, so this restores what a Redis restart without persistence lost, and changes nothing
   when Redis kept its data);
2. settles and releases of reservations that were made in Redis before the outage, in order
   (without the floors their answers reported then: those counted every process's use, which
   step 3 adds again; and without their request per day when their answer carried Groq's
   count, which step 3's floor brings);
3. the minute buckets raised to what this process's share implies for everyone (a floor:
   conservative, exact when the workers used their shares alike), and the tokens-per-day bucket
   charged with what this process used meanwhile (added: every process adds its own, and a day
   window barely drains meanwhile). Requests per day are not charged but raised to the last
   count Groq's headers reported to this process meanwhile, drained forward (a floor: Groq's
   count includes every process's use, so the workers' floors neither add up nor count
   twice, and a pair nobody uses after the outage keeps its outage requests), plus the
   requests this process made after that count whose answers carried none;
4. reservations made locally and still in flight, charged with their estimate (their settle
   later charges only what exceeds it).

Then, for a grace period (a minute window plus the longest retry interval, so every other
process has seen Redis back and reconciled too), a reservation needs room both in the shared
ledger and in this process's share: until the last worker has pushed what it used, the shared
ledger may not know all of it.

**Key health** (`ResilientKeyStateStore`): the last records read stay in force; changes made
meanwhile (a key disabled after 401, a merge) apply at once here and are written to Redis when
it is back; failure counts are kept locally.

**Learning** (`ResilientLearningStore`): executions, feedback and imports are buffered in order
and flushed once Redis is back, so none is lost (unless the buffer bound is reached; then the
oldest go and are counted). Feedback for an execution this process recorded works meanwhile;
other processes' evidence simply arrives late.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, cast

from ...clock import Clock
from ...errors import StorageError
from ...types import Execution
from ..learning_base import LearningEvent, LearningStore
from ..memory import MemoryKeyStateStore, MemoryQuotaStore
from ..quota_base import (
    KEY_FIELDS,
    NO_LIMITS,
    WINDOWS,
    KeyStates,
    KeyStateStore,
    Limits,
    Observation,
    QuotaState,
    QuotaStore,
    Report,
)

__all__ = [
    "Breaker",
    "ResilientKeyStateStore",
    "ResilientLearningStore",
    "ResilientQuotaStore",
]

logger = logging.getLogger(__name__)


class Breaker:
    """Closed while the primary answers; open for a while after it failed.

    Args:
        clock: Wall clock.
        retry_after: Seconds after the first failure before the primary is tried again.
        max_retry_after: Cap of the doubling per consecutive failure.
    """

    def __init__(
        self, clock: Clock, *, retry_after: float = 1.0, max_retry_after: float = 30.0
    ) -> None:
        self._clock = clock
        self.retry_after = retry_after
        self.max_retry_after = max_retry_after
        self.failures = 0
        self.open_until: float | None = None

    @property
    def closed(self) -> bool:
        return self.open_until is None

    def due(self) -> bool:
        """Open, and time to try the primary again."""
        return self.open_until is not None and self._clock() >= self.open_until

    def trip(self) -> bool:
        """Record a failure and (re)open; whether the breaker was closed before."""
        was_closed = self.open_until is None
        self.failures += 1
        wait = min(self.max_retry_after, self.retry_after * 2 ** (self.failures - 1))
        self.open_until = self._clock() + wait
        return was_closed

    def reset(self) -> None:
        self.failures = 0
        self.open_until = None

    @property
    def state(self) -> str:
        if self.open_until is None:
            return "closed"
        return "half-open" if self._clock() >= self.open_until else "open"

    def __repr__(self) -> str:
        return f"<Breaker {self.state} failures={self.failures}>"


class _Fallback:
    """The breaker and background recovery every resilient store shares."""

    _what = "store"

    def __init__(self, clock: Clock, retry_after: float, max_retry_after: float) -> None:
        self._clock = clock
        self.breaker = Breaker(clock, retry_after=retry_after, max_retry_after=max_retry_after)
        self._recovering: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.outages = 0
        """Times the primary became unreachable."""
        self.recoveries = 0
        """Times it came back and was brought up to date."""
        self.last_error: str | None = None
        """What made it unreachable last (`"<operation>: <error type>: <message>"`), e.g. a
        cluster primary's `ConnectionError` before its replica took over, or Sentinel's
        `MasterNotFoundError` during a switch."""

    @property
    def degraded(self) -> bool:
        """Whether calls are being served locally now."""
        return not self.breaker.closed

    def _failed(self, operation: str, exc: BaseException) -> None:
        self.last_error = f"{operation}: {exc}"[:300]
        if self.breaker.trip():
            self.outages += 1
            logger.warning(
                "Redis %s unreachable (%s failed: %s); serving locally, retrying in %.1f s",
                self._what,
                operation,
                exc,
                self.breaker.retry_after,
            )

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _maybe_recover(self) -> None:
        """Start one background recovery when the breaker is due (never on a caller's path)."""
        busy = self._recovering is not None and not self._recovering.done()
        if busy or not self.breaker.due():
            return
        self._recovering = self._spawn(self._recover_guarded())

    async def _recover_guarded(self) -> None:
        try:
            await self._recover()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.breaker.trip()
            logger.debug("Redis %s still unreachable: %s", self._what, exc)
            return
        self.breaker.reset()
        self.recoveries += 1
        logger.warning("Redis %s is back; the shared state is up to date again", self._what)
        self._closed()

    async def _recover(self) -> None:
        raise NotImplementedError

    def _closed(self) -> None:
        """Called right after the breaker closed (no await in between)."""

    async def recover(self) -> bool:
        """Try the primary now, whatever the breaker says (tests, shutdown); whether it is
        back and up to date."""
        if self.breaker.closed:
            return True
        if self._recovering is not None and not self._recovering.done():
            await asyncio.shield(self._recovering)
        else:
            self._recovering = self._spawn(self._recover_guarded())
            await asyncio.shield(self._recovering)
        return self.breaker.closed

    async def _close_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


# -- quota ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Held:
    """A reservation this process made: where it lives and what it took."""

    place: Literal["primary", "local"]
    org: str
    model: str
    requests: float
    tokens: float
    episode: int
    expires: float
    charged: bool = False
    """A local reservation whose estimate was already charged to the primary on recovery."""
    gated: bool = False
    """A primary reservation made during the grace after a recovery: also held locally."""


@dataclass(slots=True)
class _Replay:
    """A settle, release or observation of the primary that could not reach it."""

    org: str
    model: str
    reservation_id: str | None
    requests: float
    tokens: float
    defaults: Limits
    observation: Observation | None
    counted: bool = False
    """Its answer carried Groq's count of requests per day, which covers its request: the
    reconcile's floor brings it, so the replay does not charge it again."""


def _scale_limits(limits: Sequence[float | None], factor: float) -> Limits:
    out = tuple(None if x is None else x * factor for x in limits)
    return cast(Limits, out)


def _unscale_limits(limits: Sequence[float | None], share: float) -> Limits:
    out = tuple(None if x is None else round(x / share) for x in limits)
    return cast(Limits, out)


def _scale_observation(obs: Observation | None, share: float) -> Observation | None:
    """What Groq said, in the units of this process's share."""
    if obs is None:
        return None
    return replace(
        obs,
        limits=_scale_limits(obs.limits, share),
        floors=cast(
            "tuple[float | None, float | None, float | None, float | None]",
            tuple(None if f is None else f * share for f in obs.floors),
        ),
        charges=cast("tuple[float, float, float, float]", tuple(c * share for c in obs.charges)),
    )


def _project_levels(state: QuotaState, now: float) -> list[float]:
    elapsed = max(0.0, now - state.updated)
    out = []
    for i in range(4):
        lim = state.limits[i]
        level = state.levels[i]
        if lim and level > 0:
            level = max(0.0, level - elapsed * lim / WINDOWS[i])
        out.append(level)
    return out


class ResilientQuotaStore:
    """A `QuotaStore` that serves a conservative local share of each budget while its
    primary (Redis) is unreachable, and reconciles when it is back (see the module docstring).

    Args:
        primary: The shared store (`RedisQuotaStore`).
        clock: Wall clock (the breaker, heartbeats and the local buckets).
        worker_id: This process's id in the heartbeat set; default: random.
        heartbeat_interval: Seconds between heartbeats while the primary is up.
        worker_window: A worker counts as alive this long after its last heartbeat.
        assumed_workers: Workers to assume if the primary went away before any heartbeat
            answered.
        safety: The share of `1 / workers` actually used (headroom for views that were a
            little stale when Redis went away).
        retry_after: Seconds before the first retry of the primary (doubling per failure).
        max_retry_after: Cap of the doubling.
        max_replays: Bound on settles kept for replay (the oldest go first, counted).
        grace: Seconds after a recovery during which a reservation needs room both in the
            shared ledger and in this process's share (default: a minute window plus
            `max_retry_after`, the longest another process may take to notice Redis is back).
    """

    shared = True

    def __init__(
        self,
        primary: QuotaStore,
        *,
        clock: Clock = time.time,
        worker_id: str | None = None,
        heartbeat_interval: float = 5.0,
        worker_window: float = 30.0,
        assumed_workers: int = 2,
        safety: float = 0.9,
        retry_after: float = 1.0,
        max_retry_after: float = 30.0,
        max_replays: int = 10_000,
        grace: float | None = None,
    ) -> None:
        if not 0 < safety <= 1:
            raise ValueError("safety must be in (0, 1]")
        self.grace = 60.0 + max_retry_after if grace is None else grace
        self._grace_until = -math.inf
        self._fb = _QuotaFallback(self, clock, retry_after, max_retry_after)
        self.primary = primary
        self.local = MemoryQuotaStore()
        self._clock = clock
        self.worker_id = worker_id or os.urandom(8).hex()
        self.heartbeat_interval = heartbeat_interval
        self.worker_window = worker_window
        self.assumed_workers = max(1, assumed_workers)
        self.safety = safety
        self.workers: int | None = None
        """Workers seen by the last heartbeat (`None` before one answered)."""
        self._last_beat = -math.inf
        self._recounting_until = -math.inf
        self._beating = False
        self._known: dict[tuple[str, str], QuotaState] = {}
        self._defaults: dict[tuple[str, str], Limits] = {}
        self._held: dict[str, _Held] = {}
        self._replays: deque[_Replay] = deque()
        self._max_replays = max_replays
        self._charges: dict[tuple[str, str], list[float]] = {}
        self._day_counts: dict[tuple[str, str], tuple[float, float, int | None]] = {}
        self._seeded: set[tuple[str, str]] = set()
        self._dirty: set[tuple[str, str]] = set()
        self._episode = 0
        self._share = 1.0
        self.stats: dict[str, int] = {
            "local_reservations": 0,
            "replayed": 0,
            "replays_dropped": 0,
            "reconciled_pairs": 0,
            "charged_in_flight": 0,
        }

    @classmethod
    def wrap(cls, primary: QuotaStore, **kwargs: Any) -> QuotaStore:
        """`primary` itself when it is local (nothing to fall back from), else a wrapper."""
        if not getattr(primary, "shared", True):
            return primary
        return cls(primary, **kwargs)

    @property
    def breaker(self) -> Breaker:
        return self._fb.breaker

    @property
    def degraded(self) -> bool:
        """Whether reservations are being served from the local share now."""
        return self._fb.degraded

    @property
    def outages(self) -> int:
        return self._fb.outages

    @property
    def recoveries(self) -> int:
        return self._fb.recoveries

    @property
    def last_error(self) -> str | None:
        return self._fb.last_error

    @property
    def share(self) -> float:
        """The share of each budget this process uses while the primary is away."""
        return self._share

    async def recover(self) -> bool:
        """Try the primary now; whether it is back and the ledger reconciled."""
        back = await self._fb.recover()
        if self._fb._tasks:
            await asyncio.gather(*list(self._fb._tasks), return_exceptions=True)
        return back and self.breaker.closed

    # -- the primary's calls -----------------------------------------------------------------

    def _trip(self, operation: str, exc: BaseException) -> None:
        was_closed = self.breaker.closed
        self._fb._failed(operation, exc)
        if was_closed:
            workers = self.workers or self.assumed_workers
            self._share = self.safety / workers
            self._episode += 1
            self._seeded.clear()
            self._grace_until = -math.inf
            logger.warning(
                "Quota falls back to %.0f%% of each budget (%d workers seen) until Redis is back",
                self._share * 100,
                workers,
            )

    def _remember(self, org: str, model: str, state: QuotaState, defaults: Limits) -> None:
        self._known[(org, model)] = state
        self._defaults[(org, model)] = defaults

    def _after_primary(self, now: float) -> None:
        if not self._beating and now - self._last_beat >= self.heartbeat_interval:
            self._beating = True
            self._last_beat = now
            self._fb._spawn(self._beat(now))

    async def _beat(self, now: float) -> None:
        try:
            await self.beat(now)
        except StorageError as exc:
            self._trip("heartbeat", exc)
        finally:
            self._beating = False

    async def beat(self, now: float | None = None) -> int:
        """Record this worker's heartbeat in the primary; return the workers seen.

        Raises:
            StorageError: The primary is unreachable.
        """
        now = self._clock() if now is None else now
        heartbeat = getattr(self.primary, "heartbeat", None)
        if heartbeat is None:
            self.workers = 1
            return 1
        seen = int(await heartbeat(self.worker_id, now=now, window=self.worker_window))
        if self.workers is not None and seen < self.workers and now < self._recounting_until:
            # A Redis restarted without its data lost every worker's heartbeat: the others
            # are counted again only as each beats, within one window. Believing the lower
            # count meanwhile would give this worker too large a share at the next outage.
            seen = self.workers
        self.workers = seen
        self._last_beat = now
        return self.workers

    # -- the local share ----------------------------------------------------------------------

    def _local_defaults(
        self, org: str, model: str, defaults: Limits, now: float, *, mark: bool = True
    ) -> Limits:
        """The share's limits, seeding the pair from the last shared state on first use."""
        pair = (org, model)
        self._defaults.setdefault(pair, defaults)
        if mark:
            self._dirty.add(pair)
        share = self._share
        if pair not in self._seeded:
            self._seeded.add(pair)
            known = self._known.get(pair)
            if known is None:
                self.local.seed(
                    org, model, levels=(0.0, 0.0, 0.0, 0.0), learned=NO_LIMITS, cool_until=0.0,
                    now=now,
                )
            else:
                # Reservations in flight anywhere count as spent: conservative.
                levels = _project_levels(known, now)
                used = [
                    (levels[i] + known.pending(i)) * share if known.limits[i] else 0.0
                    for i in range(4)
                ]
                self.local.seed(
                    org,
                    model,
                    levels=(used[0], used[1], used[2], used[3]),
                    learned=_scale_limits(known.learned, share),
                    cool_until=known.cool_until,
                    now=now,
                )
        return _scale_limits(defaults, share)

    def _from_local(self, state: QuotaState) -> QuotaState:
        """A local share's state in the shared ledger's units (what the manager expects)."""
        k = 1.0 / self._share
        return state._replace(
            levels=cast(
                "tuple[float, float, float, float]", tuple(x * k for x in state.levels)
            ),
            pending_requests=state.pending_requests * k,
            pending_tokens=state.pending_tokens * k,
            limits=_unscale_limits(state.limits, self._share),
            learned=_unscale_limits(state.learned, self._share),
        )

    def _local_reserve(
        self,
        org: str,
        model: str,
        rid: str,
        requests: int,
        tokens: int,
        defaults: Limits,
        now: float,
        ttl: float,
        *,
        mark: bool = True,
    ) -> tuple[float, QuotaState]:
        scaled = self._local_defaults(org, model, defaults, now, mark=mark)
        limits = self.local.get_now(org, model, defaults=scaled, now=now).limits
        # A request larger than the whole share waits for an empty share, then puts it in
        # debt (the settle charges all of it): refusing it would fail callers for the outage.
        req = min([float(requests)] + [float(x) for x in limits[:2] if x])
        tok = min([float(tokens)] + [float(x) for x in limits[2:] if x])
        wait, state = self.local.reserve_now(
            org,
            model,
            reservation_id=rid,
            requests=req,
            tokens=tok,
            defaults=scaled,
            now=now,
            ttl=ttl,
        )
        if wait <= 0:
            self.stats["local_reservations"] += 1
            self._held[rid] = _Held("local", org, model, requests, tokens, self._episode, now + ttl)
        return wait, self._from_local(state)

    def _local_settle(
        self,
        org: str,
        model: str,
        rid: str | None,
        requests: float,
        tokens: float,
        defaults: Limits,
        now: float,
        observation: Observation | None,
        *,
        mark: bool = True,
    ) -> tuple[bool, QuotaState]:
        scaled = self._local_defaults(org, model, defaults, now, mark=mark)
        found, state = self.local.settle_now(
            org,
            model,
            reservation_id=rid,
            requests=requests,
            tokens=tokens,
            defaults=scaled,
            now=now,
            observation=_scale_observation(observation, self._share),
        )
        return found, self._from_local(state)

    def _in_grace(self, now: float, held: _Held | None = None) -> bool:
        """Whether reservations still keep to the local share after a recovery; a held
        reservation counts only if it was made in the share that is still current."""
        if self._grace_until <= now:
            if self._seeded and self.breaker.closed:
                # The grace is over: the share starts afresh at the next outage.
                self._seeded.clear()
                self.local = MemoryQuotaStore()
            return False
        return held is None or held.episode == self._episode

    def _charge_later(self, org: str, model: str, requests: float, tokens: float) -> None:
        """Consumption the primary has not seen, for its day buckets on recovery: `tokens`
        for tokens per day (the one kind no header reports), `requests` only for requests no
        count of Groq's covers (see `_heard`)."""
        if requests <= 0 and tokens <= 0:
            return
        c = self._charges.setdefault((org, model), [0.0, 0.0])
        c[0] += max(0.0, requests)
        c[1] += max(0.0, tokens)
        self._dirty.add((org, model))

    def _heard(self, replay: _Replay, now: float) -> None:
        """Keep the requests per day Groq counted, for the ledger on recovery.

        The count covers every request any process made before it, this one's included: the
        requests charged for lack of a count are covered from now on. (Answers without the
        header are rare; if two workers both charged some, a later count pushed after them
        can absorb one's.)
        """
        obs = replay.observation
        if obs is None or obs.floors[1] is None:
            return
        pair = (replay.org, replay.model)
        known = self._known.get(pair)
        limit = obs.limits[1] or (known.limits[1] if known is not None else None)
        self._day_counts[pair] = (obs.floors[1], now, limit or replay.defaults[1])
        if pair in self._charges:
            self._charges[pair][0] = 0.0

    def _queue(self, replay: _Replay, now: float) -> None:
        self._heard(replay, now)
        obs = replay.observation
        replay.counted = obs is not None and obs.floors[1] is not None
        if obs is not None and obs.floors != (None, None, None, None):
            # Groq's counts then included every process's use, which the day charges add
            # again on recovery: floors from the past would count it twice. Fresh answers'
            # headers correct the ledger right after.
            replay.observation = replace(obs, floors=(None, None, None, None))
            if (
                replay.observation.empty
                and not replay.reservation_id
                and not replay.requests
                and not replay.tokens
            ):
                return
        if len(self._replays) >= self._max_replays:
            self._replays.popleft()
            self.stats["replays_dropped"] += 1
        self._replays.append(replay)
        self._dirty.add((replay.org, replay.model))

    def _prune_held(self, now: float) -> None:
        if len(self._held) > 10_000:
            self._held = {rid: h for rid, h in self._held.items() if h.expires > now}

    # -- QuotaStore ---------------------------------------------------------------------------

    async def reserve(
        self,
        org: str,
        model: str,
        *,
        reservation_id: str,
        requests: int,
        tokens: int,
        defaults: Limits,
        now: float,
        ttl: float,
    ) -> tuple[float, QuotaState]:
        """Reserve in the primary; while it is away, in this process's share (and in both
        during the grace after a recovery)."""
        if self.breaker.closed:
            gated = self._in_grace(now)
            if gated:
                # Until every process has seen Redis back, this one keeps to its share too.
                lwait, lstate = self._local_reserve(
                    org, model, reservation_id, requests, tokens, defaults, now, ttl, mark=False
                )
                if lwait > 0:
                    return lwait, lstate
            try:
                wait, state = await self.primary.reserve(
                    org,
                    model,
                    reservation_id=reservation_id,
                    requests=requests,
                    tokens=tokens,
                    defaults=defaults,
                    now=now,
                    ttl=ttl,
                )
            except StorageError as exc:
                # The script may have run before the connection broke: that reservation
                # then expires on its own (`ttl`).
                self._trip("reserve", exc)
            else:
                self._remember(org, model, state, defaults)
                if wait <= 0:
                    self._prune_held(now)
                    self._held[reservation_id] = _Held(
                        "primary", org, model, requests, tokens, self._episode, now + ttl,
                        gated=gated,
                    )
                elif gated:
                    self._held.pop(reservation_id, None)
                    self._local_settle(
                        org, model, reservation_id, 0, 0, defaults, now, None, mark=False
                    )
                self._after_primary(now)
                return wait, state
        self._fb._maybe_recover()
        return self._local_reserve(
            org, model, reservation_id, requests, tokens, defaults, now, ttl
        )

    async def settle(
        self,
        org: str,
        model: str,
        *,
        reservation_id: str | None,
        requests: float,
        tokens: float,
        defaults: Limits,
        now: float,
        observation: Observation | None = None,
    ) -> tuple[bool, QuotaState]:
        """Settle where the reservation lives; what the primary misses is kept for it."""
        held = self._held.pop(reservation_id, None) if reservation_id else None
        if held is not None and held.place == "local":
            return await self._settle_local_held(
                held, reservation_id, requests, tokens, defaults, now, observation
            )
        if self.breaker.closed:
            if held is not None and held.gated and self._in_grace(now, held):
                self._local_settle(
                    org, model, reservation_id, requests, tokens, defaults, now, observation,
                    mark=False,
                )
            try:
                found, state = await self.primary.settle(
                    org,
                    model,
                    reservation_id=reservation_id,
                    requests=requests,
                    tokens=tokens,
                    defaults=defaults,
                    now=now,
                    observation=observation,
                )
            except StorageError as exc:
                self._trip("settle", exc)
            else:
                self._remember(org, model, state, defaults)
                self._after_primary(now)
                return found, state
        self._fb._maybe_recover()
        self._queue(
            _Replay(org, model, reservation_id, requests, tokens, defaults, observation), now
        )
        # The share sees the consumption now; the primary gets the settle itself on recovery.
        _, state = self._local_settle(
            org, model, None, requests, tokens, defaults, now, observation
        )
        return held is not None, state

    async def _settle_local_held(
        self,
        held: _Held,
        rid: str | None,
        requests: float,
        tokens: float,
        defaults: Limits,
        now: float,
        observation: Observation | None,
    ) -> tuple[bool, QuotaState]:
        org, model = held.org, held.model
        # What the primary has not seen yet: everything, or what exceeds the estimate that
        # recovery already charged.
        extra_r = max(0.0, requests - held.requests) if held.charged else requests
        extra_t = max(0.0, tokens - held.tokens) if held.charged else tokens
        if self.breaker.closed:
            if self._in_grace(now, held):
                self._local_settle(
                    org, model, rid, requests, tokens, defaults, now, observation, mark=False
                )
            try:
                _, state = await self.primary.settle(
                    org,
                    model,
                    reservation_id=None,
                    requests=extra_r,
                    tokens=extra_t,
                    defaults=defaults,
                    now=now,
                    observation=observation,
                )
            except StorageError as exc:
                self._trip("settle", exc)
            else:
                self._remember(org, model, state, defaults)
                return True, state
        self._fb._maybe_recover()
        heard = observation is not None and observation.floors[1] is not None
        self._charge_later(org, model, 0.0 if heard else extra_r, extra_t)
        if observation is not None and not observation.empty:
            self._queue(_Replay(org, model, None, 0.0, 0.0, defaults, observation), now)
        same = held.episode == self._episode
        return self._local_settle(
            org, model, rid if same else None, requests, tokens, defaults, now, observation
        )

    async def get(self, org: str, model: str, *, defaults: Limits, now: float) -> QuotaState:
        """The buckets of (org, model): the primary's, or this process's share."""
        if self.breaker.closed:
            try:
                state = await self.primary.get(org, model, defaults=defaults, now=now)
            except StorageError as exc:
                self._trip("get", exc)
            else:
                self._remember(org, model, state, defaults)
                return state
        self._fb._maybe_recover()
        scaled = self._local_defaults(org, model, defaults, now)
        return self._from_local(self.local.get_now(org, model, defaults=scaled, now=now))

    async def get_many(
        self, items: Sequence[tuple[str, str, Limits]], *, now: float
    ) -> list[QuotaState]:
        """`get` for several pairs (one round trip to the primary)."""
        if self.breaker.closed:
            try:
                states = await self.primary.get_many(items, now=now)
            except StorageError as exc:
                self._trip("get", exc)
            else:
                for (org, model, d), st in zip(items, states, strict=True):
                    self._remember(org, model, st, d)
                return states
        self._fb._maybe_recover()
        out = []
        for org, model, d in items:
            scaled = self._local_defaults(org, model, d, now)
            out.append(self._from_local(self.local.get_now(org, model, defaults=scaled, now=now)))
        return out

    async def clear(self) -> None:
        await self.local.clear()
        self._known.clear()
        self._held.clear()
        self._replays.clear()
        self._charges.clear()
        self._day_counts.clear()
        await self.primary.clear()

    async def check(self) -> bool:
        return await self.primary.check()

    async def aclose(self) -> None:
        await self._fb._close_tasks()
        if self._replays or self._charges:
            logger.warning(
                "Closing the quota store with %d settles not replayed to Redis",
                len(self._replays),
            )
        await self.primary.aclose()

    def __repr__(self) -> str:
        mode = f"local share {self._share:.0%}" if self.degraded else "shared"
        return f"<ResilientQuotaStore {self.primary!r} {mode} {self.breaker!r}>"

    # -- recovery -----------------------------------------------------------------------------

    def _snapshot(self) -> _Work:
        """Take what the primary has not seen yet (synchronously: nothing slips in between)."""
        now = self._clock()
        pairs = list(self._dirty)
        self._dirty.clear()
        share = self._share
        local: dict[tuple[str, str], QuotaState] = {}
        for pair in pairs:
            if pair in self._seeded:
                defaults = _scale_limits(self._defaults.get(pair, NO_LIMITS), share)
                local[pair] = self.local.get_now(pair[0], pair[1], defaults=defaults, now=now)
        replays = list(self._replays)
        self._replays.clear()
        charges = {p: self._charges.pop(p) for p in list(self._charges)}
        day_counts, self._day_counts = self._day_counts, {}
        in_flight = [h for h in self._held.values() if h.place == "local" and not h.charged]
        for h in in_flight:
            h.charged = True
        return _Work(now, share, pairs, local, replays, charges, day_counts, in_flight)

    def _restore(self, work: _Work, done: int) -> None:
        """Keep what did not get through for the next try."""
        self._dirty.update(work.pairs)
        self._replays.extendleft(reversed(work.replays[done:]))
        for p, c in work.charges.items():
            acc = self._charges.setdefault(p, [0.0, 0.0])
            acc[0] += c[0]
            acc[1] += c[1]
        for p, count in work.day_counts.items():
            self._day_counts.setdefault(p, count)  # a newer count wins
        held = {id(h) for h in self._held.values()}
        for h in work.in_flight:
            if id(h) in held:
                h.charged = False
            else:
                # Settled meanwhile, charging only what exceeded the estimate: the estimate
                # itself is still owed to the day's tokens (its request is in the count of
                # Groq's that its own answer carried).
                self._charge_later(h.org, h.model, 0.0, h.tokens)

    async def _push(self, work: _Work) -> None:
        """Write a snapshot to the primary (see the module docstring for the order)."""
        primary = self.primary
        now, share = work.now, work.share
        done = 0
        try:
            for org, model in work.pairs:
                defaults = self._defaults.get((org, model), NO_LIMITS)
                known = self._known.get((org, model))
                local = work.local.get((org, model))
                learned: list[int | None] = list(
                    known.learned if known is not None else NO_LIMITS
                )
                cool = known.cool_until if known is not None else 0.0
                if local is not None:
                    for i, lim in enumerate(_unscale_limits(local.learned, share)):
                        if lim is not None:
                            learned[i] = lim
                    cool = max(cool, local.cool_until)
                floors: list[float | None] = [None, None, None, None]
                if known is not None:
                    levels = _project_levels(known, now)
                    floors[1], floors[3] = levels[1], levels[3]
                obs = Observation(
                    limits=cast(Limits, tuple(learned)),
                    floors=cast(
                        "tuple[float | None, float | None, float | None, float | None]",
                        tuple(floors),
                    ),
                    cool_until=cool if cool > now else None,
                )
                if not obs.empty:
                    await primary.settle(
                        org, model, reservation_id=None, requests=0, tokens=0,
                        defaults=defaults, now=now, observation=obs,
                    )
            for r in work.replays:
                obs_r = r.observation
                requests = r.requests
                if r.counted and requests:
                    # Its request per day is in the count the floor below brings; charged
                    # here too, it would count twice once another worker's count is in.
                    obs_r = replace(obs_r or Observation(), charges=(requests, 0.0, 0.0, 0.0))
                    requests = 0.0
                await primary.settle(
                    r.org,
                    r.model,
                    reservation_id=r.reservation_id,
                    requests=requests,
                    tokens=r.tokens,
                    defaults=r.defaults,
                    now=now,
                    observation=obs_r,
                )
                done += 1
                self.stats["replayed"] += 1
            for pair in {*work.pairs, *work.charges, *work.day_counts}:
                org, model = pair
                defaults = self._defaults.get(pair, NO_LIMITS)
                local = work.local.get(pair)
                at_least: list[float | None] = [None, None, None, None]
                if local is not None:
                    # What this share implies for every worker: conservative, and exact when
                    # the workers used their shares alike.
                    at_least[0] = local.levels[0] / share
                    at_least[2] = local.levels[2] / share
                if pair in work.day_counts:
                    # After the replays, which charge requests Groq's count already holds.
                    count, at, limit = work.day_counts[pair]
                    drained = max(0.0, now - at) * limit / WINDOWS[1] if limit else 0.0
                    at_least[1] = max(0.0, count - drained)
                c = work.charges.get(pair, [0.0, 0.0])
                obs = Observation(
                    floors=cast(
                        "tuple[float | None, float | None, float | None, float | None]",
                        tuple(at_least),
                    ),
                    # Requests per day are charged only where no count of Groq's covers them.
                    charges=(0.0, c[0], 0.0, c[1]),
                )
                if not obs.empty:
                    _, state = await primary.settle(
                        org, model, reservation_id=None, requests=0, tokens=0,
                        defaults=defaults, now=now, observation=obs,
                    )
                    self._remember(org, model, state, defaults)
                # Charges add up: once sent, one must not be sent again on a retry.
                work.charges.pop(pair, None)
                self.stats["reconciled_pairs"] += 1
            for h in list(work.in_flight):
                defaults = self._defaults.get((h.org, h.model), NO_LIMITS)
                await primary.settle(
                    h.org, h.model, reservation_id=None, requests=h.requests, tokens=h.tokens,
                    defaults=defaults, now=now,
                )
                work.in_flight.remove(h)
                self.stats["charged_in_flight"] += 1
        except BaseException:
            self._restore(work, done)
            raise

    async def _reconcile(self) -> _Work:
        """Bring the primary up to date; return what arrived meanwhile (to push once the
        breaker is closed: under steady traffic, waiting for an empty backlog never ends)."""
        if not await self.primary.check():
            raise StorageError("redis quota: still unreachable")
        await self._push(self._snapshot())
        rest = self._snapshot()
        # No await between this snapshot and closing the breaker: nothing slips past both.
        self._grace_until = self._clock() + self.grace
        self._recounting_until = self._clock() + self.worker_window
        return rest

    async def _catch_up(self, work: _Work) -> None:
        """Push what the last pass of a recovery left (the breaker is closed already)."""
        try:
            await self._push(work)
            await self.beat()
        except StorageError as exc:
            self._trip("reconcile", exc)


@dataclass(slots=True)
class _Work:
    """What one reconcile pass writes to the primary."""

    now: float
    share: float
    pairs: list[tuple[str, str]]
    local: dict[tuple[str, str], QuotaState]
    replays: list[_Replay]
    charges: dict[tuple[str, str], list[float]]
    day_counts: dict[tuple[str, str], tuple[float, float, int | None]]
    """The requests per day Groq last counted per pair: (count, when, the limit)."""
    in_flight: list[_Held]


class _QuotaFallback(_Fallback):
    _what = "quota store"

    def __init__(
        self, store: ResilientQuotaStore, clock: Clock, retry_after: float, max_retry_after: float
    ) -> None:
        super().__init__(clock, retry_after, max_retry_after)
        self._store = store
        self._rest: _Work | None = None

    async def _recover(self) -> None:
        self._rest = await self._store._reconcile()

    def _closed(self) -> None:
        rest, self._rest = self._rest, None
        if rest is not None:
            self._spawn(self._store._catch_up(rest))


# -- key health -----------------------------------------------------------------------------


class ResilientKeyStateStore:
    """A `KeyStateStore` that keeps the last known key health while its primary is away.

    Changes made meanwhile (a key disabled, organisations merged) apply here at once and are
    written to the primary, in order, when it is back. Failure counts are kept locally.

    Args:
        primary: The shared store (`RedisKeyStateStore`).
        clock: Wall clock for the breaker.
        retry_after: Seconds before the first retry of the primary (doubling per failure).
        max_retry_after: Cap of the doubling.
    """

    shared = True

    def __init__(
        self,
        primary: KeyStateStore,
        *,
        clock: Clock = time.time,
        retry_after: float = 1.0,
        max_retry_after: float = 30.0,
    ) -> None:
        self.primary = primary
        self.local = MemoryKeyStateStore()
        self._fb = _KeysFallback(self, clock, retry_after, max_retry_after)
        self._pending: deque[tuple[str, str, Any]] = deque()

    @classmethod
    def wrap(cls, primary: KeyStateStore, **kwargs: Any) -> KeyStateStore:
        """`primary` itself when it is local, else a wrapper."""
        if not getattr(primary, "shared", True):
            return primary
        return cls(primary, **kwargs)

    @property
    def degraded(self) -> bool:
        return self._fb.degraded

    @property
    def last_error(self) -> str | None:
        return self._fb.last_error

    async def recover(self) -> bool:
        return await self._fb.recover()

    async def load(self, labels: Sequence[str]) -> KeyStates:
        if self._fb.breaker.closed:
            try:
                states = await self.primary.load(labels)
            except StorageError as exc:
                self._fb._failed("load", exc)
            else:
                self.local.mirror(labels, states)
                return states
        self._fb._maybe_recover()
        return await self.local.load(labels)

    async def update(self, label: str, changes: Mapping[str, str | int | float | None]) -> None:
        unknown = set(changes) - KEY_FIELDS
        if unknown:
            raise ValueError(f"unknown key record fields: {sorted(unknown)}")
        await self.local.update(label, changes)
        if self._fb.breaker.closed:
            try:
                await self.primary.update(label, changes)
                return
            except StorageError as exc:
                self._fb._failed("update", exc)
        self._fb._maybe_recover()
        self._pending.append(("update", label, dict(changes)))

    async def record_failure(self, label: str, *, now: float, window: float) -> int:
        if self._fb.breaker.closed:
            try:
                return await self.primary.record_failure(label, now=now, window=window)
            except StorageError as exc:
                self._fb._failed("record_failure", exc)
        self._fb._maybe_recover()
        return await self.local.record_failure(label, now=now, window=window)

    async def set_alias(self, org: str, canonical: str) -> bool:
        new = await self.local.set_alias(org, canonical)
        if self._fb.breaker.closed:
            try:
                return await self.primary.set_alias(org, canonical)
            except StorageError as exc:
                self._fb._failed("set_alias", exc)
        self._fb._maybe_recover()
        self._pending.append(("alias", org, canonical))
        return new

    async def report(
        self,
        model: str,
        org: str,
        report: Report,
        *,
        orgs: Sequence[str],
        window: float,
        keep: int,
    ) -> dict[str, list[Report]]:
        # Reports are evidence, not state: while the primary is away, this process compares
        # against what it sees itself.
        if self._fb.breaker.closed:
            try:
                return await self.primary.report(
                    model, org, report, orgs=orgs, window=window, keep=keep
                )
            except StorageError as exc:
                self._fb._failed("report", exc)
        self._fb._maybe_recover()
        return await self.local.report(model, org, report, orgs=orgs, window=window, keep=keep)

    async def _replay(self) -> None:
        if not await self.primary.check():
            raise StorageError("redis key state: still unreachable")
        while self._pending:
            kind, a, b = self._pending[0]
            if kind == "update":
                await self.primary.update(a, b)
            else:
                await self.primary.set_alias(a, b)
            self._pending.popleft()

    async def clear(self) -> None:
        await self.local.clear()
        self._pending.clear()
        await self.primary.clear()

    async def check(self) -> bool:
        return await self.primary.check()

    async def aclose(self) -> None:
        await self._fb._close_tasks()
        await self.primary.aclose()

    def __repr__(self) -> str:
        return f"<ResilientKeyStateStore {self.primary!r} {self._fb.breaker!r}>"


class _KeysFallback(_Fallback):
    _what = "key state store"

    def __init__(
        self,
        store: ResilientKeyStateStore,
        clock: Clock,
        retry_after: float,
        max_retry_after: float,
    ) -> None:
        super().__init__(clock, retry_after, max_retry_after)
        self._store = store

    async def _recover(self) -> None:
        await self._store._replay()


# -- learning -------------------------------------------------------------------------------

_Op = tuple[str, tuple[Any, ...]]


class ResilientLearningStore:
    """A `LearningStore` that buffers what it cannot write and flushes it, in order, once its
    primary is back.

    Args:
        primary: The shared store (`RedisLearningStore`).
        clock: Wall clock for the breaker.
        max_buffer: Operations kept while the primary is away (beyond it the oldest go, counted
            in `stats["dropped"]`).
        remember: Recent executions kept by id, so feedback works during an outage.
        retry_after: Seconds before the first retry of the primary (doubling per failure).
        max_retry_after: Cap of the doubling.
    """

    def __init__(
        self,
        primary: LearningStore,
        *,
        clock: Clock = time.time,
        max_buffer: int = 100_000,
        remember: int = 10_000,
        retry_after: float = 1.0,
        max_retry_after: float = 30.0,
    ) -> None:
        self.primary = primary
        self._fb = _LearningFallback(self, clock, retry_after, max_retry_after)
        self._buffer: deque[_Op] = deque()
        self._max_buffer = max_buffer
        self._recent: OrderedDict[str, Execution] = OrderedDict()
        self._remember_n = remember
        self._flushing: asyncio.Task[None] | None = None
        self.stats: dict[str, int] = {
            "buffered": 0,
            "flushed": 0,
            "dropped": 0,
            "feedback_lost": 0,
        }

    @property
    def degraded(self) -> bool:
        return self._fb.degraded

    @property
    def last_error(self) -> str | None:
        return self._fb.last_error

    @property
    def pending(self) -> int:
        """Operations waiting for the primary."""
        return len(self._buffer)

    async def recover(self) -> bool:
        """Try the primary now and flush; whether everything was written."""
        if not await self._fb.recover():
            return False
        self._start_flush()
        if self._flushing is not None:
            await asyncio.shield(self._flushing)
        return self._fb.breaker.closed and not self._buffer

    def _keep(self, execution: Execution) -> None:
        self._recent[execution.execution_id] = execution
        self._recent.move_to_end(execution.execution_id)
        while len(self._recent) > self._remember_n:
            self._recent.popitem(last=False)

    def _buffer_op(self, op: _Op) -> None:
        if len(self._buffer) >= self._max_buffer:
            self._buffer.popleft()
            self.stats["dropped"] += 1
        self._buffer.append(op)
        self.stats["buffered"] += 1

    async def _try(self, operation: str, call: Callable[[], Awaitable[Any]]) -> tuple[bool, Any]:
        if self._fb.breaker.closed:
            if not self._buffer:
                try:
                    return True, await call()
                except StorageError as exc:
                    self._fb._failed(operation, exc)
            else:
                # New writes queue behind what is buffered, so the order is kept.
                self._start_flush()
        self._fb._maybe_recover()
        return False, None

    def _start_flush(self) -> None:
        if self._buffer and (self._flushing is None or self._flushing.done()):
            self._flushing = self._fb._spawn(self._drain())

    async def _drain(self) -> None:
        try:
            await self._flush(len(self._buffer) + self._max_buffer)
        except StorageError as exc:
            self._fb._failed("flush", exc)

    async def record(self, execution: Execution, *, origin: str) -> int:
        self._keep(execution)
        ok, seq = await self._try(
            "record", lambda: self.primary.record(execution, origin=origin)
        )
        if ok:
            return int(seq)
        self._buffer_op(("record", (execution, origin)))
        return 0

    async def add_summary(
        self, summary: Mapping[str, Any], *, timestamp: float, origin: str
    ) -> int:
        ok, seq = await self._try(
            "add_summary",
            lambda: self.primary.add_summary(summary, timestamp=timestamp, origin=origin),
        )
        if ok:
            return int(seq)
        self._buffer_op(("summary", (dict(summary), timestamp, origin)))
        return 0

    async def feedback(
        self, execution_id: str, quality: float, *, timestamp: float, origin: str
    ) -> Execution | None:
        ok, before = await self._try(
            "feedback",
            lambda: self.primary.feedback(
                execution_id, quality, timestamp=timestamp, origin=origin
            ),
        )
        if ok:
            if before is not None and execution_id in self._recent:
                self._recent[execution_id] = replace(before, quality=quality)
            return cast("Execution | None", before)
        known = self._recent.get(execution_id)
        if known is None:
            raise StorageError(
                "learning feedback: the store is unreachable and this process did not record "
                "that execution; try again when Redis is back"
            )
        self._recent[execution_id] = replace(known, quality=quality)
        self._buffer_op(("feedback", (execution_id, quality, timestamp, origin)))
        return known

    async def get(self, execution_id: str) -> Execution | None:
        ok, found = await self._try("get", lambda: self.primary.get(execution_id))
        if ok:
            return cast("Execution | None", found)
        return self._recent.get(execution_id)

    async def events(self, after: int = 0, *, limit: int = 1000) -> list[LearningEvent]:
        ok, found = await self._try("events", lambda: self.primary.events(after, limit=limit))
        # Meanwhile other processes' evidence waits; this process's own is in memory already.
        return cast("list[LearningEvent]", found) if ok else []

    async def prune(self, before: float) -> int:
        ok, n = await self._try("prune", lambda: self.primary.prune(before))
        return int(n) if ok else 0

    async def _flush(self, most: int) -> None:
        """Write up to `most` buffered operations, oldest first."""
        while self._buffer and most > 0:
            most -= 1
            kind, args = self._buffer[0]
            if kind == "record":
                execution, origin = args
                await self.primary.record(execution, origin=origin)
            elif kind == "summary":
                summary, timestamp, origin = args
                await self.primary.add_summary(summary, timestamp=timestamp, origin=origin)
            else:
                eid, quality, timestamp, origin = args
                found = await self.primary.feedback(
                    eid, quality, timestamp=timestamp, origin=origin
                )
                if found is None:
                    self.stats["feedback_lost"] += 1
            self._buffer.popleft()
            self.stats["flushed"] += 1

    async def check(self) -> bool:
        return await self.primary.check()

    async def aclose(self) -> None:
        await self._fb._close_tasks()
        if self._buffer:
            # One last try, so a short outage at shutdown loses nothing.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._flush(len(self._buffer)), 5.0)
            if self._buffer:
                logger.warning(
                    "Closing the learning store with %d records not written to Redis",
                    len(self._buffer),
                )
        await self.primary.aclose()

    def __repr__(self) -> str:
        return (
            f"<ResilientLearningStore {self.primary!r} {self._fb.breaker!r} "
            f"pending={len(self._buffer)}>"
        )


class _LearningFallback(_Fallback):
    _what = "learning store"

    def __init__(
        self,
        store: ResilientLearningStore,
        clock: Clock,
        retry_after: float,
        max_retry_after: float,
    ) -> None:
        super().__init__(clock, retry_after, max_retry_after)
        self._store = store

    async def _recover(self) -> None:
        store = self._store
        if not await store.primary.check():
            raise StorageError("redis learning: still unreachable")
        # What is buffered now; what arrives meanwhile follows once the breaker is closed
        # (under steady traffic, waiting for an empty buffer might never end).
        await store._flush(len(store._buffer))

    def _closed(self) -> None:
        self._store._start_flush()
