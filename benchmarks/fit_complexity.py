"""Fit the complexity weights (`ymera_groq_plugin/data/complexity.json`) on the tuning splits.

Run from the repository root:

    python benchmarks/fit_complexity.py [--dry-run]

A proportional-odds logistic regression (simple < moderate < complex) over the named signals
of `routing/complexity.py` and the word stems of the request (`word_stems`), each with an L2
penalty (`l2` for the signals, `l2w` for the stems, which are many and each rare). A stem is a
feature when at least two prompts use it. The penalties are chosen by leave-one-writer-out:
each writer's prompts are predicted by weights fitted on everybody else's, which is what a new
user's prompts are to the model.

The prompts: `calibration`, `holdout4`, `holdout5` and `holdout6` (each measured once when it
was new, then tuned on) and `writers` (six writers, written for training); `holdout7` is never
read here. The older `tasks.json` is left out: its complexity labels were written by another
hand (see `test_classify.py`). The features use the task type the classifier predicts, as at
run time. Fitting uses numpy (a test extra); the package scores in pure Python.
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

from tests.unit_tests.test_classify import labelled_request, labelled_set  # noqa: E402
from ymera_groq_plugin.routing.classify import WORD_PREFIX, complexity_features  # noqa: E402
from ymera_groq_plugin.routing.complexity import probabilities  # noqa: E402

OUT = ROOT / "ymera_groq_plugin" / "data" / "complexity.json"
FITTED_ON = ("calibration", "holdout4", "holdout5", "holdout6", "writers")
CLASSES = ("simple", "moderate", "complex")
MIN_DF = 2
L2 = 0.001
L2WS = (0.001, 0.003, 0.01)
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


def _sig(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def fit(
    rows: Sequence[Row], l2w: float, steps: int = 1500, lr: float = 0.05
) -> tuple[dict[str, float], tuple[float, float]]:
    """Weights and thresholds minimising the mean negative log-likelihood + the penalties."""
    keys = vocabulary(rows)
    col = {k: i for i, k in enumerate(keys)}
    x = np.zeros((len(rows), len(keys)))
    for r, (f, _, _) in enumerate(rows):
        for k, v in f.items():
            i = col.get(k)
            if i is not None:
                x[r, i] = v
    y = np.array([c for _, c, _ in rows])
    pen = np.array([l2w if k.startswith(WORD_PREFIX) else L2 for k in keys])
    w = np.zeros(len(keys))
    # θ₂ = θ₁ + exp(d) keeps the thresholds ordered.
    t1, d = -0.5, float(np.log(2.0))
    params = np.concatenate([w, [t1, d]])
    m, v = np.zeros_like(params), np.zeros_like(params)
    b1, b2, eps = 0.9, 0.999, 1e-8
    n = len(rows)
    for step in range(1, steps + 1):
        w, t1, d = params[:-2], params[-2], params[-1]
        t2 = t1 + np.exp(d)
        s = x @ w
        a, b = _sig(s - t1), _sig(s - t2)
        da, db = a * (1 - a), b * (1 - b)
        p_mid = np.maximum(a - b, 1e-12)
        # dNLL/ds and dNLL/dθ for each class of the ordinal model
        ds = np.where(y == 0, a, np.where(y == 2, -(1 - b), -(da - db) / p_mid))
        dt1 = np.where(y == 0, -a, np.where(y == 2, 0.0, da / p_mid))
        dt2 = np.where(y == 0, 0.0, np.where(y == 2, 1 - b, -db / p_mid))
        gw = x.T @ ds / n + 2 * pen * w
        g = np.concatenate([gw, [(dt1 + dt2).mean(), (dt2 * np.exp(d)).mean()]])
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        params = params - lr * (m / (1 - b1**step)) / (np.sqrt(v / (1 - b2**step)) + eps)
    w, t1, d = params[:-2], params[-2], params[-1]
    return {k: float(w[i]) for i, k in enumerate(keys)}, (float(t1), float(t1 + np.exp(d)))


def predict(x: dict[str, float], w: dict[str, float], theta: tuple[float, float]) -> int:
    p = probabilities(sum(w.get(k, 0.0) * v for k, v in x.items()), theta)
    return max(range(3), key=lambda i: p[i])


def score(rows: Sequence[Row], w: dict[str, float], theta: tuple[float, float]) -> tuple[int, int]:
    """(right, complex prompts recognised)."""
    got = [(predict(x, w, theta), y) for x, y, _ in rows]
    return sum(p == y for p, y in got), sum(p == y == 2 for p, y in got)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="fit and report, write nothing")
    parser.add_argument("--steps", type=int, default=1500)
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
            w, th = fit([r for r in rows if r[2] != writer], l2w, args.steps // 2)
            right, rec = score(test, w, th)
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
    w, theta = fit(rows, l2w, args.steps)
    right, _ = score(rows, w, theta)
    print(f"fitted on all: {right / len(rows):.1%} (in-sample)")
    top = sorted(w.items(), key=lambda kv: -abs(kv[1]))[:12]
    print("largest weights: " + ", ".join(f"{k} {v:+.2f}" for k, v in top))
    print(f"thresholds: {theta[0]:+.2f}, {theta[1]:+.2f}")
    if args.dry_run:
        return
    doc = {
        "about": (
            "Complexity weights: proportional-odds logistic regression over the signals of "
            "routing/complexity.py and the request's word stems, fitted by "
            f"benchmarks/fit_complexity.py on {' + '.join(FITTED_ON)} ({len(rows)} prompts by "
            f"{len(writers)} writers, all tuning splits; l2 {L2:g}, l2w {l2w:g} chosen by "
            f"leave-one-writer-out: {lowo:.1%}, complex recognised {recall:.0%}). Never fitted "
            "on holdout7. The instruction-length feature is centred on 15 words "
            "(log2(1 + words) - 4)."
        ),
        "leave_one_writer_out": {g: round(a, 4) for g, a in per.items()},
        "thresholds": [round(theta[0], 4), round(theta[1], 4)],
        "weights": {k: round(v, 4) for k, v in sorted(w.items()) if abs(v) >= 0.02},
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
