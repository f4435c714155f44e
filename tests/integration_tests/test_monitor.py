"""Monitoring: the fleet's snapshot over Redis, alert crossings, the day boundary, and the
Prometheus endpoint, against the local Groq server and a real redis-server."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ymera_groq_plugin.catalog import default_catalog
from ymera_groq_plugin.chat_models import ChatYmeraGroq
from ymera_groq_plugin.config import YmeraSettings
from ymera_groq_plugin.engine import Engine
from ymera_groq_plugin.metrics import ametrics_text, serve_metrics
from ymera_groq_plugin.monitor import FleetStore, attach, build_snapshot, monitor_for
from ymera_groq_plugin.testing import FakeClock, GroqTestServer
from ymera_groq_plugin.types import Usage

KEYS = {
    "gsk_monitor_alpha_000000000000000a1": "org_alpha",
    "gsk_monitor_beta_0000000000000000b2": "org_beta",
}
MODEL = "openai/gpt-oss-20b"


def key_config() -> list[dict[str, str]]:
    return [
        {"secret": secret, "org": org, "label": org.removeprefix("org_")}
        for secret, org in KEYS.items()
    ]


@pytest.fixture
def groq() -> Iterator[GroqTestServer]:
    with GroqTestServer(KEYS) as server:
        yield server


# -- two processes, one Redis, a third view ---------------------------------------------------

WORKER = textwrap.dedent(
    """
    import json, sys
    from ymera_groq_plugin import ChatYmeraGroq, YmeraSettings
    from ymera_groq_plugin.monitor import attach

    config, index, n = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    llm = ChatYmeraGroq(settings=YmeraSettings(**config), temperature=0, agent_name="validator")
    monitor = attach(llm.engine)
    for i in range(n):
        llm.invoke(f"Validate this order record: id={index}-{i}, quantity=3, currency=EUR")
    llm.invoke("Validate this order record: id=0-0, quantity=3, currency=EUR")  # a repeat
    monitor.close()
    llm.engine.close()
    """
)


@pytest.mark.redis
def test_a_third_process_sees_both_workers(
    redis_url: str, groq: GroqTestServer, tmp_path: Path
) -> None:
    n = 6
    config = {
        "api_keys": key_config(),
        "base_url": groq.base_url,
        "redis_url": redis_url,
        "data_dir": str(tmp_path),
        "namespace": "fleet-test",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps(config), str(i), str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()

    viewer = Engine(YmeraSettings(**config))
    try:
        snap = viewer.snapshot()
        local = viewer.portal.run(build_snapshot(viewer, fleet=False))
    finally:
        monitor_for(viewer).close()
        viewer.close()

    server = groq.stats()
    calls = server.by_status.get(200, 0)
    per_model: dict[str, int] = {}
    for (_, model), s in server.by_org_model.items():
        per_model[model] = per_model.get(model, 0) + s.requests
    assert server.by_status.get(429, 0) == 0

    assert snap["scope"] == "fleet" and snap["mode"] == "redis"
    perf = snap["performance"]
    assert perf["processes"] == 2
    assert perf["requests_today"] == perf["succeeded"] == 2 * (n + 1)
    assert perf["upstream_calls"] == calls == sum(perf["by_key"].values())
    assert perf["cache_hits"] == 2 * (n + 1) - calls >= 1  # the repeat, at least
    assert perf["p95_latency_ms"] >= perf["p50_latency_ms"] > 0
    # Every request that went past the in-process cache is timed (a lower-tier hit found
    # while coalescing too), each exactly once, in one of the two workers.
    assert calls <= perf["latency_histogram"]["count"] <= 2 * (n + 1) - 1
    # The ledger is the shared one: what Groq admitted, per model, whoever sent it.
    for model, count in per_model.items():
        entry = snap["models"][model]
        assert entry["requests"] == count
        assert entry["requests_today"] == entry["rpd"]["used"] == count
        assert entry["rpd"]["limit"] == 2 * default_catalog().get(model).limits.rpd
        assert set(entry["remaining_reported"]) <= {"org_alpha", "org_beta"}
    keys = snap["api_keys"]
    assert keys["total"] == keys["healthy"] == 2
    assert sum(k["usage"]["rpd"]["used"] for k in keys["keys"]) == calls
    assert {u["org"] for u in keys["usage"]} == {"org_alpha", "org_beta"}
    cache = snap["cache"]
    # 2n distinct prompts; the repeat is a cache hit in worker 0 and, unless it arrived before
    # worker 0's answer was stored, in worker 1 as well.
    assert calls in (2 * n, 2 * n + 1)
    assert cache["l2"]["enabled"] and cache["l2"]["size"] == 2 * n
    assert cache["total"]["hits"] == perf["cache_hits"]
    assert "validator:validation" in snap["learning"]
    assert snap["learning"]["validator:validation"]["model"] in per_model
    assert snap["problems"] == []
    assert snap["totals"]["requests"] == 2 * (n + 1)

    # This process served nothing: its own counters are empty, the shared ledger is not.
    assert local["scope"] == "process" and local["performance"]["requests_today"] == 0

    def rpd(view: dict[str, Any]) -> list[tuple[str, str, float]]:
        return [(k["label"], k["health"], k["usage"]["rpd"]["used"]) for k in view["keys"]]

    assert rpd(local["api_keys"]) == rpd(keys)
    assert snap["process"]["requests_today"] == 0


@pytest.mark.redis
async def test_records_of_silent_processes_are_dropped(redis_url: str, clock: FakeClock) -> None:
    store = FleetStore.from_url(redis_url, namespace="prune")
    try:
        old = {"updated": clock() - 2 * 86400, "day": "2020-01-01", "total": {"requests": 5}}
        await store.publish("gone:1:x", old)
        settings = YmeraSettings(
            api_keys=key_config(), redis_url=redis_url, namespace="prune", cache_enabled=False
        )
        engine = Engine(settings, clock=clock)
        snap = await engine.asnapshot()
        assert snap["totals"]["requests"] == 0
        assert await store.records() == {}
        await monitor_for(engine).aclose()
        await engine.aclose()
    finally:
        await store.aclose()


# -- alerts -------------------------------------------------------------------------------------


def test_each_threshold_alerts_once_per_crossing(tmp_path: Path, clock: FakeClock) -> None:
    catalog = default_catalog().with_overrides([{"id": MODEL, "limits": {"rpm": 20}}])
    settings = YmeraSettings(
        api_keys=key_config()[:1], data_dir=tmp_path, cache_enabled=False, base_url="http://x"
    )
    engine = Engine(settings, clock=clock, catalog=catalog)
    monitor = attach(engine)
    quota = engine.quota

    def call(times: int) -> None:
        async def go() -> None:
            for _ in range(times):
                grant = await quota.acquire(MODEL, 10)
                await quota.settle(grant, Usage(10, 5, 15), None)

        engine.portal.run(go())

    def levels() -> list[str]:
        return [a["level"] for a in monitor.recent_alerts if a["kind"] == "rpm"]

    try:
        call(15)
        assert levels() == []
        call(1)  # 16/20 = 80 %
        assert levels() == ["warning"]
        call(1)  # 85 %: nothing new
        assert levels() == ["warning"]
        call(1)  # 90 %
        assert levels() == ["warning", "critical"]
        call(1)  # 95 %
        assert levels() == ["warning", "critical", "emergency"]
        alert = monitor.recent_alerts[-1]
        assert alert["org"] == "org_alpha" and alert["model"] == MODEL and alert["limit"] == 20
        assert alert["keys"] == ["alpha"] and "EMERGENCY" in alert["message"]

        snap = engine.snapshot()
        [active] = [a for a in snap["alerts"] if a["kind"] == "rpm"]
        assert active["level"] == "emergency" and active["fraction"] == 0.95
        assert active["used"] == 19 and active["limit"] == 20 and active["keys"] == ["alpha"]
        assert [a["level"] for a in snap["recent_alerts"]] == levels()

        clock.advance(60)  # the minute bucket refills: nothing is active any more
        assert [a for a in engine.snapshot()["alerts"] if a["kind"] == "rpm"] == []
        call(16)  # the next crossing alerts again
        assert levels() == ["warning", "critical", "emergency", "warning"]
    finally:
        monitor.close()
        engine.close()


# -- the day boundary ---------------------------------------------------------------------------


def test_requests_today_start_again_at_utc_midnight(tmp_path: Path, groq: GroqTestServer) -> None:
    midnight = dt.datetime(2027, 3, 1, tzinfo=dt.UTC).timestamp()
    clock = FakeClock(midnight - 30)
    settings = YmeraSettings(api_keys=key_config(), base_url=groq.base_url, data_dir=tmp_path)
    engine = Engine(settings, clock=clock)
    llm = ChatYmeraGroq(engine=engine, temperature=0)
    monitor = attach(engine)
    try:
        for i in range(3):
            llm.invoke(f"Validate record {i}")
        first = monitor.record()
        assert first["day"] == "2027-02-28" and first["today"]["requests"] == 3
        clock.advance(60)
        llm.invoke("Validate record 3")
        second = monitor.record()
        assert second["day"] == "2027-03-01"
        assert second["total"]["requests"] == 4
        # Counted from the first look after midnight: the 4th request came before it.
        assert second["today"]["requests"] == 0
        llm.invoke("Validate record 4")
        assert monitor.record()["today"]["requests"] == 1
        assert engine.snapshot()["performance"]["requests_today"] == 1
    finally:
        monitor.close()
        engine.close()


# -- Prometheus ---------------------------------------------------------------------------------


def test_metrics_endpoint_serves_the_snapshot(tmp_path: Path, groq: GroqTestServer) -> None:
    settings = YmeraSettings(api_keys=key_config(), base_url=groq.base_url, data_dir=tmp_path)
    engine = Engine(settings)
    llm = ChatYmeraGroq(engine=engine, temperature=0)
    attach(engine)
    try:
        for i in range(4):
            llm.invoke(f"Validate record {i % 2}")
        with serve_metrics(engine, 0) as server:
            response = httpx.get(server.url, timeout=10)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        text = response.text
        for secret in KEYS:
            assert secret not in text

        families = {f.name: f for f in text_string_to_metric_families(text)}
        expected = {
            "ymera_requests",
            "ymera_upstream_calls",
            "ymera_rate_limited_received",
            "ymera_rate_limited_avoided",
            "ymera_cache_hits",
            "ymera_model_requests",
            "ymera_model_tokens",
            "ymera_request_latency_seconds",
            "ymera_quota_utilisation_ratio",
            "ymera_model_quota_utilisation_ratio",
            "ymera_quota_used",
            "ymera_quota_limit",
            "ymera_key_health",
            "ymera_alerts_active",
            "ymera_cache_entries",
        }
        assert expected <= set(families)

        def value(name: str, **labels: str) -> float:
            return next(
                s.value
                for s in families[name].samples
                if all(s.labels.get(k) == v for k, v in labels.items())
                and not s.name.endswith("_created")
            )

        assert value("ymera_requests") == 4
        assert value("ymera_upstream_calls") == 2 == groq.stats().by_status[200]
        assert value("ymera_rate_limited_received") == 0
        assert value("ymera_cache_hits", tier="l1") == 2
        assert value("ymera_model_requests", model=MODEL) == 2
        assert value("ymera_key_health", key="alpha", state="healthy") == 1
        assert value("ymera_key_health", key="alpha", state="disabled") == 0
        assert 0 < value("ymera_quota_utilisation_ratio", model=MODEL, kind="rpm") <= 1
        latency = [s for s in families["ymera_request_latency_seconds"].samples]
        count = next(s.value for s in latency if s.name.endswith("_count"))
        inf = next(s.value for s in latency if s.labels.get("le") == "+Inf")
        assert count == inf == 2
    finally:
        monitor_for(engine).close()
        engine.close()


async def test_async_exposition_matches(tmp_path: Path, groq: GroqTestServer) -> None:
    settings = YmeraSettings(api_keys=key_config(), base_url=groq.base_url, data_dir=tmp_path)
    engine = Engine(settings)
    llm = ChatYmeraGroq(engine=engine, temperature=0)
    try:
        await llm.ainvoke("Validate record 1")
        text = await ametrics_text(engine)
        samples: dict[str, Any] = {
            s.name: s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if not s.labels
        }
        assert samples["ymera_requests_total"] == 1
        assert samples["ymera_processes"] == 1
    finally:
        await monitor_for(engine).aclose()
        await engine.aclose()


# -- a store outage -----------------------------------------------------------------------------


@pytest.mark.redis
def test_snapshot_survives_a_redis_outage(
    redis_server: Any, redis_url: str, groq: GroqTestServer, tmp_path: Path
) -> None:
    settings = YmeraSettings(
        api_keys=key_config(), base_url=groq.base_url, redis_url=redis_url, data_dir=tmp_path
    )
    engine = Engine(settings)
    llm = ChatYmeraGroq(engine=engine, temperature=0)
    monitor = attach(engine)
    try:
        llm.invoke("Validate record 1")
        assert engine.snapshot()["scope"] == "fleet"
        redis_server.stop()
        snap = engine.snapshot()
        # This process's own counters, and the reason the fleet's are missing.
        assert snap["scope"] == "process"
        assert snap["performance"]["requests_today"] == 1
        assert any("fleet counters unavailable" in p for p in snap["problems"])
        assert snap["api_keys"]["total"] == 2
    finally:
        monitor.close()
        engine.close()
        redis_server.start()
