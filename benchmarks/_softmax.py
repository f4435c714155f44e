"""The multinomial logistic fit both `fit_task_type.py` and `fit_complexity.py` use.

Adam on the mean cross-entropy plus `Σ pen_k · |w_k − prior_k|²`: a per-feature L2 pull towards
a prior row (the hand weights of a signal, or 0). numpy and scipy's sparse matrices (test
extras); the package scores the result in pure Python.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from scipy import sparse

__all__ = ["fit_softmax", "matrix"]


def matrix(features: Iterable[Mapping[str, float]], col: Mapping[str, int]) -> sparse.csr_matrix:
    """One row per feature dict, one column per known feature (unknown ones are left out).

    Sparse: a prompt uses a few dozen of the thousands of word features, so the products of a
    fit step cost a hundredth of their dense form (a leave-one-writer-out run takes seconds,
    not half an hour)."""
    rows = list(features)
    data: list[float] = []
    at_row: list[int] = []
    at_col: list[int] = []
    for r, f in enumerate(rows):
        for k, v in f.items():
            i = col.get(k)
            if i is not None:
                at_row.append(r)
                at_col.append(i)
                data.append(v)
    return sparse.csr_matrix((data, (at_row, at_col)), shape=(len(rows), len(col)))


def fit_softmax(
    x: np.ndarray | sparse.csr_matrix,
    labels: Iterable[int],
    prior: np.ndarray,
    penalty: np.ndarray,
    steps: int = 600,
    lr: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """Weights (features × classes) and biases, starting from `prior`; `penalty` is a column
    (one L2 strength per feature)."""
    classes = prior.shape[1]
    y = np.zeros((x.shape[0], classes))
    y[np.arange(x.shape[0]), list(labels)] = 1.0
    w = prior.copy()
    b = np.zeros(classes)
    mw, vw = np.zeros_like(w), np.zeros_like(w)
    mb, vb = np.zeros_like(b), np.zeros_like(b)
    b1, b2, eps = 0.9, 0.999, 1e-8
    n = x.shape[0]
    for step in range(1, steps + 1):
        z = x @ w + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        d = (p - y) / n
        gw = x.T @ d + 2 * penalty * (w - prior)
        gb = d.sum(axis=0)
        mw = b1 * mw + (1 - b1) * gw
        vw = b2 * vw + (1 - b2) * gw**2
        mb = b1 * mb + (1 - b1) * gb
        vb = b2 * vb + (1 - b2) * gb**2
        c1, c2 = 1 - b1**step, 1 - b2**step
        w -= lr * (mw / c1) / (np.sqrt(vw / c2) + eps)
        b -= lr * (mb / c1) / (np.sqrt(vb / c2) + eps)
    return w, b
