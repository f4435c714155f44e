"""The long soak: thousands of requests from several processes, one local Groq server, one Redis.

Run: `python benchmarks/bench_soak.py [--processes 4] [--requests 1500] [--concurrency 16]
[--rpm 40]` from the repository root (starts its own redis-server unless `REDIS_URL` is set;
no network, no keys).

Each worker process (spawned, not forked) has its own engine; all share one quota ledger in
Redis and one local Groq server whose buckets run 60x faster than real time, so the three
organisations' requests-per-minute limit binds within seconds. Printed: requests answered,
throughput and its share of what the buckets allowed, the server's statuses (target: no 429),
requests lost or answered twice (target: none, counted per request id on both sides), and each
worker's resident memory after a warm-up and at the end (target: flat).

The CI runs the same code in a short form (`tests/reliability/test_soak.py`, 3 x 300).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # The soak machinery lives with the tests; spawned workers import it by module name.
    sys.path.insert(0, str(ROOT))

from tests.reliability.soak import SoakConfig, run_soak  # noqa: E402
from ymera_groq_plugin.testing import RedisServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--requests", type=int, default=1500, help="per process")
    parser.add_argument("--concurrency", type=int, default=16, help="per process")
    parser.add_argument("--rpm", type=int, default=40, help="per organisation (three)")
    parser.add_argument(
        "--bounded",
        type=int,
        default=32,
        help="L1 entries and recent executions per worker (small, so they fill in the warm-up)",
    )
    args = parser.parse_args()
    config = SoakConfig(
        processes=args.processes,
        requests=args.requests,
        concurrency=args.concurrency,
        rpm=args.rpm,
        warmup=min(200, args.requests // 4),
        bounded=args.bounded,
    )
    print(
        f"Python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs"
    )
    url = os.environ.get("REDIS_URL")
    server = None if url else RedisServer().start()
    try:
        report = run_soak(config, url or server.url)  # type: ignore[union-attr]
    finally:
        if server is not None:
            server.close()
    print("\n".join(report.lines()))
    ok = (
        not report.server_refused
        and not report.lost
        and not report.duplicated
        and report.answered == report.sent
    )
    print("result:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
