"""The policy, the router's plan (order, drops, reasons), context fit and document fitting."""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path
from typing import Any

import pytest

from ymera_groq_plugin.catalog import Catalog, load_catalog
from ymera_groq_plugin.config import YmeraSettings
from ymera_groq_plugin.errors import (
    ConfigurationError,
    ContextWindowError,
    ModelRetiredError,
    UnknownModelError,
)
from ymera_groq_plugin.learning import Learner
from ymera_groq_plugin.routing import (
    Document,
    Router,
    default_policy,
    explain_route,
    fit_documents,
    load_policy,
)
from ymera_groq_plugin.storage.sqlite_learning import SqliteLearningStore
from ymera_groq_plugin.testing import FakeClock
from ymera_groq_plugin.tokens import estimate_prompt_tokens
from ymera_groq_plugin.types import TASK_TYPES, ChatRequest, Execution, Profile

TODAY = dt.date(2026, 11, 28)
G120, G20, SAFE, QWEN = (
    "openai/gpt-oss-120b",
    "openai/gpt-oss-20b",
    "openai/gpt-oss-safeguard-20b",
    "qwen/qwen3.8-27b",
)


@pytest.fixture
def catalog() -> Catalog:
    return load_catalog(today=TODAY)


@pytest.fixture
def long_catalog() -> Catalog:
    """One long-context model (262144) among shorter ones."""
    return load_catalog(
        today=TODAY,
        overrides=[
            {"id": QWEN, "context_window": 262144},
            {"id": G120, "context_window": 32768},
            {"id": G20, "context_window": 16384},
            {"id": SAFE, "context_window": 16384},
        ],
    )


def req(text: str = "hello", **kw: Any) -> ChatRequest:
    return ChatRequest(messages=({"role": "user", "content": text},), **kw)


def profile(task: str, complexity: str = "moderate", tokens: int = 50, agent: str | None = None
            ) -> Profile:
    return Profile(task_type=task, complexity=complexity, estimated_tokens=tokens,  # type: ignore[arg-type]
                   reasons=("test profile",), agent_name=agent)


# -- policy ----------------------------------------------------------------------------------


def test_embedded_policy_covers_every_task_type_and_binds(catalog: Catalog) -> None:
    policy = default_policy()
    assert set(policy.task_matrix) == set(TASK_TYPES)
    assert set(policy.agent_classes) == {"fast", "standard", "complex", "long-context",
                                         "multilingual"}
    router = Router(catalog, policy)
    served = {m.id for m in catalog.served()}
    for task in TASK_TYPES:
        plan = router.plan(req(), profile(task))
        assert plan.models and set(plan.models) <= served


def test_policy_rows_keep_the_plans_models_through_catalog_successors(catalog: Catalog) -> None:
    """The original plan's choice for every row, resolved through aliases and successors
    (`catalog.resolve(name).model`), is among the row's current models."""
    router = Router(catalog)
    for task, row in default_policy().task_matrix.items():
        resolved_row = {r.model for r in router._bound.rows[task]}
        for name in row.plan:
            assert catalog.resolve(name).model.id in resolved_row, (task, name)


def test_policy_file_may_name_the_plans_models(tmp_path: Path, catalog: Catalog) -> None:
    path = tmp_path / "policy.json"
    doc = {"task_matrix": {"validation": {"primary": "llama-3.1-8b-instant"}}}
    path.write_text(json.dumps(doc))
    policy = load_policy(path)
    row = policy.task_matrix["validation"]
    assert row.primary == "llama-3.1-8b-instant"
    assert row.fallbacks == default_policy().task_matrix["validation"].fallbacks  # merged
    plan = Router(catalog, policy).plan(req(), profile("validation"))
    assert plan.models[0] == G20
    assert any("'llama-3.1-8b-instant' → openai/gpt-oss-20b (shut down; successor)" in r
               for r in plan.reasons)


def test_policy_overrides_merge_and_user_agents_come_first() -> None:
    policy = load_policy(overrides={
        "default_completion_tokens": 2048,
        "agents": [{"pattern": "^ana$", "class": "complex", "task_type": "analysis"}],
    })
    assert policy.default_completion_tokens == 2048
    assert policy.agent("ana") is not None and policy.agent("ana").task_type == "analysis"  # type: ignore[union-attr]
    assert policy.agent("code_reviewer").task_type == "code_review"  # type: ignore[union-attr]
    assert "Policy v1" in repr(policy)


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"task_matrix": {"security": {"primary": ""}}}, "task_matrix.security.primary"),
        ({"task_matrix": {"hacking": {"primary": G20}}}, "unknown task type 'hacking'"),
        ({"agents": [{"pattern": "x", "class": "nope"}]}, "agents.0.class"),
        ({"agents": [{"pattern": "(", "class": "fast"}]}, "agents.0.pattern"),
        ({"agent_classes": {"fast": {"task_types": ["speed"]}}}, "agent_classes.fast.task_types"),
        ({"complexity_routing": {"hard": {"class": "fast"}}}, "unknown complexity 'hard'"),
        ({"default_completion_tokens": 0}, "default_completion_tokens"),
        ({"typo_field": 1}, "typo_field"),
    ],
)
def test_bad_policy_is_a_configuration_error_naming_the_field(
    tmp_path: Path, doc: dict[str, Any], field: str
) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigurationError) as info:
        load_policy(path)
    assert field in str(info.value)
    assert info.value.setting == "YMERA_POLICY"


def test_unreadable_policy_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not found"):
        load_policy(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigurationError, match="not readable JSON"):
        load_policy(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigurationError, match="expected a JSON object"):
        load_policy(bad)


def test_policy_naming_an_unknown_model_fails_when_bound(catalog: Catalog) -> None:
    policy = load_policy(overrides={"task_matrix": {"security": {"primary": "gpt-9"}}})
    with pytest.raises(ConfigurationError, match=r"task_matrix\.security names 'gpt-9'"):
        Router(catalog, policy)


def test_bad_context_margin(catalog: Catalog) -> None:
    with pytest.raises(ConfigurationError):
        Router(catalog, context_margin=1.5)


# -- plan: explicit model ------------------------------------------------------------------------


def test_explicit_model_is_pinned_without_the_opt_in(catalog: Catalog) -> None:
    plan = Router(catalog).plan(req(model=G120), profile("general"))
    assert plan.models == (G120,)
    assert any("pinned" in r for r in plan.reasons)
    assert Router(catalog).plan(req(model="gpt-oss-120b"), profile("general")).models == (G120,)


def test_explicit_alias_goes_first_with_its_fallback_chain(catalog: Catalog) -> None:
    router = Router(catalog, allow_model_fallback=True)
    plan = router.plan(req(model="gpt-oss-120b"), profile("general"))
    assert plan.models == (G120, G20, QWEN)
    assert any("alias of openai/gpt-oss-120b" in r for r in plan.reasons)
    assert any(r.startswith("catalog fallbacks: ") for r in plan.reasons)


def test_explicit_retired_model_is_served_by_its_successor_with_a_warning(catalog: Catalog) -> None:
    plan = Router(catalog).plan(req(model="llama-3.3-70b-versatile"), profile("general"))
    assert plan.models[0] == G120
    assert any("shut down on 2026-08-16" in r and "serving 'openai/gpt-oss-120b'" in r
               for r in plan.reasons)


def test_explicit_unknown_or_refused_model_raises(catalog: Catalog) -> None:
    with pytest.raises(UnknownModelError):
        Router(catalog).plan(req(model="gpt-9"), profile("general"))
    strict = load_catalog(today=TODAY, serve_successor=False)
    with pytest.raises(ModelRetiredError):
        Router(strict).plan(req(model="llama-3.1-8b-instant"), profile("general"))


def test_explicit_model_stays_first_when_out_of_quota(catalog: Catalog) -> None:
    plan = Router(catalog, allow_model_fallback=True).plan(
        req(model=G120), profile("general"), headroom={G120: 0.0, G20: 0.0}
    )
    assert plan.models == (G120, QWEN, G20)
    assert any("asked for explicitly; kept first" in r for r in plan.reasons)


# -- plan: policy, learner, quota ---------------------------------------------------------------


def test_policy_order_and_complexity_routing(catalog: Catalog) -> None:
    router = Router(catalog)
    assert router.plan(req(), profile("architecture", "moderate")).models == (G120, QWEN, G20)
    # simple → the fast class's model first; complex → the complex class's.
    simple = router.plan(req(), profile("architecture", "simple"))
    assert simple.models[0] == G20
    assert any("complexity simple → fast class" in r for r in simple.reasons)
    assert router.plan(req(), profile("validation", "complex")).models[0] == G120
    # …but not for task types the route leaves to the matrix.
    assert router.plan(req(), profile("multilingual", "simple")).models[0] == QWEN


def test_agent_class_models_and_catalog_strengths_extend_the_plan(catalog: Catalog) -> None:
    plan = Router(catalog).plan(req(), profile("monitoring", agent="security_auditor"))
    # monitoring row: 20b, qwen; complex class: 120b; then catalog strengths (none new).
    assert plan.models == (G20, QWEN, G120)
    assert any("agent class complex" in r for r in plan.reasons)


def test_long_context_row_uses_the_longest_served_window(long_catalog: Catalog) -> None:
    plan = Router(long_catalog).plan(req(), profile("long_context"))
    assert plan.models[0] == QWEN


def test_quota_moves_models_without_room_back_but_keeps_them(catalog: Catalog) -> None:
    router = Router(catalog)
    plan = router.plan(
        req(), profile("code_generation"),
        headroom={G120: 0.0}, time_until_room={QWEN: 12.5},
    )
    assert plan.models == (G20, G120, QWEN)
    assert "quota: openai/gpt-oss-120b has no room → moved back" in plan.reasons
    assert "quota: qwen/qwen3.8-27b has no room (room in 12.5s) → moved back" in plan.reasons
    everything_out = router.plan(req(), profile("code_generation"),
                                 time_until_room={G120: 30, QWEN: 5, G20: 60})
    assert everything_out.models == (QWEN, G120, G20)  # soonest room first


def test_capabilities_drop_models(catalog: Catalog) -> None:
    no_tools = catalog.with_overrides([{"id": G20, "capabilities": {"tool_use": False}}])
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    plan = Router(no_tools).plan(req(params={"tools": tools}), profile("validation"))
    assert G20 not in plan.models
    assert plan.dropped[G20] == "no tool use"


def test_max_tokens_above_a_models_completion_limit_drops_it(catalog: Catalog) -> None:
    plan = Router(catalog).plan(req(params={"max_tokens": 20000}), profile("multilingual"))
    assert QWEN not in plan.models  # qwen completes at most 16384 tokens
    assert plan.dropped[QWEN] == "max_tokens 20000 > its completion limit 16384"
    assert plan.models == (G120,)


async def _learner_preferring(model: str, clock: FakeClock) -> Learner:
    learner = Learner(SqliteLearningStore(), exploration_rate=0.0, clock=clock,
                      rng=random.Random(1))
    for i in range(12):
        for m, ok, lat in ((model, True, 300.0), (G120, i % 2 == 0, 2500.0)):
            await learner.record(Execution(
                agent_name="coding_agent", task_type="code_generation", model=m, success=ok,
                latency_ms=lat, timestamp=clock(), execution_id=f"{m}-{i}"))
        clock.advance(60)
    return learner


async def test_learner_recommendation_goes_first_with_its_reason(catalog: Catalog,
                                                                  clock: FakeClock) -> None:
    learner = await _learner_preferring(G20, clock)
    router = Router(catalog, learner=learner)
    plan = router.plan(req(), profile("code_generation", agent="coding_agent"))
    assert plan.models[0] == G20
    (reason,) = [r for r in plan.reasons if r.startswith("learner")]
    assert reason.startswith("learner: openai/gpt-oss-20b (score ")
    assert "n=12" in reason
    # Quota still wins over the learner.
    plan = router.plan(req(), profile("code_generation", agent="coding_agent"),
                       headroom={G20: 0.0})
    assert plan.models[-1] == G20
    other = router.plan(req(), profile("security", agent="coding_agent"))
    assert "learner: not enough evidence for (coding_agent, security) yet" in other.reasons
    await learner.aclose()


# -- plan: context fit at the boundaries ----------------------------------------------------------


def _prompt(words: int) -> tuple[ChatRequest, int]:
    request = req("word " * words)
    return request, estimate_prompt_tokens(request.messages)


def test_context_just_fits_and_just_does_not(long_catalog: Catalog) -> None:
    router = Router(long_catalog, allow_model_fallback=True)
    usable = int(16384 * 0.9)  # gpt-oss-20b here: 14745 tokens of 16384
    request, prompt = _prompt(5000)
    fits = ChatRequest(messages=request.messages, model=G20,
                       params={"max_tokens": usable - prompt})
    plan = router.plan(fits)
    assert plan.models[0] == G20 and G20 not in plan.dropped

    over = ChatRequest(messages=request.messages, model=G20,
                       params={"max_tokens": usable - prompt + 1})
    plan = router.plan(over)
    assert G20 not in plan.models
    assert plan.dropped[G20] == (
        f"context: needs {usable + 1} tokens (prompt ~{prompt} + completion "
        f"{usable - prompt + 1}) > {usable} (90% of 16384)"
    )
    assert plan.models == (QWEN, G120)  # its catalog fallbacks still fit


def test_a_pinned_model_that_does_not_fit_is_refused(long_catalog: Catalog) -> None:
    router = Router(long_catalog)
    request, prompt = _prompt(5000)
    over = ChatRequest(messages=request.messages, model=G20,
                       params={"max_tokens": int(16384 * 0.9) - prompt + 1})
    with pytest.raises(ContextWindowError, match="allow_model_fallback"):
        router.plan(over)


def test_default_completion_budget_is_capped(long_catalog: Catalog) -> None:
    router = Router(long_catalog)
    model = long_catalog.get(G20)
    assert router.completion_budget(req(), model) == 1024
    assert router.completion_budget(req(params={"max_tokens": 77}), model) == 77


def test_context_fits_only_the_long_context_model(long_catalog: Catalog) -> None:
    request, prompt = _prompt(40000)  # > 90% of 32768, < 90% of 262144
    plan = Router(long_catalog).plan(request, profile("validation", tokens=prompt))
    assert plan.models == (QWEN,)
    # The validation row, the fast class and the catalog's strengths propose these three
    # (never the safety classifier: validation is not what its card says it is for).
    assert set(plan.dropped) == {G20, G120}
    assert all(why.startswith("context: needs ") for why in plan.dropped.values())


def test_context_falls_back_to_any_served_model_that_fits(long_catalog: Catalog) -> None:
    # A policy whose rows never name the long-context model: the router still finds it.
    policy = load_policy(overrides={"task_matrix": {"validation": {
        "primary": G20, "fallbacks": [G120]}}, "agent_classes": {"fast": {"models": [G20]}}})
    request, prompt = _prompt(40000)
    plan = Router(long_catalog, policy).plan(request, profile("validation", tokens=prompt))
    assert plan.models == (QWEN,)
    assert any(r.startswith("context: no proposed model fits; only qwen/qwen3.8-27b") for r in
               plan.reasons)


def test_context_fits_no_model_raises_before_any_call(long_catalog: Catalog) -> None:
    usable = int(262144 * 0.9)
    request, prompt = _prompt(usable - 1024 - 10)
    # Just fits the long-context model with the default 1024-token completion budget…
    assert Router(long_catalog).plan(request, profile("general", tokens=prompt)).models == (QWEN,)
    # …and one token more fits nothing.
    with pytest.raises(ContextWindowError) as info:
        Router(long_catalog).plan(request, profile("general", tokens=usable - 1024 + 1))
    err = info.value
    assert err.required_tokens == usable + 1
    assert err.largest_window == 262144
    assert "largest context window is 262144" in str(err)


def test_context_margin_is_configurable(long_catalog: Catalog) -> None:
    request, prompt = _prompt(12000)  # ~12008 + 1024 fits 90% of 16384, not 50%
    assert G20 in Router(long_catalog).plan(request, profile("validation", tokens=prompt)).models
    tight = Router(long_catalog, context_margin=0.5)
    assert G20 in tight.plan(request, profile("validation", tokens=prompt)).dropped


# -- explanation ------------------------------------------------------------------------------


def test_explain_route_shape_and_reasons(tmp_path: Path) -> None:
    settings = YmeraSettings(data_dir=tmp_path)
    plan = explain_route(
        "Audit this login handler for SQL injection and XSS", agent=None, task=None,
        settings=settings,
    )
    data = plan.as_dict()
    json.dumps(data)  # the CLI prints it as JSON
    assert {"task_type", "complexity", "estimated_tokens", "plan", "reasons"} <= set(data)
    assert data["task_type"] == "security"
    assert {QWEN, G120} <= set(data["plan"])  # the security row (a short ask may go fast first)
    assert any(r.startswith("signals: security") for r in data["reasons"])
    assert any(r.startswith("policy: ") for r in data["reasons"])


def test_explain_route_honours_hints_and_the_settings_policy(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps({"task_matrix": {"formatting": {
        "primary": "qwen3.8-27b", "fallbacks": []}}}))
    settings = YmeraSettings(data_dir=tmp_path, policy_path=policy_file)
    plan = explain_route("anything at all", agent="formatter_agent", task="format",
                         settings=settings)
    assert plan.profile.task_type == "formatting"
    assert plan.profile.agent_name == "formatter_agent"
    assert plan.models[0] in {G20, QWEN}  # simple → fast class first, else the file's row
    assert QWEN in plan.models
    assert "hint: task_type=formatting (request)" in plan.as_dict()["reasons"]


def test_router_repr_and_profile(catalog: Catalog) -> None:
    router = Router(catalog)
    assert repr(router) == "<Router 4 served models, margin 90%, learner off>"
    assert router.profile(req("Write unit tests with pytest")).task_type == "testing"


# -- fitting documents into a window ---------------------------------------------------------


def words(n: int, tag: str = "w") -> str:
    return "".join(f"{tag}{i} " + ("\n" if i % 10 == 9 else "") for i in range(n))


def count(text: str) -> int:
    return len(text.split())


@pytest.fixture
def small_catalog() -> Catalog:
    return load_catalog(today=TODAY, overrides=[
        {"id": G20, "context_window": 1000},
        {"id": SAFE, "context_window": 1000},
        {"id": G120, "context_window": 2000},
        {"id": QWEN, "context_window": 4000},
    ])


def test_documents_that_fit_stay_whole(small_catalog: Catalog) -> None:
    fit = fit_documents([("a.py", words(300)), ("b.py", words(400))], G20, small_catalog,
                        completion_tokens=100, count=count)
    assert fit.fits and fit.model == G20 and fit.switched_from is None
    assert fit.budget == 800 and fit.tokens == (700,)
    assert [p.name for p in fit.batches[0]] == ["a.py", "b.py"]


def test_documents_switch_to_the_longest_context_model(small_catalog: Catalog) -> None:
    fit = fit_documents([words(600), words(900)], G20, small_catalog, completion_tokens=100,
                        count=count)
    assert fit.fits
    assert fit.model == QWEN and fit.switched_from == G20
    assert fit.budget == 3500
    assert "switched to qwen/qwen3.8-27b" in fit.reasons[0]


def test_documents_too_large_for_any_model_are_chunked(small_catalog: Catalog) -> None:
    docs = [Document("small", words(500, "s")), Document("huge", words(8000, "h")),
            Document("tail", words(300, "t"))]
    fit = fit_documents(docs, G20, small_catalog, completion_tokens=100, count=count)
    assert not fit.fits and fit.model == QWEN
    assert fit.chunked == ("huge",)
    assert all(t <= fit.budget for t in fit.tokens)
    assert fit.batches[0][0].name == "small" and fit.batches[0][0].whole
    huge = [p for b in fit.batches for p in b if p.name == "huge"]
    assert "".join(p.text for p in huge) == docs[1].text  # nothing lost, order kept
    assert [p.part for p in huge] == list(range(1, len(huge) + 1))
    assert {p.parts for p in huge} == {len(huge)}
    assert [p for b in fit.batches for p in b][-1].name == "tail"


def test_a_single_overlong_line_is_cut_inside(small_catalog: Catalog) -> None:
    line = "x" * 20000  # one "word" per character for this counter
    fit = fit_documents([line], QWEN, small_catalog, completion_tokens=100, count=len)
    assert "".join(p.text for b in fit.batches for p in b) == line
    assert all(t <= fit.budget for t in fit.tokens)


def test_no_room_for_documents_is_a_context_error(small_catalog: Catalog) -> None:
    with pytest.raises(ContextWindowError):
        fit_documents(["x"], QWEN, small_catalog, reserved_tokens=3500, completion_tokens=100)
