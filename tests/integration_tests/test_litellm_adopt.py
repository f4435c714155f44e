"""`attach()` and `YmeraRoutingPlugin` on a Router that owns its keys.

The package's settings hold no key here: the Groq keys live only in the router's `model_list`
(literal and `os.environ/NAME`), as in a Router built the usual way. Every test runs a real
`litellm.Router` against the local Groq server and checks what the *server* saw.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ymera_groq_plugin.catalog import load_catalog
from ymera_groq_plugin.config import YmeraSettings
from ymera_groq_plugin.engine import Engine
from ymera_groq_plugin.testing.server import GroqTestServer

if TYPE_CHECKING:
    from litellm import Router

    from ymera_groq_plugin.litellm import YmeraLiteLLM, YmeraRoutingPlugin, attach

M = "openai/gpt-oss-20b"
LIMITS = {"rpm": 5, "rpd": 1000, "tpm": 6000, "tpd": 200_000}
KEYS = {
    "gsk_adoptaaaaaaaaaaaaaaaaaa01": "org_a",
    "gsk_adoptbbbbbbbbbbbbbbbbbb02": "org_b",
    "gsk_adoptcccccccccccccccccc03": "org_c",
}
ENV_NAME = "YMERA_TEST_ROUTER_KEY_B"

pytestmark = pytest.mark.filterwarnings("ignore:Item.*ReadOnly. qualifier:UserWarning")


@pytest.fixture(autouse=True)
def _litellm_state() -> Iterator[None]:
    """Import LiteLLM inside the test (see `test_litellm._import_litellm`) and keep its
    process-wide lists as the test found them."""
    import litellm
    from litellm import Router

    from ymera_groq_plugin import litellm as ymera_litellm

    globals().update(
        litellm=litellm,
        Router=Router,
        YmeraLiteLLM=ymera_litellm.YmeraLiteLLM,
        YmeraRoutingPlugin=ymera_litellm.YmeraRoutingPlugin,
        attach=ymera_litellm.attach,
    )
    litellm.suppress_debug_info = True
    saved = {
        name: list(getattr(litellm, name))
        for name in ("callbacks", "input_callback", "success_callback", "_async_success_callback")
    }
    yield
    for name, value in saved.items():
        setattr(litellm, name, value)


@pytest.fixture
async def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    """A local Groq server (three organisations), an engine with no key of its own."""
    monkeypatch.setenv(ENV_NAME, list(KEYS)[1])
    server = await GroqTestServer(KEYS, limits={M: LIMITS}).astart()
    engine = Engine(
        YmeraSettings(api_keys=[], data_dir=tmp_path, cache_enabled=False),
        catalog=load_catalog(overrides=[{"id": M, "limits": LIMITS}]),
    )
    attached: list[YmeraLiteLLM] = []
    yield server, engine, attached
    for ymera in attached:
        await ymera.aflush()
        ymera.detach()
    await engine.aclose()
    await server.astop()


def own_model_list(server: GroqTestServer, keys: list[str] | None = None) -> list[dict[str, Any]]:
    """A model list as users write it: one deployment per key, the second through the
    environment, no `model_info` at all."""
    out = []
    for secret in keys or list(KEYS):
        api_key = f"os.environ/{ENV_NAME}" if secret == list(KEYS)[1] else secret
        out.append(
            {
                "model_name": "fast",
                "litellm_params": {
                    "model": f"groq/{M}",
                    "api_key": api_key,
                    "api_base": server.openai_base_url,
                },
            }
        )
    return out


def ask(n: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"What is {n} plus {n}?"}]


def run_all(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def per_org(server: GroqTestServer) -> dict[str, int]:
    return {org: s.requests for (org, _), s in server.stats().by_org_model.items() if s.requests}


@pytest.mark.parametrize("strategy", [False, True], ids=["filter", "strategy"])
async def test_async_burst_on_the_routers_own_keys_gets_no_429(world: Any, strategy: bool) -> None:
    server, engine, attached = world
    router = Router(model_list=own_model_list(server), routing_strategy="simple-shuffle")
    ymera = attach(router, engine=engine, max_wait=0, strategy=strategy)
    attached.append(ymera)
    results = await asyncio.gather(
        *(router.acompletion(model="fast", messages=ask(n), max_tokens=16) for n in range(20)),
        return_exceptions=True,
    )
    await ymera.aflush()
    stats = server.stats()
    # Three organisations × 5 requests a minute: 15 answered, the rest refused before sending.
    assert stats.by_status == {200: 15} and stats.rate_limited == {}
    assert per_org(server) == {"org_a": 5, "org_b": 5, "org_c": 5}
    assert sum(not isinstance(r, BaseException) for r in results) == 15
    # The adopted keys show by label only.
    labels = {k.label for k in engine.quota.pool.keys}
    assert len(labels) == 3 and all(label.startswith("lk-") for label in labels)
    # Reservations held the prompt estimate, which is what the server counted, and no
    # completion budget (completion tokens are charged at settle).
    use = ymera.reservation_use()
    assert use["settled"] == 15
    assert (
        use["reserved_tokens"]
        == use["prompt_tokens"]
        == sum(s.prompt_tokens for s in server.stats().by_org_model.values())
    )
    # The monitor lists them too, with what they used.
    snap = await engine.asnapshot()
    listed = {k["label"]: k for k in snap["api_keys"]["keys"]}
    assert set(listed) == labels
    assert sum(k["usage"]["rpm"]["used"] for k in listed.values()) == 15
    shown = repr(ymera) + repr(engine.quota.pool) + repr(snap)
    assert not any(secret in shown for secret in KEYS)
    assert ymera.live_reservations == 0 and engine.quota.outstanding == 0


@pytest.mark.parametrize("strategy", [False, True], ids=["pre-call-check", "strategy"])
async def test_sync_calls_from_24_threads_get_no_429(world: Any, strategy: bool) -> None:
    server, engine, attached = world
    router = Router(model_list=own_model_list(server), routing_strategy="simple-shuffle")
    ymera = attach(router, engine=engine, max_wait=0, strategy=strategy)
    attached.append(ymera)
    outcomes: list[str] = []
    lock = threading.Lock()

    def call(n: int) -> None:
        try:
            router.completion(model="fast", messages=ask(n), max_tokens=16, num_retries=0)
            outcome = "answered"
        except Exception as exc:
            outcome = type(exc).__name__
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(24)]
    await asyncio.to_thread(run_all, threads)
    stats = server.stats()
    assert stats.rate_limited == {} and 429 not in stats.by_status
    assert len(outcomes) == 24
    # Whatever the random picks, no organisation was sent more than it admits.
    assert all(n <= 5 for n in per_org(server).values())
    assert outcomes.count("answered") == stats.by_status.get(200, 0) >= 5
    for _ in range(300):  # the sync path reports success from LiteLLM's logging thread
        if ymera.live_reservations == 0:
            break
        await asyncio.sleep(0.01)
    await ymera.aflush()
    assert ymera.live_reservations == 0 and engine.quota.outstanding == 0
    # Every answer was settled, per organisation (the package names organisations it was not
    # told about after their keys' labels).
    settled = [row["requests"] for row in ymera.accounting().values()]
    assert sorted(settled) == sorted(per_org(server).values())


async def test_sync_callers_wait_for_room_instead_of_429(tmp_path: Path) -> None:
    # Server and engine clocks run 60× faster: a minute window refills in a second, so 24
    # threads over three organisations × 5 requests a minute all get through by waiting.
    server = await GroqTestServer(KEYS, limits={M: LIMITS}, time_scale=60).astart()
    start = time.time()
    engine = Engine(
        YmeraSettings(api_keys=[], data_dir=tmp_path, cache_enabled=False, max_wait=600),
        catalog=load_catalog(overrides=[{"id": M, "limits": LIMITS}]),
        clock=lambda: start + (time.time() - start) * 60,
    )
    try:
        model_list = [
            {
                "model_name": "fast",
                "litellm_params": {
                    "model": f"groq/{M}",
                    "api_key": secret,
                    "api_base": server.openai_base_url,
                },
                "model_info": {"groq_org": org},
            }
            for secret, org in KEYS.items()
        ]
        router = Router(model_list=model_list, num_retries=0)
        ymera = attach(router, engine=engine)

        def call(n: int) -> None:
            router.completion(model="fast", messages=ask(n), max_tokens=16)

        threads = [threading.Thread(target=call, args=(n,)) for n in range(24)]
        await asyncio.to_thread(run_all, threads)
        stats = server.stats()
        assert stats.by_status == {200: 24} and stats.rate_limited == {}
        # The organisations came from `model_info["groq_org"]`.
        assert {engine.quota.pool.organisation(k) for k in engine.quota.pool.keys} == set(
            KEYS.values()
        )
        for _ in range(300):
            if ymera.live_reservations == 0:
                break
            await asyncio.sleep(0.01)
        await ymera.aflush()
        ymera.detach()
    finally:
        await engine.aclose()
        await server.astop()


async def test_a_deployment_added_after_attach_is_governed(world: Any) -> None:
    server, engine, attached = world
    first, second, third = list(KEYS)
    router = Router(model_list=own_model_list(server, [first]), num_retries=0)
    ymera = attach(router, engine=engine, max_wait=0)
    attached.append(ymera)
    from litellm.types.router import Deployment

    router.add_deployment(Deployment(**own_model_list(server, [second])[0]))
    router.set_model_list(own_model_list(server, [first, second, third]))
    results = await asyncio.gather(
        *(router.acompletion(model="fast", messages=ask(n), max_tokens=16) for n in range(18)),
        return_exceptions=True,
    )
    await ymera.aflush()
    stats = server.stats()
    assert stats.rate_limited == {} and stats.by_status == {200: 15}
    assert per_org(server) == {"org_a": 5, "org_b": 5, "org_c": 5}
    assert sum(not isinstance(r, BaseException) for r in results) == 15
    assert len(engine.quota.pool.keys) == 3


async def test_a_router_the_package_cannot_govern_gets_a_warning(
    world: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, engine, attached = world
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    no_groq = [
        {
            "model_name": "other",
            "litellm_params": {"model": f"openai/{M}", "api_key": "sk-x", "api_base": "http://x"},
        }
    ]
    keyless = [
        {
            "model_name": "fast",
            "litellm_params": {"model": f"groq/{M}", "api_base": server.openai_base_url},
        }
    ]
    for model_list, reason in [(no_groq, "no Groq deployment"), (keyless, "have no key")]:
        router = Router(model_list=model_list)
        with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match=reason):
            attached.append(attach(router, engine=engine))
        assert reason in caplog.text
        caplog.clear()
    # Some governed, one not: a warning in the log names what is left out (no UserWarning).
    router = Router(model_list=own_model_list(server, [next(iter(KEYS))]) + keyless)
    with caplog.at_level(logging.WARNING):
        attached.append(attach(router, engine=engine))
    assert "1 of the router's Groq deployments cannot be governed: 1 have no key" in caplog.text
    caplog.clear()
    # LiteLLM's own default, GROQ_API_KEY, is a key like any other.
    monkeypatch.setenv("GROQ_API_KEY", next(iter(KEYS)))
    router = Router(model_list=keyless)
    attached.append(attach(router, engine=engine))
    response = await router.acompletion(model="fast", messages=ask(1), max_tokens=16)
    assert response.choices[0].message.content
    assert not any(secret in caplog.text for secret in KEYS)


async def test_the_plugin_form_governs_the_async_path(world: Any) -> None:
    server, engine, attached = world
    plugin = YmeraRoutingPlugin(engine=engine, max_wait=0)
    attached.append(plugin.ymera)
    router = Router(model_list=own_model_list(server), num_retries=0, plugins=[plugin])
    results = await asyncio.gather(
        *(router.acompletion(model="fast", messages=ask(n), max_tokens=16) for n in range(20)),
        return_exceptions=True,
    )
    await plugin.ymera.aflush()
    stats = server.stats()
    assert stats.by_status == {200: 15} and stats.rate_limited == {}
    assert sum(not isinstance(r, BaseException) for r in results) == 15
    assert not any(secret in repr(plugin) for secret in KEYS)
    # LiteLLM refuses sync calls on a router with plugins: the plugin form is async only.
    with pytest.raises(ValueError, match="synchronous"):
        router.completion(model="fast", messages=ask(99), max_tokens=16)
