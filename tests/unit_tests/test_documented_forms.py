"""The forms the README documents: `api_keys` items of every kind, `TieredCache()` built like
LangChain's own caches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.globals import get_llm_cache, set_llm_cache
from langchain_core.outputs import Generation
from pydantic import SecretStr

from ymera_groq_plugin import ChatYmeraGroq, TieredCache
from ymera_groq_plugin.cache.lru import LRUCache
from ymera_groq_plugin.config import ApiKey, YmeraSettings
from ymera_groq_plugin.errors import ConfigurationError

K1 = "gsk_documented_forms_key_00000000000000000000000001"
K2 = "gsk_documented_forms_key_00000000000000000000000002"
K3 = "gsk_documented_forms_key_00000000000000000000000003"
K4 = "gsk_documented_forms_key_00000000000000000000000004"


def mixed() -> list[Any]:
    return [
        K1,
        SecretStr(K2),
        {"secret": K3, "org": "org_team", "label": "team"},
        ApiKey(secret=SecretStr(K4), label="ops", org="org_ops"),
    ]


EXPECTED = [("key1", None), ("key2", None), ("team", "org_team"), ("ops", "org_ops")]


def test_settings_take_every_form_mixed() -> None:
    keys = YmeraSettings(api_keys=mixed()).api_keys
    assert [(k.label, k.org) for k in keys] == EXPECTED
    assert [k.secret.get_secret_value() for k in keys] == [K1, K2, K3, K4]


def test_chat_model_takes_every_form_mixed(tmp_path: Path) -> None:
    llm = ChatYmeraGroq(model="openai/gpt-oss-20b", api_keys=mixed(), data_dir=tmp_path)
    assert llm.engine is not None
    assert [(k.label, k.org) for k in llm.engine.settings.api_keys] == EXPECTED
    # A dict without a label is labelled by its position, as strings are.
    other = ChatYmeraGroq(api_keys=[K1, {"secret": K2, "org": "org_b"}], data_dir=tmp_path)
    assert other.engine is not None
    assert [(k.label, k.org) for k in other.engine.settings.api_keys] == [
        ("key1", None),
        ("key2", "org_b"),
    ]


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ([K1, 42], "item 2: expected a key string"),
        ([K1, {"secret": K2, "organisation": "x"}], "item 2: a key dict takes"),
        ([{"org": "org_a", "label": "a"}], "item 1: a key dict takes"),
        ([K1, {"secret": 7}], "item 2: 'secret' must be a string"),
        ([K1, "gsk_has a space_in_it_000000000002"], "item 2: an API key must not contain"),
        ([K1, {"secret": K2, "label": ""}], "item 2: 'label' must be a non-empty string"),
        ([{"secret": K1, "label": "x"}, {"secret": K2, "label": "x"}], "labels must be unique"),
        (12, "must be a list of keys"),
    ],
)
def test_a_bad_item_names_its_position_never_the_key(bad: Any, says: str, tmp_path: Path) -> None:
    for build in (
        lambda: YmeraSettings(api_keys=bad),
        lambda: ChatYmeraGroq(api_keys=bad, data_dir=tmp_path),
    ):
        with pytest.raises(ConfigurationError, match=says) as info:
            build()
        text = str(info.value) + repr(info.value)
        for secret in (K1, K2, "gsk_has a space"):
            assert secret not in text


def test_tiered_cache_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YMERA_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("YMERA_NAMESPACE", "from-env")
    cache = TieredCache()
    assert repr(cache) == "<TieredCache l1+l3:sqlite namespace=from-env>"
    previous = get_llm_cache()
    set_llm_cache(cache)
    try:
        cache.update("prompt", "llm-string", [Generation(text="answer")])
        assert cache.lookup("prompt", "llm-string") == [Generation(text="answer")]
    finally:
        set_llm_cache(previous)
        cache.close()
    assert (tmp_path / "env" / "cache.db").exists()


def test_tiered_cache_refuses_tiers_and_urls_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="either tiers"):
        TieredCache(l1=LRUCache(10, 60.0), data_dir=tmp_path)
    only_l1 = TieredCache(l1=LRUCache(10, 60.0))
    assert repr(only_l1) == "<TieredCache l1 namespace=default>"
