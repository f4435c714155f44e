"""Replay Groq's wire format through a real `litellm.Router` with `attach()`.

The `litellm_*.yaml` cassettes are synthetic (recorded from the local Groq server through a
Router; see `cassettes/README.md` and `cassettes/litellm_build_cassettes.py`). They replay
offline against `https://api.groq.com` and `https://api.openai.com`: a request that no
cassette holds fails (record mode `none`), so these tests also prove that the package sent
nothing it should not have (no second Groq call after a 429).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml  # type: ignore[import-untyped]

from ymera_groq_plugin.config import YmeraSettings
from ymera_groq_plugin.engine import Engine
from ymera_groq_plugin.types import ChatRequest

if TYPE_CHECKING:
    # Imported inside the tests, never at collection: see `test_litellm._import_litellm`.
    from litellm import Router

    from ymera_groq_plugin.litellm import YmeraLiteLLM, attach, model_list_from_settings

CASSETTES = Path(__file__).resolve().parents[2] / "cassettes" / "litellm"
M = "openai/gpt-oss-20b"
GROQ_KEY = "gsk_replay0litellm000000000000001"
OPENAI_KEY = "sk-replay0litellm000000000000002"

pytestmark = pytest.mark.filterwarnings("ignore:Item.*ReadOnly. qualifier:UserWarning")


@pytest.fixture(scope="module")
def vcr_cassette_dir() -> str:
    # Apart from the Groq-only cassettes: one of these goes to another provider on purpose.
    return str(CASSETTES)


@pytest.fixture(autouse=True)
def _httpx_transport() -> Iterator[None]:
    """LiteLLM's httpx transport (the one the cassettes were recorded through)."""
    import litellm
    from litellm import Router

    from ymera_groq_plugin import litellm as ymera_litellm

    globals().update(
        Router=Router,
        YmeraLiteLLM=ymera_litellm.YmeraLiteLLM,
        attach=ymera_litellm.attach,
        model_list_from_settings=ymera_litellm.model_list_from_settings,
    )
    saved = (litellm.disable_aiohttp_transport, list(litellm.callbacks))
    litellm.disable_aiohttp_transport = True
    litellm.suppress_debug_info = True
    yield
    litellm.disable_aiohttp_transport, litellm.callbacks = saved[0], saved[1]


@pytest.fixture
async def attached(tmp_path: Path) -> AsyncIterator[Any]:
    """`make(strategy, fallback=False) -> (router, ymera, engine)` on Groq's public URL."""
    made: list[tuple[YmeraLiteLLM, Engine]] = []

    def make(strategy: bool, fallback: bool = False) -> tuple[Router, YmeraLiteLLM, Engine]:
        settings = YmeraSettings(
            api_keys=[{"secret": GROQ_KEY, "org": "org_cassette", "label": "key1"}],
            data_dir=tmp_path,
        )
        engine = Engine(settings)
        model_list = model_list_from_settings(settings)
        extra: dict[str, Any] = {}
        if fallback:
            model_list.append(
                {
                    "model_name": "openai-backup",
                    "litellm_params": {
                        "model": "openai/openai/gpt-oss-120b",
                        "api_key": OPENAI_KEY,
                        "api_base": "https://api.openai.com/v1",
                    },
                    "model_info": {"id": "openai-backup@key1"},
                }
            )
            extra["fallbacks"] = [{M: ["openai-backup"]}]
        router = Router(model_list=model_list, num_retries=0, **extra)
        ymera = attach(router, engine=engine, strategy=strategy)
        made.append((ymera, engine))
        return router, ymera, engine

    yield make
    for ymera, engine in made:
        await ymera.aflush()
        ymera.detach()
        await engine.aclose()


@pytest.mark.vcr("litellm_routed_completion.yaml")
async def test_a_routed_completion_picks_the_model_and_folds_the_headers(attached: Any) -> None:
    router, ymera, engine = attached(strategy=True)
    text = "Translate 'good morning' into Japanese."
    expected = engine.router.plan(
        ChatRequest(messages=({"role": "user", "content": text},), task_type="multilingual")
    ).models[0]
    response = await router.acompletion(
        model="groq-auto",
        messages=[{"role": "user", "content": text}],
        metadata={"agent_name": "translator", "task_type": "multilingual"},
        max_tokens=64,
    )
    assert response._hidden_params["model_id"] == f"groq-auto@{expected}@key1"
    await ymera.aflush()
    # The recorded usage was settled, and the recorded headers reached the ledger.
    recorded = _recorded_usage("litellm_routed_completion.yaml")
    assert ymera.accounting() == {
        ("org_cassette", expected): {
            "requests": 1,
            "prompt_tokens": recorded["prompt_tokens"],
            "completion_tokens": recorded["completion_tokens"],
        }
    }
    headers = _recorded_headers("litellm_routed_completion.yaml")
    usage = await engine.portal.arun(engine.quota.usage())
    reported = usage["models"][expected]["remaining"]["org_cassette"]
    assert (reported["requests"], reported["tokens"]) == (
        int(headers["x-ratelimit-remaining-requests"][0]),
        int(headers["x-ratelimit-remaining-tokens"][0]),
    )
    assert engine.learner is not None
    assert engine.learner.evidence("translator", "multilingual") == 1


@pytest.mark.vcr("litellm_stream.yaml")
@pytest.mark.parametrize("strategy", [False, True], ids=["filter", "strategy"])
async def test_a_stream_is_settled_with_its_final_usage(attached: Any, strategy: bool) -> None:
    router, ymera, engine = attached(strategy=strategy)
    stream = await router.acompletion(
        model=M,
        messages=[{"role": "user", "content": "Name three prime numbers."}],
        max_tokens=64,
        stream=True,
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks)
    for _ in range(500):
        if not ymera.live_reservations:
            break
        await asyncio.sleep(0.01)
    await ymera.aflush()
    (row,) = ymera.accounting().values()
    recorded = _recorded_usage("litellm_stream.yaml")
    assert row == {
        "requests": 1,
        "prompt_tokens": recorded["prompt_tokens"],
        "completion_tokens": recorded["completion_tokens"],
    }
    assert engine.quota.outstanding == 0


@pytest.mark.vcr("litellm_cross_provider_fallback.yaml")
@pytest.mark.parametrize("strategy", [False, True], ids=["filter", "strategy"])
async def test_a_groq_429_cools_the_organisation_and_the_fallback_provider_serves(
    attached: Any, strategy: bool
) -> None:
    router, ymera, engine = attached(strategy=strategy, fallback=True)
    served = []
    for question in ("What is 2 + 2?", "What is 3 + 3?"):
        response = await router.acompletion(
            model=M, messages=[{"role": "user", "content": question}], max_tokens=32
        )
        served.append(response._hidden_params["model_id"])
    # Groq answered 429 once; the second request never went to Groq (the cassette holds one
    # Groq interaction only, so another would have failed the test).
    assert served == ["openai-backup@key1", "openai-backup@key1"]
    await ymera.aflush()
    usage = await engine.portal.arun(engine.quota.usage())
    assert "org_cassette" in usage["models"][M]["cooling_until"]
    assert engine.stats.as_dict()["rate_limited_received"] == 1
    assert engine.quota.outstanding == 0


def test_the_litellm_cassettes_hold_no_credentials() -> None:
    for path in sorted(CASSETTES.glob("litellm_*.yaml")):
        text = path.read_text()
        assert text.startswith("# SYNTHETIC")
        assert "gsk_" not in text and "sk-" not in text
        assert "authorization" not in text.lower() and "bearer " not in text.lower()
        for interaction in yaml.safe_load(text)["interactions"]:
            assert interaction["request"]["uri"].startswith(
                ("https://api.groq.com/openai/v1/", "https://api.openai.com/v1/")
            )
            assert "x-ratelimit-remaining-requests" in interaction["response"]["headers"]


def _recorded_headers(name: str) -> dict[str, list[str]]:
    doc = yaml.safe_load((CASSETTES / name).read_text())
    headers: dict[str, list[str]] = doc["interactions"][0]["response"]["headers"]
    return headers


def _recorded_usage(name: str) -> dict[str, int]:
    """The usage Groq reported in a cassette's first answer (a body or a stream)."""
    doc = yaml.safe_load((CASSETTES / name).read_text())
    body = doc["interactions"][0]["response"]["body"]["string"]
    if not body.startswith("data:"):
        found: dict[str, int] = json.loads(body)["usage"]
        return found
    usage: dict[str, int] = {}
    for line in body.splitlines():
        if line.startswith("data: {"):
            chunk = json.loads(line.removeprefix("data: "))
            usage = chunk.get("usage") or (chunk.get("x_groq") or {}).get("usage") or usage
    return usage
