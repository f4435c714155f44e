"""The dashboard: a monitoring snapshot rendered for a terminal, and the formatting it shares
with the command line's tables.

`ymera-groq status` and `ymera-groq demo` print it; examples print it from their own
processes. It reads only the snapshot dict (`monitor.build_snapshot`), never an engine, so it
imports nothing of the package above it. Tables are laid out to read on an 80-column terminal;
alert levels are coloured (80 % yellow, 90 % red, 95 % white on red).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["human", "level_of", "render_snapshot", "short_model"]

_LEVEL_STYLE = {
    "warning": "yellow",
    "critical": "bold red",
    "emergency": "bold white on red",
}
_HEALTH_STYLE = {
    "healthy": "green",
    "cooling": "yellow",
    "degraded": "dark_orange",
    "disabled": "bold red",
}
_DEFAULT_THRESHOLDS = (0.8, 0.9, 0.95)
_KINDS = ("rpm", "rpd", "tpm", "tpd")


def _table(title: str | None = None, **kwargs: Any) -> Table:
    # A light box with collapsed padding: two spaces between columns, so a table of ten
    # short columns fits 80 columns.
    return Table(
        title=title,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1),
        collapse_padding=True,
        title_justify="left",
        title_style="bold",
        **kwargs,
    )


def short_model(model_id: str) -> str:
    """A model id without its vendor prefix (`openai/gpt-oss-20b` → `gpt-oss-20b`)."""
    return model_id.rsplit("/", 1)[-1]


def human(value: float | int | None) -> str:
    """A compact number: 950, 1.2k, 14.4k, 131k, 1M."""
    if value is None:
        return "–"
    v = float(value)
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if abs(v) >= size:
            scaled = v / size
            text = f"{scaled:.1f}" if abs(scaled) < 100 else f"{scaled:.0f}"
            return text.removesuffix(".0") + unit
    return f"{v:.0f}"


def level_of(fraction: float, thresholds: Sequence[float] = _DEFAULT_THRESHOLDS) -> str | None:
    """The alert level a share of a limit reaches (`None` under the first threshold)."""
    ths = sorted(thresholds)
    crossed = [i for i, th in enumerate(ths) if fraction >= th]
    if not crossed:
        return None
    return ("warning", "critical", "emergency")[min(crossed[-1], 2)]


def _styled(text: str, fraction: float, thresholds: Sequence[float]) -> str:
    level = level_of(fraction, thresholds)
    return f"[{_LEVEL_STYLE[level]}]{text}[/]" if level else text


def _used_cell(v: Any, thresholds: Sequence[float]) -> str:
    """`used/limit` in compact numbers, coloured by alert level."""
    if not isinstance(v, Mapping):
        return "–"
    used, limit = v.get("used") or 0, v.get("limit")
    if not limit:
        return human(used)
    return _styled(f"{human(used)}/{human(limit)}", used / limit, thresholds)


def _name_width(names: Iterable[str]) -> int:
    """Room for the short model ids (longer ones fold)."""
    return min(24, max((len(short_model(n)) for n in names), default=10))


def _remaining_cell(remaining: Any) -> str:
    """What Groq's headers said remains, summed over organisations: `requests/day · tokens/min`."""
    if not isinstance(remaining, Mapping) or not remaining:
        return "–"
    req = sum(r.get("requests") or 0 for r in remaining.values() if isinstance(r, Mapping))
    tok = sum(r.get("tokens") or 0 for r in remaining.values() if isinstance(r, Mapping))
    return f"{human(req)}·{human(tok)}"


def _health(state: str) -> str:
    style = _HEALTH_STYLE.get(state)
    return f"[{style}]{state}[/]" if style else state


def render_snapshot(snap: Mapping[str, Any], console: Console) -> None:
    """Print a snapshot as the dashboard: summary, keys, models, cache, learning, alerts."""
    thresholds: Sequence[float] = snap.get("alert_thresholds") or _DEFAULT_THRESHOLDS
    keys = snap["api_keys"]
    perf = snap["performance"]
    cache = snap.get("cache") or {}
    scope = snap.get("scope", "process")
    procs = perf.get("processes")
    where = (
        f"fleet of {procs} process{'es' if procs != 1 else ''}"
        if scope == "fleet"
        else ("this process")
    )
    console.print(
        f"[bold]ymera-groq[/bold] · {where} · {snap.get('mode', '')} · "
        f"namespace {snap.get('namespace', 'default')}"
    )
    received = perf.get("rate_limited_received", 0)
    ok = perf.get("success_rate", 1.0)
    summary = Table.grid(padding=(0, 2))
    for _ in range(3):
        summary.add_column()
    summary.add_row(
        f"keys [bold]{keys['healthy']}/{keys['total']}[/bold] healthy",
        f"requests [bold]{perf['requests_today']}[/bold]",
        "success " + _ratio_cell(ok, ok < 0.9),
    )
    summary.add_row(
        f"latency avg [bold]{perf['avg_latency_ms']:.0f}[/bold] ms",
        f"p95 [bold]{perf['p95_latency_ms']:.0f}[/bold] ms",
        "cache hits " + _ratio_cell((cache.get("total") or {}).get("hit_rate", 0.0), False),
    )
    summary.add_row(
        f"Groq calls [bold]{perf.get('upstream_calls', 0)}[/bold]",
        "429s received " + (f"[bold red]{received}[/]" if received else "[green]0[/]"),
        f"waited for quota {perf.get('rate_limited_avoided', 0)}",
    )
    console.print(summary)

    if keys["keys"]:
        t = _table("keys (busiest model per limit)")
        t.add_column("label", overflow="fold")
        t.add_column("org", overflow="fold")
        t.add_column("health")
        for kind in _KINDS:
            t.add_column(kind.upper(), justify="right")
        t.add_column("calls", justify="right")
        by_key = perf.get("by_key") or {}
        for k in keys["keys"]:
            u = k.get("usage") or {}
            t.add_row(
                escape(k["label"]),
                escape(str(k.get("org", ""))),
                _health(str(k.get("health", ""))),
                *(_fraction_cell(u.get(kind), thresholds) for kind in _KINDS),
                str(by_key.get(k["label"], 0)),
            )
        console.print()
        console.print(t)

    models = {
        name: m
        for name, m in (snap.get("models") or {}).items()
        if m.get("requests")
        or any((m.get(kind) or {}).get("used") for kind in _KINDS)
        or m.get("served")
    }
    if models:
        t = _table("models (used/limit over all organisations)")
        t.add_column("model", overflow="fold", min_width=_name_width(models))
        t.add_column("req", justify="right")
        for kind in _KINDS:
            t.add_column(kind.upper(), justify="right", no_wrap=True)
        t.add_column("Groq left", justify="right", no_wrap=True)
        for name, m in sorted(models.items()):
            t.add_row(
                escape(short_model(name)),
                human(m.get("requests", 0)),
                *(_used_cell(m.get(kind), thresholds) for kind in _KINDS),
                _remaining_cell(m.get("remaining_reported")),
            )
        console.print()
        console.print(t)
        if any(m.get("remaining_reported") for m in models.values()):
            console.print("[dim]Groq left: requests/day · tokens/minute, as Groq last said[/dim]")

    if cache:
        t = _table("cache")
        for col in ("tier", "hits", "misses", "hit rate", "size", "lookup ms"):
            t.add_column(col, justify="left" if col == "tier" else "right")
        for tier in ("l1", "l2", "l3"):
            c = cache.get(tier)
            if isinstance(c, Mapping) and c.get("enabled", True):
                t.add_row(
                    tier,
                    human(c.get("hits", 0)),
                    human(c.get("misses", 0)),
                    f"{c.get('hit_rate', 0.0):.0%}",
                    human(c.get("size")) if c.get("size") is not None else "–",
                    f"{c.get('mean_lookup_ms', 0.0):.2f}",
                )
        tot = cache.get("total") or {}
        t.add_row(
            "[bold]total[/bold]",
            human(tot.get("hits", 0)),
            human(tot.get("misses", 0)),
            f"{tot.get('hit_rate', 0.0):.0%}",
            human(tot.get("size")) if tot.get("size") is not None else "",
            "",
        )
        console.print()
        console.print(t)

    learning = snap.get("learning") or {}
    if learning:
        t = _table("learning: best model per agent and task")
        t.add_column("agent:task", overflow="fold", ratio=2)
        t.add_column("model", overflow="fold", ratio=1)
        t.add_column("score", justify="right")
        t.add_column("runs", justify="right")
        for key, rec in sorted(learning.items())[:20]:
            t.add_row(
                escape(key),
                escape(short_model(str(rec.get("model")))),
                f"{rec.get('score', 0):.2f}",
                str(rec.get("executions", "")),
            )
        if len(learning) > 20:
            t.caption = f"… and {len(learning) - 20} more (ymera-groq learning show)"
        console.print()
        console.print(t)

    alerts = snap.get("alerts") or []
    if alerts:
        console.print("[bold]alerts[/bold]")
    for alert in alerts:
        level = str(alert.get("level", ""))
        style = _LEVEL_STYLE.get(level, "")
        message = escape(str(alert.get("message", "")))
        console.print(f"  [{style}]{level.upper():<9}[/] {message}")
    for problem in snap.get("problems") or []:
        console.print(f"[red]! {escape(str(problem))}[/red]")


def _ratio_cell(value: float, bad: bool) -> str:
    return f"[bold {'red' if bad else 'green'}]{value:.1%}[/]" if bad else f"[bold]{value:.1%}[/]"


def _fraction_cell(v: Any, thresholds: Sequence[float]) -> str:
    if not isinstance(v, Mapping):
        return "–"
    frac = float(v.get("max_fraction") or 0.0)
    return _styled(f"{human(v.get('used', 0))} {frac:.0%}", frac, thresholds)
