"""A pinned model on a cold start (issue 13, item b): the account's listing decides, not the
catalog's dates, even for the very first request, before any listing is known."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.integration_tests.test_served import OLD, Rig, make_rig, wait_until
from ymera_groq_plugin.errors import ModelRetiredError

__all__ = ["make_rig"]  # the fixture, shared with test_served


@pytest.mark.parametrize("serve_successor", [True, False])
def test_a_pinned_model_the_dates_retire_waits_for_the_listing_on_a_cold_start(
    make_rig: Callable[..., Rig], serve_successor: bool
) -> None:
    # An enterprise plan still serves OLD; the catalog's dates call it shut down. The listing
    # is slow, and nothing is on disk: the first request must not be answered by the
    # successor (serve_successor on) nor refused (off) on the dates' word.
    rig = make_rig(served={"org_1": [OLD], "org_2": [OLD]})
    rig.server.configure_listing(delay=0.5)
    engine = rig.engine(wait_listing=False, serve_successor=serve_successor)
    served = engine.served
    assert served is not None and not served.known
    answer = rig.model(engine, model=OLD).invoke("hello")
    assert answer.response_metadata["model_name"] == OLD
    assert served.known
    assert rig.four_oh_fours() == {}


def test_a_pinned_model_the_account_does_not_serve_is_refused_after_the_listing(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(served={"org_1": ["openai/gpt-oss-20b"], "org_2": ["openai/gpt-oss-20b"]})
    rig.server.configure_listing(delay=0.3)
    engine = rig.engine(wait_listing=False, serve_successor=False)
    calls = rig.server.stats().requests
    with pytest.raises(ModelRetiredError):
        rig.model(engine, model=OLD).invoke("hello")
    assert rig.server.stats().requests == calls  # refused before any completion call


def test_a_routed_request_still_never_waits_for_the_listing(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.server.configure_listing(delay=3.0)
    engine = rig.engine(wait_listing=False)
    served = engine.served
    assert served is not None
    answer = rig.model(engine, model="openai/gpt-oss-20b").invoke("a served pinned model")
    assert answer.content
    assert not served.known  # answered before the (slow) listing came back
    assert wait_until(lambda: served.known)
