"""Served-model discovery: 404s over routed calls, and what a cold start waits for it.

Run: `PYTHONPATH=. python benchmarks/bench_served.py` (local Groq server; no network, no keys).
It also runs against a checkout without discovery (the `main` branch before issue 13), which
gives the "before" figure: `cd /work/main && PYTHONPATH=. python <this file>`.

1. **404s.** A local Groq account with 2 keys (2 organisations, nobody labelled them) that is
   served only `openai/gpt-oss-20b` and `openai/gpt-oss-120b` (then only the 120b) of the
   catalog's models; 20
   routed calls (`model=None`) of mixed task types. Counted: the 404 `model_not_found` answers
   Groq gave. Three runs: discovery working (the listing says what is served), discovery
   unavailable (`GET /models` answers 503: only the 404 memory helps), and the checkout's
   behaviour without either (when run on `main`).
2. **Cold start.** A fresh engine (empty data directory) whose first listing takes 2 s
   (`GET /models` delayed): the first request's latency (engine start included) beside the
   same with discovery turned off (`models_refresh_interval=0`), median of 7 runs each, and
   the time start-up spends on the served-model state (reading the file, starting the task).
"""

from __future__ import annotations

import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["HF_HUB_OFFLINE"] = "1"

import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from ymera_groq_plugin.catalog import Catalog, default_catalog
from ymera_groq_plugin.config import YmeraSettings
from ymera_groq_plugin.engine import Engine
from ymera_groq_plugin.testing.server import GroqTestServer
from ymera_groq_plugin.types import ChatRequest

K1 = "gsk_bench_served_key_one_000000000000000000000001"
K2 = "gsk_bench_served_key_two_000000000000000000000002"
ACCOUNTS = (("openai/gpt-oss-20b", "openai/gpt-oss-120b"), ("openai/gpt-oss-120b",))
PROMPTS = (
    "Write a Python function that merges two sorted lists.",
    "hi there",
    "Summarise the following paragraph in one sentence: the committee met twice.",
    "Prove that the square root of two is irrational, step by step.",
    "Translate 'good morning' into French.",
    "Extract the dates from: we met on 3 May and again on 9 June.",
    "Classify the sentiment of: I loved this film.",
    "Is this SQL query safe? SELECT * FROM users WHERE id = 1",
    "Plan a three-step research approach for testing a new battery chemistry.",
    "What is 17 times 23?",
)
HAS_DISCOVERY = hasattr(GroqTestServer, "configure_listing")


def _account_catalog(served: tuple[str, ...]) -> Catalog:
    """The server's catalog: only the models this account is served (others answer 404)."""
    base = default_catalog()
    return Catalog([base.get(m) for m in served])


def _engine(server: GroqTestServer, data_dir: Path, **settings: Any) -> Engine:
    s = YmeraSettings(
        api_keys=[K1, K2],
        base_url=server.base_url,
        data_dir=data_dir,
        max_wait=0.0,
        request_timeout=10.0,
        cache_enabled=False,
        **settings,
    )
    return Engine(s)


def _request(i: int) -> ChatRequest:
    text = f"{PROMPTS[i % len(PROMPTS)]} (#{i})"
    return ChatRequest(messages=({"role": "user", "content": text},), params={"temperature": 1e-8})


def count_404s(mode: str, served: tuple[str, ...]) -> tuple[int, dict[str, int], int]:
    """(404 answers, answers by model, failed calls) over 20 routed calls."""
    catalog = _account_catalog(served)
    server = GroqTestServer({K1: "org_1", K2: "org_2"}, catalog=catalog).start()
    try:
        if mode == "discovery unavailable":
            server.configure_listing(status=503)  # type: ignore[attr-defined]
        with tempfile.TemporaryDirectory() as tmp:
            engine = _engine(server, Path(tmp)).start()
            try:
                if mode == "discovery":
                    served = engine.served  # type: ignore[attr-defined]
                    deadline = time.monotonic() + 20
                    while not served.known and time.monotonic() < deadline:
                        time.sleep(0.01)
                models: dict[str, int] = {}
                failed = 0
                for i in range(20):
                    try:
                        result = engine.invoke(_request(i))
                    except Exception:
                        failed += 1
                        continue
                    models[result.model] = models.get(result.model, 0) + 1
            finally:
                engine.close()
        return server.stats().by_status.get(404, 0), models, failed
    finally:
        server.stop()


def cold_start(discovery: bool, runs: int = 7) -> tuple[float, float]:
    """Median first-request latency (start included) and median served-state start-up, ms."""
    server = GroqTestServer({K1: "org_1", K2: "org_2"}).start()
    if HAS_DISCOVERY:
        server.configure_listing(delay=2.0)  # type: ignore[attr-defined]
    firsts: list[float] = []
    setups: list[float] = []
    try:
        for n in range(runs):
            with tempfile.TemporaryDirectory() as tmp:
                settings = {} if discovery else {"models_refresh_interval": 0.0}
                if not HAS_DISCOVERY:
                    settings = {}
                engine = _engine(server, Path(tmp), **settings)
                start_served = getattr(engine, "_start_served", None)
                if start_served is not None:
                    spent: list[float] = []

                    async def timed(orig: Any = start_served, spent: list[float] = spent) -> None:
                        t = time.perf_counter()
                        await orig()
                        spent.append((time.perf_counter() - t) * 1000)

                    engine._start_served = timed  # type: ignore[method-assign]
                t0 = time.perf_counter()
                engine.invoke(_request(n))
                firsts.append((time.perf_counter() - t0) * 1000)
                if start_served is not None:
                    setups.append(spent[0])
                engine.close()
    finally:
        if HAS_DISCOVERY:
            server.configure_listing(delay=0.0)  # type: ignore[attr-defined]
        server.stop()
    return statistics.median(firsts), statistics.median(setups) if setups else 0.0


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    # The cold-start runs stop the server while its slow listings still sleep: uvicorn logs
    # their cancellation as an error, which says nothing about the package.
    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
    print("1. 404 model_not_found over 20 routed calls, 2 keys (2 unlabelled organisations)")
    modes = ["discovery", "discovery unavailable"] if HAS_DISCOVERY else ["no discovery (main)"]
    for served in ACCOUNTS:
        print(f"   account served {', '.join(served)}:")
        for mode in modes:
            n, models, failed = count_404s(mode, served)
            print(f"     {mode:<24} 404s: {n:>3}   answered by: {models}   failed: {failed}")
    print("2. cold start: first request (engine start included), median of 7, ms")
    on, setup = cold_start(True)
    if HAS_DISCOVERY:
        off, _ = cold_start(False)
        print(f"   discovery on  (listing takes 2 s): {on:8.1f} ms")
        print(f"   discovery off                    : {off:8.1f} ms   ratio on/off {on / off:.2f}")
        print(f"   start-up spent on served-model state: {setup:.2f} ms (median)")
    else:
        print(f"   (no discovery in this checkout)   : {on:8.1f} ms")


if __name__ == "__main__":
    main()
