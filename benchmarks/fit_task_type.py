"""Fit the task type model (`ymera_groq_plugin/data/task_type.json`) on every tuned-on prompt.

Run from the repository root:

    python benchmarks/fit_task_type.py [--dry-run]

A multinomial logistic regression over the task features of `routing/classify.py`: a feature
per signal table row, per structural signal and the agent's usual task type, plus one per word
stem (`word_stems`: the words themselves, as people write them). A weight per (feature, task
type) and a bias per task type minimise the mean cross-entropy plus `l2 · |W − s·H|²` over the
signals, where `H` holds the hand weights (each signal towards its own task type) and `s` their
scale, and `l2w · |W|²` over the word stems (they have no hand weight). The penalty pulls the
signals towards the hand table, so a signal the prompts show rarely keeps about its hand
weight. A stem is a feature when at least two prompts use it.

The penalties are chosen by leave-one-writer-out: each writer's prompts (a labelled file, or
one writer of `writers.json`) are predicted by weights fitted on everybody else's, which is
what a new user's prompts are to the model. Fitting uses numpy and scipy (test extras); the
package scores in pure Python.

The prompts: `calibration`, `holdout4`, `holdout5`, `holdout6`, `holdout7` and `holdout9`
(each measured once when it was new, then tuned on), `writers` (twelve writers, written for
training) and the older `tasks.json`. `holdout8`, `holdout10` and `holdout11` are never read
here.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# One BLAS thread: the matrices are small, and more threads only fight over shared cores.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _softmax import fit_softmax, matrix  # noqa: E402

from tests.unit_tests.test_classify import (  # noqa: E402
    labelled_request,
    labelled_set,
    labelled_tasks,
    never_tuned_names,
)
from ymera_groq_plugin.routing.classify import PRIOR, WORD_PREFIX, task_features  # noqa: E402
from ymera_groq_plugin.types import TASK_TYPES  # noqa: E402

OUT = ROOT / "ymera_groq_plugin" / "data" / "task_type.json"
FITTED_ON = (
    "calibration",
    "holdout4",
    "holdout5",
    "holdout6",
    "holdout7",
    "holdout9",
    "writers",
    "tasks",
)
CLASSES = tuple(TASK_TYPES)
PRUNE = 0.1
"""Weights smaller than this are dropped (also in cross-validation): fewer additions per call."""
MIN_DF = 2
"""A word stem is a feature when at least this many prompts use it."""
SCALE = 1.0
L2 = 0.003
L2WS = (0.000001, 0.000003, 0.00001)
Row = tuple[dict[str, float], int, str]
"""(features, class index, writer)."""


def rows_of(names: Sequence[str]) -> list[Row]:
    """(features with every word stem, class index, writer) of every prompt of the sets."""
    out: list[Row] = []
    for name in names:
        for t in labelled_tasks() if name == "tasks" else labelled_set(name):
            feats = task_features(labelled_request(t), all_words=True)
            out.append((feats, CLASSES.index(t["task_type"]), t.get("writer") or name))
    return out


def vocabulary(rows: Sequence[Row]) -> tuple[str, ...]:
    """Every signal of the table, then the word stems at least `MIN_DF` prompts use."""
    df: dict[str, int] = {}
    for f, _, _ in rows:
        for k in f:
            if k.startswith(WORD_PREFIX):
                df[k] = df.get(k, 0) + 1
    return (*PRIOR, *sorted(k for k, n in df.items() if n >= MIN_DF))


class Fit:
    """Fitted weights (features × classes) and biases."""

    def __init__(self, keys: Sequence[str], w: np.ndarray, b: np.ndarray, l2w: float) -> None:
        self.keys, self.w, self.b, self.l2w = tuple(keys), w, b, l2w
        self.col = {k: i for i, k in enumerate(self.keys)}

    def predict(self, rows: Sequence[Row]) -> list[int]:
        """The predicted class per row; a row without any feature is `general` (as at run time)."""
        z = matrix((f for f, _, _ in rows), self.col) @ self.w + self.b
        general = CLASSES.index("general")
        known = [any(k in self.col for k in f) for f, _, _ in rows]
        return [int(np.argmax(z[i])) if known[i] else general for i in range(len(rows))]


def _hand(keys: Sequence[str]) -> np.ndarray:
    h = np.zeros((len(keys), len(CLASSES)))
    for i, k in enumerate(keys):
        if k in PRIOR:
            h[i, CLASSES.index(PRIOR[k][0])] = PRIOR[k][1]
    return h


def fit(rows: Sequence[Row], l2w: float, steps: int = 600, lr: float = 0.05) -> Fit:
    """The penalised fit over the vocabulary of `rows`, signals pulled to their hand weights."""
    keys = vocabulary(rows)
    x = matrix((f for f, _, _ in rows), {k: i for i, k in enumerate(keys)})
    penalty = np.array([[L2 if k in PRIOR else l2w] for k in keys])
    w, b = fit_softmax(x, (c for _, c, _ in rows), SCALE * _hand(keys), penalty, steps, lr)
    w[np.abs(w) < PRUNE] = 0.0
    return Fit(keys, w, b, l2w)


def accuracy(model: Fit, rows: Sequence[Row]) -> float:
    return sum(p == y for p, (_, y, _) in zip(model.predict(rows), rows, strict=True)) / len(rows)


def leave_one_writer_out(rows: Sequence[Row], l2w: float) -> dict[str, float]:
    """Each writer's accuracy under weights fitted on every other writer's prompts."""
    out: dict[str, float] = {}
    for writer in dict.fromkeys(g for _, _, g in rows):
        test = [r for r in rows if r[2] == writer]
        train = [r for r in rows if r[2] != writer]
        out[writer] = accuracy(fit(train, l2w), test)
    return out


def pooled(per_writer: dict[str, float], rows: Sequence[Row]) -> float:
    """The accuracy over every prompt (each writer weighted by its number of prompts)."""
    sizes = {g: sum(1 for r in rows if r[2] == g) for g in per_writer}
    return sum(per_writer[g] * sizes[g] for g in per_writer) / sum(sizes.values())


def cross_validate(rows: Sequence[Row], l2w: float, k: int = 5, seed: int = 7) -> float:
    """k-fold accuracy, folds stratified by task type (writers mixed: flatters new writers)."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, (_, y, _) in enumerate(rows):
        by_class.setdefault(y, []).append(i)
    fold_of = [0] * len(rows)
    j = 0
    for idx in by_class.values():
        rng.shuffle(idx)
        for i in idx:
            fold_of[i] = j % k
            j += 1
    ok = 0
    for f in range(k):
        train = [r for i, r in enumerate(rows) if fold_of[i] != f]
        test = [r for i, r in enumerate(rows) if fold_of[i] == f]
        ok += round(accuracy(fit(train, l2w), test) * len(test))
    return ok / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="fit and report, write nothing")
    args = parser.parse_args()

    rows = rows_of(FITTED_ON)
    writers = list(dict.fromkeys(g for _, _, g in rows))
    print(
        f"{' + '.join(FITTED_ON)}: {len(rows)} prompts by {len(writers)} writers, "
        f"{len(vocabulary(rows))} features"
    )
    best: tuple[float, float, dict[str, float]] = (0.0, -1.0, {})
    for l2w in L2WS:
        per = leave_one_writer_out(rows, l2w)
        acc = pooled(per, rows)
        print(f"  l2w {l2w:<7g} leave-one-writer-out {acc:.1%}")
        if acc > best[1]:
            best = (l2w, acc, per)
    l2w, lowo, per = best
    print(f"chosen l2w {l2w:g}: " + ", ".join(f"{g} {a:.1%}" for g, a in per.items()))
    model = fit(rows, l2w)
    print(f"fitted on all: {accuracy(model, rows):.1%} (in-sample)")
    if args.dry_run:
        return
    hand = SCALE * _hand(model.keys)
    weights: dict[str, dict[str, float]] = {}
    for i, k in enumerate(model.keys):
        if k in PRIOR and np.abs(model.w[i] - hand[i]).max() < 1e-3 and hand[i].max() >= PRUNE:
            continue  # never seen: the run time falls back to the scaled hand weight
        row = {c: round(float(v), 3) for c, v in zip(CLASSES, model.w[i], strict=True) if v}
        if row or k in PRIOR:
            weights[k] = row
    doc = {
        "about": (
            "Task type model: multinomial logistic regression over the task features of "
            "routing/classify.py (signals and word stems), fitted by benchmarks/fit_task_type.py "
            f"on {' + '.join(FITTED_ON)} ({len(rows)} prompts by {len(writers)} writers, all "
            f"tuning splits), L2 towards the hand weights × {SCALE:g} (l2 {L2:g}) and towards 0 "
            f"for word stems (l2w {l2w:g}, chosen by leave-one-writer-out: {lowo:.1%}). Never "
            f"fitted on {never_tuned_names()}."
        ),
        "classes": list(CLASSES),
        "prior_scale": SCALE,
        "l2": L2,
        "l2w": l2w,
        "leave_one_writer_out": {g: round(a, 4) for g, a in per.items()},
        "bias": {c: round(float(v), 3) for c, v in zip(CLASSES, model.b, strict=True)},
        "weights": weights,
    }
    OUT.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")


def chosen() -> dict[str, Any]:
    """The embedded model's document (its penalties and held-out figures)."""
    doc: dict[str, Any] = json.loads(OUT.read_text("utf-8"))
    return doc


if __name__ == "__main__":
    main()
