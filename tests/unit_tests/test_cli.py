"""The `ymera-groq` command line, run in-process through `cli.main([...])`."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from ymera_groq_plugin import cli, dashboard
from ymera_groq_plugin.catalog import default_catalog


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every command gets its own data directory and a wide-enough, colourless terminal."""
    monkeypatch.setenv("YMERA_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "80")
    yield tmp_path / "data"
    cli._close_engines()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr().out
    return code, out


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out = run(capsys, *argv)
    assert code == 0, out
    return json.loads(out)


# -- models and route ---------------------------------------------------------------------


def test_models_json_lists_the_served_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    models = run_json(capsys, "models", "--json")
    served = {m.id for m in default_catalog().served()}
    assert {m["id"] for m in models} == served
    assert all(set(m["limits"]) == {"rpm", "rpd", "tpm", "tpd"} for m in models)
    everything = run_json(capsys, "models", "--json", "--all")
    assert len(everything) == len(default_catalog().models) > len(models)


def test_models_table_reads_at_80_columns(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "models")
    assert code == 0
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    for m in default_catalog().served():
        # Short ids, whole on one line (not cut to "gpt-o…").
        assert m.id.rsplit("/", 1)[-1] in out
    assert "…" not in out
    assert "production" in out
    # Strengths with the sources they come from; the safety classifier marked as such.
    assert "strengths and tiers, from" in out
    assert "HF card" in out and "Groq page" in out
    assert "only moderation" in out


def test_models_json_carries_the_evidence(capsys: pytest.CaptureFixture[str]) -> None:
    models = {m["id"]: m for m in run_json(capsys, "models", "--json")}
    safe = models["openai/gpt-oss-safeguard-20b"]
    assert safe["only_for"] == ["moderation"]
    assert all(m["sources"] and m["rationale"] for m in models.values())
    assert {"name", "url", "says"} == set(safe["sources"][0])


def test_route_json_has_the_plan_and_its_reasons(capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(
        capsys,
        "route",
        "Review this login handler for SQL injection vulnerabilities: cursor.execute(q % x)",
        "--json",
    )
    assert {"task_type", "complexity", "estimated_tokens", "plan", "reasons"} <= set(data)
    # A review for vulnerabilities is security work, as the labelled sets have it ("Review
    # this login endpoint for security vulnerabilities"); "review this code for …" alone leans
    # to code review in them, so the test names what is reviewed for.
    assert data["task_type"] == "security"
    line = next(r for r in data["reasons"] if r.startswith("signals: security"))
    assert "sql injection" in line, line
    assert data["estimated_tokens"] > 0
    served = {m.id for m in default_catalog().served()}
    assert data["plan"] and set(data["plan"]) <= served
    assert data["reasons"] and all(isinstance(r, str) for r in data["reasons"])
    # The same shape for hard work; its reasons name the signals that decided the complexity.
    hard = run_json(capsys, "route", "Design a multi-region architecture for 50k orders per "
                    "second with exactly-once settlement and a zero-downtime migration plan.",
                    "--json")
    assert set(hard) == set(data)
    assert hard["complexity"] == "complex"
    line = next(r for r in hard["reasons"] if r.startswith("complexity complex (score"))
    assert "design verbs" in line or "hard artefact" in line or "scale words" in line, line
    code, out = run(capsys, "route", "Translate to French: good morning", "--agent", "translator")
    assert code == 0 and "plan" in out and "•" in out


def test_route_refuses_an_unknown_task_type(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "route", "hello", "--task", "no_such_task")
    assert code == 2
    assert "InvalidRequestError" in out


# -- keys -----------------------------------------------------------------------------------


def test_keys_without_any_key_says_how_to_add_one(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "keys")
    assert code == 0 and "GROQ_API_KEY" in out
    assert run_json(capsys, "keys", "--json") == []


# -- rendering --------------------------------------------------------------------------------


def test_alert_levels_are_coloured() -> None:
    snap = {
        "scope": "fleet",
        "mode": "redis",
        "namespace": "default",
        "alert_thresholds": [0.8, 0.9, 0.95],
        "api_keys": {
            "total": 1,
            "healthy": 0,
            "keys": [
                {
                    "label": "k1",
                    "org": "org_a",
                    "health": "cooling",
                    "usage": {
                        "rpm": {"used": 29, "max_fraction": 0.97},
                        "rpd": {"used": 29, "max_fraction": 0.03},
                        "tpm": {"used": 7300, "max_fraction": 0.91},
                        "tpd": {"used": 7300, "max_fraction": 0.04},
                    },
                }
            ],
        },
        "models": {},
        "cache": {},
        "performance": {
            "requests_today": 29,
            "success_rate": 1.0,
            "avg_latency_ms": 10.0,
            "p95_latency_ms": 20.0,
            "processes": 2,
        },
        "alerts": [
            {"level": "warning", "message": "tpd at 81%"},
            {"level": "critical", "message": "tpm at 91%"},
            {"level": "emergency", "message": "rpm at 97%"},
        ],
    }
    buf = io.StringIO()
    console = Console(
        file=buf, width=80, force_terminal=True, color_system="standard", highlight=False
    )
    cli.render_snapshot(snap, console)
    out = buf.getvalue()
    lines = {
        level: next(x for x in out.splitlines() if level.upper() in x)
        for level in ("warning", "critical", "emergency")
    }
    assert "\x1b[33m" in lines["warning"]  # yellow
    assert "\x1b[1;31m" in lines["critical"]  # bold red
    assert "\x1b[1;37;41m" in lines["emergency"]  # bold white on red
    assert "fleet of 2 processes" in out
    assert dashboard.level_of(0.79) is None and dashboard.level_of(0.8) == "warning"
    assert dashboard.level_of(0.9) == "critical" and dashboard.level_of(0.99) == "emergency"
    assert dashboard.human(14_400) == "14.4k" and dashboard.human(131_072) == "131k"
    assert dashboard.short_model("openai/gpt-oss-20b") == "gpt-oss-20b"


# -- learning ---------------------------------------------------------------------------------

TRAINING = {
    "validator:validation": {
        "executions": 12,
        "successes": 12,
        "avg_latency": 0.2,
        "quality_score": 0.8,
        "model_performance": {
            "openai/gpt-oss-20b": {
                "executions": 8,
                "successes": 8,
                "avg_latency": 0.15,
                "quality_score": 0.9,
            },
            "openai/gpt-oss-120b": {
                "executions": 4,
                "successes": 4,
                "avg_latency": 0.3,
                "quality_score": 0.6,
            },
        },
    }
}


def test_learning_export_import_round_trip(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "plan.json"
    source.write_text(json.dumps(TRAINING), encoding="utf-8")
    code, out = run(capsys, "learning", "import", str(source))
    assert code == 0 and "imported 12 executions" in out
    exported = run_json(capsys, "learning", "export")
    entry = exported["validator:validation"]
    assert entry["executions"] == 12 and entry["successes"] == 12
    perf = entry["model_performance"]
    assert perf["openai/gpt-oss-20b"]["executions"] == 8
    assert perf["openai/gpt-oss-20b"]["quality_score"] == pytest.approx(0.9)
    assert perf["openai/gpt-oss-120b"]["avg_latency"] == pytest.approx(0.3)
    top = run_json(capsys, "learning", "show", "--json")
    assert top["validator:validation"]["model"] == "openai/gpt-oss-20b"

    # Into a fresh data directory and out again: the same evidence.
    out_file = tmp_path / "export.json"
    code, _ = run(capsys, "learning", "export", str(out_file))
    assert code == 0
    monkeypatch.setenv("YMERA_DATA_DIR", str(tmp_path / "other"))
    code, out = run(capsys, "learning", "import", str(out_file))
    assert code == 0 and "imported 12 executions" in out
    assert run_json(capsys, "learning", "export") == exported
    code, table = run(capsys, "learning", "show")
    assert code == 0 and "validator:validation" in table and "gpt-oss-20b" in table


def test_learning_import_refuses_bad_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    code, out = run(capsys, "learning", "import", str(bad))
    assert code == 2 and "is not JSON" in " ".join(out.split())
    bad.write_text(json.dumps({"no-colon": {}}), encoding="utf-8")
    code, out = run(capsys, "learning", "import", str(bad))
    assert code == 2 and "agent:task_type" in " ".join(out.split())
    assert run_json(capsys, "learning", "export") == {}
