"""Agent and task hints given in `config["metadata"]` reach the route when streaming too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ymera_groq_plugin import ChatYmeraGroq, YmeraSettings
from ymera_groq_plugin.testing import GroqTestServer

KEY = "gsk_stream_hints_000000000000000001"
CONFIG = {"metadata": {"agent_name": "reviewer-7", "task_type": "security"}}


@pytest.fixture(scope="module")
def server() -> Iterator[GroqTestServer]:
    with GroqTestServer({KEY: "org_hints"}) as srv:
        yield srv


def _model(server: GroqTestServer, tmp_path: Path) -> ChatYmeraGroq:
    settings = YmeraSettings(api_keys=[KEY], base_url=server.base_url, data_dir=tmp_path)
    return ChatYmeraGroq(settings=settings, temperature=0.5)


def _route(chunks: list) -> dict:
    routes = [c.response_metadata["route"] for c in chunks if "route" in c.response_metadata]
    assert len(routes) == 1
    return routes[0]


def test_stream_sees_config_metadata(server: GroqTestServer, tmp_path: Path) -> None:
    llm = _model(server, tmp_path)
    route = _route(list(llm.stream("Say hello", config=CONFIG)))
    assert route["agent_name"] == "reviewer-7"
    assert route["task_type"] == "security"


async def test_astream_sees_config_metadata(server: GroqTestServer, tmp_path: Path) -> None:
    llm = _model(server, tmp_path)
    route = _route([c async for c in llm.astream("Say hello", config=CONFIG)])
    assert route["agent_name"] == "reviewer-7"
    assert route["task_type"] == "security"
