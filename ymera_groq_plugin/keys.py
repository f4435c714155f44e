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

import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Literal

from .clock import Clock
from .config import ApiKey
from .errors import ConfigurationError
from .storage.quota_base import KeyRecord, KeyStates, KeyStateStore
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


class KeyPool:
    """Keys grouped by organisation, with health, shared through a `KeyStateStore`.

    Args:
        keys: The configured keys (labels must be unique).
        store: Where health and merges are shared; default: this process only.
        clock: Wall-clock seconds.
        refresh_interval: Seconds between reloads of the shared state (other processes'
            findings arrive within this delay; this process's own apply at once).
        degrade_after: Consecutive failures (5xx, 498, timeouts) that degrade a key.
        failure_window: Failures further apart than this start a new count.
        degrade_for: Seconds a degraded key stays ranked last.
        merge_evidence: Matching request counts needed before two organisations are merged on
            header evidence alone (a 429 text naming the organisation merges at once).

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
        merge_evidence: int = 6,
    ) -> None:
        labels = [k.label for k in keys]
        if len(set(labels)) != len(labels):
            raise ConfigurationError("Key labels must be unique", setting="api_keys")
        if store is None:
            from .storage.memory import MemoryKeyStateStore

            store = MemoryKeyStateStore()
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
        self._reports: dict[str, dict[str, tuple[float, int, int]]] = {}
        self._evidence: dict[tuple[str, str, str], int] = {}
        self._distinct: dict[tuple[str, str, str], float] = {}
        self._warned: set[frozenset[str]] = set()

    # -- reading ----------------------------------------------------------------------------

    @property
    def keys(self) -> tuple[ApiKey, ...]:
        """Every configured key, in configuration order."""
        return self._keys

    @property
    def store(self) -> KeyStateStore:
        return self._store

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
        if self.record(key).groq_org != groq_org:
            await self._write(key, groq_org=groq_org)
        mine = self.organisation(key)
        merged: str | None = None
        for other in self._keys:
            if other is key or self.is_disabled(other):
                continue
            same = self.record(other).groq_org == groq_org or other.org == groq_org
            if same and self.organisation(other) != mine:
                merged = await self.merge(
                    mine, self.organisation(other), reason=groq_org, prefer=groq_org
                )
                mine = self.organisation(key)
        return merged

    async def observe_headers(
        self, org: str, model: str, rate_limits: RateLimits, *, now: float | None = None
    ) -> str | None:
        """Compare the day's request count Groq reports for `org` with other organisations'.

        One budget shows as one count: a response on one organisation reporting exactly one
        request fewer remaining than another organisation's latest report, where its own
        previous report does not explain the number. After `merge_evidence` such reports in a
        row (and none against), the two organisations are merged. A report at or behind the
        other organisation's latest count proves two budgets and keeps the pair apart for a
        minute: separate budgets used alike by concurrent requests (whose answers arrive out
        of order, some of them in other processes) otherwise look like one now and then. A
        429 text naming the organisation remains the sure way (`observe_organization`).

        Returns:
            The organisation merged into, if a merge happened.
        """
        limit, remaining = rate_limits.limit_requests, rate_limits.remaining_requests
        if limit is None or remaining is None:
            return None
        now = self._clock() if now is None else now
        org = self.canonical(org)
        reports = self._reports.setdefault(model, {})
        own = reports.get(org)
        merged: str | None = None
        for other, (t, other_limit, other_remaining) in list(reports.items()):
            if other == org or self.canonical(other) == org or now - t > _CHAIN_WINDOW:
                continue
            low, high = sorted((org, other))
            ev_key = (model, low, high)
            if other_limit == limit and remaining >= other_remaining:
                # A count at or behind another's latest: two budgets (one budget's count only
                # moves on). Under concurrency, and with several processes each seeing part of
                # the answers, two separate counts also "continue" each other now and then, so
                # this pair proves nothing for a while.
                self._evidence.pop(ev_key, None)
                self._distinct[ev_key] = now + _CHAIN_WINDOW
                continue
            if self._distinct.get(ev_key, -math.inf) > now:
                continue
            continues_other = other_limit == limit and remaining == other_remaining - 1
            continues_own = own is not None and remaining == own[2] - 1
            if continues_other and not continues_own and remaining < limit - 1:
                self._evidence[ev_key] = self._evidence.get(ev_key, 0) + 1
                if self._evidence[ev_key] >= self._merge_evidence:
                    del self._evidence[ev_key]
                    merged = await self.merge(
                        org, other, reason="their request counts continue each other"
                    )
                    org = self.canonical(org)
            elif continues_own:
                self._evidence.pop(ev_key, None)
        reports[org] = (now, limit, remaining)
        return merged

    async def merge(self, a: str, b: str, *, reason: str, prefer: str | None = None) -> str:
        """Record that organisations `a` and `b` share one budget; warn once.

        `prefer` wins when it is one of the two (the organisation a 429 text named); otherwise
        the organisation of the first configured key, so every process picks the same.

        Returns:
            The surviving organisation.
        """
        a, b = self.canonical(a), self.canonical(b)
        if a == b:
            return a

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
        self._aliases[gone] = keep
        self._invalidate()
        await self._store.set_alias(gone, keep)
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
