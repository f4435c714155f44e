"""Cache hit latency: the three tiers beside LangChain's own caches, measured in one run.

Run: `python benchmarks/bench_cache.py` (starts its own redis-server; no network).

What is compared (all are cache *hits*, the value already stored):

- `InMemoryCache`: `langchain_core.caches.InMemoryCache.lookup(prompt, llm_string)`, the
  baseline every ratio is against.
- `SQLite (LangChain-style)`: `langchain_community.cache.SQLiteCache` is not installed here
  (no `langchain_community`, no SQLAlchemy), so this is the closest equivalent a user would
  pick: the same table layout (`prompt, llm, idx, response`), one row per generation holding
  `langchain_core.load.dumps(generation)`, revived with `loads`, through the stdlib `sqlite3`
  driver. The real SQLiteCache adds an SQLAlchemy session per call, so it is slower still.
- TieredCache L1 / L2 / L3 through the same `BaseCache.lookup(prompt, llm_string)`. The L2
  and L3 rows use a cache whose faster tiers are absent, so every lookup is answered by that
  tier (Redis round trip or SQLite read, through the portal thread, plus JSON decoding).
- The engine's path: `TieredCache.get_l1(request)` (hashes the request, then the L1 probe),
  and `aget_result` answered by L2 / L3.
- End to end: a LangChain chat model's `invoke` answered from the cache (`cache=` on a
  `FakeListChatModel`), which is what a user of either cache actually waits for.

Each fast figure is the best of several timed loops (`timeit`); the slow ones (L2, L3, SQLite)
are medians of single timed calls. Ratios are latency / InMemoryCache latency (< 1 is faster).
"""

from __future__ import annotations

import asyncio
import gc
import json
import sqlite3
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from langchain_core._api import suppress_langchain_beta_warning
from langchain_core.caches import RETURN_VAL_TYPE, BaseCache, InMemoryCache
from langchain_core.language_models import FakeListChatModel
from langchain_core.load import dumps, loads
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, Generation

from ymera_groq_plugin.cache import LRUCache, TieredCache
from ymera_groq_plugin.storage.redis_cache import RedisCacheStore
from ymera_groq_plugin.storage.sqlite_cache import SqliteCacheStore
from ymera_groq_plugin.testing import RedisServer
from ymera_groq_plugin.types import ChatRequest, ChatResult, Usage

_LC_ALLOWED = [Generation, ChatGeneration, AIMessage]


class LangChainStyleSQLiteCache(BaseCache):
    """`langchain_community.cache.SQLiteCache`'s storage, on stdlib `sqlite3`."""

    def __init__(self, path: str) -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS full_llm_cache (prompt TEXT, llm TEXT, idx INTEGER, "
            "response TEXT, PRIMARY KEY (prompt, llm, idx))"
        )

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        rows = self._conn.execute(
            "SELECT response FROM full_llm_cache WHERE prompt = ? AND llm = ? ORDER BY idx",
            (prompt, llm_string),
        ).fetchall()
        if not rows:
            return None
        with suppress_langchain_beta_warning():
            return [loads(r[0], allowed_objects=_LC_ALLOWED) for r in rows]

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        for i, gen in enumerate(return_val):
            self._conn.execute(
                "INSERT OR REPLACE INTO full_llm_cache VALUES (?, ?, ?, ?)",
                (prompt, llm_string, i, dumps(gen)),
            )

    def clear(self, **kwargs: Any) -> None:
        self._conn.execute("DELETE FROM full_llm_cache")


def best_ns(
    fns: dict[str, Callable[[], Any]], number: int = 200_000, repeat: int = 9
) -> dict[str, float]:
    """Best per-call nanoseconds of each function over `repeat` loops of `number` calls.

    The loops of the functions alternate, so a busy moment on the machine hits all of them.
    """
    best = dict.fromkeys(fns, float("inf"))
    gc.disable()
    try:
        for _ in range(repeat):
            for name, fn in fns.items():
                best[name] = min(best[name], timeit.timeit(fn, number=number) / number * 1e9)
    finally:
        gc.enable()
    return best


def median_ns(fns: dict[str, Callable[[], Any]], calls: int = 2000) -> dict[str, float]:
    """Median nanoseconds of single timed calls, alternating between the functions."""
    for fn in fns.values():
        for _ in range(50):
            fn()
    samples: dict[str, list[int]] = {name: [] for name in fns}
    for _ in range(calls):
        for name, fn in fns.items():
            t = time.perf_counter_ns()
            fn()
            samples[name].append(time.perf_counter_ns() - t)
    return {name: float(statistics.median(s)) for name, s in samples.items()}


def amedian_ns(fns: dict[str, Callable[[], Any]], calls: int = 2000) -> dict[str, float]:
    """`median_ns` for coroutine functions, awaited on one event loop."""

    async def run() -> dict[str, float]:
        for fn in fns.values():
            for _ in range(50):
                await fn()
        samples: dict[str, list[int]] = {name: [] for name in fns}
        for _ in range(calls):
            for name, fn in fns.items():
                t = time.perf_counter_ns()
                await fn()
                samples[name].append(time.perf_counter_ns() - t)
        return {name: float(statistics.median(s)) for name, s in samples.items()}

    return asyncio.run(run())


def fmt(ns: float) -> str:
    return f"{ns:,.0f} ns" if ns < 10_000 else f"{ns / 1000:,.1f} µs"


def table(title: str, rows: Sequence[tuple[str, float]], baseline: float) -> None:
    print(f"\n{title}")
    width = max(len(name) for name, _ in rows)
    for name, ns in rows:
        print(f"  {name:<{width}}  {fmt(ns):>12}   ×{ns / baseline:6.2f}")


def main() -> int:
    generations = [
        ChatGeneration(
            message=AIMessage(
                content="The JSON is valid.",
                usage_metadata={"input_tokens": 40, "output_tokens": 6, "total_tokens": 46},
                response_metadata={"model_name": "openai/gpt-oss-20b", "finish_reason": "stop"},
            )
        )
    ]
    messages = [HumanMessage(content="Validate this JSON document: " + "{\"a\": 1} " * 40)]
    probe_model = FakeListChatModel(responses=["x"])
    prompt = dumps(messages)  # what LangChain builds for each chat call
    llm_string = probe_model._get_llm_string()
    request = ChatRequest(
        messages=({"role": "user", "content": messages[0].content},),
        model="openai/gpt-oss-20b",
        params={"temperature": 0, "max_tokens": 256},
    )
    result = ChatResult(
        message={"role": "assistant", "content": "The JSON is valid."},
        model="openai/gpt-oss-20b",
        usage=Usage(prompt_tokens=40, completion_tokens=6, total_tokens=46),
        finish_reason="stop",
    )
    print(f"python {sys.version.split()[0]}; prompt {len(prompt)} chars, "
          f"llm_string {len(llm_string)} chars")

    with RedisServer() as redis_server, tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        in_memory = InMemoryCache()
        lc_sqlite = LangChainStyleSQLiteCache(str(tmpdir / "langchain.db"))
        full = TieredCache(
            l1=LRUCache(10_000, 300),
            l2=RedisCacheStore.from_url(redis_server.url),
            l3=SqliteCacheStore(tmpdir / "full.db"),
        )
        only_l2 = TieredCache(l1=None, l2=RedisCacheStore.from_url(redis_server.url), l3=None)
        only_l3 = TieredCache(l1=None, l2=None, l3=SqliteCacheStore(tmpdir / "l3.db"))
        for cache in (in_memory, lc_sqlite, full, only_l2, only_l3):
            cache.update(prompt, llm_string, generations)
        for cache in (full, only_l2, only_l3):
            asyncio.run(cache.aput_result(request, result))
        assert full.lookup(prompt, llm_string) == generations
        assert only_l2.lookup(prompt, llm_string) == generations
        assert only_l3.lookup(prompt, llm_string) == generations
        assert lc_sqlite.lookup(prompt, llm_string) == generations

        # 1. BaseCache.lookup(prompt, llm_string), the same string objects every call.
        fast = best_ns(
            {
                "InMemoryCache.lookup": lambda: in_memory.lookup(prompt, llm_string),
                "TieredCache L1 lookup": lambda: full.lookup(prompt, llm_string),
            }
        )
        slow = median_ns(
            {
                "TieredCache L2 lookup (Redis)": lambda: only_l2.lookup(prompt, llm_string),
                "TieredCache L3 lookup (SQLite)": lambda: only_l3.lookup(prompt, llm_string),
                "SQLite, LangChain-style lookup": lambda: lc_sqlite.lookup(prompt, llm_string),
            }
        )
        base = fast["InMemoryCache.lookup"]
        table("BaseCache.lookup hit, strings reused (their hashes cached by Python)",
              [*fast.items(), *slow.items()], base)

        # 2. The same with a fresh prompt string per call, as LangChain makes one per call
        #    (so the string is hashed every time, for both caches).
        def fresh() -> str:
            return "".join((prompt[:1], prompt[1:]))

        fast = best_ns(
            {
                "InMemoryCache.lookup": lambda: in_memory.lookup(fresh(), llm_string),
                "TieredCache L1 lookup": lambda: full.lookup(fresh(), llm_string),
            },
            number=50_000,
        )
        table("BaseCache.lookup hit, a fresh prompt string per call", list(fast.items()),
              fast["InMemoryCache.lookup"])

        # 3. The engine's path, from a request to a cached answer.
        def langchain_key_and_lookup() -> Any:
            return in_memory.lookup(dumps(messages), probe_model._get_llm_string())

        fast = best_ns(
            {
                "InMemoryCache (LangChain builds prompt + llm_string, then looks up)":
                    langchain_key_and_lookup,
                "TieredCache.get_l1(request) (hashes the request, then L1)":
                    lambda: full.get_l1(request),
            },
            number=5_000,
            repeat=5,
        )
        slow = amedian_ns(
            {
                "TieredCache.aget_result answered by L2": lambda: only_l2.aget_result(request),
                "TieredCache.aget_result answered by L3": lambda: only_l3.aget_result(request),
            }
        )
        table("From a request to a cached answer", [*fast.items(), *slow.items()],
              next(iter(fast.values())))

        # 4. End to end: a LangChain chat model answered from the cache.
        def invoke_with(cache: BaseCache) -> Callable[[], Any]:
            model = FakeListChatModel(responses=["The JSON is valid."], cache=cache)
            model.invoke(messages)
            return lambda: model.invoke(messages)

        e2e_l1 = TieredCache(l1=LRUCache(10_000, 300), l2=None, l3=None)
        slow = median_ns(
            {
                "invoke, InMemoryCache": invoke_with(InMemoryCache()),
                "invoke, TieredCache (L1 hit)": invoke_with(e2e_l1),
            },
            calls=3000,
        )
        table("LangChain chat model invoke() answered from the cache", list(slow.items()),
              slow["invoke, InMemoryCache"])

        stats = full.stats()
        print("\nTieredCache statistics after the run:")
        print(json.dumps({k: stats[k] for k in ("l1", "l2", "l3", "total")}, indent=None))
        for cache in (full, only_l2, only_l3, e2e_l1):
            cache.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
