"""The `ymera-groq` command line.

```
ymera-groq demo [--live] [--requests N] [--agents N] [--seconds S] [--json]
ymera-groq status [--json] [--watch SECONDS] [--process] [--prometheus]
ymera-groq metrics [--serve PORT] [--addr ADDR] [--process]
ymera-groq models [--json] [--all]
ymera-groq route "text" [--agent NAME] [--task TYPE] [--json]
ymera-groq keys [--json]
ymera-groq learning show|export|import [FILE|-] [--json]
```

Configuration comes from the environment (`GROQ_API_KEY…`, `YMERA_REDIS_URL`, …), as for
`YmeraSettings`. With `YMERA_REDIS_URL` set, `status`, `keys` and `metrics` show the whole
fleet; without it they show only what this process (and the data directory) knows. Tables are
laid out to read on an 80-column terminal; alert levels are coloured (80 % yellow, 90 % red,
95 % white on red).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from .dashboard import (
    _KINDS,
    _health,
    _name_width,
    _remaining_cell,
    _styled,
    _table,
    human,
    render_snapshot,
    short_model,
)
from .errors import YmeraError

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["build_parser", "main", "render_snapshot"]  # render_snapshot: from `dashboard`


def _console() -> Console:
    return Console(highlight=False)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


# -- formatting -------------------------------------------------------------------------


# -- models ------------------------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> int:
    from .catalog import load_catalog
    from .config import YmeraSettings

    settings = YmeraSettings()
    catalog = load_catalog(settings.catalog_path, serve_successor=settings.serve_successor)
    rows = [m for m in catalog.models if args.all or m.is_served(catalog.today)]
    reported: dict[str, Any] = {}
    if settings.redis_url and settings.api_keys:
        # Only the shared ledger knows what Groq reported; a fresh embedded process knows nothing.
        snap = _engine(settings).snapshot()
        reported = {
            name: {k: m[k] for k in ("limits_reported", "remaining_reported") if k in m}
            for name, m in snap["models"].items()
            if "limits_reported" in m or "remaining_reported" in m
        }
    if args.json:
        out = []
        for m in rows:
            entry = m.model_dump(mode="json")
            if m.id in reported:
                entry["reported"] = reported[m.id]
            out.append(entry)
        _print_json(out)
        return 0
    con = _console()
    table = _table(f"Groq models ({len(catalog.served())} served; limits per organisation)")
    table.add_column("model", overflow="fold", min_width=_name_width(m.id for m in rows))
    for col in ("ctx", "out", "RPM", "RPD", "TPM", "TPD"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("s/q", no_wrap=True)
    table.add_column("status", overflow="fold")
    if reported:
        table.add_column("Groq left", justify="right")
    retired: list[str] = []
    for m in rows:
        served = m.is_served(catalog.today)
        status = m.lifecycle.status if served else "retired"
        if not served:
            successor = short_model(m.lifecycle.successor) if m.lifecycle.successor else "none"
            retired.append(f"{short_model(m.id)} → {successor}")
        lim = m.limits
        cells = [
            escape(short_model(m.id)),
            human(m.context_window),
            human(m.max_completion_tokens),
            *(human(v) if v else "–" for v in (lim.rpm, lim.rpd, lim.tpm, lim.tpd)),
            f"{m.speed_tier}/{m.quality_tier}",
            status if served else f"[dim]{status}[/dim]",
        ]
        if reported:
            cells.append(_remaining_cell(reported.get(m.id, {}).get("remaining_reported")))
        table.add_row(*cells)
    con.print(table)
    for line in retired:
        con.print(f"[dim]  retired: {escape(line)}[/dim]")
    con.print("[dim]s/q: speed/quality, 1–5[/dim]")
    _print_strengths(con, rows)
    return 0


def _print_strengths(con: Console, rows: Sequence[Any]) -> None:
    """Each model's strengths and the sources they come from (`--json` has the URLs)."""
    table = _table("strengths and tiers, from")
    table.add_column("model", overflow="fold", min_width=_name_width(m.id for m in rows))
    table.add_column("strengths", overflow="fold", ratio=3)
    table.add_column("source", overflow="fold", ratio=2)
    for m in rows:
        strengths = ", ".join(m.strengths) or "–"
        if m.only_for:
            strengths = f"only {', '.join(m.only_for)}" + (
                "" if set(m.strengths) <= set(m.only_for) else f"; {strengths}"
            )
        sources = ", ".join(dict.fromkeys(s.name for s in m.sources)) or "[red]none[/red]"
        table.add_row(escape(short_model(m.id)), escape(strengths), sources)
    con.print(table)
    con.print("[dim]sources' pages and what each says: ymera-groq models --json[/dim]")


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
    table = _table("plan")
    table.add_column("#", justify="right")
    table.add_column("model", overflow="fold")
    for i, m in enumerate(data["plan"], 1):
        table.add_row(str(i), escape(m))
    con.print(table)
    for reason in data["reasons"]:
        con.print(f"  • {escape(reason)}")
    for model, why in data.get("dropped", {}).items():
        con.print(f"  [dim]✗ {escape(model)}: {escape(str(why))}[/dim]")
    return 0


# -- engine-backed commands ------------------------------------------------------------------

_OPENED: list[Engine] = []


def _engine(settings: Any = None) -> Engine:
    """The process's shared engine for the environment's configuration."""
    from .engine import Engine

    engine = Engine.shared(settings)
    if engine not in _OPENED:
        _OPENED.append(engine)
    return engine


def _close_engines() -> None:
    """Close the engines this command line used (flushes Redis and SQLite connections)."""
    while _OPENED:
        _OPENED.pop().close()


def cmd_keys(args: argparse.Namespace) -> int:
    from .config import YmeraSettings

    settings = YmeraSettings()
    keys: list[dict[str, Any]] = []
    thresholds: Sequence[float] = settings.alert_thresholds
    if settings.api_keys:
        keys = _engine(settings).snapshot()["api_keys"]["keys"]
    rows = [
        {
            "label": k["label"],
            "key": k["key"],
            "organisation": k["org"],
            "evidence": _org_evidence(k),
            "health": k["health"],
            "usage": {kind: k["usage"][kind]["max_fraction"] for kind in _KINDS},
        }
        for k in keys
    ]
    if args.json:
        _print_json(rows)
        return 0
    con = _console()
    if not rows:
        con.print("No keys: set GROQ_API_KEY (and GROQ_API_KEY_2, …, GROQ_ORG_N).")
        return 0
    orgs = len({r["organisation"] for r in rows})
    table = _table(f"{len(rows)} keys in {orgs} organisations (use of the busiest model)")
    for col in ("label", "key", "organisation", "evidence", "health"):
        table.add_column(col, overflow="fold")
    for kind in _KINDS:
        table.add_column(kind.upper(), justify="right")
    for r in rows:
        table.add_row(
            escape(r["label"]),
            escape(r["key"]),
            escape(r["organisation"]),
            escape(r["evidence"]),
            _health(r["health"]),
            *(_styled(f"{r['usage'][k]:.0%}", r["usage"][k], thresholds) for k in _KINDS),
        )
    con.print(table)
    if not settings.redis_url:
        con.print("[dim]embedded mode: health and use as this process knows them[/dim]")
    return 0


def _org_evidence(key: Mapping[str, Any]) -> str:
    """Where the key's organisation comes from: configured, assumed, or inferred and why."""
    if key.get("org_evidence"):
        return f"inferred: {key['org_evidence']}"
    if str(key.get("org", "")).startswith("org:"):
        return "assumed (unlabelled; set GROQ_ORG_N)"
    return "configured"


def cmd_status(args: argparse.Namespace) -> int:
    from .config import YmeraSettings

    settings = YmeraSettings()
    engine = _engine(settings)
    fleet = False if args.process else None
    if args.prometheus:
        from .metrics import metrics_text

        sys.stdout.write(metrics_text(engine, fleet=fleet))
        return 0
    con = _console()
    while True:
        snap = _snapshot(engine, fleet)
        if args.json:
            sys.stdout.write(json.dumps(snap, sort_keys=True, default=str) + "\n")
            if not args.watch:
                return 0
        else:
            if args.watch:
                con.clear()
            render_snapshot(snap, con)
            if snap.get("mode") == "embedded" and not args.watch:
                con.print(
                    "[dim]embedded mode: this process only; set YMERA_REDIS_URL to see a "
                    "fleet[/dim]"
                )
        if not args.watch:
            return 0
        sys.stdout.flush()
        time.sleep(args.watch)


def _snapshot(engine: Engine, fleet: bool | None) -> dict[str, Any]:
    from .monitor import build_snapshot

    return engine.portal.run(build_snapshot(engine, fleet=fleet))


def cmd_metrics(args: argparse.Namespace) -> int:
    from .metrics import metrics_text, serve_metrics

    engine = _engine()
    fleet = False if args.process else None
    if args.serve is None:
        sys.stdout.write(metrics_text(engine, fleet=fleet))
        return 0
    server = serve_metrics(engine, args.serve, addr=args.addr, fleet=fleet)
    _console().print(f"serving {server.url} (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(3600)
    finally:
        server.close()


# -- learning ----------------------------------------------------------------------------


def cmd_learning(args: argparse.Namespace) -> int:
    from .config import YmeraSettings
    from .errors import InvalidRequestError
    from .learning import Learner

    data: Any = None
    if args.action == "import":
        if not args.file:
            raise InvalidRequestError("learning import needs a file (or - for stdin)")
        raw = sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(f"{args.file} is not JSON: {exc}") from None

    async def run() -> Any:
        learner = Learner.from_settings(YmeraSettings())
        try:
            await learner.refresh()
            if args.action == "export":
                return await learner.export_training_data()
            if args.action == "import":
                return await learner.import_training_data(data)
            return learner.top_recommendations()
        finally:
            await learner.aclose()

    result = asyncio.run(run())
    if args.action == "export":
        text = json.dumps(result, indent=2, sort_keys=True) + "\n"
        if args.file and args.file != "-":
            Path(args.file).write_text(text, encoding="utf-8")
            _console().print(f"exported {len(result)} agent:task entries to {args.file}")
        else:
            sys.stdout.write(text)
    elif args.action == "import":
        _console().print(f"imported {result} executions")
    else:
        _show_learning(result, args.json)
    return 0


def _show_learning(top: Mapping[str, Mapping[str, Any]], as_json: bool) -> None:
    if as_json:
        _print_json(top)
        return
    con = _console()
    if not top:
        con.print("Nothing learned yet (each agent and task needs about ten runs).")
        return
    table = _table("best model per agent and task")
    table.add_column("agent:task", overflow="fold", ratio=2)
    table.add_column("model", overflow="fold", ratio=1)
    table.add_column("score", justify="right")
    table.add_column("runs", justify="right")
    for key, rec in sorted(top.items()):
        table.add_row(
            escape(key),
            escape(short_model(str(rec.get("model")))),
            f"{rec.get('score', 0):.2f}",
            str(rec.get("executions", "")),
        )
    con.print(table)


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
    p.add_argument("--requests", type=_positive_int, default=None, help="number of requests")
    p.add_argument("--agents", type=_positive_int, default=None, help="number of agents")
    p.add_argument("--seconds", type=float, default=None, help="target duration")
    p.add_argument("--json", action="store_true", help="print the final snapshot as JSON")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("status", help="the monitoring snapshot (the fleet's, with Redis)")
    p.add_argument("--json", action="store_true", help="one JSON object (per refresh)")
    p.add_argument("--watch", type=float, default=0.0, metavar="SECONDS", help="refresh")
    p.add_argument("--process", action="store_true", help="this process's counters only")
    p.add_argument("--prometheus", action="store_true", help="Prometheus text exposition")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("metrics", help="Prometheus metrics (print, or serve over HTTP)")
    p.add_argument("--serve", type=int, metavar="PORT", help="serve /metrics on this port")
    p.add_argument("--addr", default="127.0.0.1", help="address to bind with --serve")
    p.add_argument("--process", action="store_true", help="this process's counters only")
    p.set_defaults(func=cmd_metrics)

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

    p = sub.add_parser("keys", help="masked keys, their health and use")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("learning", help="show, export or import what the learner knows")
    p.add_argument("action", choices=["show", "export", "import"])
    p.add_argument("file", nargs="?", help="a JSON file, or - for stdin/stdout")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_learning)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    Engines the command opens are closed at the end when it runs as the program
    (`argv is None`); called in-process with `argv`, the process's shared engines stay open
    for the caller.
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except YmeraError as exc:
        # Messages hold brackets (`ymera-groq-plugin[redis]`) that are not markup.
        _console().print(f"[red]error:[/red] {type(exc).__name__}: {escape(str(exc))}")
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if argv is None:
            _close_engines()


if __name__ == "__main__":
    raise SystemExit(main())
