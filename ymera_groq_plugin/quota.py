"""Quota: shape traffic so Groq never has to answer 429, while using all the allowance there is.

Groq limits each organisation, per model, on four axes at once: requests per minute (RPM),
requests per day (RPD), tokens per minute (TPM) and tokens per day (TPD). Its buckets refill
continuously: the headers fit `reset = (limit - remaining) * window / limit` with a 60 s window
for the minute limits and a rolling 86 400 s for the day limits (see
`shared/reference/groq-api.md` §1.3). The ledger models exactly that:

- Each (organisation, model) has four **levels**: what was consumed and is still draining,
  each at `limit / window` per second, never below zero.
- A **reservation** takes one request (RPM, RPD) and the prompt estimate (TPM, TPD) from all
  four at once, or nothing. Reservations are *pending*: they do not drain, so releasing one
  (the call never reached Groq) gives back exactly what it took, however long it was held.
  Each has an expiry, so a crashed process's reservations come back on their own.
- **Settling** turns a reservation into consumption: one request, and the prompt plus the
  completion tokens Groq reports (Groq admits a request on an estimate of its input and charges
  the output afterwards, so only the input is reserved up front; the output is reconciled here).
- Room for a request exists when `level + pending + amount <= limit` for every kind with a limit.
- **Header sync**: Groq's `x-ratelimit-*` headers (`*-requests` = RPD, `*-tokens` = TPM) and 429
  texts (which name RPM and TPD, the kinds without a header) are folded in. When Groq counts
  more than the ledger (consumed plus reserved), the ledger's level is raised to match: the
  server wins. A different limit becomes the limit in force, kept in the shared store.

The arithmetic is a set of pure functions over bucket records (`Bucket`, `QuotaState`), kept
next to the records in `storage/buckets.py`: no I/O. `storage/memory.py` calls them;
`storage/redis_quota.py` runs the same formulas in one Lua script per operation. `QuotaLedger`
puts them behind a `QuotaStore`; `QuotaManager` adds the key pool, fair waiting, alerts and what
the engine calls. The public names of the arithmetic are re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .alerts import Alert, AlertLevel, AlertWatch
from .clock import Clock
from .config import ApiKey
from .errors import (
    InvalidRequestError,
    ModelRetiredError,
    NoUsableKeyError,
    QuotaExhaustedError,
    RequestTooLargeError,
)
from .headers import parse_error_text
from .keys import KeyPool
from .ledger import DEFAULT_RESERVATION_TTL, EPSILON, QuotaLedger
from .storage import resilient_store_from_url
from .storage.buckets import (
    MARGIN,
    Bucket,
    Headroom,
    drain,
    free_fraction,
    headroom_of,
    limits_in_force,
    observation_from,
    project,
    room_wait,
    settle_bucket,
    snapshot,
    try_reserve,
    wait_for,
)
from .storage.buckets import can_fit as _can_fit
from .storage.buckets import token_cap as _token_cap
from .storage.quota_base import (
    KINDS,
    NO_LIMITS,
    WINDOWS,
    KeyStateStore,
    Limits,
    Observation,
    QuotaState,
    QuotaStore,
)
from .types import RateLimits, Usage

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .catalog import Catalog, ModelInfo
    from .config import YmeraSettings
    from .errors import YmeraError

__all__ = [
    "EPSILON",
    "KINDS",
    "MARGIN",
    "WINDOWS",
    "Alert",
    "AlertLevel",
    "Bucket",
    "Grant",
    "Headroom",
    "KeyPool",
    "Observation",
    "QuotaLedger",
    "QuotaManager",
    "QuotaState",
    "drain",
    "headroom_of",
    "limits_in_force",
    "observation_from",
    "project",
    "room_wait",
    "settle_bucket",
    "snapshot",
    "try_reserve",
    "wait_for",
]

logger = logging.getLogger(__name__)

_MERGED_COOLDOWN = 60.0
"""Seconds an organisation merged into another refuses reservations, until every process knows
of the merge (see `QuotaManager._absorb`)."""

# -- the manager: what the engine calls -----------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class Grant:
    """A reservation on one key's organisation for one call; settle or release it.

    Attributes:
        key: The key to call Groq with.
        model: The model (catalog id).
        org: The organisation whose buckets hold the reservation.
        reservation_id: The reservation's id in the quota store.
        prompt_tokens: The prompt estimate the caller gave.
        reserved_tokens: Tokens reserved (the estimate, raised if Groq has counted this model's
            prompts higher than estimated).
        max_tokens: The completion budget, if the caller gave one (not reserved: Groq charges
            output after the call).
        reserved_at: When the reservation was made.
        waited: Seconds spent waiting for room.
    """

    key: ApiKey
    model: str
    org: str
    reservation_id: str
    prompt_tokens: int
    reserved_tokens: int
    max_tokens: int | None = None
    reserved_at: float = 0.0
    waited: float = 0.0

    @property
    def key_label(self) -> str:
        return self.key.label

    def __repr__(self) -> str:
        return (
            f"<Grant {self.key.label} {self.key.masked} {self.model} org={self.org} "
            f"tokens={self.reserved_tokens} id={self.reservation_id}>"
        )

    __str__ = __repr__


@dataclass(slots=True, eq=False)
class _Waiter:
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class QuotaManager:
    """The quota ledger and the key pool together: what the engine calls around each call.

    Every method runs on one event loop (the engine's portal loop).

    Args:
        keys: The Groq keys.
        catalog: Model limits (the defaults until Groq reports others).
        quota_store: Where buckets live (`MemoryQuotaStore`, or `RedisQuotaStore` shared by
            every process).
        key_store: Where key health and organisation merges live.
        clock: Wall-clock seconds; waiting deadlines are computed from it.
        alert_thresholds: Shares of a limit at which warning, critical and emergency alerts fire.
        reservation_ttl: Seconds after which an unsettled reservation is given back.
        max_poll: Longest real sleep between checks while waiting for room (room freed by other
            processes is seen at this interval at the latest; this process's wakes waiters at
            once).
        default_cooldown: Seconds to cool an organisation after a 429 that says nothing of when
            to retry.
        correct_estimates: Raise a model's reservations when Groq counts its prompts higher
            than estimated (`usage.prompt_tokens`, 429/413 texts).
        key_refresh_interval: Seconds between reloads of shared key health.
    """

    def __init__(
        self,
        keys: Sequence[ApiKey],
        catalog: Catalog,
        *,
        quota_store: QuotaStore,
        key_store: KeyStateStore,
        clock: Clock = time.time,
        alert_thresholds: Sequence[float] = (0.8, 0.9, 0.95),
        reservation_ttl: float = DEFAULT_RESERVATION_TTL,
        max_poll: float = 0.5,
        default_cooldown: float = 2.0,
        correct_estimates: bool = True,
        key_refresh_interval: float = 1.0,
    ) -> None:
        self._clock = clock
        self.catalog = catalog
        self.pool = KeyPool(
            keys, store=key_store, clock=clock, refresh_interval=key_refresh_interval
        )
        self.ledger = QuotaLedger(
            quota_store, catalog, clock=clock, reservation_ttl=reservation_ttl
        )
        self._alerts = AlertWatch(alert_thresholds)
        self._outstanding: dict[str, Grant] = {}
        self._queues: dict[str, deque[_Waiter]] = {}
        self._too_large: dict[str, int] = {}
        self._ratio: dict[str, float] = {}
        self._correct = correct_estimates
        self._max_poll = max_poll
        self._default_cooldown = default_cooldown
        # A shared (networked) store suspends mid-operation, where a cancellation could strike
        # after the script ran; the in-memory one never suspends, so it needs no shield.
        self._shield = bool(getattr(quota_store, "shared", True))
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(6).hex() + "-"
        self._touched: set[tuple[str, str]] = set()
        self._closed = False
        self.served: Callable[[str, str], bool] | None = None
        """(organisation, model) → whether that organisation is served the model (set by the
        engine from the account's listings and 404s); `None`: every organisation is."""
        self._turn = -1
        self.pool.on_merge = self._absorb

    @property
    def clock(self) -> Clock:
        """The clock waits and openings are measured on (`acquire_first`'s `opens`)."""
        return self._clock

    @classmethod
    def from_settings(
        cls, settings: YmeraSettings, catalog: Catalog, *, clock: Clock = time.time
    ) -> QuotaManager:
        """Build from settings: in-memory stores without `redis_url`, else Redis ones under
        `settings.namespace`, each wrapped so that an outage of Redis falls back to a
        conservative local share of every budget (`storage.resilient_store_from_url`)."""
        url = settings.redis_url or "memory://"
        ns = settings.namespace
        return cls(
            settings.api_keys,
            catalog,
            quota_store=resilient_store_from_url("quota", url, namespace=ns, clock=clock),
            key_store=resilient_store_from_url("keys", url, namespace=ns, clock=clock),
            clock=clock,
            alert_thresholds=settings.alert_thresholds,
        )

    # -- acquiring ------------------------------------------------------------------------

    async def acquire(
        self,
        model: str,
        prompt_tokens: int,
        *,
        max_tokens: int | None = None,
        wait: float = 0.0,
        orgs: Collection[str] | None = None,
    ) -> Grant:
        """Reserve room for one call on the key whose organisation has most headroom.

        Takes one request (RPM, RPD) and the prompt estimate (TPM, TPD) atomically. Callers
        waiting for the same model are served first come, first served: while anyone waits, a
        caller that will not wait (`wait=0`) is refused at once rather than served ahead.

        Args:
            model: A catalog id or alias.
            prompt_tokens: The prompt estimate (what Groq checks on admission).
            max_tokens: The completion budget, kept on the grant (not reserved).
            wait: Seconds to wait for room; 0 answers at once.
            orgs: Only these organisations (a caller that can use only some keys, e.g. the
                one a LiteLLM router already picked); default: every one.

        Raises:
            UnknownModelError: The catalog has no such model.
            ModelRetiredError: No organisation of the account is served the model (`served`).
            RequestTooLargeError: The prompt can never fit the model's tokens-per-minute (or
                per-day) limit, or Groq already refused one this large (413).
            QuotaExhaustedError: No room within `wait`; `retry_after` is the earliest time.
            NoUsableKeyError: No key is configured, or every key is disabled.
        """
        if isinstance(prompt_tokens, bool) or not isinstance(prompt_tokens, int):
            raise InvalidRequestError("prompt_tokens must be an integer")
        if prompt_tokens < 0:
            raise InvalidRequestError("prompt_tokens must not be negative")
        info = self.catalog.get(model)
        started = self._clock()
        if not self._queues.get(self._queue_key(info.id, orgs)):
            grant, retry = await self._attempt(info, prompt_tokens, max_tokens, started, orgs)
            if grant is not None:
                return grant
            if wait <= 0 or math.isinf(retry):
                raise self._exhausted(info.id, retry)
        elif wait <= 0:
            # Others are already waiting for this model: going first would not be fair.
            raise self._exhausted(info.id, await self.time_until_room(info.id, prompt_tokens))
        return await self._wait_in_line(info, prompt_tokens, max_tokens, started, wait, orgs)

    async def acquire_first(
        self,
        models: Sequence[str],
        prompt_tokens: int,
        *,
        max_tokens: int | None = None,
        wait: float = 0.0,
        orgs: Mapping[str, Collection[str]] | None = None,
        opens: Mapping[str, float] | None = None,
        passed: Callable[[str, YmeraError], str | None] | None = None,
    ) -> Grant:
        """Reserve on the first of `models` with room now, else, within `wait`, on the one
        whose room comes first.

        Every model is tried once without waiting, in order. A model without room is
        remembered with the time it is expected to have room again, next to `opens` (times the
        caller knows of, such as a 429's retry-after). If none had room and `wait` is above 0,
        the remembered models are tried again, soonest first, each waiting for what is left
        of `wait` in that model's line (first come, first served, see `acquire`); a model that
        opens later than that ends the walk. Times are on this manager's clock.

        Args:
            models: Catalog ids (or aliases) in order of preference.
            prompt_tokens: The prompt estimate (what Groq checks on admission).
            max_tokens: The completion budget, kept on the grant (not reserved).
            wait: Seconds the whole walk may wait for room; 0 answers at once.
            opens: Model → when it is expected to have room (`clock` seconds): models to wait
                for too, or earlier than the ledger says.
            orgs: Model → the organisations it may be reserved on; a model missing here (or
                with none) is skipped. Default: every organisation for every model.
            passed: Told of each model passed over and why (`QuotaExhaustedError`,
                `RequestTooLargeError` or `ModelRetiredError`); it may return a model to try
                next in its place (a successor) and may raise to end the walk.

        Returns:
            The grant; `grant.model` says which model it is for.

        Raises:
            QuotaExhaustedError: No model had room within `wait`; `retry_after` is the
                earliest expected opening (`None`: unknown).
            RequestTooLargeError: No opening is expected and the request can never fit some
                model tried (the others were not served, or skipped).
            NoUsableKeyError: No key is configured, or every key is disabled.
            UnknownModelError: The catalog has no such model.
        """
        known = dict(opens or {})
        last: YmeraError | None = None
        too_large: RequestTooLargeError | None = None

        async def attempt(model: str, wait: float, line: deque[str]) -> Grant | None:
            nonlocal last, too_large
            allowed: Collection[str] | None = None
            if orgs is not None:
                allowed = orgs.get(model)
                if not allowed:
                    return None
            try:
                grant = await self.acquire(
                    model, prompt_tokens, max_tokens=max_tokens, wait=wait, orgs=allowed
                )
            except (QuotaExhaustedError, ModelRetiredError) as exc:
                last = exc
                if isinstance(exc, RequestTooLargeError):
                    too_large = exc
                elif isinstance(exc, QuotaExhaustedError) and exc.retry_after is not None:
                    known[model] = self._clock() + max(0.0, exc.retry_after)
                instead = passed(model, exc) if passed is not None else None
                if instead is not None and instead not in line:
                    line.appendleft(instead)
                return None
            if allowed is not None and grant.org not in allowed:
                # The organisation with most headroom is not one the caller may use (merged
                # meanwhile): give it back.
                await self.release(grant)
                return None
            return grant

        line = deque(models)
        while line:
            grant = await attempt(line.popleft(), 0.0, line)
            if grant is not None:
                return grant
        if wait > 0 and known:
            deadline = self._clock() + wait
            line = deque(m for m, _ in sorted(known.items(), key=lambda kv: kv[1]))
            while line:
                model = line.popleft()
                left = deadline - self._clock()
                if left <= 0 or known.get(model, -math.inf) > deadline:
                    break
                grant = await attempt(model, left, line)
                if grant is not None:
                    return grant
        now = self._clock()
        retry = min((max(0.0, at - now) for at in known.values()), default=None)
        if retry is None and too_large is not None:
            raise too_large
        when = f" (the earliest opens in {retry:.1f}s)" if retry is not None else ""
        raise QuotaExhaustedError(
            f"No Groq model of {', '.join(models) or 'the walk'} has room{when}.",
            retry_after=retry,
        ) from last

    async def _wait_in_line(
        self,
        info: ModelInfo,
        prompt_tokens: int,
        max_tokens: int | None,
        started: float,
        wait: float,
        orgs: Collection[str] | None = None,
    ) -> Grant:
        deadline = started + wait
        qkey = self._queue_key(info.id, orgs)
        queue = self._queues.setdefault(qkey, deque())
        me = _Waiter()
        queue.append(me)
        try:
            while True:
                now = self._clock()
                retry = math.inf
                if queue[0] is me:
                    grant, retry = await self._attempt(
                        info, prompt_tokens, max_tokens, started, orgs
                    )
                    if grant is not None:
                        return grant
                    if math.isinf(retry):
                        raise self._exhausted(info.id, retry)
                    now = self._clock()
                left = deadline - now
                if left <= 0:
                    if queue[0] is not me:
                        retry = await self.time_until_room(info.id, prompt_tokens)
                    raise self._exhausted(info.id, retry)
                me.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(me.wake.wait(), min(retry, left, self._max_poll))
        finally:
            was_head = bool(queue) and queue[0] is me
            queue.remove(me)
            if not queue:
                if self._queues.get(qkey) is queue:
                    del self._queues[qkey]
            elif was_head:
                queue[0].wake.set()

    def _queue_key(self, model: str, orgs: Collection[str] | None) -> str:
        """Callers limited to some organisations wait in a line of their own: behind a caller
        waiting for another organisation's room they would wait for nothing."""
        if orgs is None:
            return model
        return model + "\x00" + ",".join(sorted({self.pool.canonical(o) for o in orgs}))

    def _wake(self, model: str) -> None:
        queue = self._queues.get(model)
        if queue:
            queue[0].wake.set()
        if len(self._queues) > 1:
            limited = model + "\x00"
            for key, line in list(self._queues.items()):
                if line and key.startswith(limited):
                    line[0].wake.set()

    def _exhausted(self, model: str, retry: float) -> QuotaExhaustedError:
        when = None if math.isinf(retry) else max(0.0, retry)
        hint = f" for {when:.2f}s" if when is not None else ""
        return QuotaExhaustedError(
            f"No Groq key has room for {model}{hint}", retry_after=when, model=model
        )

    def _reserve_amount(self, model: str, prompt_tokens: int) -> int:
        ratio = self._ratio.get(model, 1.0)
        if ratio <= 1.0:
            return prompt_tokens
        return math.ceil(prompt_tokens * ratio - EPSILON)

    async def _attempt(
        self,
        info: ModelInfo,
        prompt_tokens: int,
        max_tokens: int | None,
        started: float,
        orgs: Collection[str] | None = None,
    ) -> tuple[Grant | None, float]:
        """Try each organisation (of `orgs`), most headroom first; one store round trip per
        try."""
        model = info.id
        now = self._clock()
        await self.pool.refresh()
        groups = self.pool.groups(now)
        if orgs is not None and groups:
            wanted = {self.pool.canonical(o) for o in orgs}
            groups = [g for g in groups if g[0] in wanted]
            if not groups:
                return None, math.inf
        if not groups:
            raise NoUsableKeyError(
                "No usable Groq key: "
                + ("every key is disabled (401/403)." if len(self.pool) else "none configured.")
            )
        served = self.served
        if served is not None:
            groups = [(org, keys) for org, keys in groups if served(org, model)]
            if not groups:
                raise ModelRetiredError(
                    f"The account serves {model} on none of its organisations (its model "
                    "listing, or a 404 / model_decommissioned answer on each).",
                    model=model,
                    successor=info.lifecycle.successor,
                )
        tokens = self._reserve_amount(model, prompt_tokens)
        defaults = self.ledger.defaults(model)
        ranked: list[tuple[float, int, str, list[ApiKey]]] = []
        best_wait = math.inf
        views = self.ledger._views
        for n, (org, keys) in enumerate(groups):
            view = views.get((org, model))
            limits = view.limits if view is not None else defaults
            if not _can_fit(limits, tokens):
                continue
            if view is None:
                score = 1.0
            elif view.cool_until > now:
                # Cooling down (a 429): no round trip; the wait counts its buckets too.
                best_wait = min(best_wait, wait_for(view, 1, tokens, now))
                continue
            else:
                score = free_fraction(view, 1, tokens, now)
            ranked.append((score, n, org, keys))
        limit_hit = self._too_large.get(model)
        if limit_hit is not None and tokens >= limit_hit:
            ranked = []
        if not ranked:
            if math.isinf(best_wait):
                largest = max(_token_cap(self.ledger.limits(org, model)) for org, _ in groups)
                if limit_hit is not None:
                    largest = min(largest, limit_hit - 1)
                raise RequestTooLargeError(
                    f"A request of {tokens} prompt tokens can never fit {model}: its "
                    f"tokens-per-minute limit is {largest}. Use a model with a larger "
                    "allowance or a shorter prompt.",
                    model=model,
                    requested=tokens,
                    limit=largest,
                )
            return None, best_wait
        if len(ranked) > 1:
            # Ties (fresh organisations, equal use) take turns instead of all going to the
            # first configured one: a burst of concurrent requests, decided before any of its
            # reservations returns, then spreads over every organisation, whose answers are
            # what tells keys of one unlabelled organisation apart (`KeyPool.observe_headers`).
            self._turn += 1
            turn, width = self._turn, len(groups)
            ranked.sort(key=lambda r: (-r[0], (r[1] - turn) % width))
        for _, _, org, keys in ranked:
            key = self.pool.pick(keys, now)
            rid = f"{self._id_prefix}{next(self._ids)}"
            wait, state = await self._reserve(org, model, rid, tokens, now)
            self._touched.add((org, model))
            self._check_alerts(org, model, state, now)
            if wait <= 0:
                grant = Grant(
                    key=key,
                    model=model,
                    org=org,
                    reservation_id=rid,
                    prompt_tokens=prompt_tokens,
                    reserved_tokens=tokens,
                    max_tokens=max_tokens,
                    reserved_at=now,
                    waited=max(0.0, now - started),
                )
                self._outstanding[rid] = grant
                return grant, 0.0
            if state.cool_until > now:
                self.pool.note_cooldown(org, model, state.cool_until)
            best_wait = min(best_wait, wait)
        return None, best_wait

    async def _reserve(
        self, org: str, model: str, rid: str, tokens: int, now: float
    ) -> tuple[float, QuotaState]:
        defaults: Limits | None = None
        served = self.served
        share = self.pool.share_of(
            org, now, serves=None if served is None else (lambda other: served(other, model))
        )
        if share > 1:
            # Possibly one budget with other unlabelled organisations: a share of the RPM
            # limit each until their first answers decide (`KeyPool.share_of`).
            rpm, *rest = self.ledger.defaults(model)
            if rpm is not None:
                defaults = (max(1, rpm // share), *rest)  # type: ignore[assignment]
        reserve = self.ledger.reserve(org, model, rid, tokens, now=now, defaults=defaults)
        if not self._shield:
            wait, state = await reserve
        else:
            # Cancelled mid round trip, the script may still have reserved: finish it and give
            # the reservation back, rather than leaving it to expire.
            task = asyncio.ensure_future(reserve)
            try:
                wait, state = await asyncio.shield(task)
            except asyncio.CancelledError:
                task.add_done_callback(lambda t: self._release_orphan(t, org, model, rid))
                raise
        if defaults is not None and state.learned[0] is None:
            # Displays and alerts show the model's limit, not the share.
            state = state._replace(limits=(self.ledger.defaults(model)[0], *state.limits[1:]))
            self.ledger._views[(org, model)] = state
        return wait, state

    def _release_orphan(
        self, task: asyncio.Future[tuple[float, QuotaState]], org: str, model: str, rid: str
    ) -> None:
        if task.cancelled() or task.exception() is not None or task.result()[0] > 0:
            return
        fut = asyncio.ensure_future(self.ledger.release(org, model, rid))
        fut.add_done_callback(_log_failure)

    async def _protect(self, coro: Any) -> Any:
        if not self._shield:
            return await coro
        # Finish a settle or release even when the caller is cancelled, so nothing leaks.
        return await asyncio.shield(asyncio.ensure_future(coro))

    @contextlib.asynccontextmanager
    async def reserve(
        self,
        model: str,
        prompt_tokens: int,
        *,
        max_tokens: int | None = None,
        wait: float = 0.0,
    ) -> AsyncIterator[Grant]:
        """`acquire` as a context: released if the block raises (or is cancelled) before
        settling; settled with the estimate if the block ends without settling."""
        grant = await self.acquire(model, prompt_tokens, max_tokens=max_tokens, wait=wait)
        try:
            yield grant
        except BaseException:
            await self.release(grant)
            raise
        else:
            await self.settle(grant, None, None)

    # -- settling -------------------------------------------------------------------------

    async def settle(
        self, grant: Grant, usage: Usage | None, rate_limits: RateLimits | None
    ) -> None:
        """Swap the reservation for the real usage and fold in the response's headers.

        Idempotent: a grant already settled or released is left alone.

        Args:
            grant: The grant of the call.
            usage: Groq's usage (prompt plus completion, cached tokens excluded); `None` or
                empty charges the reserved estimate.
            rate_limits: The response's parsed headers.
        """
        if self._outstanding.pop(grant.reservation_id, None) is None:
            return
        now = self._clock()
        used = float(grant.reserved_tokens)
        completion = 0.0
        if usage is not None and (usage.prompt_tokens or usage.completion_tokens):
            completion = float(usage.completion_tokens)
            used = max(0, usage.prompt_tokens - usage.cached_tokens) + completion
            self._learn_ratio(grant, usage.prompt_tokens)
        obs = None
        if rate_limits is not None and not rate_limits.empty:
            obs = observation_from(
                rate_limits,
                self.ledger.limits(grant.org, grant.model),
                completion_tokens=completion,
                elapsed=now - grant.reserved_at,
            )
        org = self.pool.canonical(grant.org)
        if org != grant.org:
            # Reserved on an organisation merged since: give the reservation back there and
            # charge the organisation that really spent it.
            await self._protect(
                self.ledger.release(grant.org, grant.model, grant.reservation_id, now=now)
            )
        _, state = await self._protect(
            self.ledger.settle(
                org,
                grant.model,
                grant.reservation_id if org == grant.org else None,
                requests=1,
                tokens=used,
                observation=obs,
                now=now,
            )
        )
        self._check_alerts(org, grant.model, state, now)
        self._wake(grant.model)
        await self.pool.record_success(grant.key)
        if rate_limits is not None:
            await self.pool.observe_headers(grant.org, grant.model, rate_limits, now=now)

    async def _absorb(self, gone: str, kept: str) -> None:
        """Organisation `gone` turned out to spend `kept`'s budget: move what `gone` holds to
        `kept`, once for the whole fleet (only the process that recorded the merge first
        calls this).

        Other processes learn of the merge within their key refresh interval; meanwhile they
        would still reserve on `gone`'s own buckets, spending the shared budget twice. So
        `gone` first cools down for every model, in the store, for `_MERGED_COOLDOWN`
        seconds: the store refuses those reservations atomically and the processes move to
        the other organisations. Everything `gone` holds after that was reserved before it,
        so one move counts it all: consumption still draining plus reservations still
        outstanding (other processes may settle those on `gone`, not knowing yet; this
        process's own are charged to `kept` when they settle, so they are left out).

        Only the kinds no header reports are moved (requests per minute, tokens per day):
        Groq's next report on `kept` counts requests per day and tokens per minute already,
        and the floor it sets would count them twice.
        """
        now = self._clock()
        models = sorted(
            {m.id for m in self.catalog.served()} | {m for o, m in self._touched if o == gone}
        )
        until = now + max(_MERGED_COOLDOWN, 3 * self.pool.refresh_interval)
        mine: dict[str, list[float]] = {}
        for g in self._outstanding.values():
            if g.org == gone:
                held = mine.setdefault(g.model, [0.0, 0.0])
                held[0] += 1
                held[1] += g.reserved_tokens
        try:
            await asyncio.gather(
                *(self.ledger.observe(gone, m, Observation(cool_until=until)) for m in models)
            )
            states = await self.ledger.states([(gone, m) for m in models], now=now)
            for model, st in zip(models, states, strict=True):
                own = mine.get(model, [0.0, 0.0])
                rpm = st.levels[0] + max(0.0, st.pending_requests - own[0])
                tpd = st.levels[3] + max(0.0, st.pending_tokens - own[1])
                if rpm <= EPSILON and tpd <= EPSILON:
                    continue
                await self.ledger.observe(
                    kept, model, Observation(charges=(rpm, 0.0, 0.0, tpd)), now=now
                )
                self._touched.add((kept, model))
        except Exception:  # a merge must not fail the call that revealed it
            logger.warning("Could not move %s's use of its buckets to %s", gone, kept)

    async def release(self, grant: Grant) -> None:
        """Give the reservation back in full: the call never reached Groq.

        Idempotent, and a no-op after `settle`.
        """
        if self._outstanding.pop(grant.reservation_id, None) is None:
            return
        await self._protect(self.ledger.release(grant.org, grant.model, grant.reservation_id))
        self._wake(grant.model)

    async def report_failure(
        self,
        grant: Grant,
        *,
        status: int | None,
        rate_limits: RateLimits | None,
        message: str | None = None,
    ) -> None:
        """Account for a failed call and learn from it.

        - 429: nothing was consumed; the organisation cools down for the model until
          `retry-after` (for a daily limit, until the bucket has room again); limits named in
          the text are learned.
        - 413: nothing was consumed; requests this large are refused for the model from now on.
        - 401/403: the key is disabled everywhere.
        - 498 and 5xx: nothing was consumed; repeated ones degrade the key.
        - No status (timeout, connection lost): the call may have reached Groq, so the estimate
          is charged; repeated ones degrade the key.
        - Other statuses: the estimate is charged.

        Args:
            grant: The grant of the failed call.
            status: The HTTP status, or `None` when no answer came.
            rate_limits: The error response's parsed headers (and text).
            message: The error's message (429/413 texts name the limit and organisation).
        """
        now = self._clock()
        rl = _with_text(rate_limits, message)
        outstanding = self._outstanding.pop(grant.reservation_id, None) is not None
        rid = grant.reservation_id if outstanding else None
        limits = self.ledger.limits(grant.org, grant.model)
        charge = status is None or (status < 500 and status not in (401, 403, 413, 429, 498))
        cool: float | None = None
        if status == 429:
            cool = now + self._cooldown(rl, limits, grant.reserved_tokens)
        obs = observation_from(rl, limits, cool_until=cool) if rl is not None else None
        if obs is None and cool is not None:
            obs = Observation(cool_until=cool)
        if outstanding or (obs is not None and not obs.empty):
            _, state = await self._protect(
                self.ledger.settle(
                    grant.org,
                    grant.model,
                    rid,
                    requests=1 if charge and outstanding else 0,
                    tokens=grant.reserved_tokens if charge and outstanding else 0,
                    observation=obs,
                    now=now,
                )
            )
            self._check_alerts(grant.org, grant.model, state, now)
            if state.cool_until > now:
                self.pool.note_cooldown(grant.org, grant.model, state.cool_until)
        tokens_kind = rl is not None and rl.limit_kind in ("tpm", "tpd")
        if status in (413, 429) and rl is not None and rl.requested and tokens_kind:
            self._learn_ratio(grant, rl.requested)
        if status == 413:
            hit = self._too_large.get(grant.model)
            if hit is None or grant.reserved_tokens < hit:
                self._too_large[grant.model] = grant.reserved_tokens
        if status in (401, 403):
            await self.pool.disable(grant.key, f"Groq answered {status}")
        elif status is None or status == 498 or status >= 500:
            await self.pool.record_failure(grant.key)
        if rl is not None and rl.organization:
            await self.pool.observe_organization(grant.key, rl.organization)
        self._wake(grant.model)

    def _cooldown(self, rl: RateLimits | None, limits: Limits, tokens: int) -> float:
        """Seconds to cool an organisation after a 429.

        `retry-after` for the minute limits; for a daily limit the time until the bucket has
        room for this request again (Groq's `retry-after` then says only "a few seconds").
        """
        if rl is None:
            return self._default_cooldown
        wait = rl.retry_after or 0.0
        kind = rl.limit_kind
        if kind is not None:
            i = KINDS.index(kind)
            lim = rl.limit_value or limits[i]
            if lim and rl.used is not None:
                requested = rl.requested or (1 if i < 2 else tokens)
                wait = max(wait, (rl.used + requested - lim) * WINDOWS[i] / lim)
        return wait if wait > 0 else self._default_cooldown

    def _learn_ratio(self, grant: Grant, counted: int) -> None:
        """Track how Groq's prompt count compares with the estimate (only ever raises it)."""
        if not self._correct or grant.prompt_tokens < 16 or counted <= 0:
            return
        observed = counted / grant.prompt_tokens
        ratio = self._ratio.get(grant.model, 1.0)
        # Up at once (an underestimate risks a 429), down slowly.
        ratio = min(4.0, observed) if observed > ratio else max(1.0, 0.9 * ratio + 0.1 * observed)
        if ratio < 1.01:  # within the estimate's own noise: no correction
            self._ratio.pop(grant.model, None)
        else:
            self._ratio[grant.model] = ratio

    # -- reading ----------------------------------------------------------------------------

    def _usable_orgs(self) -> list[str]:
        return [org for org, _ in self.pool.groups(self._clock())]

    async def time_until_room(self, model: str, prompt_tokens: int) -> float:
        """Seconds until some key has room for a request (0: now; `inf`: never, because it is
        too large for the model or no key is usable)."""
        info = self.catalog.get(model)
        await self.pool.refresh()
        orgs = self._usable_orgs()
        tokens = self._reserve_amount(info.id, prompt_tokens)
        hit = self._too_large.get(info.id)
        if not orgs or (hit is not None and tokens >= hit):
            return math.inf
        now = self._clock()
        states = await self.ledger.states([(org, info.id) for org in orgs], now=now)
        return min(wait_for(st, 1, tokens, now) for st in states)

    async def headroom(self, model: str) -> float:
        """The share, in [0, 1], of the tightest limit left on the organisation with most room."""
        best = await self.headroom_detail(model)
        return best.fraction

    async def headroom_detail(self, model: str) -> Headroom:
        """The `Headroom` of the organisation with most room for `model`."""
        info = self.catalog.get(model)
        await self.pool.refresh()
        orgs = self._usable_orgs()
        now = self._clock()
        if not orgs:
            return Headroom(0.0, 0.0, now, 0.0, None)
        states = await self.ledger.states([(org, info.id) for org in orgs], now=now)
        rooms = [headroom_of(st, now, org) for org, st in zip(orgs, states, strict=True)]
        return max(rooms, key=lambda h: h.fraction)

    async def usage(self) -> dict[str, Any]:
        """Usage per key and per model, in the original plan's shape.

        Returns:
            `{"keys": {label: {"org", "masked", "org_evidence", "health", "usage": {model:
            {"rpm": {"used", "limit"}, "rpd": …, "tpm": …, "tpd": …}}}}, "models": {model:
            {"rpm": {"used", "limit"}, …, "remaining": {org: {"requests", "tokens", "reported_at"}},
            "cooling_until": {org: t}}}}`. `used` counts consumption still in the window plus
            reservations; model totals add up every organisation.
        """
        await self.pool.refresh()
        now = self._clock()
        orgs = sorted({self.pool.organisation(k) for k in self.pool.keys})
        models = [m.id for m in self.catalog.served()]
        models += sorted({m for _, m in self._touched if m not in models})
        pairs = [(org, m) for org in orgs for m in models]
        states = dict(zip(pairs, await self.ledger.states(pairs, now=now), strict=True))
        active: dict[str, dict[str, QuotaState]] = {}
        for (org, model), st in states.items():
            if (
                (org, model) in self._touched
                or any(st.used(i) > EPSILON for i in range(4))
                or st.reported_at is not None
                or st.learned != NO_LIMITS
                or st.cool_until > now
            ):
                active.setdefault(model, {})[org] = st

        def kinds(st: QuotaState) -> dict[str, dict[str, int | None]]:
            return {
                kind: {"used": math.ceil(st.used(i) - EPSILON), "limit": st.limits[i]}
                for i, kind in enumerate(KINDS)
            }

        keys_out: dict[str, Any] = {}
        for key in self.pool.keys:
            org = self.pool.organisation(key)
            keys_out[key.label] = {
                "org": org,
                "masked": key.masked,
                "org_evidence": self.pool.record(key).org_evidence,
                "health": self.pool.health(key, now=now),
                "usage": {m: kinds(by[org]) for m, by in active.items() if org in by},
            }
        models_out: dict[str, Any] = {}
        for model, by in active.items():
            totals: dict[str, Any] = {}
            for i, kind in enumerate(KINDS):
                limits = [st.limits[i] for st in by.values()]
                totals[kind] = {
                    "used": sum(math.ceil(st.used(i) - EPSILON) for st in by.values()),
                    "limit": None
                    if any(v is None for v in limits)
                    else sum(v for v in limits if v is not None),
                }
            totals["remaining"] = {
                org: {
                    "requests": st.remaining_requests,
                    "tokens": st.remaining_tokens,
                    "reported_at": st.reported_at,
                }
                for org, st in by.items()
                if st.reported_at is not None
            }
            totals["cooling_until"] = {
                org: st.cool_until for org, st in by.items() if st.cool_until > now
            }
            models_out[model] = totals
        return {"keys": keys_out, "models": models_out}

    async def idle(self) -> bool:
        """Whether no reservation made here is outstanding."""
        return not self._outstanding

    @property
    def outstanding(self) -> int:
        """Reservations made here and neither settled nor released."""
        return len(self._outstanding)

    # -- alerts -----------------------------------------------------------------------------

    def add_alert_callback(self, cb: Callable[[Alert], None]) -> None:
        """Call `cb` with every `Alert` (also logged), once per upward crossing."""
        self._alerts.add_callback(cb)

    def _check_alerts(self, org: str, model: str, state: QuotaState, now: float) -> None:
        # The keys are named only when an alert fires: checks run on every settle.
        self._alerts.check(org, model, state, now, lambda: self.pool.keys_of(org))

    # -- lifecycle ------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close both stores (outstanding reservations expire on their own)."""
        if self._closed:
            return
        self._closed = True
        for queue in self._queues.values():
            for w in queue:
                w.wake.set()
        await self.ledger.store.aclose()
        await self.pool.store.aclose()

    def __repr__(self) -> str:
        return f"<QuotaManager {self.pool!r} {self.ledger!r} outstanding={self.outstanding}>"


def _with_text(rate_limits: RateLimits | None, message: str | None) -> RateLimits | None:
    """Add what an error text says to parsed headers, where the headers did not say it."""
    if not message:
        return rate_limits
    facts = parse_error_text(message)
    if not facts:
        return rate_limits
    base = rate_limits or RateLimits()
    updates: dict[str, Any] = {}
    for name in ("limit_kind", "limit_value", "used", "requested", "organization"):
        if getattr(base, name) is None and name in facts:
            updates[name] = facts[name]
    if base.retry_after is None and "wait" in facts:
        updates["retry_after"] = facts["wait"]
    if not updates:
        return base
    from dataclasses import replace

    return replace(base, **updates)


def _log_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and (exc := fut.exception()) is not None:
        logger.warning("Giving back a cancelled reservation failed: %s", exc)
