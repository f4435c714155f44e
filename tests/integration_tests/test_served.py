"""What the account serves decides (issue 13, items a-c), against the local Groq server.

a. The engine lists `GET /openai/v1/models` per organisation in the background, keeps the
   listing on disk and in Redis, and routes on it: a model the catalog calls shut down is served
   when the account lists it; a model the catalog lacks works with conservative limits.
b. `model="X"` is answered by X or raises a typed error; other models only on the opt-in.
c. A 404 / `model_decommissioned` marks (organisation, model) unserved for the whole fleet:
   at most one such answer per organisation and model until the next listing.
"""

from __future__ import annotations

import logging
import multiprocessing
import random
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from ymera_groq_plugin import ChatYmeraGroq
from ymera_groq_plugin.catalog import default_catalog
from ymera_groq_plugin.config import YmeraSettings
from ymera_groq_plugin.engine import Engine
from ymera_groq_plugin.errors import ModelRetiredError, QuotaExhaustedError, UnknownModelError
from ymera_groq_plugin.testing.server import GroqTestServer

A = "openai/gpt-oss-20b"
BIG = "openai/gpt-oss-120b"
QWEN = "qwen/qwen3.8-27b"
OLD = "llama-3.1-8b-instant"  # the catalog says shut down (successor: A)
NEW = "newcorp/fresh-1"  # absent from the package's catalog
K1 = "gsk_served_test_key_one_0000000000000000000000001"
K2 = "gsk_served_test_key_two_0000000000000000000000002"
UNLIMITED = {"rpm": None, "rpd": None, "tpm": None, "tpd": None}
NEW_ENTRY = {
    "id": NEW,
    "context_window": 65536,
    "max_completion_tokens": 4096,
    "limits": {"rpm": 50, "rpd": 5000, "tpm": 9000, "tpd": 900000},
}


def wait_until(check: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll `check` (a condition reached in the background) up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


class Rig:
    def __init__(self, server: GroqTestServer, tmp: Path) -> None:
        self.server = server
        self.tmp = tmp
        self.engines: list[Engine] = []

    def engine(self, *, data: str = "data", wait_listing: bool = True, **settings: Any) -> Engine:
        settings.setdefault("max_wait", 0.0)
        settings.setdefault("request_timeout", 5.0)
        settings.setdefault("cache_enabled", False)
        s = YmeraSettings(
            api_keys=settings.pop("api_keys", [K1, K2]),
            base_url=self.server.base_url,
            data_dir=self.tmp / data,
            **settings,
        )
        engine = Engine(s, rng=random.Random(3)).start()
        self.engines.append(engine)
        if wait_listing and s.models_refresh_interval > 0:
            assert wait_until(lambda: engine.served is not None and engine.served.known)
        return engine

    def model(self, engine: Engine, **kwargs: Any) -> ChatYmeraGroq:
        kwargs.setdefault("temperature", 0)
        return ChatYmeraGroq(engine=engine, **kwargs)

    def four_oh_fours(self) -> dict[tuple[str, str], int]:
        return self.server.not_served_answers()


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(
        *,
        served: Mapping[str, list[str]] | None = None,
        limits: Mapping[str, Mapping[str, int | None]] | None = None,
        extra: bool = False,
    ) -> Rig:
        catalog = default_catalog().with_overrides([NEW_ENTRY]) if extra else None
        server = GroqTestServer(
            {K1: "org_1", K2: "org_2"}, catalog=catalog, limits=limits, served=served
        ).start()
        rig = Rig(server, tmp_path)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        for engine in rig.engines:
            engine.close()
        rig.server.stop()


# ---------------------------------------------------------------------------------------------
# a. served-model discovery
# ---------------------------------------------------------------------------------------------


def test_the_account_listing_outranks_the_catalog_dates(make_rig: Callable[..., Rig]) -> None:
    # An enterprise plan still serves OLD (the catalog: shut down, successor A).
    rig = make_rig(served={"org_1": [A, OLD], "org_2": [A, OLD]})
    engine = rig.engine()
    assert engine.catalog.is_served(OLD) and not engine.catalog.is_served(BIG)
    assert rig.server.listings() == {"org_1": 1, "org_2": 1}  # one key per organisation
    answer = rig.model(engine, model=OLD).invoke("hello")
    assert answer.response_metadata["model_name"] == OLD
    assert rig.four_oh_fours() == {}
    # Routed requests never pick a model the account does not list.
    for i in range(6):
        routed = rig.model(engine).invoke(f"routed question {i}")
        assert routed.response_metadata["model_name"] in (A, OLD)


def test_a_model_absent_from_the_catalog_works_with_conservative_limits(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(served={"org_1": [A, NEW], "org_2": [A]}, extra=True)
    assert NEW not in default_catalog()
    engine = rig.engine(wait_listing=False)
    # A cold engine: the unknown model waits for the first listing instead of failing.
    answer = rig.model(engine, model=NEW).invoke("hello new model")
    assert answer.response_metadata["model_name"] == NEW
    assert answer.response_metadata["key_label"] == "key1"  # org_2 does not list it
    info = engine.catalog.get(NEW)
    assert (info.context_window, info.max_completion_tokens) == (65536, 4096)
    smallest = default_catalog().conservative_limits()
    assert info.limits == smallest
    assert (smallest.rpm, smallest.rpd, smallest.tpm, smallest.tpd) == (30, 250, 6000, 100000)
    # Groq's headers correct them: the server's RPD (5000) and TPM (9000) are now in force.
    limits = engine.quota.ledger.limits("org:key1", NEW)
    assert limits[1] == 5000 and limits[2] == 9000
    # An id that neither the catalog nor the listing knows is refused before any call.
    calls = rig.server.stats().requests
    with pytest.raises(UnknownModelError):
        rig.model(engine, model="newcorp/typo-1").invoke("hello")
    assert rig.server.stats().requests == calls


def test_a_request_never_waits_for_the_listing(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.server.configure_listing(delay=3.0)
    engine = rig.engine(wait_listing=False)
    answer = rig.model(engine).invoke("routed on the catalog while Groq lists")
    assert answer.content
    served = engine.served
    assert served is not None
    assert not served.known  # answered before the (slow) listing came back
    assert wait_until(lambda: served.known)
    assert served.source == "groq"


def test_the_listing_is_kept_on_disk(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(served={"org_1": [A, OLD], "org_2": [A, OLD]})
    first = rig.engine()
    first.close()
    rig.server.configure_listing(status=503)  # Groq cannot list now
    second = rig.engine(wait_listing=False)
    served = second.served
    assert served is not None and served.source == "file"
    assert second.catalog.is_served(OLD)
    assert rig.model(second, model=OLD).invoke("hi").response_metadata["model_name"] == OLD


def test_refreshed_periodically(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(served={"org_1": [A], "org_2": [A]})
    engine = rig.engine(models_refresh_interval=0.5)
    assert not engine.catalog.is_served(QWEN)
    rig.server.set_served("org_2", [A, QWEN])
    assert wait_until(lambda: engine.catalog.is_served(QWEN))
    assert rig.server.listings()["org_2"] >= 2


@pytest.mark.redis
def test_one_listing_for_the_fleet_through_redis(
    make_rig: Callable[..., Rig], redis_url: str
) -> None:
    rig = make_rig(served={"org_1": [A, OLD], "org_2": [A, OLD]})
    first = rig.engine(data="one", redis_url=redis_url)
    second = rig.engine(data="two", redis_url=redis_url)
    served = second.served
    assert served is not None and served.source == "redis"
    assert second.catalog.is_served(OLD)
    assert rig.server.listings() == {"org_1": 1, "org_2": 1}
    assert first.served is not None and first.served.listings == 1 and served.listings == 0


# ---------------------------------------------------------------------------------------------
# b. pinned means pinned
# ---------------------------------------------------------------------------------------------


def test_a_pinned_model_is_answered_by_that_model_or_a_typed_error(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(limits={A: {"rpm": 1}})
    engine = rig.engine()
    llm = rig.model(engine, model=A)
    labels = {llm.invoke(f"question {i}").response_metadata["key_label"] for i in range(2)}
    assert labels == {"key1", "key2"}  # every organisation first
    with pytest.raises(QuotaExhaustedError) as info:
        llm.invoke("no room anywhere for A")
    assert info.value.retry_after is not None and info.value.retry_after > 0
    assert {model for _, model in rig.server.stats().by_org_model} == {A}  # nothing else asked


def test_other_models_answer_only_on_the_opt_in(
    make_rig: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("YMERA_ALLOW_MODEL_FALLBACK", "1")
    assert YmeraSettings().allow_model_fallback is True
    monkeypatch.delenv("YMERA_ALLOW_MODEL_FALLBACK")
    rig = make_rig(limits={A: {"rpm": 1}})
    engine = rig.engine(allow_model_fallback=True)
    llm = rig.model(engine, model=A)
    models = [llm.invoke(f"question {i}").response_metadata["model_name"] for i in range(3)]
    assert models[:2] == [A, A] and models[2] != A
    kw = ChatYmeraGroq(
        model=A, api_keys=[K1], base_url=rig.server.base_url, allow_model_fallback=True
    )
    assert kw.engine is not None and kw.engine.settings.allow_model_fallback is True


def _at_most_one_404_per_org(fours: dict[tuple[str, str], int], model: str) -> None:
    """At least one 404 and at most one per organisation: the listing the first 404 asks for
    may arrive before the request reaches the other organisation (on a slow machine), and then
    spares it its 404."""
    assert fours and set(fours) <= {("org_1", model), ("org_2", model)}
    assert all(n == 1 for n in fours.values())


def test_a_pinned_model_gone_from_every_org_goes_to_its_successor(
    make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig(served={"org_1": [A, OLD], "org_2": [A, OLD]})
    engine = rig.engine()
    llm = rig.model(engine, model=OLD)
    assert llm.invoke("first").response_metadata["model_name"] == OLD
    # Groq retires OLD for this account after the listing.
    rig.server.set_served("org_1", [A])
    rig.server.set_served("org_2", [A])
    with caplog.at_level(logging.WARNING, logger="ymera_groq_plugin"):
        answer = llm.invoke("second")
    assert answer.response_metadata["model_name"] == A  # OLD's successor
    assert any(OLD in r.getMessage() and "instead" in r.getMessage() for r in caplog.records)
    fours = rig.four_oh_fours()
    _at_most_one_404_per_org(fours, OLD)
    for i in range(5):
        assert llm.invoke(f"again {i}").response_metadata["model_name"] == A
    assert rig.four_oh_fours() == fours


def test_without_serve_successor_a_gone_pinned_model_is_a_typed_error(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(served={"org_1": [A, OLD], "org_2": [A, OLD]})
    engine = rig.engine(serve_successor=False)
    llm = rig.model(engine, model=OLD)
    rig.server.set_served("org_1", [A])
    rig.server.set_served("org_2", [A])
    with pytest.raises(ModelRetiredError):
        llm.invoke("gone")
    with pytest.raises(ModelRetiredError):
        llm.invoke("still gone")  # refused before any call now
    _at_most_one_404_per_org(rig.four_oh_fours(), OLD)


# ---------------------------------------------------------------------------------------------
# c. 404 memory
# ---------------------------------------------------------------------------------------------


def test_a_404_is_answered_once_per_org_and_model(make_rig: Callable[..., Rig]) -> None:
    # Nothing is known of the account (Groq cannot list): the catalog's dates route, and org_1
    # is not served A.
    rig = make_rig(served={"org_1": [BIG, QWEN]})
    rig.server.configure_listing(status=503)
    engine = rig.engine(wait_listing=False)
    llm = rig.model(engine, model=A)
    for i in range(20):
        answer = llm.invoke(f"pinned question {i}")
        assert answer.response_metadata["model_name"] == A
        assert answer.response_metadata["key_label"] == "key2"
    assert rig.four_oh_fours() == {("org_1", A): 1}
    assert engine.stats.as_dict()["not_served_received"] == 1


def test_routed_calls_meet_each_unserved_pair_at_most_once(make_rig: Callable[..., Rig]) -> None:
    # The account is not served A or QWEN on org_1, nor BIG on org_2; no listing.
    rig = make_rig(served={"org_1": [BIG], "org_2": [A, QWEN]})
    rig.server.configure_listing(status=503)
    engine = rig.engine(wait_listing=False)
    llm = rig.model(engine)
    prompts = ["Write a Python function that sorts a list.", "hi", "Summarise this text."]
    for i in range(20):
        assert llm.invoke(f"{prompts[i % 3]} ({i})").content
    assert all(n == 1 for n in rig.four_oh_fours().values())


def test_a_later_listing_clears_the_mark(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(served={"org_1": [A, BIG], "org_2": [A, BIG]})
    engine = rig.engine(models_refresh_interval=1.0)
    served = engine.served
    assert served is not None
    rig.server.set_served("org_1", [BIG])
    llm = rig.model(engine, model=A)
    assert llm.invoke("one").response_metadata["key_label"] == "key2"
    assert not served.serves("org:key1", A)
    # The 404 asked for a listing at once; it agrees (org_1 is not served A).
    assert wait_until(lambda: rig.server.listings()["org_1"] >= 2)
    assert not served.serves("org:key1", A)
    rig.server.set_served("org_1", [A, BIG])  # served again: the next listing says so
    assert wait_until(lambda: served.serves("org:key1", A))
    assert {llm.invoke(f"q{i}").response_metadata["key_label"] for i in range(4)} == {
        "key1",
        "key2",
    }
    assert rig.four_oh_fours() == {("org_1", A): 1}


def _process(url: str, redis_url: str, data_dir: str, results: Any) -> None:
    settings = YmeraSettings(
        api_keys=[K1, K2],
        base_url=url,
        redis_url=redis_url,
        data_dir=data_dir,
        max_wait=0.0,
        request_timeout=5.0,
        cache_enabled=False,
    )
    engine = Engine(settings).start()
    try:
        llm = ChatYmeraGroq(engine=engine, model=A, temperature=0)
        labels = [llm.invoke(f"q{i}").response_metadata["key_label"] for i in range(5)]
        results.put(labels)
    finally:
        engine.close()


@pytest.mark.redis
def test_the_404_memory_is_shared_by_processes(
    make_rig: Callable[..., Rig], redis_url: str, tmp_path: Path
) -> None:
    rig = make_rig(served={"org_1": [BIG]})
    rig.server.configure_listing(status=503)  # only the 404 memory can help
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    for n in range(2):
        p = ctx.Process(
            target=_process,
            args=(rig.server.base_url, redis_url, str(tmp_path / f"proc{n}"), results),
        )
        p.start()
        p.join(120)
        assert p.exitcode == 0
        labels = results.get(timeout=5)
        assert labels.count("key2") >= 4  # org_1 answered 404 at most once
    # Two processes, ten calls: one 404 for the fleet.
    assert rig.four_oh_fours() == {("org_1", A): 1}


def test_a_stream_meets_the_404_once_and_moves_to_the_org_that_serves(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(served={"org_1": [BIG]})
    rig.server.configure_listing(status=503)
    engine = rig.engine(wait_listing=False)
    llm = rig.model(engine, model=A)
    for i in range(3):
        full: Any = None
        for chunk in llm.stream(f"streamed {i}"):
            full = chunk if full is None else full + chunk
        assert full is not None and full.content
        assert full.response_metadata["model_name"] == A
        assert full.response_metadata["key_label"] == "key2"
    assert rig.four_oh_fours() == {("org_1", A): 1}
