"""What the account serves decides (issue 13, items a-c), against the local Groq server.

a. The engine lists `GET /openai/v1/models` per organisation in the background, keeps the
   listing on disk and in Redis, and routes on it: a model the catalog calls shut down is served
   when the account lists it; a model the catalog lacks works with conservative limits.
b. `model="X"` is answered by X or raises a typed error; other models only on the opt-in.
c. A 404 / `model_decommissioned` marks (organisation, model) unserved for the whole fleet:
   at most one such answer per organisation and model until the next listing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import queue
import random
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ymera_groq_plugin import ChatYmeraGroq
from ymera_groq_plugin.catalog import default_catalog
from ymera_groq_plugin.config import YmeraSettings
from ymera_groq_plugin.engine import Engine
from ymera_groq_plugin.errors import ModelRetiredError, QuotaExhaustedError, UnknownModelError
from ymera_groq_plugin.testing.server import GroqTestServer

from ..utils import REDIS_BACKENDS, redis_url_for

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


@pytest.mark.parametrize("backend", REDIS_BACKENDS)
def test_one_listing_and_the_404_marks_for_the_fleet_through_redis(
    make_rig: Callable[..., Rig], request: pytest.FixtureRequest, backend: str
) -> None:
    redis_url = redis_url_for(request, backend)
    rig = make_rig(served={"org_1": [A, OLD], "org_2": [A, OLD]})
    first = rig.engine(data="one", redis_url=redis_url)
    second = rig.engine(data="two", redis_url=redis_url)
    served = second.served
    assert served is not None and served.source == "redis"
    assert second.catalog.is_served(OLD)
    assert rig.server.listings() == {"org_1": 1, "org_2": 1}
    assert first.served is not None and first.served.listings == 1 and served.listings == 0
    # org_1 loses A, and Groq cannot list any more: only the shared 404 mark can tell `second`.
    rig.server.set_served("org_1", [OLD])
    rig.server.configure_listing(status=503)
    pinned = rig.model(first, model=A)
    assert {pinned.invoke(f"first {i}").response_metadata["key_label"] for i in range(3)} == {
        "key2"
    }
    assert rig.four_oh_fours() == {("org_1", A): 1}
    assert wait_until(lambda: not served.serves("org:key1", A))  # its poll, within a second
    pinned = rig.model(second, model=A)
    for i in range(4):
        assert pinned.invoke(f"second {i}").response_metadata["key_label"] == "key2"
    assert rig.four_oh_fours() == {("org_1", A): 1}


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
    fours = rig.four_oh_fours()
    assert fours  # the routes did meet unserved pairs (else this test shows nothing)
    assert all(n == 1 for n in fours.values()), fours


@pytest.mark.parametrize(
    ("model", "status"), [(A, 404), (OLD, 400)], ids=["model_not_found", "model_decommissioned"]
)
def test_one_404_asks_for_exactly_one_listing(
    make_rig: Callable[..., Rig], model: str, status: int
) -> None:
    rig = make_rig(served={"org_1": [A, BIG, OLD], "org_2": [A, BIG, OLD]})
    engine = rig.engine()
    assert engine.settings.models_refresh_interval == 3600.0  # no periodic listing in this test
    assert rig.server.listings() == {"org_1": 1, "org_2": 1}
    rig.server.set_served("org_1", [m for m in (A, BIG, OLD) if m != model])
    llm = rig.model(engine, model=model)
    for i in range(4):
        assert llm.invoke(f"q{i}").response_metadata["key_label"] == "key2"
    assert rig.four_oh_fours() == {("org_1", model): 1}
    assert rig.server.stats().by_status.get(status) == 1
    # The 404 asked for one listing (of every organisation), and nothing asks for another.
    assert wait_until(lambda: rig.server.listings()["org_1"] == 2)
    for i in range(4):
        assert llm.invoke(f"again {i}").response_metadata["key_label"] == "key2"
    time.sleep(1.5)
    assert rig.server.listings() == {"org_1": 2, "org_2": 2}
    assert rig.four_oh_fours() == {("org_1", model): 1}


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


def _process_settings(url: str, redis_url: str, data_dir: str, **extra: Any) -> YmeraSettings:
    """The settings of one worker process of the fleet tests: both keys, one Redis."""
    return YmeraSettings(
        api_keys=[K1, K2],
        base_url=url,
        redis_url=redis_url,
        data_dir=data_dir,
        max_wait=0.0,
        request_timeout=5.0,
        cache_enabled=False,
        **extra,
    )


def _process(url: str, redis_url: str, data_dir: str, results: Any) -> None:
    engine = Engine(_process_settings(url, redis_url, data_dir)).start()
    try:
        llm = ChatYmeraGroq(engine=engine, model=A, temperature=0)
        labels = [llm.invoke(f"q{i}").response_metadata["key_label"] for i in range(5)]
        results.put(labels)
    finally:
        engine.close()


@pytest.mark.parametrize("backend", REDIS_BACKENDS)
def test_the_404_memory_is_shared_by_processes(
    make_rig: Callable[..., Rig], request: pytest.FixtureRequest, backend: str, tmp_path: Path
) -> None:
    redis_url = redis_url_for(request, backend)
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


_THREADS = 4
_CALLS = 5


def _concurrent_process(
    url: str, redis_url: str, data_dir: str, catalog: str, barrier: Any, results: Any
) -> None:
    engine = Engine(_process_settings(url, redis_url, data_dir, catalog_path=catalog)).start()
    try:
        llm = ChatYmeraGroq(engine=engine, model=A, temperature=0)

        def calls(round_: str, thread: int) -> list[str]:
            return [
                llm.invoke(f"{round_} t{thread} q{i}").response_metadata["key_label"]
                for i in range(_CALLS)
            ]

        def fire(round_: str) -> list[str]:
            with ThreadPoolExecutor(_THREADS) as pool:
                runs = pool.map(lambda t: calls(round_, t), range(_THREADS))
                return [label for run in runs for label in run]

        barrier.wait(60)
        first = fire("first")
        seen = engine.stats.as_dict()["not_served_received"]
        barrier.wait(60)
        # Its own 404, or the other's at its next poll of the fleet's marks (every second).
        served = engine.served
        assert served is not None
        assert wait_until(lambda: not served.serves("org:key1", A), timeout=10)
        second = fire("second")
        results.put((first, second, seen, engine.stats.as_dict()["not_served_received"]))
    finally:
        engine.close()


@pytest.mark.parametrize("backend", REDIS_BACKENDS)
def test_concurrent_processes_meet_a_404_at_most_once_per_thread_then_never(
    make_rig: Callable[..., Rig], request: pytest.FixtureRequest, backend: str, tmp_path: Path
) -> None:
    """Two processes, four threads each, started together, all pinned to A, which org_1 is not
    served (and Groq cannot list).

    "One 404 per (organisation, model) for the fleet" cannot hold while both run at once, by
    design: nothing coordinates calls in flight. A process hears of another's 404 only at its
    next poll of the fleet's revision (once a second), and within a process calls that left
    before the first 404 came back meet it too. The bound the design gives is one per call in
    flight before the mark: at most one per thread, so at most processes × threads for the
    fleet. Once every process has polled, the fleet meets it never again.
    """
    redis_url = redis_url_for(request, backend)
    # 80 calls on org_2 within seconds: no rate limit may get in the way, Groq's or the engine's.
    rig = make_rig(served={"org_1": [BIG]}, limits={A: UNLIMITED})
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps([{"id": A, "limits": UNLIMITED}]))
    rig.server.configure_listing(status=503)  # only the 404 memory can help
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(
            target=_concurrent_process,
            args=(
                rig.server.base_url,
                redis_url,
                str(tmp_path / f"proc{n}"),
                str(catalog),
                barrier,
                results,
            ),
        )
        for n in range(2)
    ]
    for p in procs:
        p.start()
    outcomes: list[Any] = []
    deadline = time.monotonic() + 90
    while len(outcomes) < len(procs) and time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            outcomes.append(results.get(timeout=0.5))
        # A process that died will never answer: fail now, not at the deadline.
        assert all(p.is_alive() or p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    assert len(outcomes) == len(procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    fours = rig.four_oh_fours()
    assert set(fours) == {("org_1", A)}
    assert 1 <= fours[("org_1", A)] <= 2 * _THREADS
    for first, second, seen, after in outcomes:
        assert len(first) == len(second) == _THREADS * _CALLS
        assert seen <= _THREADS and set(first) == {"key2"}
        # The second round: every process knows, its own 404 or the other's through Redis.
        assert after == seen and set(second) == {"key2"}
    assert sum(seen for _, _, seen, _ in outcomes) == fours[("org_1", A)]
    print(f"\n{backend}: 404s per process {[o[2] for o in outcomes]}")


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
