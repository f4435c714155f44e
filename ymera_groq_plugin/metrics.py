"""Prometheus metrics: the monitoring snapshot as a `prometheus_client` collector.

Needs the `prometheus` extra (`pip install 'ymera-groq-plugin[prometheus]'`).

```python
from ymera_groq_plugin import Engine
from ymera_groq_plugin.metrics import serve_metrics

server = serve_metrics(Engine.shared(), port=9464)   # GET http://127.0.0.1:9464/metrics
```

Every scrape takes a fresh snapshot (`ymera_groq_plugin.monitor`), so the numbers are the
same ones `ymera-groq status` shows. With Redis the default view is the fleet's: counters are
the sum of every process's published counters, quota and key health come from the shared
store. Serve it from **one** place per fleet (a sidecar running `ymera-groq metrics --serve`,
or one worker), or pass `fleet=False` in every worker and let Prometheus add them up; doing
both counts every request twice.

Metric families (all prefixed `ymera_`):

| name | type | labels |
|---|---|---|
| `requests_total`, `requests_failed_total`, `upstream_calls_total` | counter | |
| `rate_limited_received_total` (429s from Groq), `rate_limited_avoided_total` | counter | |
| `fallback_requests_total` | counter | |
| `cache_hits_total`, `cache_misses_total` | counter | `tier` |
| `model_requests_total`, `model_tokens_total` | counter | `model` |
| `key_requests_total` | counter | `key` (label) |
| `errors_total` | counter | `type` |
| `request_latency_seconds` | histogram | |
| `request_latency_recent_seconds` | gauge | `quantile` (0.5, 0.95, recent requests) |
| `cache_entries`, `cache_hit_ratio` | gauge | `tier` |
| `quota_used`, `quota_limit` | gauge | `org`, `model`, `kind` (rpm/rpd/tpm/tpd) |
| `quota_utilisation_ratio` | gauge | `key`, `org`, `model`, `kind` |
| `model_quota_utilisation_ratio` | gauge | `model`, `kind` (all organisations) |
| `quota_remaining_reported` | gauge | `org`, `model`, `unit` (requests/day, tokens/minute) |
| `key_health` | gauge (one-hot) | `key`, `org`, `state` |
| `keys` | gauge | `state` |
| `alerts_active` | gauge | `level` |
| `success_ratio`, `processes` | gauge | |

Keys appear by label only, never by secret.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .monitor import build_snapshot
from .storage.quota_base import KINDS

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from .engine import Engine

__all__ = [
    "MetricsServer",
    "YmeraCollector",
    "ametrics_text",
    "families",
    "metrics_text",
    "registry_for",
    "serve_metrics",
]

_HEALTH_STATES = ("healthy", "cooling", "degraded", "disabled")
_LEVELS = ("warning", "critical", "emergency")


def _prometheus() -> ModuleType:
    try:
        import prometheus_client
        import prometheus_client.core
    except ImportError:
        raise ConfigurationError(
            "Prometheus metrics need the prometheus extra: install `ymera-groq-plugin[prometheus]`"
        ) from None
    return prometheus_client


class YmeraCollector:
    """A `prometheus_client` collector that reads the engine's snapshot at every scrape.

    Args:
        engine: The engine to expose.
        fleet: Add up every process's counters (default: when Redis is configured).
    """

    def __init__(self, engine: Engine, *, fleet: bool | None = None) -> None:
        _prometheus()
        self.engine = engine
        self.fleet = fleet

    def collect(self) -> Iterator[Metric]:
        # Scrapes arrive on the HTTP server's threads, never on the portal: block for it.
        snapshot = self.engine.portal.run(build_snapshot(self.engine, fleet=self.fleet))
        yield from families(snapshot)

    def __repr__(self) -> str:
        return f"<YmeraCollector {self.engine!r} fleet={self.fleet}>"


class _Fixed:
    """A collector over one snapshot already taken (for async callers)."""

    def __init__(self, snapshot: Mapping[str, Any]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from families(self.snapshot)


def registry_for(engine: Engine, *, fleet: bool | None = None) -> CollectorRegistry:
    """A fresh registry holding only this engine's collector (not the global one)."""
    prom = _prometheus()
    registry: CollectorRegistry = prom.CollectorRegistry(auto_describe=False)
    registry.register(YmeraCollector(engine, fleet=fleet))
    return registry


def metrics_text(engine: Engine, *, fleet: bool | None = None) -> str:
    """The Prometheus text exposition of the engine's metrics (from sync code)."""
    prom = _prometheus()
    text: bytes = prom.generate_latest(registry_for(engine, fleet=fleet))
    return text.decode()


async def ametrics_text(engine: Engine, *, fleet: bool | None = None) -> str:
    """`metrics_text` from async code (any event loop)."""
    prom = _prometheus()
    snapshot = await engine.portal.arun(build_snapshot(engine, fleet=fleet))
    registry = prom.CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(snapshot))
    text: bytes = prom.generate_latest(registry)
    return text.decode()


class MetricsServer:
    """A running `/metrics` endpoint; `close()` stops it.

    Attributes:
        host: The address it listens on.
        port: The bound port (useful when 0 was asked for).
    """

    def __init__(self, server: WSGIServer, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port: int = server.server_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and join the thread (idempotent)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url}>"


def serve_metrics(
    engine: Engine, port: int = 9464, *, addr: str = "127.0.0.1", fleet: bool | None = None
) -> MetricsServer:
    """Serve the engine's metrics over HTTP in a background thread.

    Args:
        engine: The engine to expose.
        port: The port (0 picks a free one; see `MetricsServer.port`).
        addr: The address to bind (loopback by default; `0.0.0.0` for a scraper elsewhere).
        fleet: Add up every process's counters (default: when Redis is configured).

    Raises:
        ConfigurationError: `prometheus-client` is not installed.
        OSError: The port is taken.
    """
    prom = _prometheus()
    registry = registry_for(engine, fleet=fleet)
    server, thread = prom.start_http_server(port, addr=addr, registry=registry)
    return MetricsServer(server, thread, addr)


# -- the families ---------------------------------------------------------------------------


def families(snapshot: Mapping[str, Any]) -> list[Metric]:
    """The metric families of one monitoring snapshot."""
    core = _prometheus().core
    counter, gauge = core.CounterMetricFamily, core.GaugeMetricFamily
    out: list[Metric] = []
    totals: Mapping[str, Any] = snapshot.get("totals") or {}
    perf: Mapping[str, Any] = snapshot.get("performance") or {}

    for name, doc, key in (
        ("ymera_requests", "Requests answered, cache hits included.", "requests"),
        ("ymera_requests_failed", "Requests that ended in an error.", "failed"),
        ("ymera_upstream_calls", "Calls sent to Groq.", "upstream_calls"),
        ("ymera_rate_limited_received", "429 answers received from Groq.", "rate_limited_received"),
        (
            "ymera_rate_limited_avoided",
            "Requests that waited for quota instead of running into a 429.",
            "rate_limited_avoided",
        ),
        ("ymera_fallback_requests", "Requests served by a fallback provider.", "fallback_used"),
    ):
        out.append(counter(name, doc, value=_num(totals.get(key))))

    hits = counter("ymera_cache_hits", "Cache hits per tier.", labels=["tier"])
    misses = counter(
        "ymera_cache_misses", "Lookups that reached a tier and missed.", labels=["tier"]
    )
    for tier, c in sorted((totals.get("cache") or {}).items()):
        hits.add_metric([tier], _num(c.get("hits")))
        misses.add_metric([tier], _num(c.get("misses")))
    out += [hits, misses]

    out.append(
        _labelled(
            counter,
            "ymera_model_requests",
            "Groq answers per model.",
            "model",
            totals.get("by_model"),
        )
    )
    out.append(
        _labelled(
            counter,
            "ymera_model_tokens",
            "Tokens (prompt + completion) per model.",
            "model",
            totals.get("tokens_by_model"),
        )
    )
    out.append(
        _labelled(
            counter, "ymera_key_requests", "Groq calls per key label.", "key", totals.get("by_key")
        )
    )
    out.append(
        _labelled(
            counter, "ymera_errors", "Failed requests by error type.", "type", totals.get("errors")
        )
    )

    hist = totals.get("latency_histogram") or perf.get("latency_histogram") or {}
    buckets: list[tuple[str, float]] = []
    running = 0
    counts = list(hist.get("counts") or [])
    for bound, n in zip(hist.get("bounds_ms") or [], counts, strict=False):
        running += int(n)
        buckets.append((_le(bound / 1000), running))
    buckets.append(("+Inf", int(hist.get("count", running))))
    out.append(
        core.HistogramMetricFamily(
            "ymera_request_latency_seconds",
            "Time to answer a request that was not an in-process cache hit.",
            buckets=buckets,
            sum_value=_num(hist.get("sum_ms")) / 1000,
        )
    )
    recent = gauge(
        "ymera_request_latency_recent_seconds",
        "Latency quantiles over recent requests (each process's last 512).",
        labels=["quantile"],
    )
    recent.add_metric(["0.5"], _num(perf.get("p50_latency_ms")) / 1000)
    recent.add_metric(["0.95"], _num(perf.get("p95_latency_ms")) / 1000)
    out.append(recent)

    cache = snapshot.get("cache") or {}
    entries = gauge("ymera_cache_entries", "Entries per cache tier.", labels=["tier"])
    ratio = gauge("ymera_cache_hit_ratio", "Hit rate per tier today.", labels=["tier"])
    for tier in ("l1", "l2", "l3", "total"):
        c = cache.get(tier)
        if isinstance(c, Mapping):
            entries.add_metric([tier], _num(c.get("size")))
            ratio.add_metric([tier], _num(c.get("hit_rate")))
    out += [entries, ratio]

    keys = (snapshot.get("api_keys") or {}).get("keys") or []
    used = gauge(
        "ymera_quota_used",
        "Consumed plus reserved, per organisation, model and limit.",
        labels=["org", "model", "kind"],
    )
    limit = gauge("ymera_quota_limit", "The limit in force.", labels=["org", "model", "kind"])
    util = gauge(
        "ymera_quota_utilisation_ratio",
        "Share of a limit used, per key and model.",
        labels=["key", "org", "model", "kind"],
    )
    health = gauge(
        "ymera_key_health", "1 for the key's current state.", labels=["key", "org", "state"]
    )
    by_state = dict.fromkeys(_HEALTH_STATES, 0)
    seen_orgs: set[tuple[str, str]] = set()
    for k in keys:
        label, org = str(k.get("label")), str(k.get("org"))
        state = str(k.get("health"))
        by_state[state] = by_state.get(state, 0) + 1
        for s in sorted({*_HEALTH_STATES, state}):
            health.add_metric([label, org, s], 1.0 if s == state else 0.0)
        for model, kinds in sorted((k.get("models") or {}).items()):
            for kind in KINDS:
                v = kinds.get(kind) or {}
                lim = v.get("limit")
                if lim:
                    util.add_metric([label, org, model, kind], _num(v.get("used")) / lim)
                if (org, model) not in seen_orgs:
                    used.add_metric([org, model, kind], _num(v.get("used")))
                    if lim:
                        limit.add_metric([org, model, kind], float(lim))
            seen_orgs.add((org, model))
    keys_g = gauge("ymera_keys", "Configured keys by health.", labels=["state"])
    for state, n in sorted(by_state.items()):
        keys_g.add_metric([state], float(n))
    out += [used, limit, util, health, keys_g]

    model_util = gauge(
        "ymera_model_quota_utilisation_ratio",
        "Share of a model's limit used over every organisation.",
        labels=["model", "kind"],
    )
    remaining = gauge(
        "ymera_quota_remaining_reported",
        "What Groq's headers last said remains (requests/day, tokens/minute).",
        labels=["org", "model", "unit"],
    )
    for model, m in sorted((snapshot.get("models") or {}).items()):
        for kind in KINDS:
            v = m.get(kind) or {}
            if v.get("limit"):
                model_util.add_metric([model, kind], _num(v.get("used")) / v["limit"])
        for org, r in sorted((m.get("remaining_reported") or {}).items()):
            for unit, field in (("requests", "requests"), ("tokens", "tokens")):
                if r.get(field) is not None:
                    remaining.add_metric([org, model, unit], _num(r.get(field)))
    out += [model_util, remaining]

    alerts = gauge("ymera_alerts_active", "Active alerts by level.", labels=["level"])
    levels = dict.fromkeys(_LEVELS, 0)
    for a in snapshot.get("alerts") or []:
        lv = str(a.get("level"))
        levels[lv] = levels.get(lv, 0) + 1
    for lv, n in sorted(levels.items()):
        alerts.add_metric([lv], float(n))
    out.append(alerts)
    out.append(
        gauge(
            "ymera_success_ratio",
            "Share of today's requests that succeeded.",
            value=_num(perf.get("success_rate")),
        )
    )
    out.append(
        gauge(
            "ymera_processes",
            "Processes whose counters are included today.",
            value=_num(perf.get("processes")),
        )
    )
    return out


def _labelled(
    family: Any, name: str, doc: str, label: str, values: Mapping[str, Any] | None
) -> Metric:
    metric: Metric = family(name, doc, labels=[label])
    for key, value in sorted((values or {}).items()):
        metric.add_metric([str(key)], _num(value))  # type: ignore[attr-defined]
    return metric


def _le(seconds: float) -> str:
    return f"{seconds:g}"


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value)
