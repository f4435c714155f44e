"""The `ymera-groq` command line, run in-process through `cli.main([...])`."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from ymera_groq_plugin import cli
from ymera_groq_plugin.catalog import default_catalog
from ymera_groq_plugin.chat_models import ChatYmeraGroq
from ymera_groq_plugin.config import YmeraSettings
from ymera_groq_plugin.engine import Engine
from ymera_groq_plugin.testing import GroqTestServer

SECRET_A = "gsk_cli_test_alpha_00000000000000a1"
SECRET_B = "gsk_cli_test_beta_000000000000000b2"


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every command gets its own data directory and a wide-enough, colourless terminal."""
    monkeypatch.setenv("YMERA_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "80")
    yield tmp_path / "data"
    cli._close_engines()


@pytest.fixture
def groq_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[GroqTestServer]:
    """Two keys in two organisations, configured only through environment variables."""
    with GroqTestServer({SECRET_A: "org_alpha", SECRET_B: "org_beta"}) as server:
        monkeypatch.setenv("GROQ_API_KEY", SECRET_A)
        monkeypatch.setenv("GROQ_ORG", "org_alpha")
        monkeypatch.setenv("GROQ_KEY_LABEL_1", "alpha")
        monkeypatch.setenv("GROQ_API_KEY_2", SECRET_B)
        monkeypatch.setenv("GROQ_ORG_2", "org_beta")
        monkeypatch.setenv("GROQ_KEY_LABEL_2", "beta")
        monkeypatch.setenv("GROQ_BASE_URL", server.base_url)
        yield server


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
        capsys, "route", "Review this code for SQL injection: cursor.execute(q % x)", "--json"
    )
    assert {"task_type", "complexity", "estimated_tokens", "plan", "reasons"} <= set(data)
    assert data["task_type"] == "code_review"
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


# -- keys and status against a local server configured through the environment --------------


def test_keys_shows_labels_and_masks_only(
    capsys: pytest.CaptureFixture[str], groq_env: GroqTestServer
) -> None:
    rows = run_json(capsys, "keys", "--json")
    assert [(r["label"], r["organisation"], r["health"]) for r in rows] == [
        ("alpha", "org_alpha", "healthy"),
        ("beta", "org_beta", "healthy"),
    ]
    assert rows[0]["key"].startswith("gsk_") and "…" in rows[0]["key"]
    code, table = run(capsys, "keys")
    assert code == 0 and "alpha" in table and "org_beta" in table
    for text in (json.dumps(rows), table):
        assert SECRET_A not in text and SECRET_B not in text
        assert SECRET_A[4:-4] not in text


def test_keys_without_any_key_says_how_to_add_one(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "keys")
    assert code == 0 and "GROQ_API_KEY" in out
    assert run_json(capsys, "keys", "--json") == []


def test_status_json_shows_what_the_engine_did(
    capsys: pytest.CaptureFixture[str], groq_env: GroqTestServer
) -> None:
    engine = Engine.shared(YmeraSettings())  # the engine `ymera-groq status` will look at
    llm = ChatYmeraGroq(engine=engine, temperature=0, agent_name="validator")
    for i in range(6):
        llm.invoke(f'Validate this JSON: {{"id": {i % 3}}}')
    snap = run_json(capsys, "status", "--json")
    assert snap["scope"] == "process" and snap["mode"] == "embedded"
    assert snap["api_keys"]["total"] == 2 and snap["api_keys"]["healthy"] == 2
    assert [k["label"] for k in snap["api_keys"]["keys"]] == ["alpha", "beta"]
    perf = snap["performance"]
    assert perf["requests_today"] == 6 and perf["success_rate"] == 1.0
    assert perf["upstream_calls"] == 3 == groq_env.stats().by_status.get(200)
    assert perf["cache_hits"] == 3 and perf["rate_limited_received"] == 0
    assert perf["p95_latency_ms"] >= perf["p50_latency_ms"] > 0
    used = [m for m, v in snap["models"].items() if v["requests"]]
    assert sum(snap["models"][m]["requests_today"] for m in used) == 3
    assert snap["cache"]["total"]["hits"] == 3 and snap["cache"]["l1"]["hit_rate"] == 0.5
    assert snap["alerts"] == [] and snap["problems"] == []
    text = json.dumps(snap)
    assert SECRET_A not in text and SECRET_B not in text

    code, table = run(capsys, "status")
    assert code == 0
    assert "requests 6" in table and "alpha" in table and "cache" in table
    assert max(len(line) for line in table.splitlines()) <= 80


def test_status_prometheus_and_metrics_print_the_exposition(
    capsys: pytest.CaptureFixture[str], groq_env: GroqTestServer
) -> None:
    code, text = run(capsys, "status", "--prometheus")
    assert code == 0
    assert "# TYPE ymera_requests_total counter" in text
    assert 'ymera_key_health{key="alpha",org="org_alpha",state="healthy"} 1.0' in text
    code, again = run(capsys, "metrics", "--process")
    assert code == 0 and "ymera_request_latency_seconds_bucket" in again


def test_a_missing_prometheus_extra_names_the_extra(
    capsys: pytest.CaptureFixture[str],
    groq_env: GroqTestServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    code, out = run(capsys, "metrics")
    assert code == 2
    assert "ymera-groq-plugin[prometheus]" in out.replace("\n", "")


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
    assert cli.level_of(0.79) is None and cli.level_of(0.8) == "warning"
    assert cli.level_of(0.9) == "critical" and cli.level_of(0.99) == "emergency"
    assert cli.human(14_400) == "14.4k" and cli.human(131_072) == "131k"
    assert cli.short_model("openai/gpt-oss-20b") == "gpt-oss-20b"


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


# -- demo -------------------------------------------------------------------------------------


def test_small_demo_finishes_with_zero_429s(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_json(
        capsys, "demo", "--requests", "40", "--agents", "10", "--seconds", "2", "--json"
    )
    summary = result["summary"]
    assert summary["server_429s"] == 0 and summary["client_429s_received"] == 0
    assert summary["failed"] == 0
    assert summary["requests"] == 40
    assert summary["answered_from_cache"] + summary["answered_upstream"] == 40
    assert summary["elapsed_s"] < 20
    snap = result["snapshot"]
    assert snap["api_keys"]["total"] == 6
    assert sum(v["requests"] for v in snap["models"].values()) == summary["answered_upstream"]
