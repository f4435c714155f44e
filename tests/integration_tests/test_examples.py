"""The examples run offline, as a user runs them: separate processes, local servers only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GROQ_", "YMERA_"))}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_langchain_chain_runs_offline() -> None:
    out = run_example("langchain_chain.py", "--json")
    assert len(out["answers"]) == 4 and all(out["answers"])
    assert out["answers"][0] == out["answers"][2]  # the repeated question, answered once
    assert out["streamed"]
    assert out["requests"] == 5
    assert out["groq_calls"] < out["requests"]
    assert out["rate_limited_received"] == 0
    assert sum(out["models"].values()) == out["groq_calls"]


@pytest.mark.redis
def test_redis_workers_share_one_fleet_view(redis_url: str) -> None:
    out = run_example(
        "redis_workers.py",
        "--workers", "2",
        "--agents", "2",
        "--requests", "3",
        "--stagger", "0.2",
        "--redis-url", redis_url,
        "--json",
    )  # fmt: skip
    snap, server = out["snapshot"], out["server"]
    assert server["by_status"].get("429", 0) == 0
    perf = snap["performance"]
    assert snap["scope"] == "fleet" and perf["processes"] == 2
    assert perf["requests_today"] == 2 * 2 * 3 and perf["failed"] == 0
    assert perf["upstream_calls"] == server["by_status"]["200"]
    assert snap["api_keys"]["total"] == 4 and snap["api_keys"]["healthy"] == 4
    used = sum(m["rpd"]["used"] for m in snap["models"].values())
    assert used == server["by_status"]["200"]


# -- the LangGraph agent (examples/langgraph_agent.py), with ChatYmeraGroq and with ChatGroq ---


def _load(name: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("flavour", ["ymera", "chatgroq"])
def test_langgraph_agent_calls_its_tool_either_way(flavour: str, tmp_path: Path) -> None:
    from langchain_core.messages import AIMessage, ToolMessage
    from langchain_groq import ChatGroq

    from ymera_groq_plugin import ChatYmeraGroq
    from ymera_groq_plugin.testing import GroqTestServer

    example = _load("langgraph_agent")
    with GroqTestServer(example.KEYS) as server:
        model: Any
        if flavour == "ymera":
            model = ChatYmeraGroq(
                api_keys=list(example.KEYS),
                base_url=server.base_url,
                data_dir=tmp_path,
                temperature=0,
            )
        else:
            model = ChatGroq(
                model="openai/gpt-oss-20b",
                api_key=next(iter(example.KEYS)),
                base_url=server.base_url,
                temperature=0,
            )
        try:
            messages = example.run(
                example.build_agent(model), "Use the weather tool: how is it in Lisbon?"
            )
        finally:
            if flavour == "ymera":
                model.engine.close()
    tool_results = [m for m in messages if isinstance(m, ToolMessage)]
    assert tool_results and "sunny" in str(tool_results[0].content)
    final = messages[-1]
    assert isinstance(final, AIMessage) and final.content and not final.tool_calls
    assert server.stats().by_status.get(429, 0) == 0


def test_litellm_router_example_sends_no_429() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GROQ_", "YMERA_"))}
    env["EXAMPLE_BURST"] = "45"  # more than one organisation's 30 requests a minute
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "litellm_router.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "45 answers; the server answered {'200': 45}" in proc.stdout
