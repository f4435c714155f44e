from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from ymera_groq_plugin.catalog import default_catalog, load_catalog
from ymera_groq_plugin.errors import ConfigurationError, ModelRetiredError, UnknownModelError

TODAY = dt.date(2026, 11, 28)
SERVED = {
    "openai/gpt-oss-120b",
    "openai/gpt-oss-20b",
    "openai/gpt-oss-safeguard-20b",
    "qwen/qwen3.8-27b",
}
PLAN_SIX = [
    "llama-3.1-8b-instant",
    "llama-3.3-70b-versatile",
    "llama-4-maverick",
    "qwen3-32b",
    "kimi-k2",
    "gpt-oss-120b",
]


def test_served_models_today() -> None:
    cat = load_catalog(today=TODAY)
    assert {m.id for m in cat.served()} == SERVED


def test_every_entry_is_complete() -> None:
    for m in default_catalog():
        assert m.context_window > 0 and m.max_completion_tokens > 0
        assert m.limits.rpm and m.limits.rpd and m.limits.tpm
        if m.lifecycle.status == "shutdown":
            assert m.lifecycle.successor is not None, m.id


@pytest.mark.parametrize("name", PLAN_SIX)
def test_original_plan_names_resolve_to_served_models(name: str) -> None:
    cat = load_catalog(today=TODAY)
    resolved = cat.resolve(name)
    assert resolved.model.id in SERVED
    if resolved.model.id != "openai/gpt-oss-120b":
        assert resolved.warning and "shut down" in resolved.warning


def test_aliases_are_case_insensitive() -> None:
    cat = load_catalog(today=TODAY)
    assert cat.get("LLAMA-4-MAVERICK-17B").id == "meta-llama/llama-4-maverick-17b-128e-instruct"
    assert cat.get("kimi-k2").context_window == 262144


def test_refuse_retired_when_successor_serving_is_off() -> None:
    cat = load_catalog(today=TODAY, serve_successor=False)
    with pytest.raises(ModelRetiredError) as info:
        cat.resolve("llama-3.3-70b-versatile")
    assert info.value.successor == "openai/gpt-oss-120b"
    assert "2026-08-16" in str(info.value)


def test_lifecycle_follows_the_date() -> None:
    cat = load_catalog(today=dt.date(2026, 8, 15))
    assert cat.resolve("llama-3.1-8b-instant").warning is None
    cat = load_catalog(today=dt.date(2026, 8, 16))
    assert cat.resolve("llama-3.1-8b-instant").model.id == "openai/gpt-oss-20b"


def test_unknown_model() -> None:
    with pytest.raises(UnknownModelError, match="gpt-5"):
        load_catalog().get("gpt-5")


def test_fallback_chain_has_only_served_models() -> None:
    cat = load_catalog(today=TODAY)
    chain = [m.id for m in cat.fallback_chain("gpt-oss-120b")]
    assert chain == ["openai/gpt-oss-20b", "qwen/qwen3.8-27b"]


def test_overrides_from_file_and_kwargs(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(
        json.dumps(
            {
                "models": [
                    {"id": "openai/gpt-oss-20b", "limits": {"tpm": 250000, "rpm": 1000}},
                    {
                        "id": "acme/new-model",
                        "context_window": 32768,
                        "max_completion_tokens": 4096,
                        "limits": {"rpm": 10, "rpd": 100, "tpm": 1000, "tpd": 10000},
                    },
                ]
            }
        )
    )
    cat = load_catalog(path, overrides=[{"id": "acme/new-model", "aliases": ["acme"]}], today=TODAY)
    m = cat.get("openai/gpt-oss-20b")
    assert (m.limits.tpm, m.limits.rpm, m.limits.rpd) == (250000, 1000, 1000)
    assert cat.get("acme").context_window == 32768


def test_override_missing_fields_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        load_catalog(overrides=[{"id": "acme/incomplete", "context_window": 1000}])
    assert "acme/incomplete" in str(info.value)
    assert "max_completion_tokens" in str(info.value) and "limits" in str(info.value)


@pytest.mark.parametrize("content", ["not json", '{"models": 3}', '[{"context_window": 1}]'])
def test_bad_catalog_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigurationError):
        load_catalog(path)


def test_missing_catalog_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not found"):
        load_catalog(tmp_path / "nope.json")


def test_refresh_from_models_endpoint() -> None:
    cat = load_catalog(today=TODAY)
    payload = {
        "object": "list",
        "data": [
            {
                "id": "openai/gpt-oss-20b",
                "object": "model",
                "active": True,
                "context_window": 131072,
                "max_completion_tokens": 32768,
            },
            {"id": "openai/gpt-oss-120b", "object": "model", "active": False},
            {"id": "qwen/qwen3.8-27b", "object": "model", "active": True, "context_window": 131072},
            {
                "id": "newcorp/fresh-1",
                "object": "model",
                "active": True,
                "context_window": 65536,
                "max_completion_tokens": 8192,
            },
            {"id": "whisper-large-v3", "object": "model", "active": True},
        ],
    }
    fresh = cat.refresh_from_api(payload)
    assert fresh.get("openai/gpt-oss-20b").max_completion_tokens == 32768
    assert not fresh.get("openai/gpt-oss-120b").is_served(TODAY)
    assert not fresh.get("openai/gpt-oss-safeguard-20b").is_served(TODAY)  # not listed
    assert fresh.get("newcorp/fresh-1").context_window == 65536
    assert "whisper-large-v3" not in fresh
    with pytest.raises(ConfigurationError):
        cat.refresh_from_api({"object": "list"})
