"""Monitoring: the dashboard snapshot of the original plan (§9), for one process or the fleet.

```
{
  "scope": "fleet" | "process", "mode": "redis" | "embedded", "namespace", "generated_at",
  "alert_thresholds": [0.8, 0.9, 0.95],
  "api_keys":    {"total", "healthy",
                  "keys": [{"label", "key" (masked), "org", "org_evidence", "health",
                            "usage": {rpm|rpd|tpm|tpd: {"used", "max_fraction"}},
                            "models": {model: {rpm|rpd|tpm|tpd: {"used", "limit"}}}}],
                  "usage": [{"org", "rpm", "rpd", "health"}]},          # the plan's list
  "models":      {model: {"requests", "tokens",              # answered by the engine today
                          rpm|rpd|tpm|tpd: {"used", "limit"},  # ledger, every organisation
                          "requests_today", "tokens_today", "limit_rpm", "limit_rpd",
                          "limits_per_org", "remaining_reported", "cooling_until"}},
  "cache":       {"l1"|"l2"|"l3": {"hits", "misses", "hit_rate", "size", …},
                  "total": {"hits", "misses", "hit_rate", "size"}, "l1_size", "l1_hit_rate", …},
  "performance": {"avg_latency_ms", "p50_latency_ms", "p95_latency_ms", "requests_today",
                  "success_rate", "cache_hits", "upstream_calls", "rate_limited_received",
                  "rate_limited_avoided", "fallback_used", "errors", "by_key", "by_model",
                  "processes", "latency_histogram"},
  "learning":    {"agent:task": {"model", "score", "executions", "cell_executions"}},
  "storage":     {"quota"|"keys"|"learning": {"state": "ok" | "degraded", "outages",
                  "recoveries", "topology": "server" | "cluster" | "sentinel", "last_error",
                  "local_share" (quota), "pending" (learning)}},
  "alerts":      [{"level", "source", "message", "fraction", "threshold", …}],   # active now
  "recent_alerts": [...],                    # threshold crossings this process saw (events)
  "totals":      {...},                      # counters since start, for Prometheus counters
  "process":     {...},                      # this process's own performance
  "problems":    ["quota usage unavailable: …"],
}
```

Where each part comes from, and so what "fleet" means:

- **keys, models, alerts**: the quota manager's `usage()`, read from the quota store. With Redis
  that store is shared, so these are the fleet's numbers whichever process asks.
- **performance, per-model request and token counts, cache hit counts**: each engine counts
  its own (`engine.stats`, the cache's tier stats). With Redis every process that served
  requests publishes its counters (about once a second, and at exit) as one record in the hash
  `ymera:<namespace>:monitor:procs`; a snapshot adds up the records of today (UTC), so a
  process that stopped still counts for the day. "Today" starts at the first look at the
  counters after UTC midnight (the publisher looks every second; without Redis, the first
  snapshot). Averages and percentiles are over the union of each process's recent latencies
  (its last 512 requests); the latency histogram (`engine.stats`) counts every request since
  the engine started, which is when monitoring begins. The monitor reads the engine only
  through its public surface, and learns of its closing from `Engine.subscribe`.
- **cache sizes**: L2 (Redis) is shared, so its size is the fleet's; L3 is this host's file; L1
  is summed over the processes' records.
- **learning**: the learning store is shared (Redis, or the SQLite file of one data directory);
  the snapshot folds in other processes' evidence first.

Alerts are of two kinds. `alerts` are the limits *now* at or above a threshold (80/90/95 % by
default), computed from the shared ledger, plus the plan's two health checks (cache hit rate
under 50 %, success rate under 90 %). `recent_alerts` are the quota manager's alert events
(one per upward crossing of a threshold) that this process fired.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime as dt
import logging
import math
import os
import socket
import threading
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .events import EngineClosed, EngineEvent
from .latency import LATENCY_BUCKETS_MS, LatencyTally
from .storage.base import KEY_PREFIX, astorage_errors, dumps, loads, redis_client
from .storage.redis_url import redis_topology

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .config import ApiKey
    from .engine import Engine
    from .quota import Alert

__all__ = [
    "LATENCY_BUCKETS_MS",
    "FleetStore",
    "LatencyTally",
    "Monitor",
    "active_alerts",
    "attach",
    "aattach",
    "build_snapshot",
    "monitor_for",
]

logger = logging.getLogger(__name__)

KINDS: tuple[str, str, str, str] = ("rpm", "rpd", "tpm", "tpd")
LEVELS: tuple[str, str, str] = ("warning", "critical", "emergency")

_WINDOW = 512
"""Recent latencies each process publishes for fleet averages and percentiles."""

_COUNTERS = (
    "requests",
    "succeeded",
    "failed",
    "cache_hits",
    "upstream_calls",
    "rate_limited_received",
    "rate_limited_avoided",
    "fallback_used",
)
_BREAKDOWNS = ("by_model", "tokens_by_model", "by_key", "errors")
_TIERS = ("l1", "l2", "l3")

# The plan's two health checks besides quota (§9 "Alert Thresholds"), with the evidence they
# need before they say anything.
_CACHE_HIT_FLOOR, _CACHE_MIN_LOOKUPS = 0.5, 100
_SUCCESS_FLOOR, _SUCCESS_MIN_REQUESTS = 0.9, 20


# -- the fleet's records --------------------------------------------------------------------


class FleetStore:
    """Each process's monitoring record in one Redis hash that every process reads.

    `ymera:<namespace>:monitor:procs` maps a process id (`host:pid:nonce`) to its record
    (JSON). Each write replaces one field and each read takes the whole hash: single commands,
    so no script is needed. Records of processes silent for longer than the retention are
    deleted by readers.

    Args:
        client: A `redis.asyncio.Redis` client (bound to the loop that first uses it).
        namespace: The tenant namespace.
    """

    def __init__(self, client: Redis, *, namespace: str = "default") -> None:
        self._client = client
        self.key = f"{KEY_PREFIX}{namespace}:monitor:procs"

    @classmethod
    def from_url(cls, url: str, *, namespace: str = "default") -> FleetStore:
        return cls(redis_client(url), namespace=namespace)

    async def publish(self, proc_id: str, record: Mapping[str, Any]) -> None:
        async with astorage_errors("redis", "monitor publish"):
            await self._client.hset(self.key, proc_id, dumps(record))

    async def records(self) -> dict[str, dict[str, Any]]:
        async with astorage_errors("redis", "monitor read"):
            raw = await self._client.hgetall(self.key)
        out: dict[str, dict[str, Any]] = {}
        for field, value in raw.items():
            name = field.decode() if isinstance(field, bytes) else str(field)
            try:
                record = loads(value)
            except ValueError:
                continue
            if isinstance(record, dict):
                out[name] = record
        return out

    async def forget(self, proc_ids: Sequence[str]) -> None:
        if proc_ids:
            async with astorage_errors("redis", "monitor prune"):
                await self._client.hdel(self.key, *proc_ids)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.aclose()


# -- the monitor -------------------------------------------------------------------------


class Monitor:
    """One engine's monitoring: alert log, fleet record, snapshots.

    Get it with `attach(engine)` (or `monitor_for(engine)`); there is one per engine. Its
    async methods run on the engine's portal loop.

    Args:
        engine: The engine to watch.
        publish_interval: Seconds between checks for new counters to publish (Redis only).
        heartbeat: Publish at least this often while the process lives, even if idle.
        retention: Seconds after its last update a process's record is dropped.
        max_recent_alerts: Alert events kept for `recent_alerts`.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        publish_interval: float = 1.0,
        heartbeat: float = 300.0,
        retention: float = 86400.0,
        max_recent_alerts: int = 100,
    ) -> None:
        # Weak: the engine (through its quota's alert callback) holds the monitor, and the
        # registry of monitors must not keep engines alive.
        self._engine = weakref.ref(engine)
        self._portal = engine.portal
        self.publish_interval = publish_interval
        self.heartbeat = heartbeat
        self.retention = retention
        self.proc_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.started_at = engine.clock()
        self.recent_alerts: deque[dict[str, Any]] = deque(maxlen=max_recent_alerts)
        self.fleet: FleetStore | None = None
        self._started = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._day: str | None = None
        self._baseline: dict[str, Any] = {}
        self._published: tuple[Any, float] | None = None
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def engine(self) -> Engine:
        """The engine watched.

        Raises:
            RuntimeError: The engine no longer exists.
        """
        engine = self._engine()
        if engine is None:
            raise RuntimeError("the monitored engine no longer exists")
        return engine

    def __repr__(self) -> str:
        scope = "fleet" if self.fleet is not None else "process"
        return f"<Monitor {self.proc_id} {scope} alerts={len(self.recent_alerts)}>"

    # -- lifecycle ---------------------------------------------------------------------------

    async def astart(self) -> Monitor:
        """Start the engine, subscribe to quota alerts and its closing, start publishing."""
        engine = self.engine
        portal = engine.portal
        if not portal.in_portal():
            await portal.arun(self.astart())
            return self
        if self._started:
            return self
        await engine.astart()
        if self._started:  # another caller finished first while we awaited
            return self
        self._started = True
        engine.quota.add_alert_callback(self._on_alert)
        self._unsubscribe = engine.subscribe(self._on_engine_event, EngineClosed)
        if engine.settings.redis_url:
            self.fleet = FleetStore.from_url(
                engine.settings.redis_url, namespace=engine.settings.namespace
            )
            self._task = asyncio.get_running_loop().create_task(self._publish_loop())
            _register_live(self)
        return self

    async def aclose(self) -> None:
        """Publish a last time and stop (idempotent)."""
        portal = self._portal
        if not portal.in_portal():
            await portal.arun(self.aclose())
            return
        if self._closed:
            return
        self._closed = True
        _LIVE.discard(self)
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.fleet is not None:
            if self._engine() is not None:
                with contextlib.suppress(Exception):
                    await self.apublish(force=True)
            await self.fleet.aclose()

    def close(self) -> None:
        """Sync twin of `aclose`."""
        with contextlib.suppress(RuntimeError):
            self._portal.run(self.aclose(), timeout=10)

    def _on_engine_event(self, event: EngineEvent) -> None:
        if isinstance(event, EngineClosed):
            # Its counters stop moving: publish a last time while the engine is still open.
            event.wait_until(self.aclose())

    def _on_alert(self, alert: Alert) -> None:
        entry = _alert_dict(alert)
        entry["source"] = "quota"
        entry["message"] = getattr(alert, "message", str(alert))
        self.recent_alerts.append(entry)

    # -- this process's record ---------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        """This process's counters (since start and since UTC midnight), latencies, cache."""
        engine = self.engine
        now = engine.clock()
        stats = engine.stats.as_dict()
        totals: dict[str, Any] = {name: stats.get(name, 0) for name in _COUNTERS}
        for name in _BREAKDOWNS:
            totals[name] = dict(stats.get(name) or {})
        cache = engine.cache.stats() if engine.cache is not None else {}
        totals["cache"] = {
            tier: {"hits": int(cache[tier]["hits"]), "misses": int(cache[tier]["misses"])}
            for tier in _TIERS
            if isinstance(cache.get(tier), Mapping)
        }
        totals["cache_total"] = {
            "hits": int((cache.get("total") or {}).get("hits", 0)),
            "misses": int((cache.get("total") or {}).get("misses", 0)),
        }
        day = _utc_day(now)
        if day != self._day:
            # A new day: count from here (the first record of a process counts from its start).
            self._baseline = {} if self._day is None else totals
            self._day = day
        recent, hist = engine.stats.latency(_WINDOW)
        window = [round(v, 2) for v in recent]
        l1 = cache.get("l1") if isinstance(cache.get("l1"), Mapping) else {}
        lookup_ms = {
            tier: round(float(cache[tier].get("mean_lookup_ms") or 0.0), 4)
            for tier in _TIERS
            if isinstance(cache.get(tier), Mapping)
        }
        return {
            "v": 1,
            "proc": self.proc_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": self.started_at,
            "updated": now,
            "day": day,
            "total": totals,
            "today": _subtract(totals, self._baseline),
            "latency": {"window": window, "histogram": hist},
            "l1_size": int((l1 or {}).get("size") or 0),
            "lookup_ms": lookup_ms,
        }

    async def apublish(self, *, force: bool = False) -> bool:
        """Write this process's record to the fleet hash if its counters changed (or `force`,
        or the heartbeat is due). Processes that served nothing stay out of the fleet.

        Returns:
            Whether a record was written.

        Raises:
            StorageError: Redis failed.
        """
        if self.fleet is None:
            return False
        record = self.record()
        if not record["total"]["requests"]:
            return False
        now = record["updated"]
        fingerprint = (record["total"], record["latency"]["histogram"]["count"])
        if (
            not force
            and self._published is not None
            and self._published[0] == fingerprint
            and now - self._published[1] < self.heartbeat
        ):
            return False
        await self.fleet.publish(self.proc_id, record)
        self._published = (fingerprint, now)
        return True

    async def _publish_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.publish_interval)
            try:
                await self.apublish()
            except Exception as exc:  # monitoring never takes a worker down
                logger.debug("monitor publish failed: %s", exc)
            if self._engine_done():
                # The engine is closed: its counters no longer move; publish once and stop.
                self._closed = True
                _LIVE.discard(self)
                if self._engine() is not None:
                    with contextlib.suppress(Exception):
                        await self.apublish(force=True)
                if self.fleet is not None:
                    await self.fleet.aclose()
                return

    def _engine_done(self) -> bool:
        # No strong reference survives this call: the loop must not keep the engine alive.
        engine = self._engine()
        return engine is None or engine.closed

    # -- the snapshot ------------------------------------------------------------------------

    async def asnapshot(self, *, fleet: bool | None = None) -> dict[str, Any]:
        """The dashboard (see the module docstring).

        Args:
            fleet: Add up every process's published counters (default: when Redis is
                configured); `False` shows this process's counters only. Quota, key health,
                learning and the shared cache tiers are the shared stores' view either way.
        """
        engine = self.engine
        if not engine.portal.in_portal():
            return await engine.portal.arun(self.asnapshot(fleet=fleet))
        await self.astart()
        problems: list[str] = []
        now = engine.clock()
        own = self.record()

        # Counters: this process, or every process of today.
        records: dict[str, dict[str, Any]] = {}
        use_fleet = self.fleet is not None and fleet is not False
        if use_fleet and self.fleet is not None:
            try:
                records = await self.fleet.records()
                stale = [
                    p for p, r in records.items() if now - _num(r.get("updated")) > self.retention
                ]
                for p in stale:
                    records.pop(p, None)
                await self.fleet.forget(stale)
            except Exception as exc:
                problems.append(f"fleet counters unavailable (this process only): {exc}")
                use_fleet = False
                records = {}
        # This process's live counters replace what it published earlier.
        records.pop(self.proc_id, None)
        if own["total"]["requests"] or not records:
            records[self.proc_id] = own
        today_day = _utc_day(now)
        todays = [r for r in records.values() if r.get("day") == today_day]
        today = _sum(r.get("today", {}) for r in todays)
        totals = _sum(r.get("total", {}) for r in records.values())
        window = sorted(v for r in todays for v in (r.get("latency") or {}).get("window", ()))
        histogram = _sum_histograms(
            (r.get("latency") or {}).get("histogram") for r in records.values()
        )
        processes = sum(1 for r in todays if (r.get("today") or {}).get("requests"))

        usage: dict[str, Any] = {}
        try:
            usage = await engine.quota.usage()
        except Exception as exc:  # monitoring must never fail because a store did
            problems.append(f"quota usage unavailable: {exc}")
            logger.warning("quota usage unavailable: %s", exc)

        cache = await self._cache(today, todays, problems)
        learning = await self._learning(problems)
        keys_out = self._keys(usage)
        models_out = self._models(usage, today)
        perf = _performance(today, window)
        perf["processes"] = processes
        perf["latency_histogram"] = histogram
        storage = _storage(engine)
        alerts = active_alerts(usage, engine.settings.alert_thresholds)
        alerts += _health_alerts(cache, perf)
        alerts += _storage_alerts(storage)
        own_perf = _performance(own["today"], sorted(own["latency"]["window"]))
        return {
            "scope": "fleet" if use_fleet else "process",
            "mode": "redis" if engine.settings.redis_url else "embedded",
            "namespace": engine.settings.namespace,
            "generated_at": now,
            "alert_thresholds": list(engine.settings.alert_thresholds),
            "api_keys": {
                "total": len(keys_out),
                "healthy": sum(1 for k in keys_out if k["health"] == "healthy"),
                "keys": keys_out,
                "usage": [
                    {
                        "org": k["org"],
                        "rpm": k["usage"]["rpm"]["used"],
                        "rpd": k["usage"]["rpd"]["used"],
                        "health": k["health"],
                    }
                    for k in keys_out
                ],
            },
            "models": models_out,
            "cache": cache,
            "performance": perf,
            "learning": learning,
            "storage": storage,
            "alerts": alerts,
            "recent_alerts": list(self.recent_alerts),
            "totals": {**totals, "latency_histogram": histogram, "processes": len(records)},
            "process": {"id": self.proc_id, **own_perf},
            "problems": problems,
        }

    async def _cache(
        self, today: Mapping[str, Any], todays: Sequence[Mapping[str, Any]], problems: list[str]
    ) -> dict[str, Any]:
        cache_obj = self.engine.cache
        if cache_obj is None:
            return {"enabled": False, "total": {"hits": 0, "misses": 0, "hit_rate": 0.0, "size": 0}}
        try:
            local = await cache_obj.astats()
        except Exception as exc:
            problems.append(f"cache sizes unavailable: {exc}")
            local = cache_obj.stats()
        out: dict[str, Any] = {}
        counts = today.get("cache") or {}
        for tier in _TIERS:
            entry = dict(local.get(tier) or {})
            c = counts.get(tier) or {}
            entry["hits"] = int(c.get("hits", 0))
            entry["misses"] = int(c.get("misses", 0))
            entry["hit_rate"] = _rate(entry["hits"], entry["misses"])
            # Each process's mean lookup time, weighted by its lookups in that tier.
            weighted = [
                (
                    _num((r.get("lookup_ms") or {}).get(tier)),
                    sum(
                        int(((r.get("today") or {}).get("cache") or {}).get(tier, {}).get(x, 0))
                        for x in ("hits", "misses")
                    ),
                )
                for r in todays
            ]
            n = sum(w for _, w in weighted)
            if n:
                entry["mean_lookup_ms"] = sum(ms * w for ms, w in weighted) / n
            out[tier] = entry
        # Every process has its own L1; the lower tiers are shared (L2) or per host (L3).
        out["l1"]["size"] = sum(int(r.get("l1_size") or 0) for r in todays) or int(
            out["l1"].get("size") or 0
        )
        total = today.get("cache_total") or {}
        hits, misses = int(total.get("hits", 0)), int(total.get("misses", 0))
        out["total"] = {
            "hits": hits,
            "misses": misses,
            "hit_rate": _rate(hits, misses),
            "size": sum(int(out[t].get("size") or 0) for t in _TIERS),
        }
        if "coalesced" in local:
            out["coalesced"] = local["coalesced"]
        # The plan's flat names.
        for tier in _TIERS:
            out[f"{tier}_size"] = out[tier].get("size")
            out[f"{tier}_hit_rate"] = out[tier]["hit_rate"]
        out["total_hit_rate"] = out["total"]["hit_rate"]
        return out

    async def _learning(self, problems: list[str]) -> dict[str, Any]:
        learner = self.engine.learner
        if learner is None:
            return {}
        try:
            await learner.refresh()
        except Exception as exc:
            problems.append(f"learning refresh failed: {exc}")
        try:
            return dict(learner.top_recommendations())
        except Exception as exc:
            problems.append(f"learning summary unavailable: {exc}")
            return {}

    def _keys(self, usage: Mapping[str, Any]) -> list[dict[str, Any]]:
        engine = self.engine
        by_label = usage.get("keys") or {}
        out: list[dict[str, Any]] = []
        keys: Sequence[ApiKey] = engine.settings.api_keys
        with contextlib.suppress(RuntimeError):  # not started: the configured keys
            keys = engine.quota.pool.keys  # with the keys adopted from a LiteLLM router
        for key in keys:
            info = by_label.get(key.label) or {}
            per_model: dict[str, Any] = info.get("usage") or {}
            summary: dict[str, dict[str, float]] = {}
            for kind in KINDS:
                used = 0.0
                worst = 0.0
                for kinds in per_model.values():
                    v = kinds.get(kind) or {}
                    used += _num(v.get("used"))
                    if v.get("limit"):
                        worst = max(worst, _num(v.get("used")) / _num(v["limit"]))
                summary[kind] = {"used": used, "max_fraction": round(worst, 4)}
            out.append(
                {
                    "label": key.label,
                    "key": key.masked,
                    "org": info.get("org", key.organisation),
                    "org_evidence": info.get("org_evidence"),
                    "health": info.get("health", "unknown" if not by_label else "healthy"),
                    "usage": summary,
                    "models": per_model,
                }
            )
        return out

    def _models(self, usage: Mapping[str, Any], today: Mapping[str, Any]) -> dict[str, Any]:
        engine = self.engine
        by_label = usage.get("keys") or {}
        model_usage = usage.get("models") or {}
        orgs = sorted(
            {str(info.get("org")) for info in by_label.values()}
            or {k.organisation for k in engine.settings.api_keys}
        )
        # What each organisation's ledger says per model (limits in force, use).
        per_org: dict[str, dict[str, Any]] = {}
        for info in by_label.values():
            for model, kinds in (info.get("usage") or {}).items():
                per_org.setdefault(model, {})[str(info.get("org"))] = kinds
        by_model = today.get("by_model") or {}
        tokens = today.get("tokens_by_model") or {}
        names = [m.id for m in engine.catalog.served()]
        names += sorted((set(model_usage) | set(by_model)) - set(names))
        out: dict[str, Any] = {}
        for name in names:
            try:
                info = engine.catalog.get(name)
                defaults: dict[str, int | None] = info.limits.as_dict()
                served = engine.catalog.is_served(info)
            except Exception:
                defaults = dict.fromkeys(KINDS)
                served = False
            entry: dict[str, Any] = {
                "requests": int(by_model.get(name, 0)),
                "tokens": int(tokens.get(name, 0)),
                "served": served,
            }
            ledgers = per_org.get(name, {})
            for kind in KINDS:
                used = sum(_num((ledgers.get(o) or {}).get(kind, {}).get("used")) for o in orgs)
                limits: list[int | None] = [
                    ((ledgers.get(o) or {}).get(kind) or {}).get("limit", defaults.get(kind))
                    if o in ledgers
                    else defaults.get(kind)
                    for o in orgs
                ]
                limit: int | None = None
                if orgs and all(v is not None for v in limits):
                    limit = sum(int(v) for v in limits if v is not None)
                entry[kind] = {"used": int(used), "limit": limit}
            entry["requests_today"] = entry["rpd"]["used"]
            entry["tokens_today"] = entry["tpd"]["used"]
            # The plan's names: the catalog's limits for one organisation.
            entry["limit_rpm"] = defaults.get("rpm")
            entry["limit_rpd"] = defaults.get("rpd")
            entry["limits_per_org"] = defaults
            reported = {
                org: {k: v.get("limit") for k, v in kinds.items() if isinstance(v, Mapping)}
                for org, kinds in ledgers.items()
            }
            differing = {
                org: lims
                for org, lims in reported.items()
                if any(lims.get(k) != defaults.get(k) for k in KINDS if k in lims)
            }
            if differing:
                entry["limits_reported"] = differing
            mu = model_usage.get(name) or {}
            if mu.get("remaining"):
                entry["remaining_reported"] = mu["remaining"]
            if mu.get("cooling_until"):
                entry["cooling_until"] = mu["cooling_until"]
            out[name] = entry
        return out


# -- module API -----------------------------------------------------------------------------

_MONITORS: weakref.WeakKeyDictionary[Engine, Monitor] = weakref.WeakKeyDictionary()
_MONITORS_LOCK = threading.Lock()
_LIVE: set[Monitor] = set()
_EXIT_HOOK = False


def _register_live(mon: Monitor) -> None:
    global _EXIT_HOOK
    with _MONITORS_LOCK:
        _LIVE.add(mon)
        if not _EXIT_HOOK:
            # Registered once the portal exists: exit hooks run last-in first-out, so this
            # one runs while the portal still serves.
            atexit.register(_flush_at_exit)
            _EXIT_HOOK = True


def monitor_for(engine: Engine) -> Monitor:
    """The engine's monitor (created on first use, not started)."""
    with _MONITORS_LOCK:
        mon = _MONITORS.get(engine)
        if mon is None:
            mon = Monitor(engine)
            _MONITORS[engine] = mon
        return mon


async def aattach(engine: Engine) -> Monitor:
    """Start monitoring an engine (idempotent); see `attach`."""
    return await monitor_for(engine).astart()


def attach(engine: Engine) -> Monitor:
    """Start monitoring an engine: quota alert events and, with Redis, publishing this
    process's counters and latencies to the fleet (idempotent).

    A snapshot attaches on its own; a worker process that only serves requests should attach
    when it starts, so its counters reach the fleet's view.
    """
    mon = monitor_for(engine)
    if engine.portal.in_portal():
        raise RuntimeError("attach() called on the portal thread; await aattach() instead")
    engine.portal.run(mon.astart())
    return mon


async def build_snapshot(engine: Engine, *, fleet: bool | None = None) -> dict[str, Any]:
    """The engine's dashboard snapshot (what `Engine.asnapshot` returns); runs on the portal."""
    return await monitor_for(engine).asnapshot(fleet=fleet)


def active_alerts(usage: Mapping[str, Any], thresholds: Sequence[float]) -> list[dict[str, Any]]:
    """Limits at or above a threshold now, one entry per (organisation, model, kind).

    Args:
        usage: `QuotaManager.usage()`.
        thresholds: Ascending shares of a limit (warning, critical, emergency).

    Returns:
        Alerts, most used first: `level`, `threshold`, `fraction`, `org`, `model`, `kind`,
        `used`, `limit`, `keys` (labels of the organisation's keys), `source` ("quota") and
        `message`.
    """
    ths = sorted(thresholds)
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    for label, info in (usage.get("keys") or {}).items():
        org = str(info.get("org"))
        for model, kinds in (info.get("usage") or {}).items():
            for kind in KINDS:
                v = kinds.get(kind) or {}
                limit, used = v.get("limit"), _num(v.get("used"))
                if not limit:
                    continue
                frac = used / limit
                crossed = max((j for j, th in enumerate(ths) if frac >= th), default=-1)
                if crossed < 0:
                    continue
                slot = (org, model, kind)
                if slot in found:
                    found[slot]["keys"].append(label)
                    continue
                level = LEVELS[min(crossed, len(LEVELS) - 1)]
                found[slot] = {
                    "level": level,
                    "source": "quota",
                    "threshold": ths[crossed],
                    "fraction": round(frac, 4),
                    "org": org,
                    "model": model,
                    "kind": kind,
                    "used": used,
                    "limit": limit,
                    "keys": [label],
                    "message": (
                        f"{kind} of {model} for {org} at {frac:.0%} "
                        f"({used:.0f}/{limit}; threshold {ths[crossed]:.0%})"
                    ),
                }
    return sorted(found.values(), key=lambda a: (-a["fraction"], a["model"], a["org"]))


# -- helpers ----------------------------------------------------------------------------------


def _storage(engine: Engine) -> dict[str, Any]:
    """Where each shared store stands: `ok`, or `degraded` (Redis unreachable, served locally
    until it is back; see `storage.resilient`)."""
    out: dict[str, Any] = {}
    stores: dict[str, Any] = {}
    # "server", "cluster" or "sentinel": what "unreachable" means (a primary failing over, a
    # Sentinel switch, or the one server gone).
    topology = redis_topology(engine.settings.redis_url)
    with contextlib.suppress(Exception):  # before start, or without a learner
        stores["quota"] = engine.quota.ledger.store
        stores["keys"] = engine.quota.pool.store
    if engine.learner is not None:
        stores["learning"] = engine.learner.store
    for name, store in stores.items():
        degraded = getattr(store, "degraded", None)
        entry: dict[str, Any] = {"state": "degraded" if degraded else "ok"}
        if degraded is not None:  # a Redis store behind its local fallback
            entry["outages"] = int(getattr(store, "outages", 0) or 0)
            entry["recoveries"] = int(getattr(store, "recoveries", 0) or 0)
            entry["topology"] = topology
            if last_error := getattr(store, "last_error", None):
                entry["last_error"] = str(last_error)
        if name == "quota" and hasattr(store, "share"):
            entry["local_share"] = round(float(store.share), 4)
        if name == "learning" and hasattr(store, "pending"):
            entry["pending"] = int(store.pending)
        out[name] = entry
    return out


def _storage_alerts(storage: Mapping[str, Any]) -> list[dict[str, Any]]:
    down = [name for name, entry in storage.items() if entry.get("state") == "degraded"]
    if not down:
        return []
    quota = storage.get("quota") or {}
    detail = (
        f"; quota on a local share of {quota['local_share']:.0%} of each budget"
        if quota.get("state") == "degraded" and "local_share" in quota
        else ""
    )
    return [
        {
            "level": "critical",
            "source": "storage",
            "stores": down,
            "message": f"Redis unreachable for {', '.join(down)}: served locally until it is "
            f"back{detail}",
        }
    ]


def _health_alerts(cache: Mapping[str, Any], perf: Mapping[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    total = cache.get("total") or {}
    lookups = int(total.get("hits", 0)) + int(total.get("misses", 0))
    rate = _num(total.get("hit_rate"))
    if lookups >= _CACHE_MIN_LOOKUPS and rate < _CACHE_HIT_FLOOR:
        out.append(
            {
                "level": "warning",
                "source": "cache",
                "threshold": _CACHE_HIT_FLOOR,
                "fraction": round(rate, 4),
                "message": f"cache hit rate {rate:.0%} is under {_CACHE_HIT_FLOOR:.0%}: "
                "review the caching strategy",
            }
        )
    done = int(perf.get("succeeded", 0)) + int(perf.get("failed", 0))
    ok = _num(perf.get("success_rate"))
    if done >= _SUCCESS_MIN_REQUESTS and ok < _SUCCESS_FLOOR:
        out.append(
            {
                "level": "critical",
                "source": "performance",
                "threshold": _SUCCESS_FLOOR,
                "fraction": round(ok, 4),
                "message": f"success rate {ok:.0%} is under {_SUCCESS_FLOOR:.0%}: "
                "investigate the errors",
            }
        )
    return out


def _performance(counters: Mapping[str, Any], window: Sequence[float]) -> dict[str, Any]:
    succeeded = int(counters.get("succeeded", 0))
    failed = int(counters.get("failed", 0))
    done = succeeded + failed
    out: dict[str, Any] = {
        "avg_latency_ms": (sum(window) / len(window)) if window else 0.0,
        "p50_latency_ms": _percentile(window, 0.50),
        "p95_latency_ms": _percentile(window, 0.95),
        "requests_today": int(counters.get("requests", 0)),
        "success_rate": (succeeded / done) if done else 1.0,
    }
    for name in _COUNTERS:
        if name != "requests":
            out[name] = int(counters.get(name, 0))
    for name in _BREAKDOWNS:
        out[name] = dict(counters.get(name) or {})
    return out


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values (0.0 when empty), as the engine computes it."""
    if not ordered:
        return 0.0
    return float(ordered[min(len(ordered) - 1, int(len(ordered) * q))])


def _rate(hits: int, misses: int) -> float:
    return hits / (hits + misses) if hits + misses else 0.0


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value) if math.isfinite(value) else 0.0


def _subtract(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """`a - b` for nested dicts of counters (what `b` lacks counts as zero)."""
    out: dict[str, Any] = {}
    for k, v in a.items():
        w = b.get(k)
        if isinstance(v, Mapping):
            out[k] = _subtract(v, w if isinstance(w, Mapping) else {})
        else:
            out[k] = v - _num(w) if isinstance(v, int | float) else v
            if isinstance(v, int) and isinstance(out[k], float) and out[k].is_integer():
                out[k] = int(out[k])
    return out


def _sum(items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Add nested dicts of counters."""
    out: dict[str, Any] = {}
    for item in items:
        _add_into(out, item)
    return out


def _add_into(acc: dict[str, Any], item: Mapping[str, Any]) -> None:
    for k, v in item.items():
        if isinstance(v, Mapping):
            sub = acc.setdefault(k, {})
            if isinstance(sub, dict):
                _add_into(sub, v)
        elif isinstance(v, int | float) and not isinstance(v, bool):
            acc[k] = acc.get(k, 0) + v


def _sum_histograms(items: Iterable[Any]) -> dict[str, Any]:
    """Add cumulative histograms with the same bounds (others are skipped)."""
    out = LatencyTally().as_dict()
    for h in items:
        if not isinstance(h, Mapping) or list(h.get("bounds_ms") or ()) != out["bounds_ms"]:
            continue
        counts = h.get("counts") or []
        if len(counts) != len(out["counts"]):
            continue
        out["counts"] = [a + int(b) for a, b in zip(out["counts"], counts, strict=True)]
        out["count"] += int(h.get("count", 0))
        out["sum_ms"] = round(out["sum_ms"] + _num(h.get("sum_ms")), 3)
    return out


def _alert_dict(alert: Any) -> dict[str, Any]:
    if hasattr(alert, "__dataclass_fields__"):
        import dataclasses

        out = dataclasses.asdict(alert)
        out["keys"] = list(out.get("keys") or ())
        return out
    if hasattr(alert, "_asdict"):
        return dict(alert._asdict())
    return {"level": getattr(alert, "level", "warning"), "message": str(alert)}


def _utc_day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).date().isoformat()


def _flush_at_exit() -> None:
    """Publish every live monitor's last counters (a worker that just exits still counts)."""
    for mon in list(_LIVE):
        with contextlib.suppress(Exception):
            mon.close()
