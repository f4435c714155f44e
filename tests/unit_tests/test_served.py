"""`ServedModels` and `Catalog.apply_account` without a server: listings, marks, the file."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from ymera_groq_plugin.catalog import load_catalog
from ymera_groq_plugin.config import ApiKey
from ymera_groq_plugin.errors import ModelRetiredError
from ymera_groq_plugin.served import ServedModels
from ymera_groq_plugin.storage.served import FileServedStore
from ymera_groq_plugin.testing import FakeClock

TODAY = dt.date(2026, 12, 4)
A = "openai/gpt-oss-20b"
BIG = "openai/gpt-oss-120b"
OLD = "llama-3.1-8b-instant"  # shut down on the catalog's dates; successor A
KEYS = [
    ApiKey(secret=SecretStr("gsk_unit_served_key_00000000001"), label="key1", org="org_a"),
    ApiKey(secret=SecretStr("gsk_unit_served_key_00000000002"), label="key2", org="org_b"),
]


def _payload(*ids: str) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": i, "active": True, "context_window": 131072} for i in ids],
    }


def _served(tmp_path: Path, listings: dict[str, dict[str, Any]], clock: FakeClock) -> ServedModels:
    async def lister(key: ApiKey) -> dict[str, Any]:
        assert key.org is not None
        return listings[key.org]

    return ServedModels(
        load_catalog(today=TODAY),
        groups=lambda: [(k.org or "", [k]) for k in KEYS],
        lister=lister,
        file=FileServedStore(tmp_path / "served.json"),
        clock=clock,
    )


async def test_the_listing_decides_and_marks_last_until_the_next_one(
    tmp_path: Path, clock: FakeClock
) -> None:
    listings = {"org_a": _payload(A, OLD, "newcorp/x-1"), "org_b": _payload(A)}
    served = _served(tmp_path, listings, clock)
    catalog = served.catalog
    assert not catalog.is_served(OLD) and catalog.is_served(BIG)  # the dates, nothing known
    assert served.due()
    assert await served.refresh()
    assert catalog.is_served(OLD) and not catalog.is_served(BIG)
    assert catalog.get("newcorp/x-1").limits == catalog.conservative_limits()
    assert served.serves("org_a", OLD) and not served.serves("org_b", OLD)
    clock.advance(1)
    await served.mark("org_a", OLD)  # a 404: OLD is now served nowhere
    assert not served.serves("org_a", OLD)
    resolved = catalog.resolve(OLD)
    assert resolved.model.id == A and resolved.warning and "404" in resolved.warning
    clock.advance(1)
    assert await served.refresh(force=True)  # Groq still lists it: the listing wins
    assert served.serves("org_a", OLD) and served.state.marks == {}
    assert catalog.resolve(OLD).model.id == OLD


async def test_state_survives_in_the_file(tmp_path: Path, clock: FakeClock) -> None:
    first = _served(tmp_path, {"org_a": _payload(A, OLD), "org_b": _payload(A)}, clock)
    await first.refresh()
    await first.mark("org_b", A)
    second = _served(tmp_path, {}, clock)
    await second.load()
    assert second.source == "file"
    assert second.catalog.is_served(OLD)
    assert not second.serves("org_b", A) and second.serves("org_a", A)


async def test_marks_without_a_listing_still_route(tmp_path: Path, clock: FakeClock) -> None:
    served = _served(tmp_path, {}, clock)
    served.catalog.serve_successor = False
    await served.mark("org_a", BIG)
    assert served.catalog.is_served(BIG)  # org_b may still serve it
    await served.mark("org_b", BIG)
    with pytest.raises(ModelRetiredError, match="every organisation"):
        served.catalog.resolve(BIG)


async def test_a_404_during_a_listing_outlives_that_listing(
    tmp_path: Path, clock: FakeClock
) -> None:
    # Groq answered the listing from what it knew when asked; a 404 that arrives while the
    # listing is on its way is newer, so the listing must not clear its mark.
    listings = {"org_a": _payload(A, BIG), "org_b": _payload(A, BIG)}
    served = _served(tmp_path, listings, clock)
    asked_at = clock()

    async def lister(key: ApiKey) -> dict[str, Any]:
        assert key.org is not None
        if key.org == "org_a":
            clock.advance(1)
            await served.mark("org_a", A)
            clock.advance(1)
        return listings[key.org]

    served._lister = lister
    assert await served.refresh()
    assert served.state.orgs["org_a"].fetched_at == asked_at
    assert not served.serves("org_a", A) and served.serves("org_b", A)
    assert served.state.marks == {("org_a", A): asked_at + 1}
