"""The monitoring snapshot: one call, the original plan's dashboard shape (§9).

```
{
  "api_keys":    {"total", "healthy", "keys": [{"label", "key", "org", "health", "usage": {rpm, rpd, tpm, tpd}}]},
  "models":      {model: {"requests", "tokens", "rpm"|"rpd"|"tpm"|"tpd": {"used", "limit"},
                          "remaining_reported"}},
  "cache":       {"l1": {...}, "l2": {...}, "l3": {...}, "total": {"hits", "misses", "hit_rate"}},
  "performance": {"avg_latency_ms", "p95_latency_ms", "requests_today", "success_rate", ...},
  "learning":    {"agent:task": {"model", "score", "executions"}},
  "alerts":      [{"level", "message", ...}],
}
```

Quota usage comes from the shared store, so with Redis it is the whole fleet's view; the
performance counters are this process's.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["build_snapshot"]

logger = logging.getLogger(__name__)

_KINDS = ("rpm", "rpd", "tpm", "tpd")


async def build_snapshot(engine: Engine) -> dict[str, Any]:
    """Assemble the snapshot from the engine's parts (runs on the portal)."""
    stats = engine.stats.as_dict()
    usage: dict[str, Any] = {}
    try:
        usage = await engine.quota.usage()
    except Exception as exc:  # monitoring must never fail because a store did
        logger.warning("quota usage unavailable: %s", exc)

    keys_out: list[dict[str, Any]] = []
    key_usage = usage.get("keys", {}) if isinstance(usage, dict) else {}
    for key in engine.settings.api_keys:
        info = key_usage.get(key.label, {}) if isinstance(key_usage, dict) else {}
        per_model = info.get("usage", {}) if isinstance(info, dict) else {}
        totals = {k: {"used": 0.0, "limit": None} for k in _KINDS}
        for m in per_model.values() if isinstance(per_model, dict) else ():
            for k in _KINDS:
                v = m.get(k) if isinstance(m, dict) else None
                if isinstance(v, dict):
                    totals[k]["used"] += float(v.get("used") or 0)
        keys_out.append(
            {
                "label": key.label,
                "key": key.masked,
                "org": info.get("org", key.organisation) if isinstance(info, dict) else key.org,
                "health": info.get("health", "healthy") if isinstance(info, dict) else "unknown",
                "usage": totals,
                "models": per_model,
            }
        )

    models_out: dict[str, Any] = {}
    model_usage = usage.get("models", {}) if isinstance(usage, dict) else {}
    for model in engine.catalog.served():
        entry: dict[str, Any] = {
            "requests": stats["by_model"].get(model.id, 0),
            "tokens": stats["tokens_by_model"].get(model.id, 0),
        }
        mu = model_usage.get(model.id, {}) if isinstance(model_usage, dict) else {}
        for k in _KINDS:
            v = mu.get(k) if isinstance(mu, dict) else None
            entry[k] = v if isinstance(v, dict) else {"used": 0, "limit": getattr(model.limits, k)}
        entry["requests_today"] = entry["rpd"].get("used", 0)
        entry["tokens_today"] = entry["tpd"].get("used", 0)
        entry["limit_rpm"] = model.limits.rpm
        entry["limit_rpd"] = model.limits.rpd
        if isinstance(mu, dict) and "remaining_reported" in mu:
            entry["remaining_reported"] = mu["remaining_reported"]
        models_out[model.id] = entry
    for model, count in stats["by_model"].items():
        models_out.setdefault(
            model, {"requests": count, "tokens": stats["tokens_by_model"].get(model, 0)}
        )

    cache = engine.cache.stats() if engine.cache is not None else {}
    learning: dict[str, Any] = {}
    if engine.learner is not None:
        try:
            learning = engine.learner.top_recommendations()
        except Exception as exc:
            logger.warning("learning summary unavailable: %s", exc)

    alerts: list[dict[str, Any]] = []
    try:
        alerts = [a if isinstance(a, dict) else _alert_dict(a) for a in engine.quota.active_alerts()]
    except Exception as exc:
        logger.warning("alerts unavailable: %s", exc)

    return {
        "api_keys": {
            "total": len(keys_out),
            "healthy": sum(1 for k in keys_out if k["health"] == "healthy"),
            "keys": keys_out,
            # The original plan's list shape.
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
        "performance": {
            "avg_latency_ms": stats["avg_latency_ms"],
            "p50_latency_ms": stats["p50_latency_ms"],
            "p95_latency_ms": stats["p95_latency_ms"],
            "requests_today": stats["requests"],
            "success_rate": stats["success_rate"],
            "cache_hits": stats["cache_hits"],
            "upstream_calls": stats["upstream_calls"],
            "rate_limited_received": stats["rate_limited_received"],
            "rate_limited_avoided": stats["rate_limited_avoided"],
            "fallback_used": stats["fallback_used"],
            "errors": stats["errors"],
            "by_key": stats["by_key"],
        },
        "learning": learning,
        "alerts": alerts,
    }


def _alert_dict(alert: Any) -> dict[str, Any]:
    if hasattr(alert, "_asdict"):
        return dict(alert._asdict())
    if hasattr(alert, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(alert)
    return {"level": getattr(alert, "level", "warning"), "message": str(alert)}
