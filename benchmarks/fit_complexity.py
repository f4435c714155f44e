"""Fit the complexity weights (`ymera_groq_plugin/data/complexity.json`) on the tuning splits.

Run from the repository root:

    python benchmarks/fit_complexity.py [--dry-run]

A proportional-odds (ordinal logistic) model over the signals of `routing/complexity.py`:
one score `s = w · x`, `P(y > simple) = σ(s − θ₁)`, `P(y = complex) = σ(s − θ₂)`, fitted by
full-batch gradient descent (Adam) with an L2 penalty, in pure Python (no numpy, no network).

`tests/data/calibration.json` and `tests/data/holdout4.json` are read: both are tuning splits
now (holdout4 was measured once on weights fitted on calibration alone: complexity 79.6 %,
complex found 85 %, then tuned on). The L2 strength is chosen by 5-fold cross-validation over
both; `holdout5` (measured once: complexity 70.6 %) is fitted on too; `holdout6` is never
read here. The features use the task type the classifier predicts,
as at run time.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.unit_tests.test_classify import labelled_request, labelled_set  # noqa: E402
from ymera_groq_plugin.routing.classify import complexity_features  # noqa: E402
from ymera_groq_plugin.routing.complexity import probabilities  # noqa: E402

OUT = ROOT / "ymera_groq_plugin" / "data" / "complexity.json"
CLASSES = ("simple", "moderate", "complex")
Row = tuple[dict[str, float], int]


def _sig(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def fit(
    rows: list[Row], names: list[str], l2: float, steps: int = 1500, lr: float = 0.05
) -> tuple[dict[str, float], tuple[float, float]]:
    """Weights and thresholds minimising the mean negative log-likelihood + l2·|w|²."""
    w = dict.fromkeys(names, 0.0)
    # θ₂ = θ₁ + exp(d) keeps the thresholds ordered.
    t1, d = -0.5, math.log(2.0)
    params = [*names, "__t1", "__d"]
    m = dict.fromkeys(params, 0.0)
    v = dict.fromkeys(params, 0.0)
    n = len(rows)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for step in range(1, steps + 1):
        g = dict.fromkeys(params, 0.0)
        t2 = t1 + math.exp(d)
        for x, y in rows:
            s = sum(w[k] * val for k, val in x.items())
            a, b = _sig(s - t1), _sig(s - t2)
            # dNLL/ds and dNLL/dθ for each class of the ordinal model
            if y == 0:  # P = 1 - a
                ds, dt1, dt2 = a, -a, 0.0
            elif y == 2:  # P = b
                ds, dt1, dt2 = -(1 - b), 0.0, (1 - b)
            else:  # P = a - b
                p = max(a - b, 1e-12)
                da, db = a * (1 - a), b * (1 - b)
                ds, dt1, dt2 = -(da - db) / p, da / p, -db / p
            for k, val in x.items():
                g[k] += ds * val / n
            g["__t1"] += (dt1 + dt2) / n
            g["__d"] += dt2 * math.exp(d) / n
        for k in names:
            g[k] += 2 * l2 * w[k]
        for k in params:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            mh, vh = m[k] / (1 - b1**step), v[k] / (1 - b2**step)
            delta = lr * mh / (math.sqrt(vh) + eps)
            if k == "__t1":
                t1 -= delta
            elif k == "__d":
                d -= delta
            else:
                w[k] -= delta
    return w, (t1, t1 + math.exp(d))


def predict(x: dict[str, float], w: dict[str, float], theta: tuple[float, float]) -> int:
    p = probabilities(sum(w.get(k, 0.0) * v for k, v in x.items()), theta)
    return max(range(3), key=lambda i: p[i])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="fit and report, write nothing")
    parser.add_argument("--steps", type=int, default=1500)
    args = parser.parse_args()

    tasks = labelled_set("calibration") + labelled_set("holdout4") + labelled_set("holdout5")
    rows: list[Row] = []
    for t in tasks:
        x, _ = complexity_features(labelled_request(t))
        rows.append((x, CLASSES.index(t["complexity"])))
    names = sorted({k for x, _ in rows for k in x})
    print(f"calibration + holdout4 + holdout5: {len(rows)} prompts, {len(names)} features")

    rng = random.Random(7)
    order = list(range(len(rows)))
    rng.shuffle(order)
    folds = [order[i::5] for i in range(5)]
    best_l2, best_acc = 0.0, -1.0
    for l2 in (0.001, 0.003, 0.01, 0.03):
        ok = 0
        for f in folds:
            held = set(f)
            w, th = fit([rows[i] for i in order if i not in held], names, l2, args.steps // 2)
            ok += sum(predict(rows[i][0], w, th) == rows[i][1] for i in f)
        acc = ok / len(rows)
        print(f"  l2 {l2:<6g} 5-fold accuracy on the tuning splits {acc:.1%}")
        if acc > best_acc:
            best_l2, best_acc = l2, acc
    w, theta = fit(rows, names, best_l2, args.steps)
    train = sum(predict(x, w, theta) == y for x, y in rows) / len(rows)
    print(f"chosen l2 {best_l2:g}; fitted on all of them: {train:.1%} (in-sample)")
    top = sorted(w.items(), key=lambda kv: -abs(kv[1]))[:12]
    print("largest weights: " + ", ".join(f"{k} {v:+.2f}" for k, v in top))
    print(f"thresholds: {theta[0]:+.2f}, {theta[1]:+.2f}")
    if args.dry_run:
        return
    doc = {
        "about": (
            "Complexity weights: proportional-odds logistic regression over the signals of "
            "routing/complexity.py, fitted by benchmarks/fit_complexity.py on calibration + "
            f"holdout4 + holdout5 ({len(rows)} prompts, all tuning splits; l2 {best_l2:g} chosen "
            f"by 5-fold cross-validation there: {best_acc:.1%}). Never fitted on holdout6. The "
            "instruction-length feature is centred on 15 words (log2(1 + words) - 4)."
        ),
        "thresholds": [round(theta[0], 4), round(theta[1], 4)],
        "weights": {k: round(v, 4) for k, v in sorted(w.items()) if abs(v) >= 1e-4},
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
