"""Quota while Redis is away (`ResilientQuotaStore`).

While Redis is up, every process records a heartbeat in it
(`RedisQuotaStore.heartbeat`), so each knows how many workers share the budgets. When it goes
away, each process falls back to a conservative *share* of every (organisation, model) budget:
`safety / workers` of the limits, seeded from the last state Redis reported (consumed plus
reserved, drained forward), refilling at the same share of Groq's rate. A count is only as
fresh as the last heartbeat, though: a worker that joined after another's last heartbeat (or
whose own first heartbeat had not answered yet) is missing from that other's count, which then
takes too large a share. Such a worker, not yet counted by everyone, keeps to the headroom the
counted shares leave: `(1 - safety) / (n (n - 1))` for the `n` workers it sees, so that however
many join at once, their shares add up to less than `1 - safety`. So together the
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
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, cast

from ...breaker import CircuitBreaker
from ...clock import Clock
from ...errors import StorageError
from ..memory import MemoryQuotaStore
from ..quota_base import NO_LIMITS, WINDOWS, Limits, Observation, QuotaState, QuotaStore
from .fallback import Fallback, FallbackStore

__all__ = ["ResilientQuotaStore"]

logger = logging.getLogger(__name__)


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


class ResilientQuotaStore(FallbackStore):
    """A `QuotaStore` that serves a conservative local share of each budget while its
    primary (Redis) is unreachable, and reconciles when it is back (see the module docstring).

    Args:
        primary: The shared store (`RedisQuotaStore`).
        clock: Wall clock (the breaker, heartbeats and the local buckets).
        worker_id: This process's id in the heartbeat set; default: random.
        heartbeat_interval: Seconds between heartbeats while the primary is up.
        worker_window: A worker counts as alive this long after its last heartbeat.
        assumed_workers: Workers to assume if the primary went away before any heartbeat
            answered (the others then do not count this one: it takes a newcomer's share
            unless this is 1).
        safety: The share of `1 / workers` actually used (headroom for views that were a
            little stale when Redis went away, and for workers not counted by everyone yet).
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
        self._fb = Fallback(
            "quota store",
            clock,
            retry_after,
            max_retry_after,
            recover=self._reconcile,
            on_open=self._fell_back,
            on_close=self._recovered,
        )
        self._rest: _Work | None = None
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
        self._joined: float | None = None
        self._unaware: int | None = None
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
    def breaker(self) -> CircuitBreaker:
        return self._fb.breaker

    @property
    def outages(self) -> int:
        """Times the primary became unreachable."""
        return self._fb.outages

    @property
    def recoveries(self) -> int:
        """Times it came back and the ledger was reconciled."""
        return self._fb.recoveries

    @property
    def share(self) -> float:
        """The share of each budget this process uses while the primary is away."""
        return self._share

    async def recover(self) -> bool:
        """Try the primary now; whether it is back and the ledger reconciled."""
        back = await self._fb.recover()
        await self._fb.drain()
        return back and self.breaker.closed

    # -- the primary's calls -----------------------------------------------------------------

    @property
    def counted(self) -> bool:
        """Whether every other live worker counted this one at its last heartbeat (so their
        shares leave room for this one's)."""
        if self._unaware is None:
            return self.assumed_workers == 1
        return self._unaware == 0

    def _fell_back(self) -> None:
        """The breaker just opened: from now on, this process keeps to its share."""
        workers = self.workers or self.assumed_workers
        headroom = 1.0 - self.safety
        if self.counted or headroom <= 0:
            self._share = self.safety / workers
        else:
            # The others' shares may add up to `safety` without this worker: it lives on
            # the headroom, split so that any number of such newcomers (each seeing one
            # worker more than the one before it) stays within it.
            n = max(2, workers)
            self._share = headroom / (n * (n - 1))
        self._episode += 1
        self._seeded.clear()
        self._grace_until = -math.inf
        logger.warning(
            "Quota falls back to %.1f%% of each budget (%d workers seen%s) until Redis is back",
            self._share * 100,
            workers,
            "" if self.counted else ", not all of them counting this one yet",
        )

    def _remember(self, org: str, model: str, state: QuotaState, defaults: Limits) -> None:
        self._known[(org, model)] = state
        self._defaults[(org, model)] = defaults

    def _after_primary(self, now: float) -> None:
        # Not counted by everyone yet, this worker would fall back to a newcomer's sliver:
        # it beats more often to hear as soon as the others' heartbeats have counted it.
        interval = self.heartbeat_interval if self.counted else self.heartbeat_interval / 10
        if not self._beating and now - self._last_beat >= interval:
            self._beating = True
            self._last_beat = now
            self._fb.spawn(self._beat(now))

    async def _beat(self, now: float) -> None:
        try:
            await self.beat(now)
        except StorageError as exc:
            self._fb.failed("heartbeat", exc)
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
            self._unaware = 0
            return 1
        beat = await heartbeat(
            self.worker_id, now=now, window=self.worker_window, joined=self._joined
        )
        self._joined, self._unaware = beat.joined, beat.unaware
        seen = beat.workers
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
                    org,
                    model,
                    levels=(0.0, 0.0, 0.0, 0.0),
                    learned=NO_LIMITS,
                    cool_until=0.0,
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
            levels=cast("tuple[float, float, float, float]", tuple(x * k for x in state.levels)),
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

        async def shared() -> tuple[float, QuotaState]:
            gated = self._in_grace(now)
            if gated:
                # Until every process has seen Redis back, this one keeps to its share too.
                lwait, lstate = self._local_reserve(
                    org, model, reservation_id, requests, tokens, defaults, now, ttl, mark=False
                )
                if lwait > 0:
                    return lwait, lstate
            # If this fails, the script may have run before the connection broke: that
            # reservation then expires on its own (`ttl`).
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
            self._remember(org, model, state, defaults)
            if wait <= 0:
                self._prune_held(now)
                self._held[reservation_id] = _Held(
                    "primary",
                    org,
                    model,
                    requests,
                    tokens,
                    self._episode,
                    now + ttl,
                    gated=gated,
                )
            elif gated:
                self._held.pop(reservation_id, None)
                self._local_settle(
                    org, model, reservation_id, 0, 0, defaults, now, None, mark=False
                )
            self._after_primary(now)
            return wait, state

        async def local() -> tuple[float, QuotaState]:
            return self._local_reserve(
                org, model, reservation_id, requests, tokens, defaults, now, ttl
            )

        return await self._fb.call("reserve", shared, local)

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

        async def shared() -> tuple[bool, QuotaState]:
            if held is not None and held.gated and self._in_grace(now, held):
                self._local_settle(
                    org,
                    model,
                    reservation_id,
                    requests,
                    tokens,
                    defaults,
                    now,
                    observation,
                    mark=False,
                )
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
            self._remember(org, model, state, defaults)
            self._after_primary(now)
            return found, state

        async def local() -> tuple[bool, QuotaState]:
            self._queue(
                _Replay(org, model, reservation_id, requests, tokens, defaults, observation), now
            )
            # The share sees the consumption now; the primary gets the settle itself on
            # recovery.
            _, state = self._local_settle(
                org, model, None, requests, tokens, defaults, now, observation
            )
            return held is not None, state

        return await self._fb.call("settle", shared, local)

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

        async def shared() -> tuple[bool, QuotaState]:
            if self._in_grace(now, held):
                self._local_settle(
                    org, model, rid, requests, tokens, defaults, now, observation, mark=False
                )
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
            self._remember(org, model, state, defaults)
            return True, state

        async def local() -> tuple[bool, QuotaState]:
            heard = observation is not None and observation.floors[1] is not None
            self._charge_later(org, model, 0.0 if heard else extra_r, extra_t)
            if observation is not None and not observation.empty:
                self._queue(_Replay(org, model, None, 0.0, 0.0, defaults, observation), now)
            same = held.episode == self._episode
            return self._local_settle(
                org, model, rid if same else None, requests, tokens, defaults, now, observation
            )

        return await self._fb.call("settle", shared, local)

    async def get(self, org: str, model: str, *, defaults: Limits, now: float) -> QuotaState:
        """The buckets of (org, model): the primary's, or this process's share."""

        async def shared() -> QuotaState:
            state = await self.primary.get(org, model, defaults=defaults, now=now)
            self._remember(org, model, state, defaults)
            return state

        async def local() -> QuotaState:
            return self._local_get(org, model, defaults, now)

        return await self._fb.call("get", shared, local)

    async def get_many(
        self, items: Sequence[tuple[str, str, Limits]], *, now: float
    ) -> list[QuotaState]:
        """`get` for several pairs (one round trip to the primary)."""

        async def shared() -> list[QuotaState]:
            states = await self.primary.get_many(items, now=now)
            for (org, model, d), st in zip(items, states, strict=True):
                self._remember(org, model, st, d)
            return states

        async def local() -> list[QuotaState]:
            return [self._local_get(org, model, d, now) for org, model, d in items]

        return await self._fb.call("get", shared, local)

    def _local_get(self, org: str, model: str, defaults: Limits, now: float) -> QuotaState:
        scaled = self._local_defaults(org, model, defaults, now)
        return self._from_local(self.local.get_now(org, model, defaults=scaled, now=now))

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
        await self._fb.aclose()
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
                learned: list[int | None] = list(known.learned if known is not None else NO_LIMITS)
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
                        org,
                        model,
                        reservation_id=None,
                        requests=0,
                        tokens=0,
                        defaults=defaults,
                        now=now,
                        observation=obs,
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
                        org,
                        model,
                        reservation_id=None,
                        requests=0,
                        tokens=0,
                        defaults=defaults,
                        now=now,
                        observation=obs,
                    )
                    self._remember(org, model, state, defaults)
                # Charges add up: once sent, one must not be sent again on a retry.
                work.charges.pop(pair, None)
                self.stats["reconciled_pairs"] += 1
            for h in list(work.in_flight):
                defaults = self._defaults.get((h.org, h.model), NO_LIMITS)
                await primary.settle(
                    h.org,
                    h.model,
                    reservation_id=None,
                    requests=h.requests,
                    tokens=h.tokens,
                    defaults=defaults,
                    now=now,
                )
                work.in_flight.remove(h)
                self.stats["charged_in_flight"] += 1
        except BaseException:
            self._restore(work, done)
            raise

    async def _reconcile(self) -> None:
        """Bring the primary up to date; keep what arrived meanwhile for `_recovered` (to
        push once the breaker is closed: under steady traffic, waiting for an empty backlog
        never ends)."""
        if not await self.primary.check():
            raise StorageError("redis quota: still unreachable")
        await self._push(self._snapshot())
        self._rest = self._snapshot()
        # No await between this snapshot and closing the breaker: nothing slips past both.
        self._grace_until = self._clock() + self.grace
        self._recounting_until = self._clock() + self.worker_window

    def _recovered(self) -> None:
        """The breaker just closed: push what the reconcile left, in the background."""
        rest, self._rest = self._rest, None
        if rest is not None:
            self._fb.spawn(self._catch_up(rest))

    async def _catch_up(self, work: _Work) -> None:
        """Push what the last pass of a recovery left (the breaker is closed already)."""
        try:
            await self._push(work)
            await self.beat()
        except StorageError as exc:
            self._fb.failed("reconcile", exc)


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
