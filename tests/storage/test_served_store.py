"""The served-models store (`storage/served.py`) and `ServedModels` over it, on every Redis
deployment: one server, a 3-primary cluster and a Sentinel group.

The listing is published by one script and a 404 mark by one `MULTI`, each over two or three
keys; on a cluster that holds only if the keys share a slot (the store raised
`CrossSlotTransactionError` there, and the fleet silently stopped sharing)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from pydantic import SecretStr
from redis.crc import key_slot

from ymera_groq_plugin.catalog import load_catalog
from ymera_groq_plugin.config import ApiKey
from ymera_groq_plugin.served import ServedModels
from ymera_groq_plugin.storage.base import redis_client
from ymera_groq_plugin.storage.served import OrgListing, RedisServedStore, ServedState
from ymera_groq_plugin.testing import FakeClock

from ..utils import REDIS_BACKENDS, redis_url_for

pytestmark = pytest.mark.parametrize("backend", REDIS_BACKENDS)

T0 = 1_800_000_000.0
A = "openai/gpt-oss-20b"
BIG = "openai/gpt-oss-120b"
OLD = "llama-3.1-8b-instant"
KEYS = [
    ApiKey(secret=SecretStr("gsk_store_served_key_0000000001"), label="key1", org="org_a"),
    ApiKey(secret=SecretStr("gsk_store_served_key_0000000002"), label="key2", org="org_b"),
]


def _payload(*ids: str) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": i, "active": True} for i in ids]}


@pytest.fixture
def url(request: pytest.FixtureRequest, backend: str) -> str:
    return redis_url_for(request, backend)


async def _raw_marks(url: str, namespace: str) -> dict[str, float]:
    """The marks hash as Redis holds it (`load` prunes superseded marks; this does not)."""
    client = redis_client(url)
    try:
        raw = await client.hgetall(f"ymera:{namespace}:served:{{{namespace}}}:marks")
    finally:
        await client.aclose()
    return {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in raw.items()}


async def test_every_served_key_of_a_namespace_is_in_one_slot(url: str) -> None:
    store = RedisServedStore.from_url(url, namespace="slots")
    try:
        keys = [store._listing, store._marks, store._rev, store._lock]
        assert len({key_slot(k.encode()) for k in keys}) == 1, keys
        assert store._listing == "ymera:slots:served:{slots}:listing"
        # A namespace with braces keeps one tag (a brace inside would end it early).
        odd = RedisServedStore.from_url(url, namespace="a{b}")
        assert odd._marks == "ymera:a{b}:served:{a(b)}:marks"
        await odd.aclose()
    finally:
        await store.aclose()


async def test_listing_marks_revision_and_lock(url: str) -> None:
    store = RedisServedStore.from_url(url, namespace="rt")
    other = RedisServedStore.from_url(url, namespace="rt")
    try:
        assert await store.load() == (None, 0)
        state = ServedState({"org_a": OrgListing(T0, {A: {"active": True}})})
        await store.save_listing(state)
        await store.mark("org_b", BIG, T0 + 1)
        assert await store.revision() == 2
        loaded, rev = await other.load()
        assert rev == 2 and loaded is not None
        assert loaded.orgs == state.orgs and loaded.marks == {("org_b", BIG): T0 + 1}
        assert await store.try_lock(5) and not await other.try_lock(5)
        await other.unlock()  # not its lock: nothing happens
        assert not await other.try_lock(5)
        await store.unlock()
        assert await other.try_lock(5)
        await other.unlock()
    finally:
        await store.aclose()
        await other.aclose()


async def test_a_listing_deletes_the_marks_it_supersedes_but_not_newer_ones(url: str) -> None:
    store = RedisServedStore.from_url(url, namespace="sup")
    try:
        await store.mark("org_a", A, T0)
        await store.mark("org_a", BIG, T0 + 5)
        await store.mark("org_b", A, T0)
        # Read before another process marks (org_b, A) again, at T0 + 3.
        state = ServedState(
            {"org_a": OrgListing(T0 + 2, {}), "org_b": OrgListing(T0 + 2, {})},
            {("org_a", A): T0, ("org_a", BIG): T0 + 5, ("org_b", A): T0},
        )
        await store.mark("org_b", A, T0 + 3)
        superseded = state.prune()
        assert sorted(superseded) == [("org_a", A), ("org_b", A)]
        await store.save_listing(state, superseded)
        assert await _raw_marks(url, "sup") == {f"org_a|{BIG}": T0 + 5, f"org_b|{A}": T0 + 3}
    finally:
        await store.aclose()


def _engine_side(
    url: str, clock: FakeClock, listings: dict[str, dict[str, Any]], calls: Counter[str]
) -> ServedModels:
    async def lister(key: ApiKey) -> dict[str, Any]:
        assert key.org is not None
        calls[key.org] += 1
        return listings[key.org]

    return ServedModels(
        load_catalog(),
        groups=lambda: [(k.org or "", [k]) for k in KEYS],
        lister=lister,
        shared=RedisServedStore.from_url(url, namespace="fleet"),
        clock=clock,
    )


async def test_two_processes_share_one_listing_and_the_404_marks(url: str) -> None:
    clock = FakeClock(T0)
    listings = {"org_a": _payload(A, BIG, OLD), "org_b": _payload(A, OLD)}
    calls: Counter[str] = Counter()
    first, second = (_engine_side(url, clock, listings, calls) for _ in range(2))
    try:
        await first.load()
        await second.load()
        assert await first.refresh()
        # Listed a moment ago by the other: adopted from Redis, not listed again.
        assert not await second.refresh()
        assert calls == {"org_a": 1, "org_b": 1} and second.source == "redis"
        assert second.serves("org_a", BIG) and not second.serves("org_b", BIG)
        # A 404 on one process reaches the other at its next poll.
        clock.advance(1)
        await first.mark("org_a", A)
        assert await second.poll()
        assert not second.serves("org_a", A) and second.serves("org_b", A)
        # The next listing (Groq lists A again) supersedes the mark: everywhere, in Redis too.
        clock.advance(1)
        assert await second.refresh(force=True)
        assert calls == {"org_a": 2, "org_b": 2}
        assert await _raw_marks(url, "fleet") == {}
        assert await first.poll()
        assert first.serves("org_a", A) and first.state.marks == {}
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_superseded_mark_held_in_memory_is_deleted_from_redis(url: str) -> None:
    # The same process marks and then lists: `_list_all` prunes its own copy before saving,
    # and must still delete the mark in Redis.
    clock = FakeClock(T0)
    served = _engine_side(url, clock, {"org_a": _payload(A), "org_b": _payload(A)}, Counter())
    try:
        await served.mark("org_b", A)
        assert await _raw_marks(url, "fleet") == {f"org_b|{A}": T0}
        clock.advance(1)
        assert await served.refresh(force=True)
        assert served.serves("org_b", A)
        assert await _raw_marks(url, "fleet") == {}
    finally:
        await served.aclose()
