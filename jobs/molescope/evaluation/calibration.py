"""Probability calibration by temperature scaling, and the figures that say how well calibrated rows are.

A network trained with cross-entropy tends to be over-confident: its top probability is higher than the
rate at which it is right. Temperature scaling (Guo et al., 2017) divides the log-probabilities of every row
by one constant T > 0 and renormalises: T > 1 softens over-confident rows, T < 1 sharpens under-confident
ones. Every row keeps its ranking of the classes (the argmax and ties stay), so accuracy is unchanged while
the probabilities, and the thresholds fitted on them, mean what they say.

T is fitted on the validation rows only (like every other constant of a decision rule), never on the rows
it is evaluated on. Every function here is pure (NumPy in, floats or JSON-able Python out) and independent
of the class list: it works for any number of probability columns. This module imports nothing from
`molescope.evaluation.rules` or `.metrics` (both import it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

#: The range `fit_temperature` searches: wide enough for any real model, narrow enough to stay finite.
TEMPERATURE_BOUNDS: tuple[float, float] = (0.05, 20.0)
#: Probabilities are clipped to at least this before their log is taken (a 0 would give -inf).
EPS = 1e-12
#: Equal-width confidence bins of the reliability figures (the usual 15 of the calibration literature).
DEFAULT_BINS = 15


def _arrays(y: Sequence[int] | np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(y, dtype=int).reshape(-1)
    p = np.asarray(proba, dtype=float)
    if p.ndim != 2 or p.shape[0] != labels.shape[0]:
        raise ValueError(f"expected {labels.shape[0]} rows of class probabilities, got shape {p.shape}")
    return labels, p


def _log_proba(proba: np.ndarray) -> np.ndarray:
    """Log-probabilities with zeros clipped, so a class a model ruled out stays finite after scaling."""
    return np.log(np.clip(proba, EPS, 1.0))


def _nll(y: np.ndarray, log_p: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the true labels after scaling log-probabilities by 1/temperature."""
    return float(-log_softmax(log_p / temperature, axis=1)[np.arange(len(y)), y].mean())


def fit_temperature(y: Sequence[int] | np.ndarray, proba: np.ndarray) -> float:
    """The temperature minimising the NLL of softmax(log p / T) on labelled (validation) rows.

    The NLL is unimodal in T (convex in 1/T), so a bounded scalar search on log T finds it. Without rows or
    with a single true class there is nothing to calibrate against (NLL falls without bound as T shrinks
    when every row is right): 1.0, i.e. no scaling.
    """
    labels, p = _arrays(y, proba)
    if len(np.unique(labels)) < 2:
        return 1.0
    log_p = _log_proba(p)
    result = minimize_scalar(
        lambda log_t: _nll(labels, log_p, float(np.exp(log_t))),
        bounds=tuple(np.log(TEMPERATURE_BOUNDS)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(result.x))


def calibrate(proba: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) per row: the probabilities a rule with this temperature decides on.

    T == 1 returns the input as a float array, untouched (no clipping round-trip), so a rule fitted without
    calibration decides exactly as before.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    p = np.asarray(proba, dtype=float)
    if temperature == 1 or p.size == 0:
        return p
    return softmax(_log_proba(p) / temperature, axis=1)


def negative_log_likelihood(y: Sequence[int] | np.ndarray, proba: np.ndarray) -> float:
    """Mean -log p(true class), clipped like everything here; NaN without rows."""
    labels, p = _arrays(y, proba)
    if len(labels) == 0:
        return float("nan")
    return float(-_log_proba(p)[np.arange(len(labels)), labels].mean())


def brier_score(y: Sequence[int] | np.ndarray, proba: np.ndarray) -> float:
    """Multiclass Brier score: mean over rows of Σ_c (p_c - [c = y])², 0 (perfect) to 2; NaN without rows.

    Unlike NLL it stays finite for a confident mistake, so one bad row cannot dominate the figure.
    """
    labels, p = _arrays(y, proba)
    if len(labels) == 0:
        return float("nan")
    onehot = np.zeros_like(p)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def reliability(
    y: Sequence[int] | np.ndarray, proba: np.ndarray, bins: int = DEFAULT_BINS
) -> list[dict[str, Any]]:
    """Per non-empty equal-width bin (lower, upper] of top-label confidence: its rows' count, mean confidence
    and accuracy (the reliability diagram's points; a calibrated model has accuracy ≈ confidence).

    The top label is np.argmax (a tie goes to the first class); confidence 0 falls in the first bin.
    """
    if bins < 1:
        raise ValueError(f"bins must be ≥ 1, got {bins}")
    labels, p = _arrays(y, proba)
    if len(labels) == 0:
        return []
    confidence, correct = p.max(axis=1), p.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Count of inner edges strictly below the confidence: bin i is (edges[i], edges[i + 1]].
    index = np.searchsorted(edges[1:-1], confidence, side="left")
    return [
        {
            "lower": float(edges[i]),
            "upper": float(edges[i + 1]),
            "count": int(members.sum()),
            "mean_confidence": float(confidence[members].mean()),
            "accuracy": float(correct[members].mean()),
        }
        for i in range(bins)
        if (members := index == i).any()
    ]


def expected_calibration_error(
    y: Sequence[int] | np.ndarray, proba: np.ndarray, bins: int = DEFAULT_BINS
) -> float:
    """Top-label ECE: Σ_bins (count / n) · |accuracy - mean confidence|; NaN without rows.

    How far, on average over rows, the confidence a model states is from the rate at which it is right.
    """
    points = reliability(y, proba, bins)
    n = sum(point["count"] for point in points)
    if n == 0:
        return float("nan")
    gaps = (point["count"] / n * abs(point["accuracy"] - point["mean_confidence"]) for point in points)
    return float(sum(gaps))


def calibration_figures(y: Sequence[int] | np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    """n, ECE, Brier, NLL and the reliability points of labelled rows, as strict JSON (None without rows)."""
    labels, p = _arrays(y, proba)
    n = len(labels)
    return {
        "n": n,
        "ece": expected_calibration_error(labels, p) if n else None,
        "brier": brier_score(labels, p) if n else None,
        "nll": negative_log_likelihood(labels, p) if n else None,
        "reliability": reliability(labels, p),
    }


def before_after(
    y: Sequence[int] | np.ndarray, proba: np.ndarray, temperature: float, points: bool = True
) -> dict[str, Any]:
    """`calibration_figures` of the rows as the model gave them and after scaling by `temperature`; without
    the reliability points unless `points` (they are for figures, not for logs and sidecars)."""
    result = {
        "before": calibration_figures(y, proba),
        "after": calibration_figures(y, calibrate(proba, temperature)),
    }
    if not points:
        for figures in result.values():
            del figures["reliability"]
    return result
