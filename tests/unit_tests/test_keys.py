"""The key pool: organisations, health, choice, merges and what it shows."""

from __future__ import annotations

import logging

import pytest
from pydantic import SecretStr

from ymera_groq_plugin.config import ApiKey
from ymera_groq_plugin.errors import ConfigurationError
from ymera_groq_plugin.keys import KeyPool
from ymera_groq_plugin.storage.memory import MemoryKeyStateStore
from ymera_groq_plugin.testing import FakeClock
from ymera_groq_plugin.types import RateLimits

T0 = 1_800_000_000.0
MODEL = "openai/gpt-oss-20b"


def key(n: int, org: str | None = None, secret: str | None = None) -> ApiKey:
    raw = secret or f"gsk_poolsecret{n:02d}zzzzzzzzzzzz{n:04d}"
    return ApiKey(secret=SecretStr(raw), label=f"key{n}", org=org)


def rl(remaining: int, limit: int = 1000) -> RateLimits:
    return RateLimits(limit_requests=limit, remaining_requests=remaining)


def test_keys_group_by_organisation() -> None:
    k1, k2, k3, k4 = key(1, "org_a"), key(2), key(3, "org_a"), key(4, "org_b")
    pool = KeyPool([k1, k2, k3, k4], clock=FakeClock(T0))
    assert [(org, [k.label for k in keys]) for org, keys in pool.groups()] == [
        ("org_a", ["key1", "key3"]),
        ("org:key2", ["key2"]),
        ("org_b", ["key4"]),
    ]
    assert pool.organisation(k2) == "org:key2"
    assert pool.keys_of("org_a") == [k1, k3]
    assert len(pool) == 4 and list(pool) == [k1, k2, k3, k4]


def test_duplicate_labels_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="unique"):
        KeyPool([key(1), ApiKey(secret=SecretStr("gsk_other_secret_value_99"), label="key1")])


def test_pick_prefers_healthy_then_least_recently_used() -> None:
    clock = FakeClock(T0)
    k1, k2, k3 = key(1, "o"), key(2, "o"), key(3, "o")
    pool = KeyPool([k1, k2, k3], clock=clock)
    keys = pool.groups()[0][1]
    assert [pool.pick(keys).label for _ in range(6)] == ["key1", "key2", "key3"] * 2


async def test_health_states_and_repr() -> None:
    clock = FakeClock(T0)
    k1, k2, k3, k4 = key(1), key(2), key(3), key(4)
    pool = KeyPool([k1, k2, k3, k4], clock=clock, degrade_after=2, degrade_for=30)
    assert repr(pool).startswith("<KeyPool [4 keys: 4 ready] key1 gsk_…0001, key2 gsk_…0002")
    await pool.disable(k1, "Groq answered 401")
    pool.note_cooldown(pool.organisation(k2), MODEL, T0 + 10)
    assert await pool.record_failure(k3) == "healthy"
    assert await pool.record_failure(k3) == "degraded"
    assert pool.health(k1) == "disabled"
    assert pool.health(k2, MODEL) == "cooling" and pool.health(k2, "other") == "healthy"
    assert pool.health(k2) == "cooling"  # cooling for some model
    assert pool.health(k3) == "degraded" and pool.health(k4) == "healthy"
    assert pool.counts() == {"healthy": 1, "cooling": 1, "degraded": 1, "disabled": 1}
    assert repr(pool) == (
        "<KeyPool [4 keys: 1 ready, 1 cooling, 1 degraded, 1 disabled] "
        "key1 gsk_…0001, key2 gsk_…0002, key3 gsk_…0003, key4 gsk_…0004>"
    )
    # Disabled keys are not offered; degraded ones come last in their organisation.
    assert [org for org, _ in pool.groups()] == ["org:key2", "org:key3", "org:key4"]
    assert pool.cooling_until(pool.organisation(k2), MODEL) == T0 + 10
    clock.advance(31)
    assert pool.health(k2) == "healthy" and pool.health(k3) == "healthy"
    await pool.record_success(k3)
    assert pool.record(k3).failures == 0


def test_repr_shows_no_secret_and_elides_many_keys() -> None:
    keys = [key(n) for n in range(1, 7)]
    text = repr(KeyPool(keys, clock=FakeClock(T0)))
    assert "6 keys" in text and text.endswith(", …>")
    assert "poolsecret" not in text
    assert all(k.secret.get_secret_value() not in text for k in keys)


async def test_degrading_needs_failures_close_together() -> None:
    clock = FakeClock(T0)
    k = key(1)
    pool = KeyPool([k], clock=clock, degrade_after=3, failure_window=60)
    for _ in range(5):
        assert await pool.record_failure(k) == "healthy"
        clock.advance(61)
    for _ in range(2):
        await pool.record_failure(k)
    assert await pool.record_failure(k) == "degraded"


async def test_state_is_shared_through_the_store() -> None:
    clock = FakeClock(T0)
    store = MemoryKeyStateStore()
    k1, k2 = key(1), key(2)
    a = KeyPool([k1, k2], store=store, clock=clock, refresh_interval=5)
    b = KeyPool([k1, k2], store=store, clock=clock, refresh_interval=5)
    await b.refresh()
    await a.disable(k1, "Groq answered 403")
    await b.refresh()
    assert b.health(k1) == "healthy"  # not reloaded yet
    clock.advance(5)
    await b.refresh()
    assert b.health(k1) == "disabled"
    # A record about "key1" written when key1 was another key does not apply to a new one.
    replaced = key(1, secret="gsk_a_brand_new_key_value_0042")
    c = KeyPool([replaced, k2], store=store, clock=clock)
    await c.refresh(force=True)
    assert c.health(replaced) == "healthy"
    disabled = (await store.load(["key1"])).records["key1"]
    assert disabled.masked == k1.masked and "poolsecret" not in str(disabled)


async def test_a_named_organisation_merges_keys(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryKeyStateStore()
    k1, k2, k3 = key(1), key(2), key(3, "org_01real")
    pool = KeyPool([k1, k2, k3], store=store, clock=FakeClock(T0))
    assert await pool.observe_organization(k2, "org_01real") == "org_01real"
    assert pool.organisation(k2) == "org_01real"
    with caplog.at_level(logging.WARNING, logger="ymera_groq_plugin.keys"):
        assert await pool.observe_organization(k1, "org_01real") == "org_01real"
    assert {pool.organisation(k) for k in (k1, k2, k3)} == {"org_01real"}
    # The organisation Groq named survives (not the first configured key's).
    assert [org for org, _ in pool.groups()] == ["org_01real"]
    assert "key1, key2, key3" in caplog.text and "adds no quota" in caplog.text
    assert (await store.load([])).aliases  # shared with every process
    other = KeyPool([k1, k2, k3], store=store, clock=FakeClock(T0))
    await other.refresh()
    assert other.organisation(k1) == "org_01real"
    assert await pool.observe_organization(k1, "org_01real") is None  # nothing new


async def test_merging_keeps_the_first_configured_organisation() -> None:
    k1, k2 = key(1, "org_z"), key(2, "org_a")
    pool = KeyPool([k1, k2], clock=FakeClock(T0))
    assert await pool.merge("org_a", "org_z", reason="test") == "org_z"
    assert pool.canonical("org_a") == "org_z"
    assert await pool.merge("org_a", "org_z", reason="again") == "org_z"


async def test_request_counts_that_continue_each_other_merge_organisations() -> None:
    clock = FakeClock(T0)
    k1, k2 = key(1), key(2)
    pool = KeyPool([k1, k2], clock=clock)
    o1, o2 = pool.organisation(k1), pool.organisation(k2)
    # One budget seen through two keys: 990, 989, 988, … alternating between them; three
    # reports from each, disjoint and forming one run, merge them.
    results = []
    for n, org in enumerate([o1, o2] * 4):
        clock.advance(1)
        results.append(await pool.observe_headers(org, MODEL, rl(990 - n)))
    assert results[:5] == [None] * 5 and results[5] == o1
    assert pool.organisation(k2) == o1
    evidence = pool.record(k2).org_evidence
    assert evidence is not None and "form one count" in evidence and "org:key1" in evidence
    assert pool.record(k1).org_evidence is None  # the surviving organisation is its own


async def test_one_budget_is_found_whatever_order_the_answers_arrive_in() -> None:
    """Concurrent requests on one budget through two keys, answers shuffled within batches
    (as several processes see them): the sets of counts, not their order, decide."""
    import random

    rng = random.Random(3)
    clock = FakeClock(T0)
    k1, k2 = key(1), key(2)
    store = MemoryKeyStateStore()
    # Two processes, each seeing half of the answers, comparing through one store.
    a = KeyPool([k1, k2], store=store, clock=clock)
    b = KeyPool([k1, k2], store=store, clock=clock)
    o1, o2 = a.organisation(k1), a.organisation(k2)
    count = 1000
    merged = []
    for _ in range(3):
        batch = [(rng.choice((a, b)), rng.choice((o1, o2)), count - j - 1) for j in range(6)]
        count -= 6
        rng.shuffle(batch)
        for pool, org, value in batch:
            clock.advance(0.01)
            merged.append(await pool.observe_headers(org, MODEL, rl(value)))
        if any(merged):
            break
    assert o1 in merged
    await a.refresh(force=True)
    await b.refresh(force=True)
    assert a.organisation(k2) == b.organisation(k2) == o1


async def test_the_first_process_to_record_a_merge_is_told_once() -> None:
    store = MemoryKeyStateStore()
    k1, k2 = key(1), key(2)
    calls: list[tuple[str, str]] = []

    async def moved(gone: str, kept: str) -> None:
        calls.append((gone, kept))

    a = KeyPool([k1, k2], store=store, clock=FakeClock(T0))
    b = KeyPool([k1, k2], store=store, clock=FakeClock(T0))
    a.on_merge = b.on_merge = moved
    assert await a.merge("org:key2", "org:key1", reason="test") == "org:key1"
    assert await b.merge("org:key2", "org:key1", reason="test") == "org:key1"
    assert calls == [("org:key2", "org:key1")]


async def test_concurrent_traffic_on_separate_budgets_does_not_merge() -> None:
    """Two organisations used alike by concurrent requests: each admits a few requests at a
    time and their answers arrive out of order, interleaved with the other's. Their counts
    "continue" each other now and then; their equal counts prove two budgets."""
    import random

    rng = random.Random(7)
    clock = FakeClock(T0)
    k1, k2 = key(1), key(2)
    pool = KeyPool([k1, k2], clock=clock)
    orgs = [pool.organisation(k1), pool.organisation(k2)]
    remaining = [1000, 1000]
    for _ in range(200):
        reports = []
        for i in (0, 1):
            batch = rng.randint(1, 5)
            reports += [(i, remaining[i] - j - 1) for j in range(batch)]
            remaining[i] -= batch
        rng.shuffle(reports)
        for i, value in reports:
            clock.advance(0.01)
            assert await pool.observe_headers(orgs[i], MODEL, rl(value)) is None
    assert pool.organisation(k1) != pool.organisation(k2)


async def test_independent_request_counts_do_not_merge() -> None:
    clock = FakeClock(T0)
    k1, k2 = key(1), key(2)
    pool = KeyPool([k1, k2], clock=clock)
    o1, o2 = pool.organisation(k1), pool.organisation(k2)
    # Two fresh organisations used in turn report the same numbers, each counting its own.
    for n in range(20):
        clock.advance(1)
        assert await pool.observe_headers(o1, MODEL, rl(999 - n)) is None
        assert await pool.observe_headers(o2, MODEL, rl(999 - n)) is None
    # Two organisations whose counts happen to be one apart, each continuing its own count.
    for n in range(20):
        clock.advance(1)
        assert await pool.observe_headers(o1, MODEL, rl(500 - n)) is None
        assert await pool.observe_headers(o2, MODEL, rl(501 - n)) is None
    # Reports far apart in time prove nothing.
    for n in range(6):
        clock.advance(120)
        org = o1 if n % 2 == 0 else o2
        assert await pool.observe_headers(org, MODEL, rl(300 - n)) is None
    assert pool.organisation(k1) != pool.organisation(k2)
    assert await pool.observe_headers(o1, MODEL, RateLimits(limit_tokens=6000)) is None


async def test_unlabelled_organisations_share_until_their_answers_decide() -> None:
    clock = FakeClock(T0)
    k1, k2, k3 = key(1), key(2), key(3, "org_named")
    pool = KeyPool([k1, k2, k3], clock=clock)
    o1, o2 = pool.organisation(k1), pool.organisation(k2)
    # Nobody said where key1 and key2 belong: each may be one budget with any other.
    assert [pool.share_of(o) for o in (o1, o2, "org_named")] == [3, 3, 3]
    # Fresh separate budgets count down alike: the duplicates decide "separate".
    for n in range(3):
        clock.advance(1)
        await pool.observe_headers(o1, MODEL, rl(999 - n))
        await pool.observe_headers(o2, MODEL, rl(999 - n))
    assert pool.share_of(o1) == pool.share_of(o2) == 2  # still undecided with org_named
    # Two organisations the user named are taken at their word.
    named = KeyPool([key(1, "org_a"), key(2, "org_b")], clock=clock)
    assert named.share_of("org_a") == named.share_of("org_b") == 1


async def test_a_burst_on_unlabelled_keys_fits_one_organisations_budget() -> None:
    """Before any answer, two unlabelled organisations together admit one RPM budget, since
    they may be one; once their counts prove two budgets, each has its own."""
    from ymera_groq_plugin.catalog import Catalog, ModelInfo, ModelLimits
    from ymera_groq_plugin.errors import QuotaExhaustedError
    from ymera_groq_plugin.quota import QuotaManager
    from ymera_groq_plugin.storage.memory import MemoryQuotaStore

    clock = FakeClock(T0)
    catalog = Catalog(
        [
            ModelInfo(
                id=MODEL,
                context_window=8192,
                max_completion_tokens=512,
                limits=ModelLimits(rpm=6, rpd=1000, tpm=100_000, tpd=1_000_000),
            )
        ]
    )
    manager = QuotaManager(
        [key(1), key(2)],
        catalog,
        quota_store=MemoryQuotaStore(),
        key_store=MemoryKeyStateStore(),
        clock=clock,
    )
    grants = [await manager.acquire(MODEL, 10) for _ in range(6)]
    assert sorted(g.key.label for g in grants) == ["key1"] * 3 + ["key2"] * 3
    with pytest.raises(QuotaExhaustedError):
        await manager.acquire(MODEL, 10)
    # Alerts and displays show the model's limit, not the share.
    assert manager.ledger.limits(manager.pool.organisation(key(1)), MODEL)[0] == 6
    # Their answers count down alike: two budgets; each organisation gets its whole limit.
    for n, g in enumerate(sorted(grants, key=lambda g: g.key.label)):
        await manager.settle(g, None, rl(999 - n % 3))
    assert manager.pool.share_of(manager.pool.organisation(key(1))) == 1
    assert manager.pool.organisation(key(1)) != manager.pool.organisation(key(2))
    # Three more each would reach the limit exactly (a millisecond of drain short): two each.
    assert sorted([(await manager.acquire(MODEL, 10)).key.label for _ in range(4)]) == [
        "key1",
        "key1",
        "key2",
        "key2",
    ]
