"""Classifier accuracy on the labelled task sets, and what `classify()` costs.

Run from the repository root:

    python benchmarks/bench_classifier.py [--misses]

Accuracy is printed per split of `tests/data/tasks.json` (see `tests/unit_tests/
test_classify.py` for what each split means), then for the labelled sets of issue 16, each
with the share of complex prompts recognised: `calibration`, `holdout4`, `holdout5`,
`holdout6`, `holdout7` (each measured once when it was new, then tuned on) and `writers`
(written for training) are all tuned on; then the task type accuracy of each writer left out
of the fit, as `fit_task_type.py` measured it; then `holdout8`, `holdout10` and `holdout11`
when their files exist: each written by two more independent writers, never tuned on, their
misses never listed (`holdout9` was measured once, then tuned on).
`--misses` lists the task type misses of every tuned-on split. Cost is wall time per call,
median of repeated runs, for a typical one-line prompt, for the labelled prompts without
attachments, and for one long-context prompt (where token counting dominates).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tests.unit_tests.test_classify import (  # noqa: E402
    NEVER_TUNED,
    SETS,
    labelled_request,
    labelled_set,
    labelled_tasks,
)
from ymera_groq_plugin.routing import classify, default_policy  # noqa: E402
from ymera_groq_plugin.tokens import encoding_name  # noqa: E402
from ymera_groq_plugin.types import TASK_TYPES, ChatRequest  # noqa: E402


def _per_call_us(requests: list[ChatRequest], repeat: int) -> float:
    policy = default_policy()
    for r in requests:  # warm caches (token encoding, matcher token memo)
        classify(r, policy)
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        for r in requests:
            classify(r, policy)
        runs.append((time.perf_counter() - t) / len(requests) * 1e6)
    return statistics.median(runs)


def _held_out() -> None:
    """Task type and complexity accuracy on each writer's prompts under weights fitted without
    them, as the fits measured them (`fit_task_type.py`, `fit_complexity.py` print them again)."""
    import json

    for what, name in (("task type", "task_type"), ("complexity", "complexity")):
        doc = json.loads((ROOT / "ymera_groq_plugin" / "data" / f"{name}.json").read_text())
        per = doc.get("leave_one_writer_out") or {}
        if per:
            print(f"{what}, each writer left out of the fit (leave-one-writer-out): "
                  + ", ".join(f"{g} {a:.1%}" for g, a in per.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--misses", action="store_true", help="list misclassified tasks")
    args = parser.parse_args()

    tasks = list(labelled_tasks())
    requests = [labelled_request(t) for t in tasks]
    profiles = [classify(r) for r in requests]

    print(f"labelled tasks: {len(tasks)} ({len(TASK_TYPES)} task types); tokens: {encoding_name()}")
    print(f"{'split':10s} {'n':>4s} {'task type':>10s} {'complexity':>11s}")
    for split in ("tuning", "holdout1", "holdout2", "holdout3", None):
        idx = [i for i, t in enumerate(tasks) if split is None or t.get("split", "tuning") == split]
        ok_t = sum(profiles[i].task_type == tasks[i]["task_type"] for i in idx)
        ok_c = sum(profiles[i].complexity == tasks[i]["complexity"] for i in idx)
        print(f"{split or 'all':10s} {len(idx):4d} {ok_t / len(idx):10.1%} {ok_c / len(idx):11.1%}")

    print(f"{'set':12s} {'n':>4s} {'task type':>10s} {'complexity':>11s} {'complex found':>14s}")
    for name in SETS:
        subset = labelled_set(name)
        if not subset:
            continue  # a holdout not written yet
        got = [classify(labelled_request(t)) for t in subset]
        ok_t = sum(p.task_type == t["task_type"] for p, t in zip(got, subset, strict=True))
        ok_c = sum(p.complexity == t["complexity"] for p, t in zip(got, subset, strict=True))
        hard = [p for p, t in zip(got, subset, strict=True) if t["complexity"] == "complex"]
        found = sum(p.complexity == "complex" for p in hard)
        tag = "(never tuned on)" if name in NEVER_TUNED else "(tuned on)"
        print(f"{name:12s} {len(subset):4d} {ok_t / len(subset):10.1%} "
              f"{ok_c / len(subset):11.1%} {found:5d}/{len(hard)} "
              f"{found / max(len(hard), 1):4.0%}  {tag}")
        cxs = Counter((t["complexity"], p.complexity) for p, t in zip(got, subset, strict=True))
        print("  complexity (expected→got): "
              + ", ".join(f"{a}→{b} {n}" for (a, b), n in sorted(cxs.items())))
        if args.misses and name not in NEVER_TUNED:
            for p, t in zip(got, subset, strict=True):
                if p.task_type != t["task_type"]:
                    print(f"  [{name}] {t['task_type']} → {p.task_type}: {t['text'][:70]!r}")

    _held_out()
    per_type: Counter[str] = Counter()
    per_type_ok: Counter[str] = Counter()
    for t, p in zip(tasks, profiles, strict=True):
        per_type[t["task_type"]] += 1
        per_type_ok[t["task_type"]] += p.task_type == t["task_type"]
    print("per task type (all splits): " + ", ".join(
        f"{k} {per_type_ok[k]}/{per_type[k]}" for k in TASK_TYPES))
    cx = Counter((t["complexity"], p.complexity) for t, p in zip(tasks, profiles, strict=True))
    print("complexity (expected→got): "
          + ", ".join(f"{a}→{b} {n}" for (a, b), n in sorted(cx.items())))
    if args.misses:
        for t, p in zip(tasks, profiles, strict=True):
            if p.task_type != t["task_type"]:
                print(f"  [{t.get('split', 'tuning')}] {t['task_type']} → {p.task_type}: "
                      f"{t['text'][:70]!r}")

    one_liner = ChatRequest(
        messages=({"role": "user", "content": "Write a Python function that validates email "
                   "addresses and returns a bool."},),
        agent_name="coding_agent",
    )
    short = [r for r, t in zip(requests, tasks, strict=True) if not t.get("context")]
    long_one = next(r for r, t in zip(requests, tasks, strict=True) if t.get("context"))
    print("classify() cost per call (median of runs):")
    print(f"  typical one-line prompt: {_per_call_us([one_liner], 2000):8.1f} µs")
    print(f"  labelled prompts without attachments (n={len(short)}, mean): "
          f"{_per_call_us(short, 20):8.1f} µs")
    long_tokens = classify(long_one).estimated_tokens
    print(f"  one long-context prompt (~{long_tokens} tokens; token counting dominates): "
          f"{_per_call_us([long_one], 5) / 1000:8.1f} ms")


if __name__ == "__main__":
    main()
