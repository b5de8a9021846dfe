"""Labels and probabilities the evaluation tests share: class indices, near one-hot rows, a random case."""

from __future__ import annotations

import numpy as np

NV, MEL, BKL, BCC, AKIEC, VASC, DF = range(7)


def one_hot_ish(labels: list[int], confidence: float = 0.7) -> np.ndarray:
    """Rows putting `confidence` on the given class and the rest evenly on the other six."""
    proba = np.full((len(labels), 7), (1 - confidence) / 6)
    proba[np.arange(len(labels)), labels] = confidence
    return proba


def random_case(n: int = 60, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(7), rng.integers(0, 7, n - 7)])
    proba = rng.dirichlet(np.ones(7), size=n)
    proba[np.arange(n), y] += rng.uniform(0, 0.6, n)  # some signal, so AUCs are not all ~0.5
    return y, proba / proba.sum(axis=1, keepdims=True)
