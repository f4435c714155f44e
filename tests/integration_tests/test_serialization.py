"""`ChatYmeraGroq` through LangChain's serialization: `dumps`, then `loads` with an allowlist.

langchain-core 1.x refuses every class outside its own mappings, even with
`allowed_objects="all"`; a third-party class loads when it is named in `allowed_objects` and
its namespace is in `valid_namespaces`. Keys never enter the dump: `groq_api_key` is written as
a secret reference (`lc_secrets`), and `api_keys` is not written at all.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core._api import LangChainBetaWarning
from langchain_core.load import dumps, loads

from ymera_groq_plugin import ChatYmeraGroq
from ymera_groq_plugin.testing import GroqTestServer

KEY = "gsk_serialization_test_key_000000000000000000000001"
OTHER = "gsk_serialization_test_key_000000000000000000000002"


@pytest.fixture
def server() -> Iterator[GroqTestServer]:
    with GroqTestServer({KEY: "org_ser", OTHER: "org_ser"}) as srv:
        yield srv


def _loads(text: str, **kwargs: object) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LangChainBetaWarning)  # `load` is marked beta
        return loads(text, **kwargs)  # type: ignore[arg-type]


def test_round_trip_keeps_the_configuration_and_no_key(
    server: GroqTestServer, tmp_path: Path
) -> None:
    llm = ChatYmeraGroq(
        model="openai/gpt-oss-20b",
        api_key=KEY,
        api_keys=[KEY, {"secret": OTHER, "org": "org_ser", "label": "second"}],
        base_url=server.base_url,
        data_dir=tmp_path,
        agent_name="summariser",
        task_type="analysis",
        temperature=0.2,
        max_tokens=32,
    )
    text = dumps(llm)
    assert KEY not in text and OTHER not in text
    assert '"GROQ_API_KEY"' in text  # the secret travels as a reference only

    with pytest.raises(ValueError, match="not allowed"):
        _loads(text, allowed_objects="all")
    with pytest.raises(ValueError, match="Invalid namespace"):
        _loads(text, allowed_objects=[ChatYmeraGroq])

    loaded = _loads(
        text,
        allowed_objects=[ChatYmeraGroq],
        valid_namespaces=["ymera_groq_plugin"],
        secrets_map={"GROQ_API_KEY": KEY},
    )
    assert isinstance(loaded, ChatYmeraGroq)
    assert (loaded.model_name, loaded.agent_name, loaded.task_type) == (
        "openai/gpt-oss-20b",
        "summariser",
        "analysis",
    )
    assert (loaded.temperature, loaded.max_tokens) == (0.2, 32)
    assert loaded.groq_api_key is not None and loaded.groq_api_key.get_secret_value() == KEY
    assert loaded.api_keys is None  # never serialised: give them again, or use the environment
    answer = loaded.invoke("Say hello")
    assert answer.response_metadata["model_name"] == "openai/gpt-oss-20b"
    assert server.stats().by_status == {200: 1}
