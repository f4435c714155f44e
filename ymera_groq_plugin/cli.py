"""The `ymera-groq` command line: `demo`, `status`, `models`, `route`, `keys`, `learning`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .errors import YmeraError

__all__ = ["main"]

_LEVEL_STYLE = {"warning": "yellow", "critical": "red", "emergency": "bold white on red"}


def _console() -> Console:
    return Console(highlight=False)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


# -- models ------------------------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> int:
    from .catalog import load_catalog
    from .config import YmeraSettings

    settings = YmeraSettings()
    catalog = load_catalog(settings.catalog_path, serve_successor=settings.serve_successor)
    rows = [
        m for m in catalog.models if args.all or m.is_served(catalog.today)
    ]
    if args.json:
        _print_json([m.model_dump(mode="json") for m in rows])
        return 0
    table = Table(title=f"Groq models ({len(catalog.served())} served)")
    for col in ("model", "context", "max out", "RPM", "RPD", "TPM", "TPD", "speed", "quality",
                "status", "strengths"):
        table.add_column(col, justify="right" if col in ("context", "max out", "RPM", "RPD",
                                                         "TPM", "TPD") else "left")
    for m in rows:
        served = m.is_served(catalog.today)
        status = m.lifecycle.status if served else f"shut down → {m.lifecycle.successor}"
        lim = m.limits
        table.add_row(
            m.id,
            f"{m.context_window:,}",
            f"{m.max_completion_tokens:,}",
            *(f"{v:,}" if v else "–" for v in (lim.rpm, lim.rpd, lim.tpm, lim.tpd)),
            "★" * m.speed_tier,
            "★" * m.quality_tier,
            status if served else f"[dim]{status}[/dim]",
            ", ".join(m.strengths[:4]),
        )
    _console().print(table)
    return 0


# -- route -------------------------------------------------------------------------------


def cmd_route(args: argparse.Namespace) -> int:
    from .routing import explain_route

    plan = explain_route(args.text, agent=args.agent, task=args.task)
    data = plan.as_dict()
    if args.json:
        _print_json(data)
        return 0
    con = _console()
    con.print(
        f"[bold]task[/bold] {data['task_type']}  [bold]complexity[/bold] {data['complexity']}  "
        f"[bold]estimated tokens[/bold] {data['estimated_tokens']}"
    )
    table = Table(title="plan")
    table.add_column("#", justify="right")
    table.add_column("model")
    for i, m in enumerate(data["plan"], 1):
        table.add_row(str(i), m)
    con.print(table)
    for reason in data["reasons"]:
        con.print(f"  • {reason}")
    for model, why in data.get("dropped", {}).items():
        con.print(f"  [dim]✗ {model}: {why}[/dim]")
    return 0


# -- keys and status ---------------------------------------------------------------------


def _engine() -> Any:
    from .engine import Engine

    return Engine.shared()


def cmd_keys(args: argparse.Namespace) -> int:
    from .config import YmeraSettings

    settings = YmeraSettings()
    health: dict[str, Any] = {}
    if settings.api_keys:
        snap = _engine().snapshot()
        health = {k["label"]: k for k in snap["api_keys"]["keys"]}
    rows = [
        {
            "label": k.label,
            "key": k.masked,
            "organisation": k.org or "(own)",
            "health": health.get(k.label, {}).get("health", "unknown"),
        }
        for k in settings.api_keys
    ]
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        _console().print("No keys: set GROQ_API_KEY (and GROQ_API_KEY_2, …).")
        return 0
    table = Table(title=f"{len(rows)} keys")
    for col in ("label", "key", "organisation", "health"):
        table.add_column(col)
    for r in rows:
        style = "green" if r["health"] == "healthy" else "yellow"
        table.add_row(r["label"], r["key"], r["organisation"], f"[{style}]{r['health']}[/]")
    _console().print(table)
    return 0


def render_snapshot(snap: dict[str, Any], console: Console) -> None:
    """Print a snapshot as the dashboard: keys, models, cache, performance, alerts."""
    keys = snap["api_keys"]
    perf = snap["performance"]
    cache = snap["cache"]
    console.print(
        f"[bold]keys[/bold] {keys['healthy']}/{keys['total']} healthy   "
        f"[bold]requests[/bold] {perf['requests_today']}   "
        f"[bold]success[/bold] {perf['success_rate']:.1%}   "
        f"[bold]avg[/bold] {perf['avg_latency_ms']:.1f} ms   "
        f"[bold]p95[/bold] {perf['p95_latency_ms']:.1f} ms   "
        f"[bold]429s received[/bold] {perf['rate_limited_received']}"
    )
    t = Table(title="keys")
    for col in ("label", "org", "health", "rpm", "rpd", "tpm", "tpd"):
        t.add_column(col)
    for k in keys["keys"]:
        u = k.get("usage", {})
        t.add_row(
            k["label"], str(k.get("org", "")), k.get("health", ""),
            *(_used(u.get(x)) for x in ("rpm", "rpd", "tpm", "tpd")),
        )
    console.print(t)
    t = Table(title="models")
    for col in ("model", "requests", "tokens", "rpd used", "tpd used", "remaining (Groq)"):
        t.add_column(col)
    for model, m in sorted(snap["models"].items()):
        t.add_row(
            model,
            str(m.get("requests", 0)),
            str(m.get("tokens", 0)),
            _used(m.get("rpd")),
            _used(m.get("tpd")),
            str(m.get("remaining_reported", "–")),
        )
    console.print(t)
    t = Table(title="cache")
    for col in ("tier", "hits", "misses", "hit rate", "size", "lookup ms"):
        t.add_column(col)
    for tier in ("l1", "l2", "l3"):
        c = cache.get(tier)
        if c:
            t.add_row(tier, str(c["hits"]), str(c["misses"]), f"{c['hit_rate']:.1%}",
                      str(c.get("size", "–")), f"{c.get('mean_lookup_ms', 0):.3f}")
    tot = cache.get("total", {})
    t.add_row("total", str(tot.get("hits", 0)), str(tot.get("misses", 0)),
              f"{tot.get('hit_rate', 0):.1%}", "", "")
    console.print(t)
    learning = snap.get("learning", {})
    if learning:
        t = Table(title="learning: best model per agent and task")
        for col in ("agent:task", "model", "score", "executions"):
            t.add_column(col)
        for key, rec in sorted(learning.items())[:20]:
            t.add_row(key, str(rec.get("model")), f"{rec.get('score', 0):.2f}",
                      str(rec.get("executions", "")))
        console.print(t)
    for alert in snap.get("alerts", []):
        style = _LEVEL_STYLE.get(alert.get("level", ""), "")
        console.print(f"[{style}]{alert.get('level', '').upper()}[/] {alert.get('message', '')}")


def _used(v: Any) -> str:
    if not isinstance(v, dict):
        return "–"
    limit = v.get("limit")
    used = v.get("used", 0)
    if not limit:
        return f"{used:,.0f}"
    return f"{used:,.0f}/{limit:,} ({used / limit:.0%})"


def cmd_status(args: argparse.Namespace) -> int:
    engine = _engine()
    con = _console()
    while True:
        snap = engine.snapshot()
        if args.json:
            _print_json(snap)
        else:
            if args.watch:
                con.clear()
            render_snapshot(snap, con)
        if not args.watch:
            return 0
        time.sleep(args.watch)


# -- learning ----------------------------------------------------------------------------


def cmd_learning(args: argparse.Namespace) -> int:
    from .config import YmeraSettings
    from .learning import Learner

    async def run() -> int:
        learner = Learner.from_settings(YmeraSettings())
        try:
            await learner.refresh()
            if args.action == "export":
                data = await learner.export_training_data()
                text = json.dumps(data, indent=2, sort_keys=True)
                if args.file and args.file != "-":
                    Path(args.file).write_text(text + "\n", encoding="utf-8")
                else:
                    sys.stdout.write(text + "\n")
            elif args.action == "import":
                if not args.file:
                    raise SystemExit("learning import needs a file")
                raw = sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
                n = await learner.import_training_data(json.loads(raw))
                _console().print(f"imported {n} executions")
            else:
                top = learner.top_recommendations()
                if args.json:
                    _print_json(top)
                else:
                    table = Table(title="best model per agent and task")
                    for col in ("agent:task", "model", "score", "executions"):
                        table.add_column(col)
                    for key, rec in sorted(top.items()):
                        table.add_row(key, str(rec.get("model")), f"{rec.get('score', 0):.2f}",
                                      str(rec.get("executions", "")))
                    _console().print(table)
            return 0
        finally:
            await learner.aclose()

    return asyncio.run(run())


# -- demo --------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(
        live=args.live,
        requests=args.requests,
        agents=args.agents,
        seconds=args.seconds,
        json_output=args.json,
    )


# -- entry point -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ymera-groq",
        description="Quota-aware Groq routing, caching and learning for LangChain and LiteLLM.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run a multi-agent workload offline against a local server")
    p.add_argument("--live", action="store_true", help="use the real Groq API (GROQ_API_KEY)")
    p.add_argument("--requests", type=int, default=None, help="number of requests")
    p.add_argument("--agents", type=int, default=None, help="number of agents")
    p.add_argument("--seconds", type=float, default=None, help="target duration")
    p.add_argument("--json", action="store_true", help="print the final snapshot as JSON")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("status", help="the monitoring snapshot")
    p.add_argument("--json", action="store_true")
    p.add_argument("--watch", type=float, default=0.0, metavar="SECONDS")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("models", help="the model catalog with limits")
    p.add_argument("--json", action="store_true")
    p.add_argument("--all", action="store_true", help="include shut-down models")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("route", help="show the plan for a task, with its reasons")
    p.add_argument("text")
    p.add_argument("--agent")
    p.add_argument("--task")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_route)

    p = sub.add_parser("keys", help="masked keys and their health")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("learning", help="show, export or import what the learner knows")
    p.add_argument("action", choices=["show", "export", "import"])
    p.add_argument("file", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_learning)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except YmeraError as exc:
        _console().print(f"[red]error:[/red] {type(exc).__name__}: {exc}")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
