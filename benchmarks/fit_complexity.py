"""Fit the complexity weights (`ymera_groq_plugin/data/complexity.json`) on the tuning splits.

Run from the repository root:

    python benchmarks/fit_complexity.py [--dry-run]

A multinomial logistic regression (simple, moderate, complex) over the named signals of
`routing/complexity.py` and the word stems of the request (`word_stems`), each with an L2
penalty (`l2` for the signals, `l2w` for the stems, which are many and each rare). A stem is a
feature when at least two prompts use it. The penalties are chosen by leave-one-writer-out:
each writer's prompts are predicted by weights fitted on everybody else's, which is what a new
user's prompts are to the model.

The prompts: `calibration`, `holdout4`, `holdout5`, `holdout6`, `holdout7` and `holdout9` (each
measured once when it was new, then tuned on) and `writers` (twelve writers, written for training);
`holdout8`, `holdout10` and `holdout11` are never read here. The older `tasks.json` is left out: its
complexity labels were written by another hand (see `test_classify.py`). The features use the task
type the classifier predicts, as at run time. Fitting uses numpy and scipy (test extras); the
package scores in pure Python.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _softmax import fit_softmax, matrix  # noqa: E402

from tests.unit_tests.test_classify import (  # noqa: E402
    labelled_request,
    labelled_set,
    never_tuned_names,
)
from ymera_groq_plugin.routing.classify import WORD_PREFIX, complexity_features  # noqa: E402
from ymera_groq_plugin.routing.complexity import Weights, decide  # noqa: E402

OUT = ROOT / "ymera_groq_plugin" / "data" / "complexity.json"
FITTED_ON = ("calibration", "holdout4", "holdout5", "holdout6", "holdout7", "holdout9", "writers")
CLASSES = ("simple", "moderate", "complex")
MIN_DF = 2
L2 = 0.001
L2WS = (0.001, 0.003)
Row = tuple[dict[str, float], int, str]
"""(features, class index, writer)."""


def rows_of(names: Sequence[str]) -> list[Row]:
    out: list[Row] = []
    for name in names:
        for t in labelled_set(name):
            x, _ = complexity_features(labelled_request(t), all_words=True)
            out.append((x, CLASSES.index(t["complexity"]), t.get("writer") or name))
    return out


def vocabulary(rows: Sequence[Row]) -> tuple[str, ...]:
    """Every named signal the rows show, then the stems at least `MIN_DF` prompts use."""
    df: dict[str, int] = {}
    for x, _, _ in rows:
        for k in x:
            df[k] = df.get(k, 0) + 1
    return tuple(sorted(k for k, n in df.items() if not k.startswith(WORD_PREFIX) or n >= MIN_DF))


def fit(rows: Sequence[Row], l2w: float, steps: int = 600, lr: float = 0.05) -> Weights:
    """The penalised fit (every feature pulled towards 0); weights under 0.02 are dropped."""
    keys = vocabulary(rows)
    x = matrix((f for f, _, _ in rows), {k: i for i, k in enumerate(keys)})
    penalty = np.array([[l2w if k.startswith(WORD_PREFIX) else L2] for k in keys])
    prior = np.zeros((len(keys), len(CLASSES)))
    w, b = fit_softmax(x, (c for _, c, _ in rows), prior, penalty, steps, lr)
    table = {
        k: (float(w[i, 0]), float(w[i, 1]), float(w[i, 2]))
        for i, k in enumerate(keys)
        if np.abs(w[i]).max() >= 0.02
    }
    return Weights(table, (float(b[0]), float(b[1]), float(b[2])), "")


def predict(x: dict[str, float], model: Weights) -> int:
    """The class the package's own `decide` gives (labelled prompts are under 8k tokens)."""
    return CLASSES.index(decide(x, 0, model)[0])


def score(rows: Sequence[Row], model: Weights) -> tuple[int, int]:
    """(right, complex prompts recognised)."""
    got = [(predict(x, model), y) for x, y, _ in rows]
    return sum(p == y for p, y in got), sum(p == y == 2 for p, y in got)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="fit and report, write nothing")
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()

    rows = rows_of(FITTED_ON)
    writers = list(dict.fromkeys(g for _, _, g in rows))
    hard = sum(1 for _, y, _ in rows if y == 2)
    print(
        f"{' + '.join(FITTED_ON)}: {len(rows)} prompts by {len(writers)} writers, "
        f"{len(vocabulary(rows))} features"
    )
    best: tuple[float, float, float, dict[str, float]] = (0.0, -1.0, 0.0, {})
    for l2w in L2WS:
        ok = found = 0
        per: dict[str, float] = {}
        for writer in writers:
            test = [r for r in rows if r[2] == writer]
            model = fit([r for r in rows if r[2] != writer], l2w, args.steps)
            right, rec = score(test, model)
            ok, found = ok + right, found + rec
            per[writer] = right / len(test)
        acc = ok / len(rows)
        print(
            f"  l2w {l2w:<6g} leave-one-writer-out {acc:.1%}, complex recognised "
            f"{found}/{hard} = {found / hard:.0%}"
        )
        if acc > best[1]:
            best = (l2w, acc, found / hard, per)
    l2w, lowo, recall, per = best
    print(f"chosen l2w {l2w:g}: " + ", ".join(f"{g} {a:.1%}" for g, a in per.items()))
    model = fit(rows, l2w, args.steps)
    right, _ = score(rows, model)
    print(f"fitted on all: {right / len(rows):.1%} (in-sample)")
    # What pushes towards complex rather than simple, most first.
    top = sorted(model.weights.items(), key=lambda kv: -abs(kv[1][2] - kv[1][0]))[:12]
    print("complex vs simple: " + ", ".join(f"{k} {v[2] - v[0]:+.2f}" for k, v in top))
    if args.dry_run:
        return
    doc = {
        "about": (
            "Complexity weights: multinomial logistic regression over the signals of "
            "routing/complexity.py and the request's word stems, fitted by "
            f"benchmarks/fit_complexity.py on {' + '.join(FITTED_ON)} ({len(rows)} prompts by "
            f"{len(writers)} writers, all tuning splits; l2 {L2:g}, l2w {l2w:g} chosen by "
            f"leave-one-writer-out: {lowo:.1%}, complex recognised {recall:.0%}). Never fitted "
            f"on {never_tuned_names()}. The instruction-length feature is centred on 15 words "
            "(log2(1 + words) - 4)."
        ),
        "leave_one_writer_out": {g: round(a, 4) for g, a in per.items()},
        "classes": list(CLASSES),
        "bias": [round(v, 4) for v in model.bias],
        "weights": {k: [round(c, 3) for c in v] for k, v in sorted(model.weights.items())},
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
