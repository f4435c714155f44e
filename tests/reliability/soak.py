"""The soak: several worker processes, one local Groq server, one Redis, thousands of requests.

Shared by `tests/reliability/test_soak.py` (a short form in CI) and `benchmarks/bench_soak.py`
(the long form). The server runs in the parent process behind a middleware that counts, per
request id, every answer it sent; each worker (a `multiprocessing` *spawn* process with its own
engine) counts, per request id, what its callers got. Then:

- **no 429**: the server never had to refuse (the workers share one quota ledger in Redis);
- **nothing lost or duplicated**: every request id a worker sent got exactly one answer, and the
  server answered it exactly once;
- **stable memory**: each worker's resident set size after a warm-up and at the end.

Time: the server's buckets and every worker's ledger run on the same scaled wall clock
(`SCALE` clock seconds per real second), so the minute limits bind within a few seconds and
the run shows the ledger holding Groq's limits under sustained load, not just a burst.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import queue
import re
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SoakConfig", "SoakReport", "run_soak"]

MODEL = "openai/gpt-oss-20b"
SCALE = 60.0
"""Clock seconds per real second: a minute window passes in one second."""
KEYS = {
    "gsk_soakaaaaaaaaaaaaaaaaaaaaa01": "org_a",
    "gsk_soakbbbbbbbbbbbbbbbbbbbbb02": "org_b",
    "gsk_soakccccccccccccccccccccc03": "org_c",
}
_RID = re.compile(r"rid=(\S+)")


@dataclass(frozen=True)
class SoakConfig:
    """One soak run.

    Attributes:
        processes: Worker processes.
        requests: Requests per worker.
        concurrency: Concurrent requests per worker.
        rpm: Requests per minute per organisation (the binding limit; three organisations).
        warmup: Requests per worker before the first memory reading.
        bounded: Size of each worker's bounded in-memory structures (L1 cache entries, recent
            executions). Small, so they are full before the warm-up ends: the defaults (10,000)
            would keep memory growing legitimately for the whole of a short run, and flat
            memory after the warm-up would show nothing.
    """

    processes: int = 3
    requests: int = 300
    concurrency: int = 12
    rpm: int = 40
    warmup: int = 50
    bounded: int = 32

    @property
    def limits(self) -> dict[str, int]:
        return {"rpm": self.rpm, "rpd": 10_000_000, "tpm": 100_000_000, "tpd": 1_000_000_000}


@dataclass
class SoakReport:
    """What one soak run measured."""

    config: SoakConfig
    elapsed: float
    sent: int
    answered: int
    errors: Counter[str]
    server_statuses: dict[int, int]
    server_refused: dict[str, int]
    lost: list[str]
    duplicated: list[str]
    unexpected: list[str]
    rss_mb: list[list[float]] = field(default_factory=list)
    """Per worker: resident MB after the warm-up, at 1/4, 1/2, 3/4 of the rest, and at the
    end."""
    per_worker: list[dict[str, Any]] = field(default_factory=list)

    def lines(self) -> list[str]:
        c = self.config
        capacity = len(KEYS) * c.rpm * (1 + self.elapsed * SCALE / 60)
        out = [
            f"soak: {c.processes} processes x {c.requests} requests "
            f"(concurrency {c.concurrency} each), {len(KEYS)} organisations at "
            f"{c.rpm} RPM ({c.rpm * SCALE / 60:.0f}/s real at x{SCALE:g} time)",
            f"  {self.answered}/{self.sent} answered in {self.elapsed:.1f} s "
            f"({self.answered / max(self.elapsed, 1e-9):.0f} req/s; "
            f"{self.answered / capacity:.0%} of what the buckets allowed)",
            f"  server: statuses {self.server_statuses}, refused {self.server_refused or 'none'}",
            f"  errors: {dict(self.errors) or 'none'}; lost {len(self.lost)}, duplicated "
            f"{len(self.duplicated)}, unknown ids {len(self.unexpected)}",
        ]
        for n, samples in enumerate(self.rss_mb):
            curve = " -> ".join(f"{x:.1f}" for x in samples)
            out.append(
                f"  worker {n}: RSS MB after warm-up, then each quarter: {curve} "
                f"({samples[-1] - samples[0]:+.1f} MB)"
            )
        return out


class _Recorder:
    """ASGI middleware counting, per request id, the statuses the server answered."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.answers: dict[str, Counter[int]] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope.get("path", "").endswith("/chat/completions"):
            await self.app(scope, receive, send)
            return
        body = bytearray()
        status = 0

        async def rx() -> Any:
            message = await receive()
            body.extend(message.get("body", b""))
            return message

        async def tx(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        await self.app(scope, rx, tx)
        try:
            content = json.loads(bytes(body))["messages"][-1]["content"]
            rid = m.group(1) if (m := _RID.search(str(content))) else "?"
        except (ValueError, KeyError, IndexError, TypeError):
            rid = "?"
        with self.lock:
            self.answers.setdefault(rid, Counter())[status] += 1


def _rss_mb() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _scaled_clock() -> float:
    return time.time() * SCALE


def _worker(
    config: SoakConfig, base_url: str, redis_url: str, index: int, barrier: Any, results: Any
) -> None:
    try:
        results.put(asyncio.run(_work(config, base_url, redis_url, index, barrier)))
    except BaseException as exc:  # reported to the parent, which fails the run
        results.put({"index": index, "crash": f"{type(exc).__name__}: {exc}"})


async def _work(
    config: SoakConfig, base_url: str, redis_url: str, index: int, barrier: Any
) -> dict[str, Any]:
    from pydantic import SecretStr

    from ymera_groq_plugin.catalog import load_catalog
    from ymera_groq_plugin.config import ApiKey, YmeraSettings
    from ymera_groq_plugin.engine import Engine
    from ymera_groq_plugin.types import ChatRequest

    catalog = load_catalog(overrides=[{"id": MODEL, "limits": config.limits, "fallbacks": []}])
    with tempfile.TemporaryDirectory(prefix=f"ymera-soak-{index}-") as data_dir:
        settings = YmeraSettings(
            api_keys=[
                ApiKey(secret=SecretStr(secret), label=f"key{n}", org=org)
                for n, (secret, org) in enumerate(KEYS.items(), start=1)
            ],
            base_url=base_url,
            redis_url=redis_url,
            data_dir=Path(data_dir),
            namespace="soak",
            # Clock seconds (x SCALE): a long wait for quota, in real time about 10 s.
            max_wait=600,
            request_timeout=30,
            cache_l1_max_entries=config.bounded,
            learning_recent_max=config.bounded,
        )
        engine = Engine(settings, catalog=catalog, clock=_scaled_clock)
        answered: dict[str, int] = {}
        errors: Counter[str] = Counter()
        counter = iter(range(config.requests))
        rss: list[float] = []

        async def one(i: int) -> None:
            rid = f"p{index}-{i:05d}"
            req = ChatRequest(
                messages=({"role": "user", "content": f"rid={rid} summarise item {i}"},),
                model=MODEL,
                params={"temperature": 0, "max_tokens": 24},
                request_id=rid,
            )
            try:
                result = await engine.ainvoke(req)
            except Exception as exc:
                errors[type(exc).__name__] += 1
                return
            answered[rid] = answered.get(rid, 0) + (1 if result.content else 0)

        marks = {config.warmup} | {
            config.warmup + (config.requests - config.warmup) * k // 4 for k in (1, 2, 3)
        }

        async def lane() -> None:
            for i in counter:
                await one(i)
                if i in marks:
                    rss.append(_rss_mb())

        await engine.astart()
        await asyncio.to_thread(barrier.wait, 120)
        started = time.monotonic()
        await asyncio.gather(*(lane() for _ in range(config.concurrency)))
        elapsed = time.monotonic() - started
        idle = await engine.portal.arun(engine.quota.idle())
        await engine.aclose()
        rss.append(_rss_mb())
        return {
            "index": index,
            "answered": answered,
            "errors": dict(errors),
            "elapsed": elapsed,
            "rss": rss,
            "idle": idle,
            "stats": engine.stats.as_dict(),
        }


def run_soak(config: SoakConfig, redis_url: str, *, timeout: float = 600) -> SoakReport:
    """Run one soak against a local server started here and the Redis at `redis_url`."""
    from ymera_groq_plugin.testing.server import GroqTestServer

    ctx = multiprocessing.get_context("spawn")
    server = GroqTestServer(
        KEYS, limits={MODEL: config.limits}, clock=time.time, time_scale=SCALE
    )
    recorder = _Recorder(server.app)
    server.app = recorder  # type: ignore[assignment]
    with server:
        barrier = ctx.Barrier(config.processes + 1)
        results = ctx.Queue()
        procs = [
            ctx.Process(
                target=_worker,
                args=(config, server.base_url, redis_url, n, barrier, results),
                daemon=True,
            )
            for n in range(config.processes)
        ]
        for p in procs:
            p.start()
        collected: list[dict[str, Any]] = []
        try:
            barrier.wait(120)
            started = time.monotonic()
            for _ in procs:
                collected.append(results.get(timeout=timeout))
            elapsed = time.monotonic() - started
        except (queue.Empty, threading.BrokenBarrierError) as exc:
            raise RuntimeError(f"a soak worker did not finish: {exc!r}") from exc
        finally:
            for p in procs:
                p.join(timeout=30)
                if p.is_alive():
                    p.kill()
        stats = server.stats()
    crashes = [c["crash"] for c in collected if "crash" in c]
    if crashes:
        raise RuntimeError(f"soak workers crashed: {crashes}")
    collected.sort(key=lambda c: c["index"])
    return _report(config, elapsed, collected, recorder.answers, stats)


def _report(
    config: SoakConfig,
    elapsed: float,
    collected: list[dict[str, Any]],
    answers: Mapping[str, Counter[int]],
    stats: Any,
) -> SoakReport:
    sent = {f"p{c['index']}-{i:05d}" for c in collected for i in range(config.requests)}
    client_ok: dict[str, int] = {}
    errors: Counter[str] = Counter()
    for c in collected:
        client_ok.update(c["answered"])
        errors.update(c["errors"])
    lost, duplicated = [], []
    for rid in sorted(sent):
        served = answers.get(rid, Counter()).get(200, 0)
        if client_ok.get(rid, 0) != 1 or served == 0:
            lost.append(rid)
        elif served > 1:
            duplicated.append(rid)
    unexpected = sorted(set(answers) - sent)
    return SoakReport(
        config=config,
        elapsed=elapsed,
        sent=len(sent),
        answered=sum(1 for v in client_ok.values() if v == 1),
        errors=errors,
        server_statuses=dict(stats.by_status),
        server_refused=dict(stats.rate_limited),
        lost=lost,
        duplicated=duplicated,
        unexpected=unexpected,
        rss_mb=[list(c["rss"]) for c in collected],
        per_worker=[{k: c[k] for k in ("index", "elapsed", "idle", "stats")} for c in collected],
    )


def main() -> None:  # pragma: no cover - the benchmark's entry point calls run_soak itself
    """Run a soak against `REDIS_URL` (or a redis-server started here) and print it."""
    from ymera_groq_plugin.testing import RedisServer

    url = os.environ.get("REDIS_URL")
    server = None if url else RedisServer().start()
    try:
        report = run_soak(SoakConfig(), url or server.url)  # type: ignore[union-attr]
    finally:
        if server is not None:
            server.close()
    print("\n".join(report.lines()))
