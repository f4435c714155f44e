"""What `attach()` costs a LiteLLM Router, and what it buys, beside LiteLLM's own strategies.

Run: `python benchmarks/bench_litellm.py` (starts local Groq servers; no network, no keys;
about two minutes). `--quick` shortens the goodput runs to a few seconds each.

Measured in the same run, on the same machine, with LiteLLM 1.110:

1. **The pick.** A `Router` with four Groq deployments (four keys, four organisations):
   - `select(model)`: the pick alone (cooldowns, callback filters, strategy) for
     `simple-shuffle`, `usage-based-routing-v2` (with `rpm`/`tpm` on each deployment, as its
     users set them), the package's filter in front of `simple-shuffle`, and the package's
     strategy (`register_plugin`). The package's figures include reserving the quota.
   - `acompletion(..., mock_response=...)`: a whole request without the network (LiteLLM's
     `mock_response`), callbacks included: for the package, pick + reserve + bind + settle.
   Ratios are against `usage-based-routing-v2` (LiteLLM's quota-aware strategy) and
   `simple-shuffle` (its cheapest).
2. **Goodput.** A steady over-load (more requests per second than the four organisations'
   limits admit) against the local Groq server, for each configuration: requests answered,
   429s the *server* sent, requests refused before they left (by LiteLLM's limits or by the
   package), and answered requests per second. `num_retries=0` and no fallbacks, so every
   refusal is visible.
3. **A Router that owns its keys.** The Router is built the usual way: three Groq keys (three
   organisations) only in its `model_list` (two literal, one `os.environ/NAME`), nothing in the
   package's settings. 24 callers (tasks, or threads for the sync path) call back to back for
   `--own-seconds` (a failed call waits 0.1 s), against a local Groq server started in its own
   process (Groq's free-tier limits for the model, RPM 30 and TPM 8000 per organisation).
   Configurations: `usage-based-routing-v2` with `rpm`/`tpm` declared on each deployment (async
   and sync), `attach(router)` (async and sync), `Router(plugins=[YmeraRoutingPlugin()])`.
   Printed: answers within the run, 429s the server sent, calls refused before sending, and for
   the package the tokens its reservations held against what Groq then counted.
   `--own-keys` runs this part alone.
"""

from __future__ import annotations

import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["HF_HUB_OFFLINE"] = "1"

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import math
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from collections import Counter
from importlib.metadata import version
from pathlib import Path
from typing import Any

import litellm
from litellm import Router

from ymera_groq_plugin.catalog import load_catalog
from ymera_groq_plugin.config import YmeraSettings
from ymera_groq_plugin.engine import Engine
from ymera_groq_plugin.litellm import YmeraLiteLLM, attach, model_list_from_settings
from ymera_groq_plugin.testing.server import GroqTestServer

MODEL = "openai/gpt-oss-20b"
KEYS = {f"gsk_benchlitellm{c * 14}{n:02d}": f"org_{c}" for n, c in enumerate("abcd", 1)}
MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
BIG = {"rpm": 10**9, "rpd": 10**9, "tpm": 10**9, "tpd": 10**9}
REAL = {"rpm": 30, "rpd": 1000, "tpm": 8000, "tpd": 200_000}
REPEATS = 7


def _settings(base_url: str, data_dir: Path, tag: str, **kw: Any) -> YmeraSettings:
    # Labels (hence deployment ids) differ per configuration: LiteLLM keeps usage counters per
    # deployment id process-wide, and one run's counters must not refuse the next run's calls.
    return YmeraSettings(
        api_keys=[
            {"secret": s, "org": o, "label": f"{tag}-key{n}"}
            for n, (s, o) in enumerate(KEYS.items(), start=1)
        ],
        base_url=base_url,
        data_dir=data_dir,
        cache_enabled=False,
        **kw,
    )


def _model_list(settings: YmeraSettings, *, litellm_limits: dict[str, int] | None) -> list[Any]:
    models = model_list_from_settings(settings, models=[MODEL], routed_groups=())
    if litellm_limits:
        for d in models:
            d["litellm_params"].update(litellm_limits)
    return models


CONFIGS: dict[str, dict[str, Any]] = {
    "simple-shuffle": {"routing_strategy": "simple-shuffle"},
    "usage-based-routing-v2": {"routing_strategy": "usage-based-routing-v2", "limits": True},
    "ymera filter + simple-shuffle": {"routing_strategy": "simple-shuffle", "ymera": "filter"},
    "ymera strategy": {"routing_strategy": "simple-shuffle", "ymera": "strategy"},
    "ymera strategy, healthy=cooldowns": {
        "routing_strategy": "simple-shuffle",
        "ymera": "strategy",
        "healthy": "cooldowns",
    },
}


async def _build(
    name: str, base_url: str, data_dir: Path, limits: dict[str, int], tag: str, **kw: Any
) -> tuple[Router, YmeraLiteLLM | None, Engine | None]:
    cfg = CONFIGS[name]
    settings = _settings(base_url, data_dir, tag, **kw)
    litellm_limits = {"rpm": limits["rpm"], "tpm": limits["tpm"]} if cfg.get("limits") else None
    router = Router(
        model_list=_model_list(settings, litellm_limits=litellm_limits),
        routing_strategy=cfg["routing_strategy"],
        num_retries=0,
    )
    if "ymera" not in cfg:
        return router, None, None
    engine = Engine(settings, catalog=load_catalog(overrides=[{"id": MODEL, "limits": limits}]))
    ymera = attach(
        router,
        engine=engine,
        strategy=cfg["ymera"] == "strategy",
        healthy=cfg.get("healthy", "select"),
    )
    return router, ymera, engine


async def _close(ymera: YmeraLiteLLM | None, engine: Engine | None) -> None:
    if ymera is not None:
        await ymera.aflush()
        ymera.detach()
    if engine is not None:
        await engine.aclose()


async def bench_pick(n: int, data_dir: Path) -> dict[str, dict[str, float]]:
    """Best microseconds per call, batches of every configuration interleaved so that a busy
    moment of the machine does not land on one configuration only."""
    built = {}
    for i, name in enumerate(CONFIGS):
        # Nothing is sent (mock_response): the URL only has to be well formed.
        built[name] = await _build(name, "http://127.0.0.1:9", data_dir / f"pick{i}", BIG, f"p{i}")
    best: dict[str, dict[str, float]] = {
        name: {"pick": math.inf, "request": math.inf} for name in built
    }
    try:
        for round_ in range(REPEATS + 1):
            for name, (router, ymera, _) in built.items():
                for kind in ("pick", "request"):
                    if kind == "pick":

                        async def body(router: Router = router) -> Any:
                            return await router.select(MODEL, {"messages": MESSAGES})
                    else:

                        async def body(router: Router = router) -> Any:
                            return await router.acompletion(
                                model=MODEL, messages=MESSAGES, mock_response="Paris"
                            )

                    gc.collect()
                    start = time.perf_counter()
                    for _ in range(n):
                        await body()
                    per = (time.perf_counter() - start) / n * 1e6
                    if ymera is not None:
                        await asyncio.sleep(0.02)  # let the success events land, untimed
                        await ymera.aflush()
                    if round_:  # the first round warms clients and caches
                        best[name][kind] = min(best[name][kind], per)
    finally:
        for _, ymera, engine in built.values():
            await _close(ymera, engine)
    return best


# -- 2. goodput ---------------------------------------------------------------------------


async def bench_goodput(seconds: float, rate: float, data_dir: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(CONFIGS):
        server = await GroqTestServer(KEYS, limits={MODEL: REAL}).astart()
        router, ymera, engine = await _build(
            name, server.base_url, data_dir / f"goodput{i}", REAL, f"g{i}", max_wait=0
        )
        outcomes: Counter[str] = Counter()

        async def one(n: int, router: Router = router, outcomes: Counter[str] = outcomes) -> None:
            try:
                await router.acompletion(
                    model=MODEL,
                    messages=[{"role": "user", "content": f"Question {n}: what is {n} + {n}?"}],
                    max_tokens=32,
                )
                outcomes["answered"] += 1
            except Exception as exc:
                outcomes[type(exc).__name__] += 1

        try:
            tasks = []
            start = time.perf_counter()
            n = 0
            while (elapsed := time.perf_counter() - start) < seconds:
                while n < elapsed * rate:
                    tasks.append(asyncio.create_task(one(n)))
                    n += 1
                await asyncio.sleep(0.005)
            await asyncio.gather(*tasks)
            wall = time.perf_counter() - start
            stats = server.stats()
            answered = outcomes["answered"]
            out[name] = {
                "sent": n,
                "answered": answered,
                "server 429": stats.by_status.get(429, 0),
                "refused before sending": n - answered - stats.by_status.get(429, 0),
                "goodput/s": answered / wall,
                "errors": {k: v for k, v in outcomes.items() if k != "answered"},
            }
        finally:
            await _close(ymera, engine)
            await server.astop()
    return out


# -- 3. a Router that owns its keys --------------------------------------------------------

OWN_LIMITS = {"rpm": 30, "rpd": 1000, "tpm": 8000, "tpd": 200_000}
OWN_ENV = "BENCH_LITELLM_OWN_KEY"
OWN_CONFIGS = {
    "usage-based-routing-v2 + rpm/tpm, async": ("ubr", False),
    "usage-based-routing-v2 + rpm/tpm, sync": ("ubr", True),
    "attach(router), async": ("attach", False),
    "attach(router), sync": ("attach", True),
    "Router(plugins=[YmeraRoutingPlugin()]), async": ("plugin", False),
}


def _serve(port: int, keys: dict[str, str], limits: dict[str, Any]) -> None:
    """`--serve`: run a GroqTestServer until terminated (a process of its own, so the
    clients' GIL does not slow it down)."""
    server = GroqTestServer(keys, limits=limits, port=port)
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: (server.stop(), sys.exit(0)))
    print("READY", flush=True)
    while True:
        time.sleep(3600)


class _ServerProcess:
    def __init__(self, keys: dict[str, str], limits: dict[str, Any]) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(self.port), *map(json.dumps, (keys, limits))],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "READY":
            raise RuntimeError("the local Groq server did not start")
        self.openai_base_url = f"http://127.0.0.1:{self.port}/openai/v1"

    def stats(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/_ymera/stats"
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _own_model_list(keys: list[str], base: str, *, declared: bool) -> list[dict[str, Any]]:
    """The model list as users write it: the keys in it, one through the environment."""
    os.environ[OWN_ENV] = keys[2]
    out = []
    for n, secret in enumerate(keys):
        params: dict[str, Any] = {
            "model": f"groq/{MODEL}",
            "api_key": f"os.environ/{OWN_ENV}" if n == 2 else secret,
            "api_base": base,
        }
        if declared:
            params.update(rpm=OWN_LIMITS["rpm"], tpm=OWN_LIMITS["tpm"])
        out.append({"model_name": "fast", "litellm_params": params})
    return out


def bench_own_keys(
    seconds: float, workers: int, data_dir: Path, max_tokens: int
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for i, (name, (kind, sync)) in enumerate(OWN_CONFIGS.items()):
        keys = [f"gsk_benchown{i}{c * 14}{n:02d}" for n, c in enumerate("xyz", 1)]
        server = _ServerProcess(
            {k: f"org_{i}_{n}" for n, k in enumerate(keys)}, {MODEL: OWN_LIMITS}
        )
        engine = ymera = None
        try:
            model_list = _own_model_list(keys, server.openai_base_url, declared=kind == "ubr")
            if kind == "ubr":
                router = Router(
                    model_list=model_list, routing_strategy="usage-based-routing-v2", num_retries=0
                )
            else:
                engine = Engine(
                    YmeraSettings(api_keys=[], data_dir=data_dir / f"own{i}", cache_enabled=False),
                    catalog=load_catalog(overrides=[{"id": MODEL, "limits": OWN_LIMITS}]),
                )
                if kind == "attach":
                    router = Router(model_list=model_list, num_retries=0)
                    ymera = attach(router, engine=engine)
                else:
                    from ymera_groq_plugin.litellm import YmeraRoutingPlugin

                    plugin = YmeraRoutingPlugin(engine=engine)
                    ymera = plugin.ymera
                    router = Router(model_list=model_list, num_retries=0, plugins=[plugin])
            row = _drive_own(router, seconds, workers, max_tokens, sync=sync)
            if ymera is not None:
                for _ in range(300):  # sync answers are settled from LiteLLM's logging thread
                    if ymera.live_reservations == 0:
                        break
                    time.sleep(0.01)
                engine.portal.run(ymera._drain())  # type: ignore[union-attr]
                row["held"] = getattr(ymera, "reservation_use", lambda: None)()
            stats = server.stats()
            row["server 429"] = stats["by_status"].get("429", 0)
            row["server 200"] = stats["by_status"].get("200", 0)
            out[name] = row
        except Exception as exc:  # an older package (no plugin), a failed run: say so
            out[name] = {"failed": f"{type(exc).__name__}: {exc}"[:120]}
        finally:
            if ymera is not None:
                ymera.detach()
            if engine is not None:
                engine.close()
            server.stop()
    return out


def _drive_own(
    router: Router, seconds: float, workers: int, max_tokens: int, *, sync: bool
) -> dict[str, Any]:
    """`workers` callers back to back for `seconds`: answers within the run, refusals."""
    errors: Counter[str] = Counter()
    answered = [0, 0]  # within the run, after it
    lock = threading.Lock()
    counter = iter(range(10**9))

    def messages() -> list[dict[str, str]]:
        with lock:
            n = next(counter)
        return [{"role": "user", "content": f"Question {n}: what is {n} + {n}?"}]

    def outcome(ok: bool, exc: BaseException | None, stop_at: float) -> None:
        with lock:
            if ok:
                answered[0 if time.monotonic() <= stop_at else 1] += 1
            else:
                errors[type(exc).__name__] += 1

    if sync:
        stop_at = time.monotonic() + seconds

        def worker() -> None:
            while time.monotonic() < stop_at:
                try:
                    router.completion(model="fast", messages=messages(), max_tokens=max_tokens)
                    outcome(True, None, stop_at)
                except Exception as exc:
                    outcome(False, exc, stop_at)
                    time.sleep(0.1)

        threads = [threading.Thread(target=worker) for _ in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:

        async def run() -> None:
            stop_at = time.monotonic() + seconds

            async def worker() -> None:
                while time.monotonic() < stop_at:
                    try:
                        await router.acompletion(
                            model="fast", messages=messages(), max_tokens=max_tokens
                        )
                        outcome(True, None, stop_at)
                    except Exception as exc:
                        outcome(False, exc, stop_at)
                        await asyncio.sleep(0.1)

            await asyncio.gather(*(worker() for _ in range(workers)))

        asyncio.run(run())
    return {"answered": answered[0], "answered after": answered[1], "errors": dict(errors)}


def _report_own(rows: dict[str, dict[str, Any]], args: Any) -> None:
    print(
        f"\n3. A Router that owns its keys: {args.workers} callers for {args.own_seconds:g} s, "
        f"three keys (three organisations × RPM {OWN_LIMITS['rpm']}, TPM {OWN_LIMITS['tpm']}) "
        f"only in the model list, max_tokens={args.own_max_tokens} (local Groq server, own process)"
    )
    print(
        f"{'configuration':46} {'answered':>9} {'server 429':>11} {'refused':>8}  "
        "tokens reserved / Groq's prompt count (completion)"
    )
    for name, row in rows.items():
        if "failed" in row:
            print(f"{name:46} {'—':>9} {'—':>11} {'—':>8}  {row['failed']}")
            continue
        refused = sum(row["errors"].values()) - row["server 429"]
        held = row.get("held")
        shown = (
            f"{held['reserved_tokens']} / {held['prompt_tokens']} ({held['completion_tokens']})"
            f" over {held['settled']} calls"
            if held
            else ""
        )
        print(
            f"{name:46} {row['answered']:9d} {row['server 429']:11d} {refused:8d}  {shown}"
            f"  {row['errors'] or ''}"
            + (
                f" (+{row['answered after']} answered after the run)"
                if row["answered after"]
                else ""
            )
        )


# -- report -------------------------------------------------------------------------------


def _report(
    pick: dict[str, dict[str, float]], goodput: dict[str, dict[str, Any]], args: Any
) -> None:
    print(
        f"LiteLLM {version('litellm')} · Python {platform.python_version()} · "
        f"{platform.machine()} · {os.cpu_count()} CPUs"
    )
    print(f"\n1. Per-request time (µs, best of {REPEATS} interleaved batches of {args.n})")
    print(f"{'configuration':36} {'select()':>10} {'mocked request':>15}")
    for name, row in pick.items():
        print(f"{name:36} {row['pick']:10.1f} {row['request']:15.1f}")
    ubr, ss = pick["usage-based-routing-v2"], pick["simple-shuffle"]
    print("\nRatios (lower is cheaper):")
    for name in [n for n in pick if n.startswith("ymera")]:
        row = pick[name]
        print(
            f"  {name}: pick {row['pick'] / ubr['pick']:.2f}× usage-based-routing-v2, "
            f"{row['pick'] / ss['pick']:.2f}× simple-shuffle; whole request "
            f"{row['request'] / ubr['request']:.2f}× / {row['request'] / ss['request']:.2f}×"
        )
        added = row["request"] - ss["request"]
        print(
            f"    added over simple-shuffle per request: {added:.1f} µs "
            f"(usage-based-routing-v2 adds {ubr['request'] - ss['request']:.1f} µs)"
        )
    print(
        f"\n2. Goodput: {args.rate:g} requests/s for {args.seconds:g} s against four "
        f"organisations × {REAL['rpm']} requests/minute (local Groq server)"
    )
    print(
        f"{'configuration':36} {'sent':>6} {'answered':>9} {'server 429':>11} "
        f"{'refused':>8} {'goodput/s':>10}"
    )
    for name, row in goodput.items():
        print(
            f"{name:36} {row['sent']:6d} {row['answered']:9d} {row['server 429']:11d} "
            f"{row['refused before sending']:8d} {row['goodput/s']:10.2f}  {row['errors']}"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=300, help="calls per timed batch")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of a goodput run")
    parser.add_argument("--rate", type=float, default=12.0, help="requests per second offered")
    parser.add_argument("--quick", action="store_true", help="5 s goodput runs, 100 calls")
    parser.add_argument("--own-keys", action="store_true", help="only part 3")
    parser.add_argument("--own-seconds", type=float, default=20.0, help="length of a part-3 run")
    parser.add_argument("--own-max-tokens", type=int, default=64, help="max_tokens in part 3")
    parser.add_argument("--workers", type=int, default=24, help="callers in part 3")
    args = parser.parse_args()
    if args.quick:
        args.n, args.seconds = 100, 5.0
    litellm.suppress_debug_info = True
    logging.getLogger("ymera_groq_plugin").setLevel(logging.CRITICAL + 1)  # quota alerts
    logging.getLogger("LiteLLM").setLevel(logging.CRITICAL)
    logging.getLogger("LiteLLM Router").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        if not args.own_keys:
            pick = await bench_pick(args.n, data)
            goodput = await bench_goodput(args.seconds, args.rate, data)
            _report(pick, goodput, args)
        # Runs its own event loops (and threads): off this one.
        own = await asyncio.to_thread(
            bench_own_keys, args.own_seconds, args.workers, data, args.own_max_tokens
        )
        _report_own(own, args)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        _serve(int(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4]))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    sys.stdout.flush()
