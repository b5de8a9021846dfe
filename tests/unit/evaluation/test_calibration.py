"""molescope.evaluation.calibration: temperature fitted on synthetic models of known miscalibration, and the
calibration figures (ECE, Brier, reliability) against hand-computed cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import softmax

from molescope.evaluation import calibration


def sampled_case(n: int = 20_000, sharpen: float = 1.0, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from a known model's probabilities, and that model's probabilities with its logits
    multiplied by `sharpen` (> 1: over-confident, < 1: under-confident, 1: calibrated by construction)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, 7))
    true_p = softmax(logits, axis=1)
    y = np.minimum((true_p.cumsum(axis=1) < rng.uniform(size=(n, 1))).sum(axis=1), 6)
    return y, softmax(sharpen * logits, axis=1)


def test_over_confident_model_gets_a_temperature_above_one_and_better_figures():
    y, proba = sampled_case(sharpen=3.0)
    temperature = calibration.fit_temperature(y, proba)
    assert temperature == pytest.approx(3.0, rel=0.1)
    calibrated = calibration.calibrate(proba, temperature)
    before, after = calibration.calibration_figures(y, proba), calibration.calibration_figures(y, calibrated)
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"] and after["brier"] < before["brier"]
    assert after["ece"] < 0.02 < before["ece"]
    # The fitted T is the NLL minimum: a step either way is worse.
    for other in (temperature * 0.9, temperature * 1.1):
        nll = calibration.negative_log_likelihood(y, calibration.calibrate(proba, other))
        assert nll > after["nll"]


def test_under_confident_model_gets_a_temperature_below_one():
    y, proba = sampled_case(sharpen=1 / 3)
    temperature = calibration.fit_temperature(y, proba)
    assert temperature == pytest.approx(1 / 3, rel=0.1)
    calibrated = calibration.calibrate(proba, temperature)
    assert calibration.negative_log_likelihood(y, calibrated) < calibration.negative_log_likelihood(y, proba)
    assert calibration.expected_calibration_error(y, calibrated) < calibration.expected_calibration_error(
        y, proba
    )


def test_calibrated_model_keeps_a_temperature_close_to_one():
    y, proba = sampled_case(sharpen=1.0)
    assert calibration.fit_temperature(y, proba) == pytest.approx(1.0, abs=0.05)


def test_no_rows_or_a_single_class_give_no_scaling():
    assert calibration.fit_temperature(np.array([], dtype=int), np.zeros((0, 7))) == 1.0
    assert calibration.fit_temperature(np.zeros(5, dtype=int), np.full((5, 7), 1 / 7)) == 1.0


def test_calibrate_keeps_argmax_ties_and_row_sums():
    _, proba = sampled_case(n=500, sharpen=3.0)
    proba[0] = [0.4, 0.4, 0.2, 0, 0, 0, 0]  # a tie at the top and zeros
    for temperature in (0.2, 0.5, 2.0, 10.0):
        calibrated = calibration.calibrate(proba, temperature)
        assert calibrated.shape == proba.shape
        np.testing.assert_allclose(calibrated.sum(axis=1), 1.0)
        np.testing.assert_array_equal(calibrated.argmax(axis=1), proba.argmax(axis=1))
        assert calibrated[0, 0] == calibrated[0, 1] and np.isfinite(calibrated).all()
    # T > 1 flattens the top probability, T < 1 sharpens it.
    assert (calibration.calibrate(proba, 2.0).max(axis=1) <= proba.max(axis=1) + 1e-12).all()
    assert (calibration.calibrate(proba, 0.5).max(axis=1) >= proba.max(axis=1) - 1e-12).all()


def test_calibrate_with_temperature_one_returns_the_input_and_handles_empty_rows():
    proba = np.array([[0.7, 0.3, 0, 0, 0, 0, 0]], dtype=np.float32)
    same = calibration.calibrate(proba, 1.0)
    assert same.dtype == np.float64
    np.testing.assert_array_equal(same, proba)  # no clipping: the zeros stay exact zeros
    assert calibration.calibrate(np.zeros((0, 7)), 2.0).shape == (0, 7)
    with pytest.raises(ValueError, match=r"temperature must be > 0"):
        calibration.calibrate(proba, 0.0)


def test_ece_and_reliability_of_a_hand_computed_example():
    # Confidences 0.9, 0.8 (right, wrong) fall in the top bin of 2; 0.3, 0.4 (right, wrong) in the lower bin.
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.3, 0.4, 0.3], [0.4, 0.3, 0.3]])
    points = calibration.reliability(y, proba, bins=2)
    expected = [
        {"lower": 0.0, "upper": 0.5, "count": 2, "mean_confidence": 0.4, "accuracy": 0.5},
        {"lower": 0.5, "upper": 1.0, "count": 2, "mean_confidence": 0.85, "accuracy": 0.5},
    ]
    assert len(points) == 2
    for point, hand in zip(points, expected, strict=True):
        assert point == pytest.approx(hand)
    # ECE = 2/4 · |0.5 - 0.4| + 2/4 · |0.5 - 0.85| = 0.05 + 0.175
    assert calibration.expected_calibration_error(y, proba, bins=2) == pytest.approx(0.225)
    # Bins are (lower, upper]: a confidence of exactly 0.5 is in the lower bin, 0 in the first.
    edge = calibration.reliability([0, 0], np.array([[0.5, 0.25, 0.25], [0.0, 0.0, 0.0]]), bins=2)
    assert [(point["upper"], point["count"]) for point in edge] == [(0.5, 2)]
    # One bin: the weighting no longer cancels anything out, |0.5 - mean(0.9, 0.8, 0.4, 0.4)|.
    assert calibration.expected_calibration_error(y, proba, bins=1) == pytest.approx(0.125)


def test_brier_score_of_a_hand_computed_example():
    y = np.array([0, 2])
    proba = np.array([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]])
    # row 1: 0.3² + 0.2² + 0.1² = 0.14; row 2: 0.5² + 0.5² + 1² = 1.5
    assert calibration.brier_score(y, proba) == pytest.approx((0.14 + 1.5) / 2)
    assert calibration.brier_score(y[:1], np.array([[1.0, 0, 0]])) == 0.0


def test_reliability_counts_sum_to_n_and_figures_are_strict_json():
    y, proba = sampled_case(n=1000, sharpen=2.0)
    points = calibration.reliability(y, proba)
    assert sum(point["count"] for point in points) == 1000
    assert all(point["count"] > 0 for point in points) and len(points) <= calibration.DEFAULT_BINS
    assert all(point["lower"] < point["mean_confidence"] <= point["upper"] for point in points)
    figures = calibration.calibration_figures(y, proba)
    assert figures["n"] == 1000 and figures["reliability"] == points
    json.dumps(figures, allow_nan=False)
    empty = calibration.calibration_figures(np.array([], dtype=int), np.zeros((0, 7)))
    assert empty == {"n": 0, "ece": None, "brier": None, "nll": None, "reliability": []}


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"rows of class probabilities"):
        calibration.fit_temperature([0, 1], np.ones((3, 7)) / 7)
