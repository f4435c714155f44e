"""What a quota decision costs on a Redis Cluster and behind Sentinel, beside one Redis.

Run: `python benchmarks/bench_cluster.py` (starts its own redis-server, a 3-primary cluster
and a Sentinel group from the same binary; no network, no keys).

For each deployment, measured in the same run on the same machine:

- `reserve+settle`: the bare `RedisQuotaStore` calls (one Lua script each) for one
  (organisation, model), median and 99th percentile of single calls, and the best-of mean;
- `acquire+settle`: `QuotaManager.acquire` (choose the organisation with most headroom and
  reserve all four limits) plus `settle` with Groq's headers folded in, best-of mean;
- round trips the client sent per reserve+settle (`EVALSHA` and any other command, counted by
  every primary's `INFO commandstats`, so a retry would show), and of those, how many a node
  refused before running them (`rejected_calls`: a `MOVED`/`ASK` redirection, a `NOSCRIPT`);
- throughput with 32 concurrent reserve+settle pairs over 12 (organisation, model) pairs.

Ratios are against the single Redis, the alternative a user would otherwise keep.
"""

from __future__ import annotations

import asyncio
import gc
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis
from pydantic import SecretStr

from ymera_groq_plugin.catalog import load_catalog
from ymera_groq_plugin.config import ApiKey
from ymera_groq_plugin.quota import QuotaManager
from ymera_groq_plugin.storage.redis_quota import RedisKeyStateStore, RedisQuotaStore
from ymera_groq_plugin.testing import RedisServer
from ymera_groq_plugin.testing.redis_topologies import RedisClusterServer, RedisSentinelServer
from ymera_groq_plugin.types import RateLimits, Usage

MODEL = "openai/gpt-oss-20b"
USAGE = Usage(prompt_tokens=20, completion_tokens=12, total_tokens=32)
HEADERS = RateLimits(
    limit_requests=10**9,
    remaining_requests=10**9 - 1,
    reset_requests=0.1,
    limit_tokens=10**9,
    remaining_tokens=10**9 - 20,
    reset_tokens=0.1,
)
LIMITS = (10**9, 10**9, 10**9, 10**9)
REPEATS = 7
N = 300
SAMPLES = 2000
CONCURRENCY = 32


def _catalog() -> Any:
    big = {"rpm": 10**9, "rpd": 10**9, "tpm": 10**9, "tpd": 10**9}
    return load_catalog(overrides=[{"id": MODEL, "limits": big}])


def _keys() -> list[ApiKey]:
    return [
        ApiKey(secret=SecretStr(f"gsk_clusterbenchkeyxxxxxxx{n:04d}"), label=f"key{n}")
        for n in range(1, 4)
    ]


async def _best_of(n: int, body: Callable[[], Awaitable[None]], repeats: int = REPEATS) -> float:
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        for _ in range(n):
            await body()
        best = min(best, (time.perf_counter() - start) / n * 1e6)
    return best


def _commands(ports: list[int], reset: bool = False) -> tuple[int, int]:
    """Commands clients sent to these servers (scripts' inner commands excluded), and how many
    of them were refused before running."""
    total = refused = 0
    for port in ports:
        client = redis.Redis(host="127.0.0.1", port=port)
        try:
            if reset:
                client.config_resetstat()
                continue
            for name, stat in client.info("commandstats").items():
                command = name.removeprefix("cmdstat_")
                # A command refused with MOVED/ASK (or NOSCRIPT) is not in `calls` but in
                # `rejected_calls`, of whatever name: without it a redirection would not show.
                refused += int(stat.get("rejected_calls", 0))
                # Commands a script runs inside Redis are counted too; the client sends only
                # EVALSHA/EVAL, SCRIPT, CLUSTER, PING and the benchmark's own INFO/CONFIG.
                if command.startswith(("evalsha", "eval", "script", "cluster", "ping")):
                    total += int(stat["calls"])
        finally:
            client.close()
    return total + refused, refused


class Target:
    """One deployment's stores and the calls the benchmark times."""

    def __init__(self, url: str, ports: Callable[[], list[int]]) -> None:
        self.url = url
        self.ports = ports
        self.store = RedisQuotaStore.from_url(url, namespace="bench")
        self.manager = QuotaManager(
            _keys(),
            _catalog(),
            quota_store=RedisQuotaStore.from_url(url, namespace="bench"),
            key_store=RedisKeyStateStore.from_url(url, namespace="bench"),
            clock=time.time,
        )
        self._ids = iter(range(10**9))
        self.pairs = [(f"org_{n % 3}", f"model-{n}") for n in range(12)]

    async def pair(self, org: str = "org_a", model: str = MODEL) -> None:
        rid = f"r{next(self._ids)}"
        now = time.time()
        await self.store.reserve(
            org,
            model,
            reservation_id=rid,
            requests=1,
            tokens=20,
            defaults=LIMITS,
            now=now,
            ttl=600.0,
        )
        await self.store.settle(
            org, model, reservation_id=rid, requests=1, tokens=32, defaults=LIMITS, now=now
        )

    async def acquire_settle(self) -> None:
        grant = await self.manager.acquire(MODEL, 20)
        await self.manager.settle(grant, USAGE, HEADERS)

    async def warm(self) -> None:
        await self.pair()  # connect, discover the slots, load the scripts
        for org, model in self.pairs:
            await self.pair(org, model)
        await self.acquire_settle()

    async def concurrent(self) -> float:
        async def lane(k: int, count: int) -> None:
            for i in range(count):
                org, model = self.pairs[(k + i) % len(self.pairs)]
                await self.pair(org, model)

        start = time.perf_counter()
        await asyncio.gather(*(lane(k, 25) for k in range(CONCURRENCY)))
        return CONCURRENCY * 25 / (time.perf_counter() - start)

    async def round_trips(self) -> tuple[float, float]:
        """Per reserve+settle: commands sent, and of those refused (redirections)."""
        _commands(self.ports(), reset=True)
        for _ in range(N):
            await self.pair()
        sent, refused = _commands(self.ports())
        return sent / N, refused / N

    async def aclose(self) -> None:
        assert await self.manager.idle()
        await self.manager.aclose()
        await self.store.aclose()


async def bench(targets: dict[str, Target]) -> dict[str, dict[str, float]]:
    """Every figure measured round-robin over the deployments, so a neighbour's load on this
    shared machine falls on all of them alike."""
    for t in targets.values():
        await t.warm()
    mean = dict.fromkeys(targets, float("inf"))
    managed = dict.fromkeys(targets, float("inf"))
    rate = dict.fromkeys(targets, 0.0)
    samples: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(REPEATS):
        for name, t in targets.items():
            mean[name] = min(mean[name], await _best_of(N, t.pair, repeats=1))
            managed[name] = min(managed[name], await _best_of(N, t.acquire_settle, repeats=1))
            rate[name] = max(rate[name], await t.concurrent())
    for _ in range(SAMPLES):
        for name, t in targets.items():
            start = time.perf_counter()
            await t.pair()
            samples[name].append((time.perf_counter() - start) * 1e6)
    out = {}
    for name, t in targets.items():
        s = sorted(samples[name])
        trips, refused = await t.round_trips()
        out[name] = {
            "reserve+settle mean": mean[name],
            "reserve+settle p50": statistics.median(s),
            "reserve+settle p99": s[int(len(s) * 0.99)],
            "round trips": trips,
            "of which refused": refused,
            "pairs/s at 32 concurrent": rate[name],
            "acquire+settle mean": managed[name],
        }
        await t.aclose()
    return out


def main() -> None:
    print(
        f"Python {sys.version.split()[0]} on {platform.machine()}, redis-py {redis.__version__}; "
        f"best of {REPEATS} x {N} for means, {SAMPLES} single calls for percentiles"
    )
    with (
        RedisServer() as single,
        RedisClusterServer(primaries=3) as cluster,
        RedisSentinelServer() as group,
    ):
        version = redis.Redis(port=single.port).info("server")["redis_version"]

        async def run() -> dict[str, dict[str, float]]:
            return await bench(
                {
                    "single Redis": Target(single.url, lambda: [single.port]),
                    "cluster (3 primaries)": Target(cluster.url, cluster.primary_ports),
                    "Sentinel (1+1)": Target(group.url, lambda: [group.master_port()]),
                }
            )

        results = asyncio.run(run())
    print(f"redis-server {version}, all on loopback\n")
    names = list(results)
    metrics = list(results[names[0]])
    print(f"{'':28}" + "".join(f"{n:>24}" for n in names))
    for metric in metrics:
        counts = ("round trips", "of which refused", "pairs/s at 32 concurrent")
        unit = "" if metric in counts else " µs"
        row = f"{metric + unit:28}"
        base = results[names[0]][metric]
        for n in names:
            value = results[n][metric]
            ratio = "" if n == names[0] or not base else f" ({value / base:.2f}x)"
            row += f"{value:>16.2f}{ratio:>8}" if n != names[0] else f"{value:>24.2f}"
        print(row)
    print("\n(x): the deployment's figure divided by the single Redis's (lower is better for")
    print("times and round trips; higher is better for pairs/s)")


if __name__ == "__main__":
    main()
