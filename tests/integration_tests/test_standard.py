"""LangChain's standard integration suite for `ChatYmeraGroq`, against the local Groq server.

Every call goes over real HTTP to `ymera_groq_plugin.testing.GroqTestServer` (Groq's wire
format, headers and limits; limits raised 100-fold so the suite never waits), through the whole
engine: cache, routing, quota, the official SDK. Three keys in three organisations.

Skipped or expected to fail, and why:

- `test_image_inputs`, `test_image_tool_message`, `test_pdf_inputs`, `test_pdf_tool_message`,
  `test_audio_inputs`, `test_anthropic_inputs`: skipped by the suite itself
  (`supports_*_inputs` is False). The chat models Groq still serves to free and developer
  organisations (`openai/gpt-oss-*`, `qwen/qwen3.8-27b`) take text only, and the local server
  answers none of these content types.
- `test_stream_time`: skipped by the suite itself: it needs `enable_vcr_tests` (a benchmark
  replayed from a VCR cassette); streaming is covered by the cassette tests and the benchmark.
- `test_tool_calling` (sync and async) and `test_unicode_tool_call_integration` are xfailed:
  the local Groq server fills tool arguments from the JSON schema (`1` for an integer,
  `"example"` for a string) instead of reading them from the prompt, and these tests check the
  values (`{"input": 3}`, a Chinese customer name). Tool calling itself (binding, the call,
  `tool_calls`, tool messages back, `tool_choice`, tools without arguments, agent loops) passes
  in the other standard tests.
- `test_json_mode` is xfailed: the server's JSON mode answers `{"answer": …, "ref": …}` and
  does not use the keys the prompt asks for (`setup`, `punchline`). JSON mode through the
  engine is covered by `test_engine.py` and the cassette tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_tests.integration_tests import ChatModelIntegrationTests

from ymera_groq_plugin import ChatYmeraGroq
from ymera_groq_plugin.catalog import default_catalog
from ymera_groq_plugin.config import YmeraSettings
from ymera_groq_plugin.engine import Engine
from ymera_groq_plugin.testing.server import GroqTestServer

MODEL = "openai/gpt-oss-20b"
KEYS = {
    "gsk_standard_suite_key_a_000000000000000000000001": "org_std_a",
    "gsk_standard_suite_key_b_000000000000000000000002": "org_std_b",
    "gsk_standard_suite_key_c_000000000000000000000003": "org_std_c",
}
_SETUP: dict[str, Any] = {}
_ARGS_REASON = (
    "The local Groq server fills tool arguments from the schema (1 for an integer, 'example' "
    "for a string), not from the prompt, so the suite's value checks cannot hold."
)
_JSON_REASON = (
    "The local Groq server's JSON mode answers {'answer', 'ref'}; it does not read the keys "
    "a prompt asks for."
)


def _generous_limits() -> dict[str, dict[str, int | None]]:
    out: dict[str, dict[str, int | None]] = {}
    for m in default_catalog().served():
        lim = m.limits.as_dict()
        out[m.id] = {k: (v * 100 if v is not None else None) for k, v in lim.items()}
    return out


@pytest.fixture(scope="module", autouse=True)
def groq_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GroqTestServer]:
    """One local Groq server for the module; the engine's catalog knows its limits."""
    limits = _generous_limits()
    tmp = tmp_path_factory.mktemp("standard")
    catalog = Path(tmp) / "catalog.json"
    catalog.write_text(json.dumps([{"id": m, "limits": v} for m, v in limits.items()]))
    with GroqTestServer(KEYS, limits=limits) as server:
        _SETUP["settings"] = YmeraSettings(
            api_keys=list(KEYS),
            base_url=server.base_url,
            data_dir=Path(tmp) / "data",
            catalog_path=catalog,
        )
        yield server
    engine = Engine.shared(_SETUP.pop("settings"))
    engine.close()


class TestChatYmeraGroqStandard(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatYmeraGroq

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": MODEL, "settings": _SETUP["settings"]}

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str:
        return "openai/gpt-oss-120b"

    @property
    def supported_usage_metadata_details(self) -> dict[str, list[Any]]:
        return {"invoke": ["reasoning_output"], "stream": ["reasoning_output"]}

    def invoke_with_reasoning_output(self, *, stream: bool = False) -> AIMessage:
        llm = ChatYmeraGroq(**self.chat_model_params, reasoning_effort="low")
        prompt = "Think step by step: what is 3 ^ 3?"
        if not stream:
            return llm.invoke(prompt)
        full: Any = None
        for chunk in llm.stream(prompt):
            full = chunk if full is None else full + chunk
        assert isinstance(full, AIMessageChunk)
        return full

    # -- behaviours the local Groq server does not have ---------------------------------------

    @pytest.mark.xfail(reason=_ARGS_REASON)
    def test_tool_calling(self, model: BaseChatModel) -> None:
        super().test_tool_calling(model)

    @pytest.mark.xfail(reason=_ARGS_REASON)
    async def test_tool_calling_async(self, model: BaseChatModel) -> None:
        await super().test_tool_calling_async(model)

    @pytest.mark.xfail(reason=_ARGS_REASON)
    def test_unicode_tool_call_integration(
        self,
        model: BaseChatModel,
        *,
        tool_choice: str | None = None,  # noqa: PT028 - the base test's signature
        force_tool_call: bool = True,  # noqa: PT028
    ) -> None:
        super().test_unicode_tool_call_integration(
            model, tool_choice=tool_choice, force_tool_call=force_tool_call
        )

    @pytest.mark.xfail(reason=_JSON_REASON)
    def test_json_mode(self, model: BaseChatModel) -> None:
        super().test_json_mode(model)
