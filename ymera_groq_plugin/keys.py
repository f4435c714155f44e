"""The key pool: every configured Groq key, grouped by the organisation whose budget it spends.

Groq limits organisations, not keys, so the pool's unit of choice is the organisation: the
quota manager ranks organisations by headroom and the pool then hands out one of that
organisation's keys (healthy ones first, least recently used first). Each key has a health:

- `healthy`;
- `cooling`: its organisation got a 429 for the model asked about (the cooldown itself lives in
  the quota store, next to the buckets, so every process honours it at once);
- `degraded`: repeated 5xx/498/timeouts; still usable, ranked last, until `degraded_until`;
- `disabled`: Groq answered 401/403; never used again (until the key behind the label changes).

Keys configured as separate organisations can turn out to share one budget: a 429 text names
the organisation (`in organization `org_…``), or the `x-ratelimit-remaining-requests` of one
key keeps continuing the count of another. The pool then merges them into one organisation and
warns, because rotating between them buys nothing.

What the pool learns lives in a `KeyStateStore` (shared through Redis), keyed by label; it never
holds or writes a secret.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import replace
from typing import Literal

from .clock import Clock
from .config import ApiKey
from .errors import ConfigurationError
from .storage import store_from_url
from .storage.quota_base import KeyRecord, KeyStates, KeyStateStore, Report
from .types import RateLimits

__all__ = ["DEGRADED", "DISABLED", "HEALTHY", "COOLING", "Health", "KeyPool"]

logger = logging.getLogger(__name__)

Health = Literal["healthy", "cooling", "degraded", "disabled"]
HEALTHY: Health = "healthy"
COOLING: Health = "cooling"
DEGRADED: Health = "degraded"
DISABLED: Health = "disabled"

_CHAIN_WINDOW = 60.0
"""Seconds within which two organisations' request counts are compared for a shared budget."""

_REPORTS_KEPT = 12
"""Recent request-count reports kept per (organisation, model) in the shared store."""

_DISTINCT_FOR = 600.0
"""Seconds a pair whose counts proved two budgets is not compared again."""

_MAX_GAP = 0.25
"""Share of missing numbers a run of one budget's counts may have (answers the fleet did not
see: calls from elsewhere, lost answers) and still count as one run."""


def _compare(a: list[int], b: list[int], need: int) -> Literal["shared", "separate"] | None:
    """Whether two organisations' recent request counts show one budget, two, or not yet.

    One budget: every answer takes the next number, so the two sets are disjoint and together
    form one nearly gapless run that both take part in. Two budgets: the same numbers show up
    on both (fresh keys count down alike; an idle budget reports one number again and again),
    or the runs lie apart.
    """
    if len(a) < need or len(b) < need:
        return None
    sa, sb = set(a), set(b)
    common = sum(1 for v in a if v in sb) + sum(1 for v in b if v in sa)
    if common >= 3:
        return "separate"
    if common:
        return None  # a coincidence (a refill between two answers) proves nothing yet
    union = sa | sb
    span = max(union) - min(union) + 1
    interleaved = min(sa) < max(sb) and min(sb) < max(sa)
    if interleaved and span - len(union) <= _MAX_GAP * len(union):
        return "shared"
    if span > 4 * len(union):
        return "separate"
    return None


def _run(values: set[int]) -> str:
    """A short display of a set of counts: `996-990` or `996, 993`."""
    ordered = sorted(values, reverse=True)
    if len(ordered) > 3:
        return f"{ordered[0]}…{ordered[-1]}"
    return ", ".join(map(str, ordered))


class KeyPool:
    """Keys grouped by organisation, with health, shared through a `KeyStateStore`.

    Args:
        keys: The configured keys (labels must be unique).
        store: Where health and merges are shared (the quota manager passes the one
            `storage.resilient_store_from_url` chose); default: the `memory://` store, this
            process only.
        clock: Wall-clock seconds.
        refresh_interval: Seconds between reloads of the shared state (other processes'
            findings arrive within this delay; this process's own apply at once).
        degrade_after: Consecutive failures (5xx, 498, timeouts) that degrade a key.
        failure_window: Failures further apart than this start a new count.
        degrade_for: Seconds a degraded key stays ranked last.
        merge_evidence: Request-count reports needed from each of two organisations (fleet-wide)
            before they are merged on header evidence alone (a 429 text naming the organisation
            merges at once).

    Raises:
        ConfigurationError: Two keys have the same label.
    """

    def __init__(
        self,
        keys: Sequence[ApiKey],
        *,
        store: KeyStateStore | None = None,
        clock: Clock = time.time,
        refresh_interval: float = 1.0,
        degrade_after: int = 3,
        failure_window: float = 60.0,
        degrade_for: float = 30.0,
        merge_evidence: int = 3,
    ) -> None:
        labels = [k.label for k in keys]
        if len(set(labels)) != len(labels):
            raise ConfigurationError("Key labels must be unique", setting="api_keys")
        if store is None:
            store = store_from_url("keys", "memory://")
        self._keys: tuple[ApiKey, ...] = tuple(keys)
        self._order = {k.label: i for i, k in enumerate(self._keys)}
        self._store = store
        self._clock = clock
        self._refresh_interval = refresh_interval
        self._degrade_after = max(1, degrade_after)
        self._failure_window = failure_window
        self._degrade_for = degrade_for
        self._merge_evidence = max(1, merge_evidence)
        self._records: dict[str, KeyRecord] = {}
        self._aliases: dict[str, str] = {}
        self._loaded_at = -math.inf
        self._cooling: dict[tuple[str, str], float] = {}
        self._uses: dict[str, int] = {}
        self._tick = 0
        self._groups: list[tuple[str, list[ApiKey]]] | None = None
        self._groups_until = math.inf
        self._distinct: dict[tuple[str, str], float] = {}
        self._warned: set[frozenset[str]] = set()
        self._merge_lock: asyncio.Lock | None = None
        self._unlabelled = any(k.org is None for k in self._keys)
        self._shares: dict[str, int] = {}
        self._shares_until = math.inf
        self.on_merge: Callable[[str, str], Awaitable[None]] | None = None
        """Called as `on_merge(gone, kept)` by the one process that records a merge first (the
        quota manager moves the merged organisation's buckets)."""

    # -- reading ----------------------------------------------------------------------------

    @property
    def keys(self) -> tuple[ApiKey, ...]:
        """Every configured key, in configuration order."""
        return self._keys

    @property
    def store(self) -> KeyStateStore:
        return self._store

    @property
    def refresh_interval(self) -> float:
        """Seconds within which other processes' findings (merges, disabled keys) arrive."""
        return self._refresh_interval

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[ApiKey]:
        return iter(self._keys)

    def canonical(self, org: str) -> str:
        """The organisation `org` was merged into (itself when not merged)."""
        seen = {org}
        while (nxt := self._aliases.get(org)) is not None and nxt not in seen:
            seen.add(nxt)
            org = nxt
        return org

    def organisation(self, key: ApiKey) -> str:
        """The organisation whose budget `key` spends, after merges."""
        return self.canonical(key.organisation)

    def record(self, key: ApiKey) -> KeyRecord:
        """What is known about `key` (a record about another key under the same label is
        ignored)."""
        rec = self._records.get(key.label)
        if rec is None:
            return KeyRecord()
        if rec.masked is not None and rec.masked != key.masked:
            return KeyRecord()
        return rec

    def is_disabled(self, key: ApiKey) -> bool:
        return self.record(key).disabled is not None

    def health(self, key: ApiKey, model: str | None = None, *, now: float | None = None) -> Health:
        """The key's health; `cooling` when its organisation is cooling down for `model` (or,
        without a model, for any model)."""
        now = self._clock() if now is None else now
        rec = self.record(key)
        if rec.disabled is not None:
            return DISABLED
        org = self.organisation(key)
        if model is not None:
            if self._cooling.get((org, model), 0.0) > now:
                return COOLING
        elif any(o == org and until > now for (o, _), until in self._cooling.items()):
            return COOLING
        if rec.degraded_until > now:
            return DEGRADED
        return HEALTHY

    def cooling_until(self, org: str, model: str) -> float:
        """When the organisation's cooldown for `model` ends (0 if none is known here)."""
        return self._cooling.get((self.canonical(org), model), 0.0)

    def groups(self, now: float | None = None) -> list[tuple[str, list[ApiKey]]]:
        """Usable (not disabled) keys by organisation, in configuration order; within an
        organisation healthy keys come before degraded ones."""
        now = self._clock() if now is None else now
        if self._groups is None or now >= self._groups_until:
            self._rebuild_groups(now)
        assert self._groups is not None
        return self._groups

    def _rebuild_groups(self, now: float) -> None:
        groups: dict[str, list[ApiKey]] = {}
        until = math.inf
        for key in self._keys:
            rec = self.record(key)
            if rec.disabled is not None:
                continue
            if rec.degraded_until > now:
                until = min(until, rec.degraded_until)
            groups.setdefault(self.organisation(key), []).append(key)
        for keys in groups.values():
            keys.sort(key=lambda k: self.record(k).degraded_until > now)
        self._groups = list(groups.items())
        self._groups_until = until

    def _invalidate(self) -> None:
        self._groups = None
        self._shares = {}

    def keys_of(self, org: str) -> list[ApiKey]:
        """Every configured key (usable or not) spending `org`'s budget."""
        org = self.canonical(org)
        return [k for k in self._keys if self.organisation(k) == org]

    def pick(self, keys: Sequence[ApiKey], now: float | None = None) -> ApiKey:
        """One key of an organisation: healthy before degraded, least recently used first.

        Keys of one organisation share one budget, so which key is used does not change the
        quota; spreading the calls keeps every key exercised, so a bad key is found early.
        """
        now = self._clock() if now is None else now
        best = keys[0]
        if len(keys) > 1:
            best_rank: tuple[bool, int] | None = None
            for k in keys:
                rank = (self.record(k).degraded_until > now, self._uses.get(k.label, -1))
                if best_rank is None or rank < best_rank:
                    best, best_rank = k, rank
        self._tick += 1
        self._uses[best.label] = self._tick
        return best

    def add(self, keys: Sequence[ApiKey]) -> list[ApiKey]:
        """Add keys found at run time (a LiteLLM router's own deployments, for instance).

        A key whose secret is already in the pool is skipped (the pool's one is kept), so is a
        key whose label is taken by another secret (that would mix two keys' records). Call it
        where the pool's other users run (the engine's loop), like every other method.

        Returns:
            The keys added.
        """
        known = {k.secret.get_secret_value() for k in self._keys}
        added: list[ApiKey] = []
        for key in keys:
            secret = key.secret.get_secret_value()
            if secret in known or key.label in self._order:
                continue
            known.add(secret)
            self._order[key.label] = len(self._order)
            added.append(key)
        if added:
            # One assignment: readers on other threads see the old tuple or the new one.
            self._keys = (*self._keys, *added)
            self._loaded_at = -math.inf  # the new labels' shared records are read next time
            self._invalidate()
        return added

    # -- shared state -----------------------------------------------------------------------

    async def refresh(self, *, force: bool = False) -> None:
        """Reload the shared records when older than `refresh_interval` (or when forced)."""
        now = self._clock()
        if not force and now - self._loaded_at < self._refresh_interval:
            return
        states: KeyStates = await self._store.load([k.label for k in self._keys])
        self._loaded_at = now
        if states.records != self._records or states.aliases != self._aliases:
            self._records = dict(states.records)
            self._aliases = dict(states.aliases)
            self._invalidate()

    def note_cooldown(self, org: str, model: str, until: float) -> None:
        """Mirror an organisation's cooldown for `model` (the quota store holds the truth)."""
        org = self.canonical(org)
        if until > self._cooling.get((org, model), 0.0):
            self._cooling[(org, model)] = until
        now = self._clock()
        if len(self._cooling) > 256:
            self._cooling = {k: v for k, v in self._cooling.items() if v > now}

    async def _write(self, key: ApiKey, **changes: str | int | float | None) -> None:
        current = self.record(key)
        self._records[key.label] = replace(current, masked=key.masked, **changes)  # type: ignore[arg-type]
        self._invalidate()
        await self._store.update(key.label, {"masked": key.masked, **changes})

    async def disable(self, key: ApiKey, reason: str) -> None:
        """Take a key out for good (Groq answered 401/403); every process stops using it."""
        if self.is_disabled(key):
            return
        logger.error("Groq key %s (%s) disabled: %s", key.label, key.masked, reason)
        await self._write(key, disabled=reason)

    async def record_failure(self, key: ApiKey) -> Health:
        """Count an upstream failure (5xx, 498, timeout); degrade the key after several.

        Returns:
            The key's health afterwards.
        """
        now = self._clock()
        count = await self._store.record_failure(key.label, now=now, window=self._failure_window)
        current = self.record(key)
        self._records[key.label] = replace(current, masked=key.masked, failures=count)
        if count >= self._degrade_after and current.degraded_until <= now:
            logger.warning(
                "Groq key %s (%s) degraded for %.0fs after %d failures in a row",
                key.label,
                key.masked,
                self._degrade_for,
                count,
            )
            await self._write(key, degraded_until=now + self._degrade_for)
        return self.health(key, now=now)

    async def record_success(self, key: ApiKey) -> None:
        """A call succeeded: the failure count starts over (no write when there was none)."""
        rec = self.record(key)
        if rec.failures or rec.degraded_until:
            await self._write(key, failures=0, degraded_until=0.0, failure_since=0.0)

    # -- organisation merges ----------------------------------------------------------------

    async def observe_organization(self, key: ApiKey, groq_org: str) -> str | None:
        """A 429/413 text named the Groq organisation of `key`.

        Returns:
            The organisation merged into, when this revealed that keys share one budget.
        """
        rec = self.record(key)
        if rec.groq_org != groq_org:
            # The evidence of a merge already shown is kept; otherwise this is the evidence.
            evidence = rec.org_evidence or f"named {groq_org} in a 429/413 text"
            await self._write(key, groq_org=groq_org, org_evidence=evidence)
        mine = self.organisation(key)
        merged: str | None = None
        for other in self._keys:
            if other is key or self.is_disabled(other):
                continue
            same = self.record(other).groq_org == groq_org or other.org == groq_org
            if same and self.organisation(other) != mine:
                merged = await self.merge(
                    mine,
                    self.organisation(other),
                    reason=f"a 429/413 text named {groq_org}",
                    prefer=groq_org,
                )
                mine = self.organisation(key)
        return merged

    async def observe_headers(
        self, org: str, model: str, rate_limits: RateLimits, *, now: float | None = None
    ) -> str | None:
        """Compare the day's request count Groq reports for `org` with other organisations'.

        Every process adds its reports to the shared store and reads the fleet's recent ones
        back (one round trip), so the comparison sees every answer, not only this process's
        share of them. One budget shows as one count: every answer takes the next number, so
        the two organisations' recent counts are *disjoint* and *interleave* into one nearly
        gapless run (99, 97, 96 on one key; 98, 95, 94 on the other). Two budgets show
        *duplicates* (both fresh keys report 999, 998, …) or runs far apart. With
        `merge_evidence` reports from each of the two and no duplicate, they are merged; two
        or more duplicates keep the pair apart for `_DISTINCT_FOR` seconds and stop the round
        trips for it. The order in which concurrent answers arrive does not matter: only the
        sets of numbers are compared. A 429 text naming the organisation remains the sure way
        (`observe_organization`).

        Returns:
            The organisation merged into, if a merge happened.
        """
        limit, remaining = rate_limits.limit_requests, rate_limits.remaining_requests
        if limit is None or remaining is None:
            return None
        now = self._clock() if now is None else now
        org = self.canonical(org)
        others = [
            o
            for o in {self.organisation(k) for k in self._keys if not self.is_disabled(k)}
            if o != org and not self._decided(org, o, now)
        ]
        if not others:
            return None  # every pair is decided: no round trip
        reports = await self._store.report(
            model,
            org,
            Report(now, limit, remaining),
            orgs=[org, *others],
            window=_CHAIN_WINDOW,
            keep=_REPORTS_KEPT,
        )
        mine = [r.remaining for r in reports.get(org, ()) if r.limit == limit]
        merged: str | None = None
        for other in others:
            theirs = [r.remaining for r in reports.get(other, ()) if r.limit == limit]
            verdict = _compare(mine, theirs, self._merge_evidence)
            if verdict == "separate":
                low, high = sorted((org, other))
                self._distinct[(low, high)] = now + _DISTINCT_FOR
                self._shares.clear()
            elif verdict == "shared" and self.canonical(other) != self.canonical(org):
                merged = await self.merge(
                    org,
                    other,
                    reason=(
                        f"their x-ratelimit-remaining-requests for {model} form one count "
                        f"({_run(set(mine))} and {_run(set(theirs))})"
                    ),
                )
                org = self.canonical(org)
                mine += theirs
        return merged

    def _labelled(self, org: str) -> bool:
        """Whether the user named this organisation (`GROQ_ORG_N`, `"org"`) for some key."""
        return any(k.org is not None and self.organisation(k) == org for k in self._keys)

    def _decided(self, a: str, b: str, now: float) -> bool:
        """Whether two (canonical) organisations are known to be separate budgets: both
        labelled by the user, or their request counts proved it lately."""
        if self._labelled(a) and self._labelled(b):
            return True
        low, high = sorted((a, b))
        return self._distinct.get((low, high), -math.inf) > now

    def share_of(
        self, org: str, now: float | None = None, *, serves: Callable[[str], bool] | None = None
    ) -> int:
        """How many usable organisations `org` might still be one budget with, itself
        included (1 when every pair it is in is decided).

        Until the first answers decide, an organisation nobody labelled may be one budget
        with any other, so the quota manager lets each of them use only this share of the
        requests-per-minute limit: the fleet cannot overspend one budget seen through
        several keys before the evidence arrives (a few answers later).

        Args:
            org: The organisation asking.
            now: The time (default: the pool's clock).
            serves: Whether an organisation is served the model in question: one that is not
                (its listing, or a 404) spends none of that model's budget, so it takes no
                share of it, and its answers would never decide the pair.
        """
        n = self._share_of(org, now)
        if n > 1 and serves is not None:
            canon = self.canonical(org)
            now = self._clock() if now is None else now
            n = 1 + sum(
                1
                for other, _ in self.groups(now)
                if other != canon and serves(other) and not self._decided(canon, other, now)
            )
        return n

    def _share_of(self, org: str, now: float | None) -> int:
        if not self._unlabelled:
            return 1  # every organisation was named: nothing to find out
        now = self._clock() if now is None else now
        groups = self.groups(now)
        if now >= self._shares_until:
            self._shares.clear()
        n = self._shares.get(org)
        if n is not None:
            return n
        canon = self.canonical(org)
        n = 1
        for other, _ in groups:
            if other != canon and not self._decided(canon, other, now):
                n += 1
        if not self._shares:
            # Valid until the groups change or a "separate" verdict expires.
            self._shares_until = min(
                (t for t in self._distinct.values() if t > now), default=math.inf
            )
        self._shares[org] = n
        return n

    async def merge(self, a: str, b: str, *, reason: str, prefer: str | None = None) -> str:
        """Record that organisations `a` and `b` share one budget; warn once.

        `prefer` wins when it is one of the two (the organisation a 429 text named); otherwise
        the organisation of the first configured key, so every process picks the same.

        Returns:
            The surviving organisation.
        """
        if self._merge_lock is None:
            self._merge_lock = asyncio.Lock()
        async with self._merge_lock:
            a, b = self.canonical(a), self.canonical(b)
            if a == b:
                return a
            keep, gone, labels = self._merge_order(a, b, prefer)
            moved = [k for k in self._keys if self.organisation(k) == gone]
            first_here = await self._store.set_alias(gone, keep)
            if first_here and self.on_merge is not None:
                # Only the process that recorded the alias first moves the buckets, so what
                # the merged organisation used is counted once however many found it; and
                # before this process routes to the survivor alone (reservations wait for the
                # lock meanwhile), so none is made on a survivor that does not count it yet.
                await self.on_merge(gone, keep)
            self._aliases[gone] = keep
            self._invalidate()
        evidence = f"shares {keep}'s budget: {reason}"
        for k in moved:
            if self.record(k).org_evidence != evidence:
                await self._write(k, org_evidence=evidence)
        warned = frozenset(labels)
        if warned not in self._warned:
            self._warned.add(warned)
            logger.warning(
                "Groq keys %s share one organisation's budget (%s): rotating between them adds "
                "no quota. Treating %r as %r.",
                ", ".join(labels),
                reason,
                gone,
                keep,
            )
        return keep

    def _merge_order(self, a: str, b: str, prefer: str | None) -> tuple[str, str, list[str]]:
        """(kept, gone, labels of both) for a merge of `a` and `b`."""

        def first(org: str) -> int:
            return min(
                (self._order[k.label] for k in self._keys if self.organisation(k) == org),
                default=len(self._keys),
            )

        if prefer in (a, b):
            keep, gone = (a, b) if prefer == a else (b, a)
        else:
            keep, gone = (a, b) if (first(a), a) <= (first(b), b) else (b, a)
        labels = sorted(k.label for k in self._keys if self.organisation(k) in (keep, gone))
        return keep, gone, labels

    async def merges_done(self) -> None:
        """Return once no merge is being recorded (reservations wait for one in progress)."""
        lock = self._merge_lock
        if lock is not None and lock.locked():
            async with lock:
                pass

    # -- display ----------------------------------------------------------------------------

    def counts(self, now: float | None = None) -> dict[Health, int]:
        """How many keys are in each health."""
        now = self._clock() if now is None else now
        out: dict[Health, int] = {HEALTHY: 0, COOLING: 0, DEGRADED: 0, DISABLED: 0}
        for k in self._keys:
            out[self.health(k, now=now)] += 1
        return out

    def __repr__(self) -> str:
        c = self.counts()
        parts = [f"{c[HEALTHY]} ready"]
        parts += [f"{c[h]} {h}" for h in (COOLING, DEGRADED, DISABLED) if c[h]]
        shown = ", ".join(f"{k.label} {k.masked}" for k in self._keys[:4])
        more = ", …" if len(self._keys) > 4 else ""
        return f"<KeyPool [{len(self._keys)} keys: {', '.join(parts)}] {shown}{more}>"
