"""One workload through plain `ChatGroq`, `ChatYmeraGroq` and a LiteLLM Router, on Groq's limits.

Run: `python benchmarks/bench_engine.py` (about a minute; no network, no keys). Options:
`--duration` seconds per client (default 10), `--workers` concurrent callers (default 12),
`--overhead-n` sequential calls for the overhead measurement (default 300).

What runs where:

- The local Groq server (`ymera_groq_plugin.testing.GroqTestServer`) runs in *separate
  processes* (this script re-executes itself with `--serve`), so the clients' GIL does not
  slow the server down. One server enforces Groq's free-tier limits per organisation and model
  (RPM 30, RPD 1000, TPM 8000, TPD 200 000 for the gpt-oss and qwen models), continuously
  refilling, on the wall clock; the other has no limits and serves the overhead measurement.
- Each client gets its own organisations on the limited server (fresh buckets): plain
  `ChatGroq` one key (one organisation, one model, the SDK's own retries on), `ChatYmeraGroq`
  three keys in three organisations with `model=None` (the router's plan: three models), and a
  LiteLLM `Router(routing_strategy="usage-based-routing-v2")` with one deployment per key and
  model (the same nine organisation × model pairs, each with `rpm`/`tpm` set to Groq's limits).
- Workload: `--workers` threads send distinct short prompts (no cache hits) for `--duration`
  seconds; a failed call is counted and retried after 0.1 s.

Printed per client: requests completed, 429s (and 413s) the server sent, completed requests as
a share of the theoretical capacity (what the buckets of the organisation × model pairs the
client can use allow over the measured run: burst plus refill, the tightest of the four
limits, tokens per request as measured), p50/p95 latency of completed requests. Then the added
latency of `ChatYmeraGroq` against `ChatGroq` on identical sequential requests (interleaved, so
machine noise hits both): on a cache miss and on a cache hit.

Targets (issue 6): zero 429s, at least 95 % of capacity, under 1 ms added on a miss.
"""

from __future__ import annotations

import os

# LiteLLM fetches its price map and a tokenizer at import unless told not to.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["HF_HUB_OFFLINE"] = "1"

import argparse
import json
import logging
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

MODELS = ("openai/gpt-oss-20b", "openai/gpt-oss-120b", "qwen/qwen3.8-27b")
WINDOWS = {"rpm": 60.0, "rpd": 86400.0, "tpm": 60.0, "tpd": 86400.0}
UNLIMITED = {"rpm": None, "rpd": None, "tpm": None, "tpd": None}


def _key(name: str) -> str:
    return f"gsk_bench_{name}_".ljust(52, "0")


CLIENT_KEYS = {
    "ChatGroq (1 key)": [_key("groq_a")],
    "ChatYmeraGroq": [_key("ymera_a"), _key("ymera_b"), _key("ymera_c")],
    "LiteLLM usage-based-routing-v2": [_key("litellm_a"), _key("litellm_b"), _key("litellm_c")],
}
OVERHEAD_KEY = _key("overhead")


def _org(key: str) -> str:
    return "org_" + key.removeprefix("gsk_bench_").split("_0")[0]


# ---------------------------------------------------------------------------------------------
# The server processes
# ---------------------------------------------------------------------------------------------


def serve(port: int, keys: dict[str, str], limits: dict[str, Any]) -> None:
    """`--serve`: run a GroqTestServer until terminated."""
    from ymera_groq_plugin.testing.server import GroqTestServer

    server = GroqTestServer(keys, limits=limits or None, port=port)
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: (server.stop(), sys.exit(0)))
    print("READY", flush=True)
    while True:
        time.sleep(3600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A GroqTestServer in a child process, with its stats over HTTP."""

    def __init__(self, keys: dict[str, str], limits: dict[str, Any] | None = None) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                str(self.port),
                json.dumps(keys),
                json.dumps(limits or {}),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.base_url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "READY":
            raise RuntimeError("the local Groq server did not start")

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.base_url + "/_ymera/stats", timeout=5) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


# ---------------------------------------------------------------------------------------------
# The workload
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    completed: int = 0
    failed: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)


def drive(name: str, call: Callable[[str], object], workers: int, duration: float) -> Run:
    """`workers` threads calling `call(prompt)` with fresh prompts for `duration` seconds."""
    run = Run(name)
    lock = threading.Lock()
    stop_at = time.monotonic() + duration
    counter = iter(range(10**9))

    def worker() -> None:
        while time.monotonic() < stop_at:
            with lock:
                i = next(counter)
            prompt = f"Request {i} of {name}: in one sentence, why do token buckets refill?"
            started = time.perf_counter()
            try:
                call(prompt)
            except Exception as exc:
                with lock:
                    run.failed += 1
                    kind = type(exc).__name__
                    run.errors[kind] = run.errors.get(kind, 0) + 1
                time.sleep(0.1)
                continue
            ms = (time.perf_counter() - started) * 1000
            with lock:
                run.completed += 1
                run.latencies_ms.append(ms)

    started = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.elapsed = time.monotonic() - started
    return run


def capacity(
    limits: dict[str, dict[str, int | None]],
    pairs: int,
    models: Sequence[str],
    elapsed: float,
    tokens_per_request: float,
) -> float:
    """Requests the buckets of `pairs` organisations × `models` allow over `elapsed` seconds.

    Each bucket starts full and refills continuously (`limit / window` per second); a request
    costs one request and `tokens_per_request` tokens; the tightest of the four limits wins.
    """
    total = 0.0
    for model in models:
        lim = limits[model]
        allowed = []
        for kind, window in WINDOWS.items():
            value = lim.get(kind)
            if value is None:
                continue
            amount = value * (1 + elapsed / window)
            allowed.append(amount if kind in ("rpm", "rpd") else amount / tokens_per_request)
        total += min(allowed) if allowed else float("inf")
    return total * pairs


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _client_stats(stats: dict[str, Any], keys: Sequence[str]) -> tuple[int, int, int]:
    """(429+413 answers, prompt+completion tokens, requests) over the client's organisations."""
    limited = tokens = requests = 0
    for org in {_org(k) for k in keys}:
        for s in (stats["by_org_model"].get(org) or {}).values():
            limited += s["rate_limited"]
            tokens += s["prompt_tokens"] + s["completion_tokens"]
            requests += s["requests"]
    return limited, tokens, requests


# ---------------------------------------------------------------------------------------------
# The three clients
# ---------------------------------------------------------------------------------------------


def chatgroq_client(base_url: str) -> Callable[[str], object]:
    from langchain_groq import ChatGroq

    llm = ChatGroq(
        model=MODELS[0],
        api_key=CLIENT_KEYS["ChatGroq (1 key)"][0],  # type: ignore[arg-type]
        base_url=base_url,
        temperature=0,
        max_tokens=64,
    )
    return llm.invoke


def ymera_client(base_url: str, data_dir: str) -> tuple[Callable[[str], object], Any]:
    from ymera_groq_plugin import ChatYmeraGroq

    llm = ChatYmeraGroq(
        api_keys=CLIENT_KEYS["ChatYmeraGroq"],  # type: ignore[arg-type]
        base_url=base_url,
        data_dir=Path(data_dir),
        temperature=0,
        max_tokens=64,
        max_wait=2.0,
    )
    return llm.invoke, llm


def litellm_client(base_url: str) -> Callable[[str], object]:
    import litellm
    from litellm import Router

    litellm.suppress_debug_info = True
    logging.getLogger("LiteLLM").setLevel(logging.CRITICAL)
    logging.getLogger("LiteLLM Router").setLevel(logging.CRITICAL)
    model_list = [
        {
            "model_name": "groq-chat",
            "litellm_params": {
                "model": f"groq/{model}",
                "api_key": key,
                "api_base": base_url + "/openai/v1",
                "rpm": 30,
                "tpm": 8000,
            },
        }
        for key in CLIENT_KEYS["LiteLLM usage-based-routing-v2"]
        for model in MODELS
    ]
    router = Router(model_list=model_list, routing_strategy="usage-based-routing-v2")

    def call(prompt: str) -> object:
        return router.completion(
            model="groq-chat",
            messages=[{"role": "user", "content": prompt}],
            temperature=0,
            max_tokens=64,
        )

    return call


# ---------------------------------------------------------------------------------------------
# Added latency (sequential, interleaved)
# ---------------------------------------------------------------------------------------------


def overhead(base_url: str, data_dir: str, n: int) -> dict[str, float]:
    from langchain_groq import ChatGroq

    from ymera_groq_plugin import ChatYmeraGroq
    from ymera_groq_plugin.catalog import load_catalog
    from ymera_groq_plugin.config import YmeraSettings
    from ymera_groq_plugin.engine import Engine

    model = MODELS[0]
    groq = ChatGroq(
        model=model,
        api_key=OVERHEAD_KEY,  # type: ignore[arg-type]
        base_url=base_url,
        temperature=0,
    )
    # The server behind this measurement has no limits; the engine's catalog says so too.
    engine = Engine(
        YmeraSettings(api_keys=[OVERHEAD_KEY], base_url=base_url, data_dir=Path(data_dir)),
        catalog=load_catalog(overrides=[{"id": model, "limits": UNLIMITED}]),
    )
    ymera = ChatYmeraGroq(engine=engine, model=model, temperature=0)
    for i in range(20):  # warm up connections, clients and tokenizers
        groq.invoke(f"warm-up {i}")
        ymera.invoke(f"warm-up {i}")
    g_miss: list[float] = []
    y_miss: list[float] = []
    for i in range(n):
        order = [(groq, g_miss, "groq"), (ymera, y_miss, "ymera")]
        for llm, into, tag in order if i % 2 else reversed(order):
            prompt = f"Overhead probe {i} ({tag}): what is a token bucket?"
            t = time.perf_counter()
            llm.invoke(prompt)
            into.append((time.perf_counter() - t) * 1000)
    g_hit: list[float] = []
    y_hit: list[float] = []
    for i in range(n):
        prompt = f"Overhead probe {i} (ymera): what is a token bucket?"  # cached above
        t = time.perf_counter()
        groq.invoke(prompt)
        g_hit.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        msg = ymera.invoke(prompt)
        y_hit.append((time.perf_counter() - t) * 1000)
        assert msg.response_metadata["cache_hit"], "expected a cache hit"
    engine.close()
    med = statistics.median
    return {
        "chatgroq_ms": med(g_miss),
        "ymera_miss_ms": med(y_miss),
        "miss_added_ms": med(y_miss) - med(g_miss),
        "miss_added_paired_ms": med([y - g for y, g in zip(y_miss, g_miss, strict=True)]),
        "ymera_hit_ms": med(y_hit),
        "hit_added_ms": med(y_hit) - med(g_hit),
    }


# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--overhead-n", type=int, default=300)
    args = parser.parse_args(argv)
    # Quota alerts (80/90/95 %) are expected here: the run drives every bucket to its limit.
    logging.getLogger("ymera_groq_plugin.quota").setLevel(logging.CRITICAL + 1)

    from ymera_groq_plugin.catalog import default_catalog

    catalog = default_catalog()
    limits = {m: catalog.get(m).limits.as_dict() for m in MODELS}
    all_keys = {k: _org(k) for keys in CLIENT_KEYS.values() for k in keys}
    limited = ServerProcess(all_keys)  # the catalog's (Groq's free-tier) limits
    unlimited = ServerProcess(
        {OVERHEAD_KEY: "org_overhead"}, {m.id: UNLIMITED for m in catalog.served()}
    )
    import litellm  # noqa: F401 - imported while the servers start (it takes seconds)

    limited.wait_ready()
    unlimited.wait_ready()
    print(
        f"ymera-groq-plugin bench_engine · Python {platform.python_version()} · "
        f"langchain-groq {version('langchain-groq')} · groq {version('groq')} · "
        f"litellm {version('litellm')} · {os.cpu_count()} CPUs"
    )
    print(
        f"Groq free-tier limits per organisation and model ({', '.join(MODELS)}): "
        f"{limits[MODELS[0]]}; {args.workers} workers, {args.duration:g} s per client\n"
    )
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            clients: list[tuple[str, Callable[[str], object], Sequence[str]]] = [
                ("ChatGroq (1 key)", chatgroq_client(limited.base_url), MODELS[:1]),
            ]
            ymera_call, ymera_llm = ymera_client(limited.base_url, tmp + "/ymera")
            clients.append(("ChatYmeraGroq", ymera_call, MODELS))
            clients.append(
                ("LiteLLM usage-based-routing-v2", litellm_client(limited.base_url), MODELS)
            )
            for name, call, models in clients:
                before = _client_stats(limited.stats(), CLIENT_KEYS[name])
                run = drive(name, call, args.workers, args.duration)
                after = _client_stats(limited.stats(), CLIENT_KEYS[name])
                refused = after[0] - before[0]
                served = max(1, after[2] - before[2])
                tokens_per_request = (after[1] - before[1]) / served
                pairs = len({_org(k) for k in CLIENT_KEYS[name]})
                cap = capacity(limits, pairs, models, run.elapsed, tokens_per_request)
                rows.append((run, refused, cap))
            ymera_llm.engine.close()
            extra = overhead(unlimited.base_url, tmp + "/overhead", args.overhead_n)
    finally:
        limited.stop()
        unlimited.stop()

    header = (
        f"{'client':32} {'completed':>9} {'failed':>7} {'429s':>6} {'capacity':>9} "
        f"{'share':>7} {'p50 ms':>8} {'p95 ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for run, refused, cap in rows:
        print(
            f"{run.name:32} {run.completed:9d} {run.failed:7d} {refused:6d} {cap:9.1f} "
            f"{run.completed / cap:7.1%} {_pct(run.latencies_ms, 0.5):8.1f} "
            f"{_pct(run.latencies_ms, 0.95):8.1f}"
        )
    for run, _, _ in rows:
        if run.errors:
            print(f"  {run.name} errors: {run.errors}")
    print(
        f"\nAdded latency of ChatYmeraGroq vs ChatGroq, {args.overhead_n} interleaved sequential "
        "calls each (medians):"
    )
    print(
        f"  miss: ChatGroq {extra['chatgroq_ms']:.3f} ms, ChatYmeraGroq "
        f"{extra['ymera_miss_ms']:.3f} ms → added {extra['miss_added_ms']:+.3f} ms "
        f"(paired {extra['miss_added_paired_ms']:+.3f} ms)"
    )
    print(
        f"  hit:  ChatYmeraGroq {extra['ymera_hit_ms']:.3f} ms → added "
        f"{extra['hit_added_ms']:+.3f} ms against a ChatGroq call"
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4]))
    else:
        raise SystemExit(main())
