"""molescope.evaluation.rules against hand-counted cases: the melanoma threshold, prior shift, temperature
scaling and fitting the rule on validation rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import softmax

from molescope.evaluation import calibration, rules, scores
from tests.unit.evaluation.cases import BKL, MEL, NV, one_hot_ish, random_case


def test_mel_threshold_reaches_the_target_and_is_the_highest_that_does():
    y = np.array([MEL] * 5 + [NV] * 5)
    p_mel = np.array([0.9, 0.8, 0.6, 0.3, 0.1, 0.7, 0.5, 0.2, 0.05, 0.01])
    proba = np.column_stack([1 - p_mel, p_mel, np.zeros((10, 5))])
    threshold = rules.mel_threshold(y, proba, 0.8)
    assert threshold == pytest.approx(0.3)
    recall = ((p_mel >= threshold) & (y == MEL)).sum() / 5
    assert recall >= 0.8
    assert ((p_mel >= 0.31) & (y == MEL)).sum() / 5 < 0.8
    assert rules.mel_threshold(y[5:], proba[5:], 0.8) is None  # no melanoma: no threshold
    with pytest.raises(ValueError, match="target"):
        rules.mel_threshold(y, proba, 0.0)


def test_apply_mel_threshold_falls_back_to_the_argmax_of_the_other_classes():
    proba = np.array(
        [
            [0.5, 0.3, 0.2, 0, 0, 0, 0],  # P(mel) ≥ t: mel
            [0.1, 0.2, 0.7, 0, 0, 0, 0],  # below: bkl
            [0.4, 0.5, 0.1, 0, 0, 0, 0],  # mel is the argmax but below t: next best, nv
            [0.45, 0.1, 0.45, 0, 0, 0, 0],  # the rest tie: undecided
        ]
    )
    assert rules.apply_mel_threshold(proba, 0.25).tolist()[:2] == [MEL, BKL]
    assert rules.apply_mel_threshold(proba, 0.6).tolist() == [NV, BKL, NV, scores.UNDECIDED]


def test_rule_is_fitted_on_validation_and_prefers_no_shift_on_ties():
    y, proba = random_case(n=200, seed=5)
    rule = rules.fit_rule(y, proba, 0.8)
    assert rule.tau in rules.PRIOR_SHIFT_GRID and rule.fitted_on == "validation" and rule.n == 200
    assert rule.prior == pytest.approx((np.bincount(y, minlength=7) + 1) / 207)
    # The chosen tau is the best of the grid on its own rows (so at least as good as no shift).
    ruled = scores.balanced_accuracy(y, rule.decide(proba))
    for tau in rules.PRIOR_SHIFT_GRID:
        draft = rules.DecisionRule(rule.prior, tau, None, 0.8, temperature=rule.temperature)
        threshold = rules.mel_threshold(y, draft.shifted(proba), 0.8)
        other = rules.DecisionRule(rule.prior, tau, threshold, 0.8, temperature=rule.temperature)
        assert ruled >= scores.balanced_accuracy(y, other.decide(proba))
    assert rules.fit_rule(y, proba, 0.8, prior_shift=False).tau == 0.0
    # Well calibrated probabilities of a balanced problem need no shift: tau 0 wins its ties.
    balanced = np.repeat(np.arange(7), 20)
    assert rules.fit_rule(balanced, one_hot_ish(balanced.tolist()), 0.8).tau == 0.0


def test_prior_shift_moves_decisions_away_from_a_frequent_class():
    proba = np.array([[0.5, 0.45, 0.05, 0, 0, 0, 0]])
    prior = (0.7, 0.1, 0.1, 0.025, 0.025, 0.025, 0.025)
    assert rules.DecisionRule(prior, 0.0, None, 0.8).decide(proba).tolist() == [NV]
    assert rules.DecisionRule(prior, -0.5, None, 0.8).decide(proba).tolist() == [MEL]
    # q(mel) = 0.65 after the shift: below a 0.9 threshold the next best class (nv) wins, above 0.6 mel.
    assert rules.DecisionRule(prior, -0.5, 0.6, 0.8).decide(proba).tolist() == [MEL]
    rule = rules.DecisionRule(prior, -0.5, 0.9, 0.8)
    assert rule.decide(proba).tolist() == [NV]
    assert rules.DecisionRule.from_dict(json.loads(json.dumps(rule.to_dict()))) == rule


def over_confident_case(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from a known model; probabilities from its logits sharpened 3× (over-confident)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=1.5, size=(n, 7))
    logits[:, NV] += 1.0  # a frequent class, as in HAM10000
    true_p = softmax(logits, axis=1)
    y = np.minimum((true_p.cumsum(axis=1) < rng.uniform(size=(n, 1))).sum(axis=1), 6)
    return y, softmax(3 * logits, axis=1)


def test_rule_with_temperature_round_trips_and_old_payloads_load_uncalibrated():
    prior = (0.7, 0.1, 0.1, 0.025, 0.025, 0.025, 0.025)
    rule = rules.DecisionRule(prior, -0.5, 0.3, 0.8, n=10, temperature=2.5)
    payload = json.loads(json.dumps(rule.to_dict()))
    assert payload["temperature"] == 2.5 and "temperature scaling" in payload["text"]
    assert rules.DecisionRule.from_dict(payload) == rule
    del payload["temperature"]
    old = rules.DecisionRule.from_dict(payload)
    assert old.temperature == 1.0 and old == rules.DecisionRule(prior, -0.5, 0.3, 0.8, n=10)
    assert "temperature" not in old.text()


def test_rule_decides_on_calibrated_then_shifted_probabilities():
    prior = (0.7, 0.1, 0.1, 0.025, 0.025, 0.025, 0.025)
    _, proba = over_confident_case(50, seed=4)
    rule = rules.DecisionRule(prior, -0.5, 0.3, 0.8, temperature=3.0)
    calibrated = calibration.calibrate(proba, 3.0)
    np.testing.assert_allclose(rule.calibrated(proba), calibrated)
    q = calibrated * np.asarray(prior) ** -0.5
    np.testing.assert_allclose(rule.shifted(proba), q / q.sum(axis=1, keepdims=True))
    uncalibrated = rules.DecisionRule(prior, -0.5, 0.3, 0.8)
    assert (rule.decide(proba) == uncalibrated.decide(calibrated)).all()
    # Calibration changes decisions here: the threshold applies to softened probabilities.
    assert (rule.decide(proba) != uncalibrated.decide(proba)).any()
    # Temperature 1 and tau 0: the probabilities are passed through untouched.
    plain = rules.DecisionRule(prior, 0.0, None, 0.8)
    np.testing.assert_array_equal(plain.shifted(proba), proba)
    assert plain.calibrated(np.zeros((0, 7))).shape == (0, 7)


def test_fit_rule_calibrates_first_and_then_fits_as_before():
    y_val, proba_val = over_confident_case(3000, seed=11)
    _, proba_test = over_confident_case(500, seed=12)
    rule = rules.fit_rule(y_val, proba_val, 0.8)
    assert rule.temperature > 2 and rule.temperature == pytest.approx(
        calibration.fit_temperature(y_val, proba_val)
    )
    # The same rule as one fitted without calibration on the pre-calibrated probabilities.
    calibrated_val = calibration.calibrate(proba_val, rule.temperature)
    plain = rules.fit_rule(y_val, calibrated_val, 0.8, calibrate=False)
    assert plain.temperature == 1.0
    assert (plain.tau, plain.mel_threshold) == (rule.tau, rule.mel_threshold)
    np.testing.assert_array_equal(
        rule.decide(proba_test), plain.decide(calibration.calibrate(proba_test, rule.temperature))
    )
    np.testing.assert_array_equal(rule.decide(proba_val), plain.decide(calibrated_val))
    # calibrate=False keeps the old rule: no temperature, decisions on the raw probabilities.
    raw = rules.fit_rule(y_val, proba_val, 0.8, calibrate=False)
    assert raw.temperature == 1.0 and "temperature" not in raw.text()
