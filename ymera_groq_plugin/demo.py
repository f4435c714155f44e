"""`ymera-groq demo`: dozens of agents sharing Groq through `ChatYmeraGroq`, offline by default.

Offline, it starts the package's local Groq-compatible server with Groq's free-plan limits (per
organisation and model, the same buckets and headers as Groq) and six fake keys in four
organisations, runs a mixed workload of the original plan's agent kinds (fast validators and
formatters, standard coders, complex architects, long-context analysts, multilingual
translators, and content moderators for the safety classifier) with repeated and fresh
prompts, and ends with the dashboard. The free-plan limits are real-time: 30 requests per
minute per organisation and model is what the run is shaped by.

With `--live` and `GROQ_API_KEY` set, a small, bounded version of the same workload runs against
the real service.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from .catalog import Catalog

__all__ = ["AGENT_KINDS", "run_demo"]

# Six keys in four organisations: rotation inside one organisation adds nothing, across
# organisations it multiplies the allowance.
DEMO_KEYS: dict[str, str] = {
    "gsk_demo_alpha_0000000000000000000001": "org_alpha",
    "gsk_demo_alpha_0000000000000000000002": "org_alpha",
    "gsk_demo_beta_00000000000000000000003": "org_beta",
    "gsk_demo_beta_00000000000000000000004": "org_beta",
    "gsk_demo_gamma_0000000000000000000005": "org_gamma",
    "gsk_demo_delta_0000000000000000000006": "org_delta",
}


@dataclass(frozen=True)
class AgentKind:
    """A kind of agent from the original plan, with the prompts such agents send."""

    name: str
    share: float
    prompts: tuple[str, ...]
    fresh: str
    """A template for prompts that never repeat (`{n}` is filled in)."""


_CODE = """def transfer(src, dst, amount):
    src.balance -= amount
    dst.balance += amount
    db.session.commit()
"""

AGENT_KINDS: tuple[AgentKind, ...] = (
    AgentKind(
        "validator",
        0.16,
        (
            'Validate this JSON payload against the user schema: {"id": 7, "email": "a@b.co"}',
            "Check whether this email address is valid: someone@example..com",
            "Validate the config: timeout=30, retries=-1, region=eu-west-1",
        ),
        "Validate this order record #{n}: quantity={q}, price={p}, currency=EUR",
    ),
    AgentKind(
        "content_moderator",
        0.04,
        (
            "Classify this post against the policy below and answer ALLOW or BLOCK.\n"
            "Policy: no spam, no hate speech, no self-harm content.\n"
            'Post: "Buy 1000 followers for $5, link in bio!!!"',
        ),
        'Does comment #{n} violate our community guidelines? "You {q} clowns should all quit."',
    ),
    AgentKind(
        "formatter",
        0.10,
        (
            "Format this list as a markdown table: apples 3, pears 5, plums 2",
            "Reformat this date to ISO 8601: 3rd of March 2026, 14:05",
        ),
        "Format these {q} log lines as JSON objects: level=INFO id={n} msg=started",
    ),
    AgentKind(
        "monitor",
        0.08,
        (
            "Summarise these metrics and flag anomalies: cpu=97% mem=41% p95=812ms errors=0.2%",
            "Is this health check healthy? status=degraded db=ok cache=timeout",
        ),
        "Report anomalies in window {n}: cpu={q}% latency_p95={p}ms error_rate=0.{q}%",
    ),
    AgentKind(
        "coder",
        0.16,
        (
            "Write a Python function that deduplicates a list while keeping order.",
            "Implement a retry decorator with exponential backoff in Python.",
        ),
        "Write a Python function that parses invoice #{n} lines into dataclasses ({q} fields).",
    ),
    AgentKind(
        "tester",
        0.08,
        ("Write pytest unit tests for a function slugify(title) that lowercases and dashes.",),
        "Write pytest tests for the pagination helper page({n}, size={q}) edge cases.",
    ),
    AgentKind(
        "api_designer",
        0.06,
        ("Design a REST endpoint for creating and listing webhooks, with status codes.",),
        "Design the API for resource #{n}: list, get, update, with pagination of {q}.",
    ),
    AgentKind(
        "architect",
        0.08,
        ("Propose an architecture for a multi-tenant event pipeline with exactly-once delivery.",),
        "Compare two architectures for service #{n} handling {q}k requests per second.",
    ),
    AgentKind(
        "security_reviewer",
        0.08,
        (f"Review this code for security vulnerabilities and race conditions:\n{_CODE}",),
        "Audit endpoint #{n} for injection and authorization flaws; it takes {q} parameters.",
    ),
    AgentKind(
        "codebase_analyst",
        0.06,
        (
            "Analyse this module and summarise its responsibilities:\n"
            + "\n".join(
                f"def handler_{i}(event):\n    return process(event, {i})" for i in range(60)
            ),
        ),
        "Summarise the design of repository section #{n} across these {q} files.",
    ),
    AgentKind(
        "translator",
        0.10,
        (
            "将以下文本翻译成英文：我们的服务今天下午三点进行维护。",
            "Traduis en anglais : le déploiement est prévu pour demain matin.",
        ),
        "翻译成英文：订单 {n} 已发货，共 {q} 件商品。",
    ),
)


def _agents(count: int) -> list[tuple[str, AgentKind]]:
    """`count` agents named after their kind (`validator-3`), in the plan's proportions."""
    out: list[tuple[str, AgentKind]] = []
    for kind in AGENT_KINDS:
        n = max(1, round(count * kind.share))
        out.extend((f"{kind.name}-{i + 1}", kind) for i in range(n))
    return out[: max(count, len(AGENT_KINDS))]


def _hidden_quality(catalog: Catalog, meta: Mapping[str, Any], kind: str) -> float:
    """A stand-in for a quality judge, following the answering model's card (see
    `testing._generate.synthetic_quality`): a model is not rewarded for work its card says it
    is not for, so the learned choices look like what a user would see live."""
    from .testing._generate import synthetic_quality

    route = meta.get("route")
    task = route.get("task_type") if isinstance(route, Mapping) else None
    return synthetic_quality(catalog.get(meta["model_name"]), task or "general", kind)


async def _workload(
    llm: Any,
    catalog: Catalog,
    agents: list[tuple[str, AgentKind]],
    per_agent: int,
    extra: int,
    seconds: float,
    repeat_share: float,
    progress: Progress,
    rng: random.Random,
) -> dict[str, Any]:
    # The first `extra` agents send one more request, so the total is what was asked for.
    task = progress.add_task("agents at work", total=len(agents) * per_agent + extra)
    outcome: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    think = seconds / max(per_agent, 1)
    counter = iter(range(10**9))

    async def agent(name: str, kind: AgentKind, count: int) -> None:
        bound = llm.bind(agent_name=name)
        await asyncio.sleep(rng.random() * think)
        for _ in range(count):
            if rng.random() < repeat_share:
                prompt = rng.choice(kind.prompts)
            else:
                n = next(counter)
                prompt = kind.fresh.format(n=n, q=rng.randint(2, 99), p=rng.randint(1, 999))
            try:
                msg = await bound.ainvoke(prompt)
                meta = msg.response_metadata
                outcome["cache" if meta.get("cache_hit") else "upstream"] += 1
                if not meta.get("cache_hit") and meta.get("request_id"):
                    quality = _hidden_quality(catalog, meta, kind.name)
                    quality = min(1.0, max(0.0, quality + rng.uniform(-0.05, 0.05)))
                    await llm.afeedback(meta["request_id"], quality)
            except Exception as exc:  # the demo reports failures instead of stopping
                errors[type(exc).__name__] += 1
            progress.advance(task)
            await asyncio.sleep(rng.uniform(0.5, 1.5) * think)

    await asyncio.gather(
        *(agent(name, kind, per_agent + (i < extra)) for i, (name, kind) in enumerate(agents))
    )
    return {"outcome": dict(outcome), "errors": dict(errors)}


def _summary(
    snap: dict[str, Any],
    server_stats: dict[str, Any] | None,
    result: dict[str, Any],
    elapsed: float,
) -> dict[str, Any]:
    perf = snap["performance"]
    by_status = (server_stats or {}).get("by_status", {})
    return {
        "elapsed_s": round(elapsed, 1),
        "requests": perf["requests_today"],
        "answered_from_cache": result["outcome"].get("cache", 0),
        "answered_upstream": result["outcome"].get("upstream", 0),
        "failed": sum(result["errors"].values()),
        "errors": result["errors"],
        "cache_hit_rate": {
            tier: snap["cache"].get(tier, {}).get("hit_rate", 0.0)
            for tier in ("l1", "l2", "l3", "total")
            if tier in snap["cache"]
        },
        "model_mix": {m: v["requests"] for m, v in snap["models"].items() if v.get("requests")},
        "key_spread": perf.get("by_key", {}),
        "server_429s": int(by_status.get("429", 0)) if server_stats else None,
        "server_requests": (server_stats or {}).get("requests"),
        "client_429s_received": perf["rate_limited_received"],
        "learner": snap.get("learning", {}),
    }


def _print_summary(summary: dict[str, Any], console: Console) -> None:
    t = Table(title="demo summary", show_header=False)
    t.add_column("what")
    t.add_column("value")
    t.add_row("elapsed", f"{summary['elapsed_s']} s")
    t.add_row("requests", str(summary["requests"]))
    t.add_row("answered from cache", str(summary["answered_from_cache"]))
    t.add_row("answered by Groq (local server)", str(summary["answered_upstream"]))
    t.add_row("failed", f"{summary['failed']} {summary['errors'] or ''}")
    t.add_row(
        "cache hit rate",
        ", ".join(f"{k} {v:.0%}" for k, v in summary["cache_hit_rate"].items()),
    )
    t.add_row("model mix", ", ".join(f"{m} {n}" for m, n in summary["model_mix"].items()))
    t.add_row("key spread", ", ".join(f"{k} {n}" for k, n in sorted(summary["key_spread"].items())))
    if summary["server_429s"] is not None:
        style = "green" if summary["server_429s"] == 0 else "red"
        t.add_row("429s sent by the server", f"[{style}]{summary['server_429s']}[/]")
    console.print(t)


def run_demo(
    *,
    live: bool = False,
    requests: int | None = None,
    agents: int | None = None,
    seconds: float | None = None,
    json_output: bool = False,
    seed: int = 7,
) -> int:
    """Run the demo; returns the exit code (non-zero if the server ever said 429)."""
    from .chat_models import ChatYmeraGroq
    from .config import YmeraSettings
    from .dashboard import render_snapshot
    from .engine import Engine

    console = Console(stderr=json_output, highlight=False)
    rng = random.Random(seed)
    if live and not os.environ.get("GROQ_API_KEY"):
        console.print("[red]--live needs GROQ_API_KEY[/red]")
        return 2
    n_agents = agents or (6 if live else 40)
    total = requests or (24 if live else 1000)
    duration = seconds if seconds is not None else (20.0 if live else 45.0)
    roster = _agents(n_agents)
    per_agent = max(1, total // len(roster))
    extra = max(0, total - per_agent * len(roster))

    server = None
    data_dir = tempfile.TemporaryDirectory(prefix="ymera-demo-")
    try:
        if live:
            settings = YmeraSettings(data_dir=data_dir.name)
        else:
            from .testing import GroqTestServer

            server = GroqTestServer(DEMO_KEYS).start()
            settings = YmeraSettings(
                api_keys=[
                    {"secret": k, "org": org, "label": f"{org.removeprefix('org_')}-{i}"}
                    for i, (k, org) in enumerate(DEMO_KEYS.items(), 1)
                ],
                base_url=server.base_url,
                data_dir=data_dir.name,
                max_wait=30.0,
            )
        engine = Engine(settings)
        llm = ChatYmeraGroq(engine=engine, temperature=0)
        console.print(
            f"[bold]ymera-groq demo[/bold] ({'live Groq' if live else 'offline, local Groq server'}"
            f"): {len(roster)} agents, {per_agent * len(roster) + extra} requests, "
            f"{len(settings.api_keys)} keys in "
            f"{len({k.organisation for k in settings.api_keys})} organisations, no Redis"
        )
        started = time.perf_counter()
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            result = asyncio.run(
                _workload(
                    llm, engine.catalog, roster, per_agent, extra, duration, 0.45, progress, rng
                )
            )
        elapsed = time.perf_counter() - started
        snap = engine.snapshot()
        server_stats = server.stats().as_dict() if server is not None else None
        summary = _summary(snap, server_stats, result, elapsed)
        if json_output:
            sys.stdout.write(json.dumps({"summary": summary, "snapshot": snap}, default=str) + "\n")
        else:
            render_snapshot(snap, console)
            _print_summary(summary, console)
        engine.close()
        return 1 if summary["server_429s"] else 0
    finally:
        if server is not None:
            server.stop()
        data_dir.cleanup()
