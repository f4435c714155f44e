"""The request profile: hints, signals, complexity, tokens and the labelled task set.

`tests/data/tasks.json` holds realistic agent prompts with the expected task type and
complexity. `split` says how each entry was used, so accuracy can be reported honestly:
`tuning` entries were written first and the heuristics were tuned on them; `holdout1` was
written after that, measured once, then used for a second tuning pass; `holdout2` was written
after that and measured (75.0 %) before a third pass that added general signals (percentage
arithmetic, API route paths, "check that …", hashing and abuse words, where logic lives,
multi-region, cron jobs, product reviews, language names only with a language context).
`holdout3` (48 entries) was written last by a helper that never saw the classifier or this
file, and measured before any change: 75.0 % (the holdout2 pass had not moved it). One
structural change was then made from its misses (the instruction's words count fully, pasted
material's 0.4), which gives 81.2 % and leaves the other splits as they were.
Long-context entries carry a `context`
({kind, tokens}) that `labelled_request` turns into a deterministic attachment.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

from ymera_groq_plugin.errors import InvalidRequestError
from ymera_groq_plugin.routing import classify, load_policy
from ymera_groq_plugin.routing.classify import request_texts
from ymera_groq_plugin.tokens import estimate_prompt_tokens, estimate_text_tokens
from ymera_groq_plugin.types import TASK_TYPES, ChatRequest

DATA = Path(__file__).resolve().parent.parent / "data" / "tasks.json"


# -- the labelled set ------------------------------------------------------------------------


@lru_cache(maxsize=1)
def labelled_tasks() -> tuple[dict[str, Any], ...]:
    return tuple(json.loads(DATA.read_text("utf-8")))


SETS = (
    "calibration",
    "holdout4",
    "holdout5",
    "holdout6",
    "writers",
    "holdout7",
    "holdout8",
    "holdout9",
    "holdout10",
    "holdout11",
)
"""Separate labelled files, written by helpers who never opened the classifier (issue 16):
`calibration` (349 prompts) was tuned on from the start; `holdout4` (147) was measured once
(task type 72.8 %, complexity 79.6 %, complex found 85 %) and then became a tuning split too:
the signal words were extended from the misses of both, and the task type and complexity
weights are fitted on both. `holdout5`, written later by an independent writer, was measured
once (task type 69.4 %, complexity 70.6 %, complex found 77 %) and then became a tuning split
(the weights are fitted on it too; no signal word was chosen from it); so was `holdout6`, by two
more independent writers (task type 69.4 %, complexity 64.7 %, complex found 70 %). `writers`
holds 612 prompts by six more writers, written for training (each prompt names its writer).
`holdout7`, by two more (near-duplicates of earlier prompts removed), was measured once on the
first model with word features (task type 90.0 %, complexity 78.8 %, complex found 88 %), then
tuned on. `holdout8`, by two more, is never tuned on. `holdout9`, by two more (near-duplicates
removed), was measured once (task type 82.4 %, complexity 79.1 %, complex found 71 %), then
tuned on: its misses showed pages of pasted prose classed by their topic, hence the `long text`
signal. `holdout10`, by two more, is never tuned on. `writers` then grew by six more writers
(603 prompts after near-duplicates were removed), asked to mix fields the way real work does
(tests for a migration, a runbook for an alert). `holdout11`, by two more (near-duplicates of
every other set removed), is never tuned on: it was measured once, on the final model of that
change. A never-tuned file may not exist: then it is empty."""

NEVER_TUNED = ("holdout8", "holdout10", "holdout11")


def never_tuned_names() -> str:
    """The never-tuned sets as the fits' `about` texts name them ("a, b or c")."""
    return f"{', '.join(NEVER_TUNED[:-1])} or {NEVER_TUNED[-1]}"


@lru_cache(maxsize=8)
def labelled_set(name: str) -> tuple[dict[str, Any], ...]:
    """A set of `SETS`, each entry with its `split` set to the file's name."""
    if name not in SETS:
        raise ValueError(name)
    path = DATA.parent / f"{name}.json"
    if name in NEVER_TUNED and not path.exists():
        return ()
    return tuple({**t, "split": name} for t in json.loads(path.read_text("utf-8")))


def _block(kind: str, i: int) -> str:
    if kind == "python":
        return (
            f"# file: service_{i // 20}/module_{i}.py\n"
            f"from service_{(i + 7) % 50}.module_{(i * 3) % 97} import helper_{i % 13}\n\n"
            f"def handle_{i}(request, session):\n"
            f"    value = request.get('field_{i}')\n"
            f"    if value is None:\n"
            f"        raise KeyError('field_{i} is required')\n"
            f"    result = helper_{i % 13}(value, retries={i % 4})\n"
            f"    session.add(result)\n"
            f"    return result\n\n"
        )
    if kind == "contract":
        return (
            f"Section {i}. The Supplier shall deliver the Services described in Schedule "
            f"{i % 9 + 1} in accordance with the service levels set out therein. Either party "
            f"may give written notice where the other party fails to remedy a material breach "
            f"within thirty (30) days. Personal data processed under this Section shall be kept "
            f"only as long as necessary for the purposes stated in Annex {i % 4 + 1}.\n\n"
        )
    if kind == "logs":
        return (
            f"2025-03-12T10:{i // 60 % 60:02d}:{i % 60:02d}Z svc-{i % 17} INFO request "
            f"id=req_{i:06d} path=/v1/items/{i} status=200 duration_ms={20 + i % 180}\n"
        )
    if kind == "history":
        return (
            f"User: About option {i}: what if we keep the events in Postgres and move the blobs "
            f"to object storage?\nAssistant: Option {i} keeps transactions simple; the blobs "
            f"would need lifecycle rules and a reference count.\n"
        )
    return (
        f"Chapter {i // 12 + 1}, part {i}. The morning fog lay over the harbour as Maren walked "
        f"down to the boats, counting the masts as her father had taught her, and wondering "
        f"whether the letter would arrive before the storm.\n\n"
    )


def _filler(kind: str, tokens: int) -> str:
    per_block = max(estimate_text_tokens(_block(kind, 0)), 1)
    return "".join(_block(kind, i) for i in range(max(1, tokens // per_block)))


def labelled_request(task: dict[str, Any]) -> ChatRequest:
    """The `ChatRequest` an agent would send for a labelled task."""
    messages: list[dict[str, Any]] = []
    if task.get("system"):
        messages.append({"role": "system", "content": task["system"]})
    ctx = task.get("context")
    if isinstance(ctx, str):
        # Pasted material as given (calibration, holdout4): fenced, as agents paste it.
        body = f"{task['text']}\n\n```\n{ctx}\n```"
        messages.append({"role": "user", "content": body})
    elif ctx and ctx["kind"] == "history":
        messages.append({"role": "user", "content": "Let's decide the storage layer."})
        messages.append({"role": "assistant", "content": _filler("history", ctx["tokens"])})
        messages.append({"role": "user", "content": task["text"]})
    elif ctx:
        body = task["text"] + "\n\n" + _filler(ctx["kind"], ctx["tokens"])
        messages.append({"role": "user", "content": body})
    else:
        messages.append({"role": "user", "content": task["text"]})
    return ChatRequest(messages=tuple(messages), agent_name=task.get("agent_name"))


def accuracy(split: str | None = None) -> tuple[float, float, int, list[tuple[str, str, str]]]:
    """(task-type accuracy, complexity accuracy, n, misses) over a split (None: all)."""
    tasks = [t for t in labelled_tasks() if split is None or t.get("split", "tuning") == split]
    ok_task = ok_cx = 0
    misses: list[tuple[str, str, str]] = []
    for t in tasks:
        p = classify(labelled_request(t))
        ok_task += p.task_type == t["task_type"]
        ok_cx += p.complexity == t["complexity"]
        if p.task_type != t["task_type"]:
            misses.append((t["task_type"], p.task_type, t["text"][:60]))
    return ok_task / len(tasks), ok_cx / len(tasks), len(tasks), misses


def test_labelled_set_is_broad_and_well_formed() -> None:
    tasks = labelled_tasks()
    assert len(tasks) >= 80
    by_type = Counter(t["task_type"] for t in tasks)
    assert set(by_type) == set(TASK_TYPES)
    assert min(by_type.values()) >= 5
    assert {t["complexity"] for t in tasks} == {"simple", "moderate", "complex"}
    splits = {t.get("split", "tuning") for t in tasks}
    assert splits == {"tuning", "holdout1", "holdout2", "holdout3"}
    for t in tasks:
        assert t["text"].strip() and t["task_type"] in TASK_TYPES


def test_accuracy_on_the_labelled_set() -> None:
    report = {s: accuracy(s) for s in ("tuning", "holdout1", "holdout2", "holdout3", None)}
    for split, (task, cx, n, _) in report.items():
        print(f"{split or 'all'} (n={n}): task type {task:.1%}, complexity {cx:.1%}")
    # Floors a little under the measured figures (tuning 99.3, holdout1 and 2 100, holdout3
    # 93.8 %): a guard against regressions, not a claim. Since issue 16 the task type weights
    # are fitted on these prompts too (with calibration and holdout4), so every split here is
    # in-sample; holdout3 scored 81.2 % before that, 83.3 % with weights fitted on
    # calibration + holdout4 only.
    assert report["tuning"][0] >= 0.93
    assert report["holdout2"][0] >= 0.90
    assert report["holdout3"][0] >= 0.78
    assert report[None][0] >= 0.88
    # Complexity here fell from 78 % to 65 % when the weights were fitted on `calibration`
    # (issue 16): these labels are another hand's, which calls less work complex (39 of 280
    # complex; 30 of them recognised now, 27 before).
    assert report[None][1] >= 0.62


def _set_accuracy(name: str) -> tuple[float, float, float]:
    tasks = labelled_set(name)
    got = [classify(labelled_request(t)) for t in tasks]
    pairs = list(zip(got, tasks, strict=True))
    hard = [p for p, t in pairs if t["complexity"] == "complex"]
    return (
        sum(p.task_type == t["task_type"] for p, t in pairs) / len(tasks),
        sum(p.complexity == t["complexity"] for p, t in pairs) / len(tasks),
        sum(p.complexity == "complex" for p in hard) / len(hard),
    )


def test_accuracy_on_calibration_and_holdout4() -> None:
    """Floors a little under the measured figures. Both sets are tuned on now (holdout4 was
    measured once before: task type 72.8 %, complexity 79.6 %, complex found 85 %), so these
    are in-sample: calibration task type 98.6 %, complexity 86.5 %, complex found 88 %;
    holdout4 99.3 %, 82.3 %, 88 %. The out-of-sample task type figures are in
    `bench_classifier.py` (5-fold cross-validation 95.1 %; holdout4 left out of the fit 93.9 %,
    but its misses chose some signal words). Regression guards, not claims."""
    cal, hold = _set_accuracy("calibration"), _set_accuracy("holdout4")
    print(f"calibration: {cal}; holdout4: {hold}")
    assert cal[0] >= 0.95 and cal[1] >= 0.83 and cal[2] >= 0.85
    assert hold[0] >= 0.95 and hold[1] >= 0.79 and hold[2] >= 0.82


# -- explicit hints ----------------------------------------------------------------------------


def req(text: str, **kw: Any) -> ChatRequest:
    return ChatRequest(messages=({"role": "user", "content": text},), **kw)


def test_request_task_type_wins_over_every_signal() -> None:
    p = classify(req("Translate this SQL security audit into Japanese", task_type="formatting"))
    assert p.task_type == "formatting"
    assert p.reasons[0] == "hint: task_type=formatting (request)"


@pytest.mark.parametrize("key", ["task_type", "ymera_task_type"])
def test_metadata_task_type_hint(key: str) -> None:
    p = classify(req("Write a poem", metadata={key: "Code-Review"}))
    assert p.task_type == "code_review"
    assert f"(metadata {key})" in p.reasons[0]


def test_task_type_aliases_from_the_policy() -> None:
    assert classify(req("x", task_type="math")).task_type == "reasoning"
    assert classify(req("x", task_type="docs")).task_type == "documentation"


def test_unknown_task_type_hint_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequestError, match="Unknown task type 'poetry'"):
        classify(req("x", task_type="poetry"))
    with pytest.raises(InvalidRequestError, match=r"metadata\['task_type'\]"):
        classify(req("x", metadata={"task_type": "poetry"}))


def test_agent_name_maps_to_a_class_and_a_task_prior() -> None:
    p = classify(req("Here is the payload: {\"a\": 1}", agent_name="input_validator"))
    assert p.task_type == "validation"
    assert p.agent_name == "input_validator"
    assert any("class fast" in r and "usually validation" in r for r in p.reasons)


def test_agent_name_from_metadata_and_camel_case() -> None:
    p = classify(req("Check this.", metadata={"agent_name": "SecurityAuditor"}))
    assert p.agent_name == "SecurityAuditor"
    assert p.task_type == "security"
    assert any("(metadata agent_name)" in r for r in p.reasons)


def test_text_outweighs_the_agent_prior_when_clear() -> None:
    p = classify(req("Write pytest unit tests with fixtures and mocks for the cart service",
                     agent_name="coding_agent"))
    assert p.task_type == "testing"


def test_unknown_agent_is_reported_not_guessed() -> None:
    p = classify(req("Tell me a fun fact for the newsletter", agent_name="zq-17"))
    assert any("matches no agent class" in r for r in p.reasons)
    assert p.task_type == "general"


def test_user_policy_agent_patterns_come_first() -> None:
    policy = load_policy(overrides={
        "agents": [{"pattern": "zq", "class": "multilingual", "task_type": "multilingual"}]
    })
    # Text without task words: the agent's usual task type (from the user's pattern) decides.
    p = classify(req("please take this one", agent_name="zq-17"), policy)
    assert p.task_type == "multilingual"


# -- heuristic signals --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "reason"),
    [
        ("这段代码为什么报错？请解释一下。", "multilingual", "non-Latin script"),
        ("Что делает эта функция и как её улучшить?", "multilingual", "non-Latin script"),
        ("¿Puedes explicar la diferencia entre una lista y una tupla? Gracias.", "multilingual",
         "non-English text"),
        ("Traceback (most recent call last):\n  File \"a.py\", line 3, in <module>\n"
         "    f()\nValueError: bad", "code_review", "stack trace"),
        ("select id, name from users u join orders o on o.user_id = u.id where o.total > 10",
         "database", "SQL statement"),
        ("Solve 2x^2 + 3x - 5 = 0", "reasoning", "equation"),
    ],
)
def test_structural_signals(text: str, expected: str, reason: str) -> None:
    p = classify(req(text))
    assert p.task_type == expected
    assert any(reason in r for r in p.reasons), p.reasons


def test_words_match_at_word_boundaries_only() -> None:
    # "latest" contains "test", "format" is inside "information": neither may count.
    p = classify(req("Give me the latest information about our office party"))
    assert p.task_type == "general"


def test_size_makes_long_context() -> None:
    big = "Here is a design note.\n" + "The service stores events and replays them. " * 4000
    p = classify(req(big))
    assert p.estimated_tokens >= 32000
    assert p.task_type == "long_context"
    assert p.complexity == "complex"
    assert any("prompt ~" in r for r in p.reasons)


def test_only_system_and_last_user_message_give_task_signals_but_all_give_size() -> None:
    history = [
        {"role": "user", "content": "Translate this into French please"},
        {"role": "assistant", "content": "Voici la traduction. " * 50},
        {"role": "user", "content": "Now write pytest unit tests for the parser"},
    ]
    request = ChatRequest(messages=tuple(history))
    system, user = request_texts(request.messages)
    assert system == "" and user.startswith("Now write pytest")
    p = classify(request)
    assert p.task_type == "testing"
    assert p.estimated_tokens == estimate_prompt_tokens(request.messages)


def test_tool_schemas_count_towards_tokens() -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "description": "x" * 400,
                                               "parameters": {"type": "object"}}}]
    plain = classify(req("What is the weather?"))
    with_tools = classify(req("What is the weather?", params={"tools": tools}))
    assert with_tools.estimated_tokens > plain.estimated_tokens + 50


def test_structured_content_parts_are_read() -> None:
    request = ChatRequest(messages=({"role": "user", "content": [
        {"type": "text", "text": "Write Prometheus alerting rules for disk usage"},
        {"type": "image_url", "image_url": {"url": "data:..."}},
    ]},))
    assert classify(request).task_type == "monitoring"


def test_no_signal_is_general_with_a_reason() -> None:
    p = classify(req("ok"))
    assert p.task_type == "general"
    assert p.complexity == "simple"
    assert any(r.startswith("no task signal") for r in p.reasons)


# -- complexity ---------------------------------------------------------------------------------


def test_complexity_simple_moderate_complex() -> None:
    assert classify(req("Format this JSON: {\"a\":1}")).complexity == "simple"
    assert classify(req(
        "Explain how we should structure retries between the billing service and the payment "
        "provider, and what to log when a retry gives up."
    )).complexity == "moderate"
    assert classify(req(
        "Design a distributed, multi-tenant event pipeline with zero downtime migrations, "
        "compare the trade-offs of Kafka and Pulsar and justify the choice."
    )).complexity == "complex"


def test_agent_class_bias_moves_complexity() -> None:
    text = "Look at these numbers and tell me what you think: 12, 15, 19."
    fast = classify(req(text, agent_name="monitoring_agent"))
    deep = classify(req(text, agent_name="senior_expert"))
    order = ["simple", "moderate", "complex"]
    assert order.index(deep.complexity) >= order.index(fast.complexity)
    assert any("score" in r for r in deep.reasons)


# -- complexity signals and weights (issue 16) ---------------------------------------------------


def test_calibration_and_holdout4_sets_are_broad_and_well_formed() -> None:
    calibration, holdout = labelled_set("calibration"), labelled_set("holdout4")
    assert len(calibration) >= 330 and len(holdout) >= 140
    assert sum(t["complexity"] == "complex" for t in calibration) >= 110
    for tasks in (calibration, holdout):
        assert {t["task_type"] for t in tasks} == set(TASK_TYPES)
        assert {t["complexity"] for t in tasks} == {"simple", "moderate", "complex"}
    # No prompt of the holdout appears in the set the weights were fitted on.
    assert not {t["text"] for t in calibration} & {t["text"] for t in holdout}


def test_weights_are_data_fitted_on_the_tuning_splits_only() -> None:
    from ymera_groq_plugin.routing.complexity import load_weights

    w = load_weights()
    assert "holdout9 + writers" in w.about and f"Never fitted on {never_tuned_names()}" in w.about
    # The signals of hard work push towards complex rather than simple, asking for little
    # pulls back.
    def towards_complex(name: str) -> float:
        simple, _, complex_ = w.weights[name]
        return complex_ - simple

    for name in ("design", "proof", "hard_artefact", "scale"):
        assert towards_complex(name) > 0, name
    assert towards_complex("output_small") < 0 or towards_complex("fact_question") < 0


def test_task_type_weights_are_data_and_reasons_name_the_deciding_signals() -> None:
    from ymera_groq_plugin.routing.classify import PRIOR, WORD_PREFIX
    from ymera_groq_plugin.routing.task_model import load_task_model

    m = load_task_model()
    assert f"Never fitted on {never_tuned_names()}" in m.about
    assert m.classes == tuple(TASK_TYPES)
    # Every fitted feature is a known signal or a word stem; a fitted signal still points at
    # its own task.
    assert {k for k in m.weights if not k.startswith(WORD_PREFIX)} <= set(PRIOR)
    assert any(k.startswith(WORD_PREFIX) for k in m.weights)
    own = [k for k in m.weights if k.startswith("testing: unit test")]
    assert own and all(dict(m.weights[k])[TASK_TYPES.index("testing")] > 0 for k in own)
    p = classify(req("Write pytest unit tests with fixtures for the cart service"))
    line = next(r for r in p.reasons if r.startswith("signals: "))
    assert line.startswith("signals: testing p=") and "pytest" in line, line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Kubernetes pods keep getting OOMKilled on node pool b; what should we check first?",
         "monitoring"),
        ("Our firewall rules allow any to any on port 22 from the guest Wi-Fi; is that too "
         "permissive?", "security"),
        ("If a train leaves at 3 pm at 80 km/h, how much later does a second one at 120 km/h "
         "catch up?", "reasoning"),
        ("Draft a CONTRIBUTING.md with dev setup and commit conventions.", "documentation"),
    ],
)
def test_general_task_words(text: str, expected: str) -> None:
    """Words that define a task type as users write them, not any one labelled prompt."""
    assert classify(req(text)).task_type == expected


@pytest.mark.parametrize(
    ("text", "expected", "signal"),
    [
        ("Shard our 8 TB Postgres cluster by tenant with zero downtime.", "complex",
         "hard artefact"),
        ("Prove that the halting problem is undecidable.", "complex", "few words, heavy work"),
        ("Design the end-to-end architecture for a national-scale digital ID system for 60M "
         "citizens: enrolment, federation with 400 relying parties, offline verification and "
         "a migration plan.", "complex", "design verbs"),
        ("What's the MySQL syntax to rename a column?", "simple", "short question"),
    ],
)
def test_reasons_name_the_signals_that_decided_the_complexity(
    text: str, expected: str, signal: str
) -> None:
    p = classify(req(text))
    assert p.complexity == expected, p.reasons
    line = next(r for r in p.reasons if r.startswith(f"complexity {expected}"))
    assert signal in line, line


def test_real_size_counts_claimed_size_does_not() -> None:
    claimed = classify(req("In the long log below, what was the trace id of the first ERROR line?"))
    log = "".join(
        f"2025-03-12T10:{i // 60 % 60:02d}:{i % 60:02d}Z svc INFO request id=req_{i:06d} ok\n"
        for i in range(4000)
    )
    real = classify(req("In the long log below, what was the trace id of the first ERROR "
                        "line?\n\n" + log))
    order = ["simple", "moderate", "complex"]
    assert claimed.complexity != "complex"
    assert real.estimated_tokens >= 32000
    assert order.index(real.complexity) > order.index(claimed.complexity)
    assert any(r.startswith("complexity") and "prompt ~" in r for r in real.reasons), real.reasons
