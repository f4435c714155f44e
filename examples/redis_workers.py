"""Several worker processes sharing one Redis: one quota ledger, one cache, one learner.

Each worker is a separate Python process running a few agents through `ChatYmeraGroq`. They
share, through Redis, the quota of every Groq organisation (so together they never exceed it),
key health, the L2 response cache (a prompt answered in one worker is a cache hit in the
others) and the learning store. When they are done, this script prints the fleet's dashboard,
the same one `ymera-groq status` shows with `YMERA_REDIS_URL` set.

Offline by default: it starts a `redis-server` (`ymera_groq_plugin.testing.RedisServer`, unless
`--redis-url` or `YMERA_REDIS_URL` names one) and the package's local Groq-compatible server
with Groq's free-plan limits and four fake keys in three organisations.

    python examples/redis_workers.py --workers 3 --agents 4 --requests 6
    python examples/redis_workers.py --json          # the snapshot as JSON, for scripts
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import time
from typing import Any

KEYS = {
    "gsk_example_alpha_000000000000000001": "org_alpha",
    "gsk_example_alpha_000000000000000002": "org_alpha",
    "gsk_example_beta_0000000000000000003": "org_beta",
    "gsk_example_gamma_000000000000000004": "org_gamma",
}

PROMPTS = {
    "validator": [
        'Validate this JSON payload: {"id": 7, "email": "a@b.co"}',
        "Check whether this email address is valid: someone@example..com",
    ],
    "coder": [
        "Write a Python function that deduplicates a list while keeping order.",
        "Implement a retry decorator with exponential backoff in Python.",
    ],
    "reviewer": [
        "Review this code for security issues: cursor.execute(f'select * from t where id={x}')",
    ],
    "translator": ["Traduis en anglais : le déploiement est prévu pour demain matin."],
}


def settings_kwargs(base_url: str, redis_url: str, data_dir: str) -> dict[str, Any]:
    """What every process (workers and the viewer) configures: the same keys and Redis."""
    return {
        "api_keys": [
            {"secret": secret, "org": org, "label": f"{org.removeprefix('org_')}-{i}"}
            for i, (secret, org) in enumerate(KEYS.items(), 1)
        ],
        "base_url": base_url,
        "redis_url": redis_url,
        "data_dir": data_dir,
        "namespace": "workers-example",
        "max_wait": 20.0,
    }


def worker(
    index: int, config: dict[str, Any], agents: int, requests: int, stagger: float, ready: Any
) -> None:
    """One worker process: `agents` agents, `requests` requests each, then exit."""
    from ymera_groq_plugin import ChatYmeraGroq, YmeraSettings
    from ymera_groq_plugin.monitor import attach

    llm = ChatYmeraGroq(settings=YmeraSettings(**config), temperature=0)
    assert llm.engine is not None
    # Publish this worker's counters to the fleet's view (requests, latency, cache hits).
    monitor = attach(llm.engine)
    kinds = list(PROMPTS)

    async def agent(n: int) -> None:
        kind = kinds[(index + n) % len(kinds)]
        # Agents of one kind share a name across workers: same routing, same cache entries.
        bound = llm.bind(agent_name=kind)
        for i in range(requests):
            prompts = PROMPTS[kind]
            # Half the prompts repeat across workers (cache hits, L2 shared through Redis);
            # the rest are new.
            if i % 2 == 0:
                prompt = prompts[i // 2 % len(prompts)]
            else:
                prompt = f"{prompts[0]} (worker {index}, agent {n}, item {i})"
            await bound.ainvoke(prompt)

    async def run() -> None:
        await asyncio.gather(*(agent(n) for n in range(agents)))

    # Everyone starts together, then a little apart, so that later workers find the earlier
    # ones' answers in the shared L2 cache.
    ready.wait()
    time.sleep(stagger * index)
    asyncio.run(run())
    monitor.close()  # a last publish of the counters
    llm.engine.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--agents", type=int, default=4, help="agents per worker")
    parser.add_argument("--requests", type=int, default=6, help="requests per agent")
    parser.add_argument("--stagger", type=float, default=0.8, help="seconds between workers")
    parser.add_argument("--redis-url", default=os.environ.get("YMERA_REDIS_URL"))
    parser.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    args = parser.parse_args(argv)

    from rich.console import Console

    from ymera_groq_plugin import Engine, YmeraSettings
    from ymera_groq_plugin.dashboard import render_snapshot
    from ymera_groq_plugin.testing import GroqTestServer, RedisServer

    console = Console(stderr=args.json, highlight=False)
    redis = None if args.redis_url else RedisServer().start()
    redis_url = args.redis_url or redis.url  # type: ignore[union-attr]
    server = GroqTestServer(KEYS).start()
    try:
        with tempfile.TemporaryDirectory(prefix="ymera-workers-") as data_dir:
            config = settings_kwargs(server.base_url, redis_url, data_dir)
            console.print(
                f"{args.workers} workers × {args.agents} agents × {args.requests} requests, "
                f"sharing {redis_url} and a local Groq server ({len(KEYS)} keys)"
            )
            started = time.perf_counter()
            # spawn: fresh interpreters, as separate hosts would be (no inherited state).
            ctx = multiprocessing.get_context("spawn")
            ready = ctx.Barrier(args.workers)
            procs = [
                ctx.Process(
                    target=worker, args=(i, config, args.agents, args.requests, args.stagger, ready)
                )
                for i in range(args.workers)
            ]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
            failed = [p.exitcode for p in procs if p.exitcode != 0]
            elapsed = time.perf_counter() - started

            # A separate view of the fleet, as `ymera-groq status` would be.
            viewer = Engine(YmeraSettings(**config))
            snapshot = viewer.snapshot()
            viewer.close()
            server_stats = server.stats().as_dict()
            if args.json:
                out = {"snapshot": snapshot, "server": server_stats, "elapsed_s": elapsed}
                sys.stdout.write(json.dumps(out, default=str) + "\n")
            else:
                render_snapshot(snapshot, console)
                console.print(
                    f"{args.workers} workers in {elapsed:.1f} s; Groq (local) answered "
                    f"{server_stats['requests']} calls, 429s: "
                    f"{server_stats['by_status'].get('429', 0)}"
                )
            return 1 if failed else 0
    finally:
        server.stop()
        if redis is not None:
            redis.close()


if __name__ == "__main__":
    raise SystemExit(main())
