"""The soak in a short form (the long one is `benchmarks/bench_soak.py`): several processes,
one local Groq server, one Redis, under a binding limit. See `soak.py`."""

from __future__ import annotations

import pytest

from .soak import SoakConfig, run_soak

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def test_a_short_soak_has_no_429_nothing_lost_and_stable_memory(redis_url: str) -> None:
    report = run_soak(SoakConfig(processes=3, requests=300, concurrency=12), redis_url)
    print("\n" + "\n".join(report.lines()))
    assert report.server_refused == {} and 429 not in report.server_statuses
    assert report.errors == {}
    assert report.lost == [] and report.duplicated == [] and report.unexpected == []
    assert report.answered == report.sent == 900
    assert report.server_statuses == {200: 900}
    assert all(w["idle"] for w in report.per_worker)
    # Memory: a worker's resident set may settle after the warm-up, not keep growing.
    for samples in report.rss_mb:
        assert samples[-1] - samples[0] < 40, report.rss_mb
