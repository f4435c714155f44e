"""The learner: thresholds, score, decay, feedback, sharing, training data, and a simulation."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest

from ymera_groq_plugin.config import YmeraSettings
from ymera_groq_plugin.errors import ConfigurationError, InvalidRequestError
from ymera_groq_plugin.learning import W_QUALITY, W_SPEED, W_SUCCESS, Learner
from ymera_groq_plugin.storage.redis_learning import RedisLearningStore
from ymera_groq_plugin.storage.resilient import ResilientLearningStore
from ymera_groq_plugin.storage.sqlite_learning import SqliteLearningStore
from ymera_groq_plugin.testing import FakeClock
from ymera_groq_plugin.types import Execution

AGENT, TASK = "coding_agent", "code_generation"
_ids = iter(range(10**9))


def learner(clock: FakeClock, store: Any = None, **kw: Any) -> Learner:
    kw.setdefault("exploration_rate", 0.0)
    return Learner(store or SqliteLearningStore(), clock=clock, rng=random.Random(7), **kw)


async def run(lrn: Learner, clock: FakeClock, model: str, n: int, *, ok: bool = True,
              latency: float = 500.0, quality: float | None = None, agent: str = AGENT,
              task: str = TASK, step: float = 10.0) -> None:
    for _ in range(n):
        await lrn.record(Execution(
            agent_name=agent, task_type=task, model=model, success=ok, latency_ms=latency,
            tokens=100, quality=quality, timestamp=clock(), execution_id=f"x{next(_ids)}"))
        clock.advance(step)


# -- the plan's rules ------------------------------------------------------------------------


async def test_no_recommendation_until_ten_executions_and_five_per_model(clock: FakeClock) -> None:
    lrn = learner(clock)
    await run(lrn, clock, "a", 4)
    await run(lrn, clock, "b", 5)
    assert lrn.recommend(AGENT, TASK, ["a", "b"]) is None  # 9 executions
    await run(lrn, clock, "a", 1)
    rec = lrn.recommend(AGENT, TASK, ["a", "b"])
    assert rec is not None and rec.model in {"a", "b"}
    assert set(rec.scores) == {"a", "b"}  # both have 5
    await run(lrn, clock, "c", 4, latency=1.0)
    assert "c" not in lrn.recommend(AGENT, TASK, ["a", "b", "c"]).scores  # type: ignore[union-attr]
    assert lrn.recommend(AGENT, TASK, ["c"]) is None  # no ranked candidate
    assert lrn.recommend(AGENT, TASK, []) is None
    exploring = Learner(lrn.store, exploration_rate=0.5, clock=clock, rng=random.Random(3))
    await run(exploring, clock, "a", 10)
    # Evidence about other models only: the policy's order decides, not a random draw.
    assert exploring.recommend(AGENT, TASK, ["x", "y"]) is None
    assert exploring.recommend(AGENT, TASK, ["x", "a"]) is not None


async def test_new_agent_borrows_every_agents_evidence(clock: FakeClock) -> None:
    lrn = learner(clock)
    await run(lrn, clock, "fast", 6, latency=200, agent="a1")
    await run(lrn, clock, "slow", 6, latency=3000, agent="a2")
    rec = lrn.recommend("brand_new_agent", TASK, ["slow", "fast"])
    assert rec is not None and rec.model == "fast" and rec.agent_name == "*"
    assert "evidence of all agents" in rec.reason
    assert lrn.recommend(None, TASK, ["slow", "fast"]).model == "fast"  # type: ignore[union-attr]
    assert lrn.evidence(None, TASK) == 12 and lrn.evidence("a1", TASK) == 6


def _expected_scores(cells: dict[str, tuple[int, int, float, float]]) -> dict[str, float]:
    """The documented score with the 2-pseudo-execution shrink towards the pooled means.

    cells: model -> (executions, successes, latency ms of every success, quality of each).
    """
    k = 2.0
    n = sum(c[0] for c in cells.values())
    ok = sum(c[1] for c in cells.values())
    p_bar = ok / n
    q_bar = sum(c[0] * c[3] for c in cells.values()) / n
    l_bar = sum(c[1] * c[2] for c in cells.values()) / ok
    lat = {m: (c[1] * c[2] + k * l_bar) / (c[1] + k) for m, c in cells.items()}
    fastest = min(lat.values())
    return {
        m: W_SUCCESS * (c[1] + k * p_bar) / (c[0] + k)
        + W_SPEED * fastest / lat[m]
        + W_QUALITY * (c[0] * c[3] + k * q_bar) / (c[0] + k)
        for m, c in cells.items()
    }


async def test_score_is_point_four_success_point_three_speed_point_three_quality(
    clock: FakeClock,
) -> None:
    assert (W_SUCCESS, W_SPEED, W_QUALITY) == (0.4, 0.3, 0.3)
    # One instant, so no decay: plain means.
    lrn = learner(clock)
    await run(lrn, clock, "accurate", 10, latency=1000, quality=0.9, step=0)
    await run(lrn, clock, "fast", 8, latency=250, quality=0.6, step=0)
    await run(lrn, clock, "fast", 2, ok=False, latency=250, quality=0.6, step=0)
    rec = lrn.recommend(AGENT, TASK, ["accurate", "fast"])
    assert rec is not None
    expected = _expected_scores({"accurate": (10, 10, 1000, 0.9), "fast": (10, 8, 250, 0.6)})
    assert rec.scores == pytest.approx(expected)
    assert rec.model == max(expected, key=expected.__getitem__) == "fast"
    assert rec.reason == f"learner: fast (score {expected['fast']:.2f}, n=10, evidence of {AGENT})"


async def test_unknown_quality_is_neutral(clock: FakeClock) -> None:
    # A model without feedback takes the rated models' mean quality: no bonus, no penalty.
    lrn = learner(clock)
    await run(lrn, clock, "low", 5, quality=0.2, step=0)
    await run(lrn, clock, "high", 5, quality=0.8, step=0)
    await run(lrn, clock, "unrated", 5, step=0)
    rec = lrn.recommend(AGENT, TASK, ["low", "unrated", "high"])
    assert rec is not None and rec.model == "high"
    assert rec.scores["low"] < rec.scores["unrated"] < rec.scores["high"]


async def test_old_evidence_decays_with_the_clock(clock: FakeClock) -> None:
    hour = 3600.0
    decaying = learner(clock, half_life=hour)
    keeping = learner(FakeClock(clock()), half_life=1e12)
    for lrn, clk in ((decaying, clock), (keeping, keeping.clock)):
        assert isinstance(clk, FakeClock)
        await run(lrn, clk, "a", 20, quality=0.0, step=1)
        await run(lrn, clk, "b", 10, quality=0.5, step=1)
        clk.advance(5 * hour)
        await run(lrn, clk, "a", 10, quality=1.0, step=1)
    # Without decay "a" still carries its 20 bad scores; with decay the recent ones dominate.
    assert keeping.recommend(AGENT, TASK, ["a", "b"]).model == "b"  # type: ignore[union-attr]
    assert decaying.recommend(AGENT, TASK, ["a", "b"]).model == "a"  # type: ignore[union-attr]
    # Thresholds count executions without decay.
    assert decaying.evidence(AGENT, TASK) == 40


async def test_exploration_is_reproducible_and_tries_short_candidates_first(
    clock: FakeClock,
) -> None:
    picks = []
    for _ in range(2):
        lrn = Learner(SqliteLearningStore(), exploration_rate=0.5, clock=clock,
                      rng=random.Random(42))
        await run(lrn, clock, "a", 12)
        recs = [lrn.recommend(AGENT, TASK, ["a", "new"]) for _ in range(20)]
        picks.append([(r.model, r.explored) for r in recs if r])
    assert picks[0] == picks[1]
    explored = [m for m, e in picks[0] if e]
    assert explored and set(explored) == {"new"}  # below five executions: tried first
    assert {m for m, e in picks[0] if not e} == {"a"}
    rec = next(r for r in (lrn.recommend(AGENT, TASK, ["a", "new"]) for _ in range(50))
               if r and r.explored)
    assert rec.reason.startswith("learner (exploring): new")


def test_bad_parameters() -> None:
    store = SqliteLearningStore()
    for kw in ({"exploration_rate": 1.5}, {"min_executions": 0}, {"half_life": 0}):
        with pytest.raises(ConfigurationError):
            Learner(store, **kw)  # type: ignore[arg-type]


# -- feedback ----------------------------------------------------------------------------------


async def test_feedback_attaches_and_replaces_quality(clock: FakeClock) -> None:
    lrn = learner(clock)
    await run(lrn, clock, "m", 1)
    eid = f"x{next(_ids) - 1}"
    await lrn.feedback(eid, 0.4)
    await lrn.feedback(eid, 0.9)  # replaces, does not add a second score
    data = await lrn.export_training_data()
    perf = data[f"{AGENT}:{TASK}"]["model_performance"]["m"]
    assert perf["quality_score"] == pytest.approx(0.9) and perf["quality_samples"] == 1
    assert (await lrn.store.get(eid)).quality == 0.9  # type: ignore[union-attr]


async def test_feedback_errors(clock: FakeClock) -> None:
    lrn = learner(clock)
    with pytest.raises(InvalidRequestError, match="No recorded execution 'nope'"):
        await lrn.feedback("nope", 0.5)
    for bad in (-0.1, 1.01, float("nan"), True):
        with pytest.raises(InvalidRequestError):
            await lrn.feedback("nope", bad)  # type: ignore[arg-type]


# -- sharing through the store --------------------------------------------------------------------


async def test_learners_share_evidence_through_a_sqlite_file(tmp_path: Path,
                                                             clock: FakeClock) -> None:
    url = tmp_path / "learning.db"
    a = learner(clock, SqliteLearningStore(url))
    b = learner(clock, SqliteLearningStore(url), refresh_interval=1e9)
    await run(a, clock, "m", 6)
    await run(a, clock, "n", 6, latency=5000)
    eid = f"x{next(_ids) - 1}"
    await b.refresh()
    assert b.evidence(AGENT, TASK) == 12
    await b.feedback(eid, 0.1)  # b's feedback on a's execution…
    await a.refresh()  # …reaches a, and a's own events are not counted twice
    assert a.evidence(AGENT, TASK) == 12
    exported = await a.export_training_data()
    assert exported[f"{AGENT}:{TASK}"]["model_performance"]["n"]["quality_samples"] == 1
    assert a.recommend(AGENT, TASK, ["m", "n"]).model == "m"  # type: ignore[union-attr]
    assert b.recommend(AGENT, TASK, ["m", "n"]).model == "m"  # type: ignore[union-attr]
    await a.aclose()
    await b.aclose()


async def test_record_refreshes_at_most_every_interval(tmp_path: Path, clock: FakeClock) -> None:
    a = learner(clock, SqliteLearningStore(tmp_path / "l.db"))
    b = learner(clock, SqliteLearningStore(tmp_path / "l.db"), refresh_interval=60)
    await run(b, clock, "m", 1, step=0)  # first record loads everything
    await run(a, clock, "m", 3, step=0)
    await run(b, clock, "m", 1, step=0)
    assert b.evidence(AGENT, TASK) == 2  # a's three not folded in yet
    clock.advance(61)
    await run(b, clock, "m", 1, step=0)
    assert b.evidence(AGENT, TASK) == 6


async def test_refresh_prunes_evidence_older_than_the_retention(clock: FakeClock) -> None:
    lrn = learner(clock, half_life=100.0)  # retention: 10 half-lives
    await run(lrn, clock, "m", 3)
    clock.advance(2000)
    lrn._last_prune = -math.inf
    await lrn.refresh()
    assert await lrn.store.events() == []


def test_from_settings_picks_the_store(tmp_path: Path) -> None:
    sqlite = Learner.from_settings(
        YmeraSettings(data_dir=tmp_path, exploration_rate=0.25, quality_floor=0.7)
    )
    assert isinstance(sqlite.store, SqliteLearningStore)
    assert sqlite.store.path == str((tmp_path / "learning.db").resolve())
    assert sqlite.exploration_rate == 0.25
    assert sqlite.quality_floor == 0.7
    redis = Learner.from_settings(YmeraSettings(redis_url="redis://localhost:1/0",
                                                namespace="t1"))
    # Redis, behind the buffer that keeps records while it is unreachable.
    assert isinstance(redis.store, ResilientLearningStore)
    assert isinstance(redis.store.primary, RedisLearningStore)
    assert redis.store.primary.namespace == "t1"
    assert "exploration 10%" in repr(redis)


# -- training data (original plan §7.2) ------------------------------------------------------------

PLAN_EXAMPLE = {
    "coding_agent:code_generation": {
        "executions": 145, "successes": 132, "failures": 13, "avg_latency": 1.2,
        "avg_tokens": 1850, "quality_score": 0.87,
        "model_performance": {
            "llama-3.3-70b-versatile": {"executions": 98, "successes": 92, "avg_latency": 1.1,
                                        "quality_score": 0.91},
            "llama-4-maverick-17b": {"executions": 47, "successes": 40, "avg_latency": 0.8,
                                     "quality_score": 0.78},
        },
    }
}


async def test_import_the_plans_example_file(clock: FakeClock) -> None:
    lrn = learner(clock)
    assert await lrn.import_training_data(PLAN_EXAMPLE) == 145
    top = lrn.top_recommendations()
    # Maverick is faster for a little less success and quality: it wins under the plan's own
    # formula too (0.907 against 0.898 with speed = 1 / (latency + 0.1)).
    assert top["coding_agent:code_generation"]["model"] == "llama-4-maverick-17b"
    assert top["coding_agent:code_generation"]["executions"] == 47
    out = (await lrn.export_training_data())["coding_agent:code_generation"]
    assert (out["executions"], out["successes"], out["failures"]) == (145, 132, 13)
    llama = out["model_performance"]["llama-3.3-70b-versatile"]
    assert llama["avg_latency"] == pytest.approx(1.1)
    assert llama["quality_score"] == pytest.approx(0.91)
    assert llama["avg_tokens"] == pytest.approx(1850)
    # Retired models' evidence is kept, but only served candidates are ever recommended.
    assert lrn.recommend("coding_agent", "code_generation", ["openai/gpt-oss-120b"]) is None


async def test_export_import_round_trip_across_stores(tmp_path: Path, clock: FakeClock) -> None:
    a = learner(clock)
    await run(a, clock, "m", 7, latency=800, quality=0.75)
    await run(a, clock, "m", 3, ok=False, latency=1500)
    await run(a, clock, "n", 4, latency=200, agent="validation_agent", task="validation")
    exported = await a.export_training_data()
    b = learner(clock, SqliteLearningStore(tmp_path / "b.db"))
    assert await b.import_training_data(exported) == 14
    assert await b.export_training_data() == exported
    # …and the import is in the store: a fresh learner on it sees it.
    c = learner(clock, SqliteLearningStore(tmp_path / "b.db"))
    await c.refresh()
    assert await c.export_training_data() == exported
    entry = exported[f"{AGENT}:{TASK}"]
    assert entry["avg_latency"] == pytest.approx((7 * 0.8 + 3 * 1.5) / 10)
    assert entry["model_performance"]["m"]["quality_samples"] == 7


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([], "JSON object"),
        ({"no-colon": {}}, "'agent:task_type'"),
        ({"a:t": {"model_performance": {"m": {"successes": 1}}}}, "missing 'executions'"),
        ({"a:t": {"model_performance": {"m": {"executions": 2, "successes": 3}}}}, "between"),
        ({"a:t": {"model_performance": {"m": {"executions": 1, "quality_score": 2}}}},
         r"quality_score in \[0, 1\]"),
    ],
)
async def test_bad_training_data_imports_nothing(clock: FakeClock, data: Any, match: str) -> None:
    lrn = learner(clock)
    with pytest.raises(InvalidRequestError, match=match):
        await lrn.import_training_data(data)
    assert await lrn.store.events() == []


# -- simulation --------------------------------------------------------------------------------


def _true_scores(env: dict[str, dict[str, float]]) -> dict[str, float]:
    """The score the learner aims at, computed from the hidden parameters."""
    fastest = min(p["latency"] for p in env.values())
    return {m: W_SUCCESS * p["success"] + W_SPEED * fastest / p["latency"]
            + W_QUALITY * p["quality"] for m, p in env.items()}


async def _simulate(seed: int, *, exploration_rate: float, half_life: float) -> dict[str, Any]:
    """One agent, one task, hidden models; regret and recommendations per phase.

    Phase 1: 300 calls, the policy default ("weak") until the learner speaks.
    Phase 2: the best model's answers get worse (quality 0.9 → 0.3); 300 calls.
    Phase 3: a better model becomes available; 300 calls.
    A call goes to `recommend()` (exploration included); quality arrives by `feedback()`
    after each call, as it would from an evaluator. After every call the greedy
    recommendation (`top_recommendations`, no exploration) is noted.
    """
    clock = FakeClock()
    world = random.Random(seed)
    lrn = Learner(SqliteLearningStore(), exploration_rate=exploration_rate,
                  half_life=half_life, clock=clock, rng=random.Random(seed + 1000))
    env = {
        "weak": {"success": 0.75, "latency": 300.0, "quality": 0.45},
        "mid": {"success": 0.90, "latency": 500.0, "quality": 0.70},
        "best": {"success": 0.97, "latency": 700.0, "quality": 0.90},
    }
    candidates = ["weak", "mid", "best"]
    key = f"{AGENT}:{TASK}"
    result: dict[str, Any] = {"regret": [], "best_share": [], "tops": []}
    i = 0

    async def phase(steps: int) -> None:
        nonlocal i
        regret, hits, tops = 0.0, 0, []
        for _ in range(steps):
            rec = lrn.recommend(AGENT, TASK, candidates)
            model = rec.model if rec else "weak"
            truth = _true_scores(env)
            regret += max(truth.values()) - truth[model]
            hits += model == max(truth, key=truth.__getitem__)
            p = env[model]
            ok = world.random() < p["success"]
            latency = p["latency"] * math.exp(world.gauss(0.0, 0.3))
            quality = min(1.0, max(0.0, world.gauss(p["quality"], 0.1))) if ok else 0.0
            eid = f"sim-{seed}-{i}"
            await lrn.record(Execution(agent_name=AGENT, task_type=TASK, model=model,
                                       success=ok, latency_ms=latency, tokens=400,
                                       timestamp=clock(), execution_id=eid))
            await lrn.feedback(eid, quality)
            clock.advance(60.0)
            i += 1
            tops.append(lrn.top_recommendations().get(key, {}).get("model"))
        result["regret"].append(regret)
        result["best_share"].append(hits / steps)
        result["tops"].append(tops)

    await phase(300)
    env["best"]["quality"] = 0.3
    await phase(300)
    env["new"] = {"success": 0.99, "latency": 250.0, "quality": 0.95}
    candidates.append("new")
    await phase(300)
    await lrn.aclose()
    return result


def _first(tops: list[str | None], pred: Any) -> int | None:
    return next((n for n, t in enumerate(tops, start=1) if pred(t)), None)


def _share(tops: list[str | None], pred: Any) -> float:
    return sum(1 for t in tops if pred(t)) / len(tops)


async def test_simulation_learns_the_best_model_follows_a_drop_and_finds_a_new_one() -> None:
    """Five seeds (the first five; over 40 seeds the figures are in the package report).

    Half-life 2 h at one call a minute: about 120 calls per half-life. What matters is calls
    per half-life; the product default (7 days) is the same trade-off for a slower agent.
    """
    seeds = (0, 1, 2, 3, 4)
    rows = [await _simulate(s, exploration_rate=0.1, half_life=7200.0) for s in seeds]
    reach: list[tuple[int | None, int | None, int | None]] = []
    shares: list[float] = []
    for r in rows:
        p1, p2, p3 = r["tops"]
        reach.append((_first(p1, lambda t: t == "best"), _first(p2, lambda t: t != "best"),
                      _first(p3, lambda t: t == "new")))
        shares.append(_share(p1[-100:], lambda t: t == "best"))
        # After a few hundred executions the recommendation is the best model…
        assert p1[-1] == "best"
        # …after its quality drops it moves off it within a bounded number of executions and
        # stays off (the runners-up score 0.75 and 0.735: either is right)…
        assert reach[-1][1] is not None and reach[-1][1] <= 150
        assert _share(p2[-100:], lambda t: t != "best") >= 0.9
        # …and a better model that arrives later is found.
        assert reach[-1][2] is not None and reach[-1][2] <= 60
        assert _share(p3[-100:], lambda t: t == "new") >= 0.9
    # The best and the runner-up are 5 % apart, so the recommendation may still waver at
    # times in phase 1; on average it is the best model in most of the last 100 calls.
    assert sum(shares) / len(shares) >= 0.85 and min(shares) >= 0.5
    baseline = [await _simulate(s, exploration_rate=0.0, half_life=1e12) for s in seeds]
    # The original plan's rules alone (no exploration, no decay) never leave the default.
    assert all(set(b["tops"][0][-100:]) == {"weak"} for b in baseline)
    assert all("new" not in b["tops"][2] for b in baseline)

    def mean(key: str, j: int, data: list[dict[str, Any]]) -> float:
        return sum(d[key][j] for d in data) / len(data)

    print(f"\nregret against always choosing the best model (sum of true-score gaps over 300 "
          f"calls per phase, mean of {len(seeds)} seeds):")
    print("  phase               learner (ε=0.1, half-life 2 h)     plan's rules only")
    for j, name in enumerate(("1 cold start", "2 best degrades", "3 better model")):
        print(f"  {name:18s}  {mean('regret', j, rows):6.2f} (best model chosen "
              f"{mean('best_share', j, rows):4.0%})   {mean('regret', j, baseline):6.2f} "
              f"(best model chosen {mean('best_share', j, baseline):4.0%})")
    print("  calls until the recommendation is right (phase 1 best / phase 2 off the degraded "
          "model / phase 3 new): " + ", ".join(f"{a}/{b}/{c}" for a, b, c in reach))
    print("  phase 1, last 100 calls, share recommending the best: "
          + ", ".join(f"{x:.0%}" for x in shares))
    # (In phase 2 the stuck baseline happens to sit on a near-best model: 0.735 vs 0.75.)
    assert mean("regret", 0, rows) < mean("regret", 0, baseline)
    assert mean("regret", 2, rows) < mean("regret", 2, baseline)
    assert sum(sum(r["regret"]) for r in rows) < sum(sum(b["regret"]) for b in baseline)

    # Outcomes teach (issue 16): requests classed moderate go to the small model first (the
    # plan's default); its answers score low, the large model's well. Printed beside the
    # figures above; the plan's score as written (no quality floor) keeps the small model.
    floor = [await _simulate_moderate(s, quality_floor=0.5) for s in seeds]
    plain = [await _simulate_moderate(s, quality_floor=0.0) for s in seeds]
    print("  moderate requests, small model's answers 0.40 / large model's 0.85 (300 calls, "
          f"mean of {len(seeds)} seeds):")
    for name, data in (("learner, quality floor 0.5", floor), ("plan's score, no floor", plain)):
        print(f"    {name:27s} quality regret {mean('regret', 0, data):6.2f}, large model "
              f"chosen {mean('large_share', 0, data):4.0%} of the last 100 calls, first "
              f"recommended after {[d['shift'] for d in data]} calls")
    assert all(d["large_share"][0] >= 0.8 for d in floor)
    assert all(d["shift"] is not None and d["shift"] <= 60 for d in floor)
    assert all(d["large_share"][0] < 0.5 for d in plain)
    assert mean("regret", 0, floor) < mean("regret", 0, plain) / 2


async def _simulate_moderate(seed: int, *, quality_floor: float) -> dict[str, Any]:
    """Moderate requests of one agent × task: a small fast model whose answers score low
    against a large slower one whose answers score well; quality arrives by feedback, failures
    score 0. Regret is quality lost against always choosing the better-answering model."""
    clock = FakeClock()
    world = random.Random(seed)
    lrn = Learner(SqliteLearningStore(), exploration_rate=0.1, half_life=7200.0, clock=clock,
                  rng=random.Random(seed + 2000), quality_floor=quality_floor)
    env = {
        "small": {"success": 0.95, "latency": 250.0, "quality": 0.40},
        "large": {"success": 0.97, "latency": 700.0, "quality": 0.85},
    }
    truth = {m: p["success"] * p["quality"] for m, p in env.items()}
    regret, tops = 0.0, []
    for i in range(300):
        rec = lrn.recommend(AGENT, "validation", ["small", "large"])
        model = rec.model if rec else "small"
        regret += max(truth.values()) - truth[model]
        p = env[model]
        ok = world.random() < p["success"]
        latency = p["latency"] * math.exp(world.gauss(0.0, 0.3))
        quality = min(1.0, max(0.0, world.gauss(p["quality"], 0.1))) if ok else 0.0
        eid = f"mod-{seed}-{i}"
        await lrn.record(Execution(agent_name=AGENT, task_type="validation", model=model,
                                   success=ok, latency_ms=latency, tokens=300,
                                   timestamp=clock(), execution_id=eid))
        await lrn.feedback(eid, quality)
        clock.advance(60.0)
        tops.append(lrn.top_recommendations().get(f"{AGENT}:validation", {}).get("model"))
    await lrn.aclose()
    return {"regret": [regret], "large_share": [_share(tops[-100:], lambda t: t == "large")],
            "shift": _first(tops, lambda t: t == "large")}


def test_quality_floor_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="quality_floor"):
        Learner(SqliteLearningStore(), quality_floor=1.5)
