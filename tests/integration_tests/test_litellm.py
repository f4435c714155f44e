"""A real `litellm.Router` in front of the local Groq server, with `attach()`.

Each test starts a `GroqTestServer` whose keys belong to different organisations, builds the
router's model list with `model_list_from_settings`, attaches the package (the filter in front
of the router's own strategy, or the strategy itself) and checks what the *server* saw: no 429,
the same requests and tokens the callback settled, a 401 key never used again, the router's
own fallbacks taking over when no key has room.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ymera_groq_plugin.catalog import load_catalog
from ymera_groq_plugin.config import YmeraSettings
from ymera_groq_plugin.engine import Engine
from ymera_groq_plugin.errors import StorageError
from ymera_groq_plugin.testing import FakeClock
from ymera_groq_plugin.testing.server import GroqTestServer
from ymera_groq_plugin.types import ChatRequest

if TYPE_CHECKING:
    # Imported inside each test by `_litellm_state` (see there), never at collection.
    import litellm
    from litellm import Router

    from ymera_groq_plugin.litellm import (
        GroqCapacityError,
        YmeraLiteLLM,
        attach,
        litellm_cache,
        model_list_from_settings,
    )

M = "openai/gpt-oss-20b"
BIG = "openai/gpt-oss-120b"
LIMITS = {"rpm": 5, "rpd": 1000, "tpm": 6000, "tpd": 200_000}
KEYS = {
    "gsk_litellmaaaaaaaaaaaaaaaa01": "org_a",
    "gsk_litellmbbbbbbbbbbbbbbbb02": "org_b",
    "gsk_litellmcccccccccccccccc03": "org_c",
    "gsk_litellmdddddddddddddddd04": "org_d",
}
BACKUP_KEY = "gsk_litellmbackupzzzzzzzzzz99"

# LiteLLM's TypedDicts use `ReadOnly`, which pydantic warns about when it builds their schemas.
pytestmark = pytest.mark.filterwarnings("ignore:Item.*ReadOnly. qualifier:UserWarning")


def _import_litellm() -> None:
    """Import LiteLLM inside a test, never while pytest collects.

    At import LiteLLM adds a process-wide `ignore` filter for pydantic's `ReadOnly` warnings;
    pytest puts `filterwarnings = error` in front of it in every test, so a LiteLLM imported at
    collection time makes the first test that builds one of those schemas fail, in whichever
    module it runs.
    """
    import litellm
    from litellm import Router

    from ymera_groq_plugin import litellm as ymera_litellm

    globals().update(
        litellm=litellm,
        Router=Router,
        GroqCapacityError=ymera_litellm.GroqCapacityError,
        YmeraLiteLLM=ymera_litellm.YmeraLiteLLM,
        attach=ymera_litellm.attach,
        litellm_cache=ymera_litellm.litellm_cache,
        model_list_from_settings=ymera_litellm.model_list_from_settings,
    )


@pytest.fixture(autouse=True)
def _litellm_state() -> Iterator[None]:
    """Keep LiteLLM's process-wide lists and cache as each test found them."""
    _import_litellm()
    litellm.suppress_debug_info = True
    saved = {
        name: list(getattr(litellm, name))
        for name in ("callbacks", "input_callback", "success_callback", "_async_success_callback")
    }
    cache = litellm.cache
    yield
    for name, value in saved.items():
        setattr(litellm, name, value)
    litellm.cache = cache


def settings_for(
    server: GroqTestServer, tmp_path: Path, keys: dict[str, str], **kw: Any
) -> YmeraSettings:
    return YmeraSettings(
        api_keys=[
            {"secret": secret, "org": org, "label": f"key{i}"}
            for i, (secret, org) in enumerate(keys.items(), start=1)
        ],
        base_url=server.base_url,
        data_dir=tmp_path,
        **kw,
    )


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Any]:
    """`build(keys, limits, **settings) -> (server, settings, engine)`; all closed afterwards."""
    made: list[tuple[GroqTestServer, Engine]] = []
    attached: list[YmeraLiteLLM] = []

    async def build(
        keys: dict[str, str] = KEYS, limits: dict[str, Any] | None = None, **kw: Any
    ) -> tuple[GroqTestServer, YmeraSettings, Engine]:
        limits = limits or {M: LIMITS}
        server = await GroqTestServer(keys, limits=limits).astart()
        settings = settings_for(server, tmp_path / str(len(made)), keys, **kw)
        catalog = load_catalog(overrides=[{"id": m, "limits": v} for m, v in limits.items()])
        engine = Engine(settings, catalog=catalog)
        made.append((server, engine))
        return server, settings, engine

    build.attached = attached  # type: ignore[attr-defined]
    yield build
    for ymera in attached:
        await ymera.aflush()
        ymera.detach()
    for server, engine in made:
        await engine.aclose()
        await server.astop()


def hook(setup: Any, router: Router, engine: Engine, **kw: Any) -> YmeraLiteLLM:
    ymera = attach(router, engine=engine, **kw)
    setup.attached.append(ymera)
    return ymera


def ask(n: int, text: str = "What is {n} plus {n}?") -> list[dict[str, str]]:
    return [{"role": "user", "content": text.format(n=n)}]


async def until(condition: Callable[[], bool]) -> None:
    """Wait for something LiteLLM does in the background (its success events)."""
    for _ in range(500):  # five seconds
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out waiting")


def served(server: GroqTestServer) -> dict[tuple[str, str], dict[str, int]]:
    return {
        pair: {
            "requests": s.requests,
            "prompt_tokens": s.prompt_tokens,
            "completion_tokens": s.completion_tokens,
        }
        for pair, s in server.stats().by_org_model.items()
        if s.requests
    }


# -- the model list -------------------------------------------------------------------------


def test_model_list_names_keys_by_label_only(tmp_path: Path) -> None:
    settings = YmeraSettings(
        api_keys=[{"secret": s, "org": o} for s, o in KEYS.items()], data_dir=tmp_path
    )
    models = model_list_from_settings(settings, models=[M, "qwen3.8-27b"])
    ids = [d["model_info"]["id"] for d in models]
    assert len(ids) == len(set(ids)) == 2 * 4 * 2  # per model, plus the routed group
    assert {d["model_name"] for d in models} == {M, "qwen/qwen3.8-27b", "groq-auto"}
    assert f"{M}@key1" in ids and f"groq-auto@{M}@key4" in ids
    for d in models:
        assert d["litellm_params"]["model"].startswith("groq/")
        assert d["litellm_params"]["api_base"] == "https://api.groq.com/openai/v1"
        assert d["model_info"]["max_input_tokens"] == 131072
        assert "rpm" not in d["litellm_params"] and "tpm" not in d["litellm_params"]
        shown = repr(d["model_info"]) + d["model_name"]
        assert not any(secret in shown for secret in KEYS)
    # LiteLLM accepts it as it is.
    router = Router(model_list=models)
    assert len(router.registry().deployments("groq-auto")) == 8


def test_importing_the_package_does_not_import_litellm() -> None:
    code = "import sys, ymera_groq_plugin; assert 'litellm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- bursts ---------------------------------------------------------------------------------


async def test_a_burst_without_the_package_gets_429s(setup: Any) -> None:
    server, settings, _ = await setup()
    router = Router(model_list=model_list_from_settings(settings, models=[M]), num_retries=0)
    results = await asyncio.gather(
        *(router.acompletion(model=M, messages=ask(n), max_tokens=32) for n in range(30)),
        return_exceptions=True,
    )
    # 30 requests against 4 organisations × 5 requests per minute: 10 at least must be refused.
    assert server.stats().by_status.get(429, 0) >= 10
    assert sum(isinstance(r, litellm.RateLimitError) for r in results) >= 10


@pytest.mark.parametrize(
    ("strategy", "routing_strategy", "healthy"),
    [
        pytest.param(False, "simple-shuffle", "select", id="filter+simple-shuffle"),
        pytest.param(False, "usage-based-routing-v2", "select", id="filter+usage-based-v2"),
        pytest.param(True, "simple-shuffle", "select", id="strategy"),
        pytest.param(True, "simple-shuffle", "cooldowns", id="strategy+cooldowns"),
    ],
)
async def test_a_burst_of_four_times_one_keys_limit_gets_no_429(
    setup: Any, strategy: bool, routing_strategy: str, healthy: str
) -> None:
    server, settings, engine = await setup()
    router = Router(
        model_list=model_list_from_settings(settings, models=[M], routed_groups=()),
        routing_strategy=routing_strategy,
        num_retries=0,
    )
    ymera = hook(setup, router, engine, strategy=strategy, healthy=healthy)
    results = await asyncio.gather(
        *(router.acompletion(model=M, messages=ask(n), max_tokens=32) for n in range(20))
    )
    await ymera.aflush()

    stats = server.stats()
    assert stats.by_status == {200: 20}
    assert stats.rate_limited == {}
    # Spread over every organisation: each took exactly its five requests per minute.
    assert {org: s.requests for (org, _), s in stats.by_org_model.items()} == {
        "org_a": 5,
        "org_b": 5,
        "org_c": 5,
        "org_d": 5,
    }
    assert all(r.choices[0].message.content for r in results)
    # The callback's accounting is what the server counted, request for request, token for token.
    assert ymera.accounting() == served(server)
    assert ymera.live_reservations == 0
    assert engine.quota.outstanding == 0
    usage = await engine.portal.arun(engine.quota.usage())
    for key in usage["keys"].values():
        assert key["usage"][M]["rpd"]["used"] == 5


async def test_a_burst_beyond_every_key_waits_for_room_instead_of_429(
    setup: Any, tmp_path: Path
) -> None:
    # The server's buckets and the engine's clock both run 60 times faster than the wall clock,
    # so a minute window refills in a second; 30 requests need 1.5 windows of all four keys.
    keys = dict(list(KEYS.items())[:2])
    server = await GroqTestServer(keys, limits={M: LIMITS}, time_scale=60).astart()
    try:
        settings = settings_for(server, tmp_path, keys, max_wait=600)
        start = time.time()
        engine = Engine(
            settings,
            catalog=load_catalog(overrides=[{"id": M, "limits": LIMITS}]),
            clock=lambda: start + (time.time() - start) * 60,
        )
        router = Router(model_list=model_list_from_settings(settings, models=[M]), num_retries=0)
        ymera = hook(setup, router, engine, strategy=True)
        await asyncio.gather(
            *(router.acompletion(model=M, messages=ask(n), max_tokens=16) for n in range(20))
        )
        await ymera.aflush()
        stats = server.stats()
        assert stats.by_status == {200: 20} and stats.rate_limited == {}
        assert ymera.accounting() == served(server)
        await engine.aclose()
    finally:
        await server.astop()


# -- failures -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "healthy"),
    [(False, "select"), (True, "select"), (True, "cooldowns")],
    ids=["filter", "strategy", "strategy+cooldowns"],
)
async def test_a_key_the_server_rejects_is_never_picked_again(
    setup: Any, strategy: bool, healthy: str
) -> None:
    bad = "gsk_litellmrevokedxxxxxxxxx00"
    server, _, engine = await setup()
    # The revoked key comes first, so the first pick takes it; the server does not know it.
    keys = {bad: "org_x", **dict(list(KEYS.items())[:2])}
    settings = settings_for(server, engine.settings.data_dir, keys)
    engine2 = Engine(settings, catalog=engine.catalog)
    try:
        router = Router(
            model_list=model_list_from_settings(settings, models=[M], routed_groups=()),
            num_retries=2,
            disable_cooldowns=True,  # only the package's key health can keep it out
        )
        ymera = hook(setup, router, engine2, strategy=strategy, healthy=healthy)
        for n in range(8):
            response = await router.acompletion(model=M, messages=ask(n), max_tokens=16)
            assert response._hidden_params["model_id"] != f"{M}@key1"
        await ymera.aflush()
        stats = server.stats()
        assert stats.by_status == {401: 1, 200: 8}
        health = await engine2.portal.arun(engine2.quota.usage())
        assert health["keys"]["key1"]["health"] == "disabled"
        assert engine2.quota.outstanding == 0
    finally:
        await engine2.aclose()


@pytest.mark.parametrize("strategy", [False, True], ids=["filter", "strategy"])
async def test_no_room_hands_over_to_the_routers_own_fallbacks(setup: Any, strategy: bool) -> None:
    keys = dict(list(KEYS.items())[:1])
    server, settings, engine = await setup(
        {**keys, BACKUP_KEY: "org_backup"}, {M: {**LIMITS, "rpm": 2}, BIG: LIMITS}
    )
    settings = settings_for(server, settings.data_dir, keys, max_wait=0)
    # The second request fills RPM exactly, and the ledger counts an exact fit on a level
    # charged less than `quota.MARGIN` ago as a tie (no room, for a millisecond). The first
    # request settles off the caller's path, so on the wall clock the second pick could land
    # in that millisecond: the quota's clock moves only between a settled answer and the
    # next request.
    clock = FakeClock()
    engine = Engine(settings, catalog=engine.catalog, clock=clock)
    model_list = model_list_from_settings(settings, models=[M], routed_groups=())
    # The fallback is another provider: LiteLLM's OpenAI client, another organisation.
    model_list.append(
        {
            "model_name": "backup",
            "litellm_params": {
                "model": f"openai/{BIG}",
                "api_key": BACKUP_KEY,
                "api_base": server.openai_base_url,
            },
            "model_info": {"id": "backup@openai"},
        }
    )
    try:
        router = Router(model_list=model_list, num_retries=2, fallbacks=[{M: ["backup"]}])
        ymera = hook(setup, router, engine, strategy=strategy)
        served_by = []
        for n in range(5):
            answer = await router.acompletion(model=M, messages=ask(n), max_tokens=16)
            served_by.append(answer._hidden_params["model_id"])
            await ymera.aflush()
            clock.advance(0.01)  # 1/3000 of a request drains: far from room for a third
        assert served_by == [f"{M}@key1"] * 2 + ["backup@openai"] * 3
        stats = server.stats()
        assert stats.by_status == {200: 5} and stats.rate_limited == {}
        assert {pair: s.requests for pair, s in stats.by_org_model.items()} == {
            ("org_a", M): 2,
            ("org_backup", BIG): 3,
        }
        # Without fallbacks the caller gets LiteLLM's own "no deployments" error, with the time.
        # `bare` is never attached: it is governed because its deployments are the attached
        # router's (same ids, same keys), which spend the same organisation's budget.
        bare = Router(model_list=model_list[:-1], num_retries=2)
        with pytest.raises(Exception, match="No deployments available") as info:
            await bare.acompletion(model=M, messages=ask(9), max_tokens=16)
        assert isinstance(info.value, GroqCapacityError) or "Try again in" in str(info.value)
        await ymera.aflush()
        assert ymera.live_reservations == 0 and engine.quota.outstanding == 0
    finally:
        await engine.aclose()


async def test_the_filter_leaves_other_providers_in_a_mixed_group(setup: Any) -> None:
    keys = dict(list(KEYS.items())[:1])
    server, _, engine = await setup(
        {**keys, BACKUP_KEY: "org_backup"}, {M: {**LIMITS, "rpm": 1}, BIG: LIMITS}
    )
    settings = settings_for(server, engine.settings.data_dir, keys)
    engine = Engine(settings, catalog=engine.catalog)
    model_list = model_list_from_settings(settings, models=[M], routed_groups=())
    model_list.append(
        {
            "model_name": M,
            "litellm_params": {
                "model": f"openai/{BIG}",
                "api_key": BACKUP_KEY,
                "api_base": server.openai_base_url,
                "weight": 0.001,  # the router's own strategy prefers Groq while it has room
            },
            "model_info": {"id": "mixed@openai"},
        }
    )
    try:
        router = Router(model_list=model_list, num_retries=0)
        ymera = hook(setup, router, engine)
        for n in range(4):
            await router.acompletion(model=M, messages=ask(n), max_tokens=16)
        await ymera.aflush()
        stats = server.stats()
        assert stats.by_status == {200: 4} and stats.rate_limited == {}
        assert stats.by_org_model[("org_backup", BIG)].requests >= 3
        assert engine.quota.outstanding == 0
    finally:
        await engine.aclose()


async def test_a_cancelled_request_gives_its_reservation_back(setup: Any) -> None:
    server, settings, engine = await setup()
    server.configure_faults(latency=1.0)
    router = Router(model_list=model_list_from_settings(settings, models=[M]), num_retries=0)
    ymera = hook(setup, router, engine, strategy=True)
    task = asyncio.create_task(router.acompletion(model=M, messages=ask(1), max_tokens=16))
    # Cancel once the call is on the wire: cancelled earlier, LiteLLM 1.110 leaves its own
    # `async_completion` coroutine unawaited (its RuntimeWarning, not ours).
    await until(lambda: server.stats().arrived == 1)
    assert engine.quota.outstanding == 1 and ymera.live_reservations == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    await ymera.aflush()
    assert ymera.live_reservations == 0
    assert engine.quota.outstanding == 0
    server.configure_faults(latency=0.0)


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*"))


async def test_closing_the_engine_stops_the_callback_and_touches_no_file_after(
    setup: Any, tmp_path: Path
) -> None:
    # LiteLLM runs its success events as tasks of their own: one may arrive after the
    # engine closed, while its owner deletes the data directory (the example's pattern).
    server, settings, engine = await setup()
    server.configure_faults(latency=0.5)
    router = Router(model_list=model_list_from_settings(settings, models=[M]), num_retries=0)
    ymera = hook(setup, router, engine, strategy=True)
    task = asyncio.create_task(router.acompletion(model=M, messages=ask(1), max_tokens=16))
    await until(lambda: ymera.live_reservations == 1)
    await engine.aclose()
    assert ymera.live_reservations == 0 and engine.quota.outstanding == 0
    assert ymera not in litellm.callbacks
    server.configure_faults(latency=0.0)
    await task  # the answer still arrives; its accounting has nowhere to go
    for _ in range(20):
        await asyncio.sleep(0.01)
    data_dir = Path(settings.data_dir)
    before = _listing(data_dir)
    ymera.log_success_event({"litellm_call_id": "late"}, None, 0.0, 0.0)
    await ymera.aflush()
    assert _listing(data_dir) == before
    with pytest.raises(StorageError, match="closed"):
        await engine.learner.store.events(0)


# -- routing, streams, sync -----------------------------------------------------------------


@pytest.mark.parametrize("strategy", [False, True], ids=["filter", "strategy"])
async def test_the_routed_group_picks_the_model_by_task(setup: Any, strategy: bool) -> None:
    _, settings, engine = await setup(limits={m.id: LIMITS for m in load_catalog().served()})
    router = Router(model_list=model_list_from_settings(settings), num_retries=0)
    ymera = hook(setup, router, engine, strategy=strategy)
    for task_type, text in [
        ("multilingual", "Traduis ce paragraphe en japonais, s'il te plaît."),
        ("code_generation", "Write a Python function that parses a CSV file."),
    ]:
        meta = {"agent_name": "writer", "task_type": task_type}
        expected = engine.router.plan(
            ChatRequest(messages=({"role": "user", "content": text},), task_type=task_type)
        ).models[0]
        response = await router.acompletion(
            model="groq-auto",
            messages=[{"role": "user", "content": text}],
            max_tokens=16,
            metadata=meta,
        )
        model_id = response._hidden_params["model_id"]
        assert model_id.startswith(f"groq-auto@{expected}@")
    await ymera.aflush()
    # The learner got both executions, labelled with the agent and the task.
    assert engine.learner is not None
    assert engine.learner.evidence("writer", "multilingual") == 1
    assert engine.learner.evidence("writer", "code_generation") == 1
    assert engine.stats.as_dict()["succeeded"] == 2


@pytest.mark.parametrize("strategy", [False, True], ids=["filter", "strategy"])
async def test_a_stream_is_settled_when_it_ends(setup: Any, strategy: bool) -> None:
    server, settings, engine = await setup()
    router = Router(model_list=model_list_from_settings(settings, models=[M]), num_retries=0)
    ymera = hook(setup, router, engine, strategy=strategy)
    stream = await router.acompletion(model=M, messages=ask(3), max_tokens=32, stream=True)
    assert engine.quota.outstanding == 1  # held while the stream is read
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text
    await until(lambda: ymera.live_reservations == 0)
    await ymera.aflush()
    assert ymera.accounting() == served(server)
    assert engine.quota.outstanding == 0


async def test_the_sync_strategy_reserves_and_settles(setup: Any) -> None:
    server, settings, engine = await setup()
    router = Router(model_list=model_list_from_settings(settings, models=[M]), num_retries=0)
    ymera = hook(setup, router, engine, strategy=True)

    def work() -> None:
        for n in range(6):
            router.completion(model=M, messages=ask(n), max_tokens=16)

    await asyncio.to_thread(work)
    await until(lambda: ymera.live_reservations == 0)
    await ymera.aflush()
    assert server.stats().by_status == {200: 6}
    assert ymera.accounting() == served(server)
    assert engine.quota.outstanding == 0


# -- the cache ------------------------------------------------------------------------------


async def test_the_three_tiers_serve_as_litellms_cache(setup: Any) -> None:
    server, settings, engine = await setup()
    litellm.cache = cache = litellm_cache(engine=engine)
    router = Router(model_list=model_list_from_settings(settings, models=[M]), cache_responses=True)
    first = await router.acompletion(model=M, messages=ask(7), temperature=0, seed=1)
    backend = cache.cache
    await until(lambda: _stored(backend))
    second = await router.acompletion(model=M, messages=ask(7), temperature=0, seed=1)
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second._hidden_params.get("cache_hit") is True
    assert server.stats().by_status == {200: 1}
    # The entry reached the persistent tier: a fresh L1 finds it in L3 and promotes it.
    assert engine.cache is not None
    engine.cache._l1.clear()  # type: ignore[union-attr]
    third = await router.acompletion(model=M, messages=ask(7), temperature=0, seed=1)
    assert third._hidden_params.get("cache_hit") is True
    assert backend.stats()["hits"]["l3"] == 1
    assert server.stats().by_status == {200: 1}


def _stored(backend: Any) -> bool:
    return bool(backend._l1 is not None and len(backend._l1))


async def test_a_prompt_no_groq_window_fits_takes_the_context_window_fallbacks(
    setup: Any,
) -> None:
    keys = dict(list(KEYS.items())[:1])
    server, settings, engine = await setup({**keys, BACKUP_KEY: "org_backup"})
    # The package believes every Groq window is small; the backup is another provider.
    small = [
        {"id": m.id, "context_window": 600, "max_completion_tokens": 100, "limits": LIMITS}
        for m in load_catalog().served()
    ]
    # Listing the account's models would correct the windows this test makes small.
    settings = settings_for(server, settings.data_dir, keys).model_copy(
        update={"models_refresh_interval": 0.0}
    )
    engine = Engine(settings, catalog=load_catalog(overrides=small))
    model_list = model_list_from_settings(settings, catalog=engine.catalog)
    model_list.append(
        {
            "model_name": "long-context",
            "litellm_params": {
                "model": f"openai/{M}",
                "api_key": BACKUP_KEY,
                "api_base": server.openai_base_url,
            },
            "model_info": {"id": "long@openai"},
        }
    )
    try:
        router = Router(
            model_list=model_list,
            num_retries=0,
            context_window_fallbacks=[{"groq-auto": ["long-context"]}],
        )
        ymera = hook(setup, router, engine, strategy=False)
        text = "Summarise the following notes. " + "word " * 800
        response = await router.acompletion(
            model="groq-auto", messages=[{"role": "user", "content": text}], max_tokens=16
        )
        assert response._hidden_params["model_id"] == "long@openai"
        await ymera.aflush()
        assert engine.quota.outstanding == 0 and ymera.live_reservations == 0
    finally:
        await engine.aclose()


@pytest.mark.redis
async def test_the_litellm_cache_promotes_from_redis(setup: Any, redis_url: str) -> None:
    server, settings, engine = await setup(redis_url=redis_url)
    litellm.cache = cache = litellm_cache(engine=engine)
    router = Router(model_list=model_list_from_settings(settings, models=[M]), cache_responses=True)
    await router.acompletion(model=M, messages=ask(8), temperature=0, seed=2)
    backend = cache.cache
    await until(lambda: _stored(backend))
    await engine.portal.arun(asyncio.sleep(0.05))  # the write to L2/L3 lands
    assert engine.cache is not None
    engine.cache._l1.clear()  # type: ignore[union-attr]
    again = await router.acompletion(model=M, messages=ask(8), temperature=0, seed=2)
    assert again._hidden_params.get("cache_hit") is True
    assert backend.stats()["hits"]["l2"] == 1  # Redis answered before SQLite was asked
    assert server.stats().by_status == {200: 1}


def test_nothing_shows_a_key(tmp_path: Path) -> None:
    settings = YmeraSettings(
        api_keys=[{"secret": s, "org": o} for s, o in KEYS.items()], data_dir=tmp_path
    )
    engine = Engine(settings)
    ymera = YmeraLiteLLM(engine)
    error = GroqCapacityError(M, 12.5)
    shown = repr(ymera) + str(error) + repr(error)
    assert not any(secret in shown for secret in KEYS)
    assert error.retry_after == 12.5 and error.num_retries == 0 and error.status_code == 429
    assert "Try again in 12.5 seconds" in str(error)
    assert GroqCapacityError(M, float("inf")).retry_after is None
    engine.close()


@pytest.mark.parametrize("strategy", [False, True], ids=["filter", "strategy"])
async def test_failed_attempts_and_retries_leave_nothing_reserved(
    setup: Any, strategy: bool
) -> None:
    server, settings, engine = await setup()
    server.configure_faults(error_rate=0.3, error_statuses=(500, 503), seed=7)
    router = Router(
        model_list=model_list_from_settings(settings, models=[M], routed_groups=()),
        num_retries=3,
        retry_after=0,
    )
    ymera = hook(setup, router, engine, strategy=strategy)
    results = await asyncio.gather(
        *(router.acompletion(model=M, messages=ask(n), max_tokens=16) for n in range(16)),
        return_exceptions=True,
    )
    await ymera.aflush()
    stats = server.stats()
    assert stats.faults.get("5xx", 0) > 0 and stats.rate_limited == {}
    assert sum(not isinstance(r, BaseException) for r in results) == stats.by_status[200]
    # Every failed attempt was given back or reported; only answered calls were charged.
    assert ymera.live_reservations == 0 and engine.quota.outstanding == 0
    assert ymera.accounting() == served(server)
    assert engine.stats.as_dict()["failed"] == stats.faults["5xx"]


async def test_a_404_deployment_is_filtered_out_after_one_answer(setup: Any) -> None:
    keys = dict(list(KEYS.items())[:2])
    roomy = {"rpm": 1000, "rpd": 10_000, "tpm": 100_000, "tpd": 1_000_000}
    server, settings, engine = await setup(keys, {M: roomy})
    server.configure_listing(status=503)  # nothing listed: only the 404 memory helps
    server.set_served("org_a", [BIG])  # org_a is not served M
    router = Router(
        model_list=model_list_from_settings(settings, models=[M], catalog=engine.catalog),
        num_retries=0,
    )
    hook(setup, router, engine)
    answered = 0
    errors: list[str] = []
    for n in range(8):
        try:
            await router.acompletion(model=M, messages=ask(n))
            answered += 1
        except Exception as exc:
            errors.append(str(exc))
    assert answered >= 7
    assert all("does not exist" in e for e in errors)
    assert server.not_served_answers() == {("org_a", M): 1}
