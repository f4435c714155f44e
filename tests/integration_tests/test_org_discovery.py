"""Keys of one organisation that nobody labelled: the fleet finds out before Groq says 429.

Two OS processes (spawned) share one real Redis and the local Groq server, which maps two keys
to one organisation. Neither process is told (`GROQ_ORG_N` unset), so each key starts as its own
organisation. The processes send as fast as their ledger lets them for a few seconds against a
small requests-per-minute limit; the server counts every 429 it answers. The fleet must learn
that the keys share one budget from the first responses' `x-ratelimit-remaining-requests`
(stored in Redis for every process), so the server answers at most one 429.

Run the measurement by hand (prints the server's 429 count):
`PYTHONPATH=$PWD .venv/bin/python -m tests.integration_tests.test_org_discovery`
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from ymera_groq_plugin.catalog import Catalog, default_catalog, load_catalog

MODEL = "openai/gpt-oss-20b"
K1 = "gsk_orgdiscovery_key_one_0000000000000000000000001"
K2 = "gsk_orgdiscovery_key_two_0000000000000000000000002"
LIMITS = {"rpm": 20, "rpd": 1000, "tpm": 1_000_000, "tpd": 10_000_000}
PROCESSES = 2
TASKS = int(os.environ.get("ORG_TEST_TASKS", "3"))
SECONDS = 6.0
STATS: Any = None


def catalog() -> Catalog:
    """The embedded catalog with the same small limits on every model, on both sides: a
    request that has no room on the pinned model may be routed to another one."""
    return load_catalog(overrides=[{"id": m.id, "limits": LIMITS} for m in default_catalog()])


def _worker(base_url: str, redis_url: str, data_dir: str, start: Any, out: Any) -> None:
    try:
        out.put(asyncio.run(_work(base_url, redis_url, data_dir, start)))
    except BaseException as exc:
        out.put({"error": repr(exc)})
        raise


async def _work(base_url: str, redis_url: str | None, data_dir: str, start: Any) -> dict[str, int]:
    import logging

    logging.basicConfig(level=os.environ.get("ORG_TEST_LOG", "ERROR"))
    from ymera_groq_plugin.config import YmeraSettings
    from ymera_groq_plugin.engine import Engine
    from ymera_groq_plugin.errors import YmeraError
    from ymera_groq_plugin.types import ChatRequest

    settings = YmeraSettings(
        api_keys=[K1, K2],  # unlabelled: no organisation named
        base_url=base_url,
        redis_url=redis_url,
        namespace="orgs",
        data_dir=Path(data_dir),
        cache_enabled=False,
        max_wait=0.5,
        max_retries=0,
    )
    engine = Engine(settings, catalog=catalog())
    engine.start()
    # Load the tokenizer before the race: its first load holds the engine's loop for seconds
    # on a busy machine, which would measure a cold start, not organisation discovery.
    from ymera_groq_plugin.tokens import encoding_name

    encoding_name()
    counts = {"ok": 0, "refused": 0}
    try:
        start.wait()
        deadline = time.monotonic() + SECONDS
        if os.environ.get("ORG_TEST_DUMP"):
            import faulthandler

            faulthandler.dump_traceback_later(3.0)

        async def task(n: int) -> None:
            i = 0
            while time.monotonic() < deadline:
                i += 1
                req = ChatRequest(
                    messages=({"role": "user", "content": f"question {os.getpid()} {n} {i}"},),
                    model=MODEL,
                    params={"max_tokens": 8},
                )
                try:
                    await engine.ainvoke(req)
                    counts["ok"] += 1
                except YmeraError:
                    counts["refused"] += 1
                    await asyncio.sleep(0.2)

        await asyncio.gather(*(task(n) for n in range(TASKS)))
    finally:
        engine.close()
    return counts


def run_fleet(redis_url: str, data_dir: Path) -> tuple[int, int, list[dict[str, int]]]:
    """Run the processes; return (server 429s, requests the server admitted, per-process
    counts)."""
    from ymera_groq_plugin.testing.server import GroqTestServer

    ctx = multiprocessing.get_context("spawn")
    with GroqTestServer({K1: "org_shared", K2: "org_shared"}, catalog=catalog()) as server:
        start = ctx.Event()
        out = ctx.Queue()
        procs = [
            ctx.Process(
                target=_worker,
                args=(server.base_url, redis_url, str(data_dir / f"p{i}"), start, out),
            )
            for i in range(PROCESSES)
        ]
        for p in procs:
            p.start()
        # Let both import and build their engines before the race starts.
        time.sleep(3.0)
        start.set()
        results = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        stats = server.stats()
    global STATS
    STATS = stats.as_dict()
    refused = stats.by_status.get(429, 0)
    admitted = sum(s.requests for s in stats.by_org_model.values())
    return refused, admitted, results


async def test_one_process_with_unlabelled_keys_of_one_org_draws_at_most_one_429(
    tmp_path: Path,
) -> None:
    """The embedded mode (memory stores): the same race inside one process."""
    from ymera_groq_plugin.testing.server import GroqTestServer

    with GroqTestServer({K1: "org_shared", K2: "org_shared"}, catalog=catalog()) as server:
        start = multiprocessing.get_context("spawn").Event()
        start.set()
        counts = await _work(server.base_url, None, str(tmp_path), start)
        stats = server.stats()
    assert counts["ok"] == sum(s.requests for s in stats.by_org_model.values()) > 0
    assert stats.by_status.get(429, 0) <= 1, (stats.by_status, counts)


@pytest.mark.redis
def test_two_processes_with_unlabelled_keys_of_one_org_draw_at_most_one_429(
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    refused, admitted, results = run_fleet(redis_url, tmp_path)
    assert sum(r["ok"] for r in results) == admitted > 0
    assert refused <= 1, (refused, admitted, results)
    # `ymera-groq keys` (another process of the fleet) shows the merge and its evidence.
    import json

    from ymera_groq_plugin import cli

    for name, value in {
        "GROQ_API_KEY": K1,
        "GROQ_API_KEY_2": K2,
        "YMERA_REDIS_URL": redis_url,
        "YMERA_NAMESPACE": "orgs",
        "YMERA_DATA_DIR": str(tmp_path / "cli"),
    }.items():
        monkeypatch.setenv(name, value)
    try:
        assert cli.main(["keys", "--json"]) == 0
    finally:
        cli._close_engines()
    rows = {r["label"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["key1"]["organisation"] == rows["key2"]["organisation"] == "org:key1"
    assert rows["key2"]["evidence"].startswith("inferred: shares org:key1's budget")
    evidence = rows["key2"]["evidence"]
    assert "x-ratelimit-remaining-requests" in evidence or "429/413 text" in evidence
    assert K2 not in json.dumps(rows)


if __name__ == "__main__":
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    from ymera_groq_plugin.testing import RedisServer

    with RedisServer() as redis_srv, tempfile.TemporaryDirectory() as tmp:
        refused, admitted, results = run_fleet(str(redis_srv.url), Path(tmp))
    print(f"server 429s: {refused}, admitted: {admitted}, per process: {results}")
    if os.environ.get("ORG_TEST_LOG"):
        print(STATS)
    sys.exit(0)
