from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from ymera_groq_plugin.config import ApiKey, YmeraSettings, discover_keys, mask_key
from ymera_groq_plugin.errors import ConfigurationError

KEY_A = "gsk_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1b2"
KEY_B = "gsk_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbc3d4"
KEY_C = "gsk_cccccccccccccccccccccccccccccccccccccccccccccccce5f6"


def test_mask_key_shows_prefix_and_last_four() -> None:
    assert mask_key(KEY_A) == "gsk_…a1b2"
    assert mask_key(SecretStr(KEY_B)) == "gsk_…c3d4"
    assert KEY_A not in mask_key(KEY_A)
    assert mask_key("short") == "…"


def test_discover_numbered_keys_with_gaps_duplicates_and_orgs() -> None:
    env = {
        "GROQ_API_KEY": KEY_A,
        "GROQ_API_KEY_3": KEY_B,
        "GROQ_API_KEY_7": KEY_C,
        "GROQ_API_KEY_9": KEY_A,  # duplicate of key 1: dropped
        "GROQ_ORG": "org_main",
        "GROQ_ORG_7": "org_side",
        "GROQ_KEY_LABEL_3": "backup",
    }
    keys = discover_keys(env)
    assert [k.label for k in keys] == ["key1", "backup", "key7"]
    assert [k.org for k in keys] == ["org_main", None, "org_side"]
    assert keys[1].organisation == "org:backup"
    assert keys[0].secret.get_secret_value() == KEY_A


def test_settings_read_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GROQ_API_KEY", KEY_A)
    monkeypatch.setenv("GROQ_API_KEY_2", KEY_B)
    monkeypatch.setenv("GROQ_BASE_URL", "http://127.0.0.1:9999/")
    monkeypatch.setenv("YMERA_REDIS_URL", "redis://localhost:6379/2")
    monkeypatch.setenv("YMERA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("YMERA_ALERT_THRESHOLDS", "0.5, 0.75,0.99")
    monkeypatch.setenv(
        "YMERA_FALLBACK_MODELS", "mistral/mistral-small-latest,gemini/gemini-2.0-flash"
    )
    s = YmeraSettings()
    assert [k.label for k in s.api_keys] == ["key1", "key2"]
    assert s.base_url == "http://127.0.0.1:9999"
    assert s.redis_url == "redis://localhost:6379/2"
    assert not s.embedded
    assert s.data_dir == tmp_path
    assert s.alert_thresholds == (0.5, 0.75, 0.99)
    assert s.fallback_models == ("mistral/mistral-small-latest", "gemini/gemini-2.0-flash")


def test_keyword_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROQ_API_KEY", KEY_A)
    monkeypatch.setenv("YMERA_CACHE_L1_TTL", "5")
    monkeypatch.setenv("GROQ_BASE_URL", "http://env.example")
    s = YmeraSettings(api_keys=[KEY_C], cache_l1_ttl=9, base_url="http://kw.example")
    assert [k.secret.get_secret_value() for k in s.api_keys] == [KEY_C]
    assert s.cache_l1_ttl == 9
    assert s.base_url == "http://kw.example"


def test_embedded_by_default() -> None:
    s = YmeraSettings()
    assert s.embedded
    assert s.api_keys == ()
    assert s.data_dir.name == "ymera-groq"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("YMERA_REDIS_URL", "http://localhost:6379"),
        ("YMERA_REDIS_URL", "redis://:notaport"),
        ("YMERA_CACHE_L1_TTL", "soon"),
        ("YMERA_CACHE_L1_MAX_ENTRIES", "-3"),
        ("YMERA_MAX_WAIT", "-1"),
        ("YMERA_ALERT_THRESHOLDS", "0.9,0.8"),
        ("YMERA_ALERT_THRESHOLDS", "80,90"),
        ("YMERA_CONTEXT_MARGIN", "1.5"),
        ("GROQ_BASE_URL", "api.groq.com"),
        ("YMERA_NAMESPACE", "has space"),
        ("YMERA_QUALITY_FLOOR", "1.5"),
        ("YMERA_QUALITY_FLOOR", "high"),
    ],
)
def test_bad_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as info:
        YmeraSettings()
    assert variable in str(info.value)
    assert info.value.setting is not None


def test_bad_keyword_names_the_argument() -> None:
    with pytest.raises(ConfigurationError, match="argument 'redis_url'"):
        YmeraSettings(redis_url="mysql://x")


def test_quality_floor_from_environment_and_keyword(monkeypatch: pytest.MonkeyPatch) -> None:
    assert YmeraSettings().quality_floor == 0.5
    monkeypatch.setenv("YMERA_QUALITY_FLOOR", "0.7")
    assert YmeraSettings().quality_floor == 0.7
    with pytest.raises(ConfigurationError, match="argument 'quality_floor'"):
        YmeraSettings(quality_floor=-0.1)


def test_blank_or_spaced_key_is_refused_without_echo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROQ_API_KEY_2", "gsk_with space_secretvalue")
    with pytest.raises(ConfigurationError) as info:
        YmeraSettings()
    assert "GROQ_API_KEY_2" in str(info.value)
    assert "secretvalue" not in str(info.value)


def test_reprs_never_show_keys() -> None:
    s = YmeraSettings(
        api_keys=[KEY_A, {"secret": KEY_B, "org": "org_x", "label": "team"}],
        redis_url="redis://user:hunter2@localhost:6379/0",
    )
    text = repr(s) + str(s) + repr(s.api_keys) + str(s.api_keys[0]) + repr(s.model_dump())
    assert KEY_A not in text and KEY_B not in text
    assert "hunter2" not in repr(s)
    assert "gsk_…a1b2" in repr(s)
    assert repr(s.api_keys[1]) == "<ApiKey team org=org_x gsk_…c3d4>"


def test_duplicate_keys_and_labels() -> None:
    s = YmeraSettings(api_keys=[KEY_A, KEY_A, KEY_B])
    assert len(s.api_keys) == 2
    with pytest.raises(ConfigurationError, match="labels must be unique"):
        YmeraSettings(
            api_keys=[
                ApiKey(secret=SecretStr(KEY_A), label="x"),
                ApiKey(secret=SecretStr(KEY_B), label="x"),
            ]
        )
