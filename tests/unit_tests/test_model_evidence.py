"""The catalog's strengths and tiers carry their evidence; the safety classifier serves only
moderation (issue 18)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

import pytest

from ymera_groq_plugin.catalog import ModelInfo, load_catalog
from ymera_groq_plugin.routing import Router, default_policy, load_policy
from ymera_groq_plugin.types import TASK_TYPES, ChatRequest, Profile

TODAY = dt.date(2026, 11, 28)
SAFE = "openai/gpt-oss-safeguard-20b"
COMPLEXITIES = ("simple", "moderate", "complex")
# One agent name per pattern family of the embedded policy, and none.
AGENTS = (
    None,
    "content_moderator",
    "input_validator",
    "security_auditor",
    "coding_agent",
    "system_architect",
    "translator",
    "codebase_analyst",
    "senior_expert",
    "quick_helper",
)


def _shipped_entries() -> list[Mapping[str, Any]]:
    text = resources.files("ymera_groq_plugin").joinpath("data/models.json").read_text("utf-8")
    entries = json.loads(text)["models"]
    assert isinstance(entries, list)
    return entries


def missing_evidence(entries: Iterable[Mapping[str, Any]]) -> list[str]:
    """Entries whose strengths and tiers lack sources (name, url, says) or a rationale."""
    bad: list[str] = []
    for e in entries:
        sources = e.get("sources") or []
        complete = bool(sources) and all(
            isinstance(s, Mapping)
            and all(str(s.get(k) or "").strip() for k in ("name", "url", "says"))
            for s in sources
        )
        rationale = str(e.get("rationale") or "").strip()
        if not complete or not rationale or "\n" in rationale:
            bad.append(str(e.get("id")))
    return bad


def test_every_shipped_entry_carries_sources_and_a_rationale() -> None:
    entries = _shipped_entries()
    assert missing_evidence(entries) == []
    for e in entries:
        info = ModelInfo.model_validate(e)
        assert set(info.strengths) <= set(TASK_TYPES), info.id
        assert set(info.only_for) <= set(TASK_TYPES), info.id
        # A source is a public page or a citation, never a bare word.
        assert all(s.url.startswith("https://") for s in info.sources), info.id


def test_an_entry_without_evidence_is_caught() -> None:
    entry = dict(_shipped_entries()[0])
    assert missing_evidence([{**entry, "sources": []}]) == [entry["id"]]
    assert missing_evidence([{**entry, "rationale": " "}]) == [entry["id"]]
    no_says = [{**entry["sources"][0], "says": ""}]
    assert missing_evidence([{**entry, "sources": no_says}]) == [entry["id"]]


def test_the_safety_model_is_for_moderation_only_per_its_card() -> None:
    safe = load_catalog(today=TODAY).get(SAFE)
    assert safe.only_for == ("moderation",) and safe.strengths == ("moderation",)
    assert any("safety use cases" in s.says for s in safe.sources)
    assert not safe.serves_task("security") and safe.serves_task("moderation")


def _profile(task: str, complexity: str, agent: str | None) -> Profile:
    return Profile(
        task_type=task,
        complexity=complexity,  # type: ignore[arg-type]
        estimated_tokens=60,
        reasons=("test",),
        agent_name=agent,
    )


def test_no_general_task_type_plans_the_safety_model() -> None:
    """Over the shipped policy and catalog: every task type but moderation, every complexity,
    agents of every family, plain and JSON requests."""
    router = Router(load_catalog(today=TODAY), default_policy())
    for request in (
        ChatRequest(messages=({"role": "user", "content": "hi"},)),
        ChatRequest(
            messages=({"role": "user", "content": "hi"},),
            params={"response_format": {"type": "json_object"}},
        ),
    ):
        for task in TASK_TYPES:
            if task == "moderation":
                continue
            for complexity in COMPLEXITIES:
                for agent in AGENTS:
                    plan = router.plan(request, _profile(task, complexity, agent))
                    assert SAFE not in plan.models, (task, complexity, agent, plan.reasons)
                    assert SAFE not in plan.dropped, (task, complexity, agent)


@pytest.mark.parametrize(
    ("text", "agent"),
    [
        (
            'Review this IAM policy for privilege escalation: {"Effect": "Allow", '
            '"Action": "iam:*", "Resource": "*"}',
            "security_reviewer",
        ),
        ("Flag anomalies in these latency metrics: p99 120ms, 130ms, 980ms, 125ms", "monitor"),
        ("Write an nginx rule to block requests from 10.0.0.0/8 on /admin", None),
        ("Write a blog post announcing our v2 release", None),
        ("Check this password policy: min_length=6, no other rule. NIST 800-63B compliant?", None),
        ("Validate this retention policy YAML: keep_days: -3", None),
        ("Draft our company's remote work policy for engineers", None),
        ('Is the JSON payload of this post valid? {"title": "hi", "body": }', None),
        ("Our content filter blocks too many posts; review the regex /(sex|kill)/i", None),
        ("Scan this Terraform for security group rules that allow 0.0.0.0/0 on port 22", None),
    ],
)
def test_general_work_with_policy_words_never_plans_the_safety_model(
    text: str, agent: str | None
) -> None:
    """Words the moderation type also uses (policy, flag, block, post) in general work: the
    classifier's decision, not a hand-built profile, keeps the safety model out."""
    router = Router(load_catalog(today=TODAY), default_policy())
    plan = router.plan(ChatRequest(messages=({"role": "user", "content": text},), agent_name=agent))
    assert plan.profile.task_type != "moderation", plan.profile.reasons
    assert SAFE not in plan.models, plan.reasons


@pytest.mark.parametrize(
    ("text", "agent"),
    [
        (
            "Classify this post against the policy below and answer ALLOW or BLOCK.\n"
            'Policy: no spam, hate or self-harm content.\nPost: "Buy 1000 followers for $5!!!"',
            None,
        ),
        ('Does this message violate our community guidelines? "Nobody wants you here."', None),
        ("Label each of these comments as spam / hate / self-harm / ok.", "assistant"),
        ("Here is the next one: 'see you at the meetup tomorrow'", "content_moderator"),
    ],
)
def test_a_moderation_prompt_plans_the_safety_model_first(text: str, agent: str | None) -> None:
    router = Router(load_catalog(today=TODAY))
    request = ChatRequest(messages=({"role": "user", "content": text},), agent_name=agent)
    plan = router.plan(request)
    assert plan.profile.task_type == "moderation", plan.profile.reasons
    assert plan.models[0] == SAFE
    # A general model takes over when the classifier has no room.
    assert len(plan.models) > 1 and SAFE not in plan.models[1:]


def test_the_users_policy_file_may_send_other_work_to_it() -> None:
    policy = load_policy(
        overrides={
            "task_matrix": {"validation": {"primary": "openai/gpt-oss-20b", "fallbacks": [SAFE]}}
        }
    )
    plan = Router(load_catalog(today=TODAY), policy).plan(
        ChatRequest(messages=({"role": "user", "content": "hi"},)),
        _profile("validation", "moderate", None),
    )
    assert plan.models[:2] == ("openai/gpt-oss-20b", SAFE)


def test_synthetic_quality_does_not_reward_work_a_card_rules_out() -> None:
    """The local judge (demo, offline learning) follows the cards: the safety classifier
    scores low on every other task type, well under any general model."""
    from ymera_groq_plugin.testing._generate import synthetic_quality

    catalog = load_catalog(today=TODAY)
    safe = catalog.get(SAFE)
    general = [m for m in catalog.served() if not m.only_for]
    for task in TASK_TYPES:
        q_safe = synthetic_quality(safe, task, "security_reviewer")
        best_general = max(synthetic_quality(m, task, "security_reviewer") for m in general)
        if task == "moderation":
            # What its card says it is for: as good as any general model there.
            assert q_safe >= best_general - 0.05
        else:
            assert q_safe <= 0.25 < 0.6 <= best_general, task
    g120 = catalog.get("openai/gpt-oss-120b")
    assert synthetic_quality(g120, "security") > synthetic_quality(
        catalog.get("openai/gpt-oss-20b"), "security"
    )
