"""Which task type a request is: a fitted multinomial logistic model over the task signals.

The classifier (`classify.py`) turns the text into features: one per row of its signal table
(words and phrases that define a task type, valued by how often they occur, less inside
pasted material), one per structural signal (fenced code, diffs, stack traces, SQL, scripts,
size …) and the agent's usual task type. Each feature started as a hand weight towards one
task type; `benchmarks/fit_task_type.py` fits a weight per (feature, task type) and a bias
per task type as a multinomial logistic regression whose L2 penalty pulls towards those hand
weights (scaled by `prior_scale`), so a feature can also speak against a task type ("test"
against code generation) and a signal the labelled prompts never showed keeps its hand
weight. The weights are data (`data/task_type.json`); scoring is a few dictionary lookups and
additions per feature, in pure Python. The most probable task type wins.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from typing import Any

__all__ = ["TaskModel", "decide", "load_task_model"]


class TaskModel:
    """The fitted model: a bias per task type, sparse weights per feature."""

    __slots__ = ("about", "bias", "by_class", "classes", "index", "prior_scale", "weights")

    def __init__(
        self,
        classes: tuple[str, ...],
        bias: tuple[float, ...],
        weights: Mapping[str, Mapping[str, float]],
        prior_scale: float,
        about: str,
    ) -> None:
        self.classes = classes
        self.index = {c: i for i, c in enumerate(classes)}
        self.bias = bias
        # feature -> ((class index, weight), …): only the weights that matter are kept.
        self.weights: dict[str, tuple[tuple[int, float], ...]] = {
            k: tuple((self.index[c], float(w)) for c, w in row.items())
            for k, row in weights.items()
        }
        # The same weights by class index, for the contribution of a feature to one class.
        self.by_class: dict[str, dict[int, float]] = {k: dict(r) for k, r in self.weights.items()}
        self.prior_scale = prior_scale
        self.about = about

    def logits(
        self, feats: Mapping[str, float], prior: Mapping[str, tuple[str, float]]
    ) -> list[float]:
        """The score of every task type (in `classes` order)."""
        out = list(self.bias)
        weights = self.weights
        for k, v in feats.items():
            row = weights.get(k)
            if row is not None:
                for j, w in row:
                    out[j] += v * w
            elif (p := prior.get(k)) is not None:
                # A signal the fitted data never showed: its hand weight, on the fit's scale.
                out[self.index[p[0]]] += v * p[1] * self.prior_scale
        return out

    def contribution(
        self, key: str, value: float, task: int, prior: Mapping[str, tuple[str, float]]
    ) -> float:
        """How much one feature pushed the task type of index `task`."""
        row = self.by_class.get(key)
        if row is not None:
            return value * row.get(task, 0.0)
        p = prior.get(key)
        if p is not None and self.index[p[0]] == task:
            return value * p[1] * self.prior_scale
        return 0.0


@lru_cache(maxsize=1)
def load_task_model() -> TaskModel:
    """The embedded model (`data/task_type.json`), parsed once per process."""
    text = resources.files("ymera_groq_plugin").joinpath("data/task_type.json").read_text("utf-8")
    doc: dict[str, Any] = json.loads(text)
    classes = tuple(doc["classes"])
    return TaskModel(
        classes,
        tuple(float(doc["bias"][c]) for c in classes),
        doc["weights"],
        float(doc["prior_scale"]),
        doc["about"],
    )


def decide(
    feats: Mapping[str, float],
    labels: Mapping[str, str],
    prior: Mapping[str, tuple[str, float]],
    model: TaskModel | None = None,
) -> tuple[str, str]:
    """The task type of a feature vector and the reason that names the signals that decided."""
    if not feats:
        return "general", "no task signal: general"
    m = model or load_task_model()
    logits = m.logits(feats, prior)
    top = max(logits)
    best = logits.index(top)
    exps = [math.exp(z - top) for z in logits]
    total = sum(exps)
    exps[best] = 0.0
    runner_up = max(exps)
    p2 = runner_up / total
    # The signals that pushed the winner, strongest first; the runner-up by its probability.
    pushed = [(c, k) for k, v in feats.items() if (c := m.contribution(k, v, best, prior)) > 0.05]
    pushed.sort(reverse=True)
    names = [labels.get(k, k) for _, k in pushed[:4]]
    task = m.classes[best]
    reason = f"signals: {task} p={1 / total:.2f}" + (f" ({', '.join(names)})" if names else "")
    if p2 >= 0.1:
        reason += f"; then {m.classes[exps.index(runner_up)]} p={p2:.2f}"
    return task, reason
