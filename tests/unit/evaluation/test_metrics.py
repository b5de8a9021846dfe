"""molescope.evaluation.metrics against scikit-learn and hand-counted cases: ties, absent classes, operating
point."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from molescope.core.constants import CLASS_INDEX, CLASSES
from molescope.evaluation import calibration, metrics

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


def test_decide_marks_tied_rows_undecided():
    proba = np.array(
        [
            [0.4, 0.4, 0.2, 0, 0, 0, 0],  # tie at the top: undecided
            [0.5, 0.2, 0.2, 0.1, 0, 0, 0],  # tie below the top: decided
            [1 / 7] * 7,
        ]
    )
    assert metrics.decide(proba).tolist() == [metrics.UNDECIDED, NV, metrics.UNDECIDED]


def test_label_metrics_equal_sklearn_without_ties():
    y, proba = random_case()
    result = metrics.evaluate(y, proba)
    predicted = proba.argmax(axis=1)
    assert result["n_undecided"] == 0
    assert result["accuracy"] == pytest.approx(accuracy_score(y, predicted))
    assert result["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, predicted))
    assert result["confusion_matrix"]["labels"] == list(CLASSES)
    assert result["confusion_matrix"]["matrix"] == confusion_matrix(y, predicted, labels=range(7)).tolist()
    precision, recall, f1, support = precision_recall_fscore_support(y, predicted, labels=range(7))
    for i, dx in enumerate(CLASSES):
        assert result["per_class"][dx] == pytest.approx(
            {"precision": precision[i], "recall": recall[i], "f1": f1[i], "support": support[i]}
        )
    assert result["melanoma_recall"] == pytest.approx(recall[MEL])
    assert result["melanoma_precision"] == pytest.approx(precision[MEL])


def test_auc_equals_sklearn_one_vs_rest():
    y, proba = random_case()
    auc = metrics.evaluate(y, proba)["auc"]
    expected = {dx: roc_auc_score(y == i, proba[:, i]) for i, dx in enumerate(CLASSES)}
    assert auc["per_class"] == pytest.approx(expected)
    assert auc["mean"] == pytest.approx(np.mean(list(expected.values())))
    assert auc["skipped"] == []
    # sklearn's own macro one-vs-rest average agrees when every class is present.
    assert auc["mean"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"))


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_tied_row_counts_as_wrong_in_balanced_accuracy():
    # nv: 2 rows, one right, one tied (wrong); mel: 2 rows, both right.
    y = np.array([NV, NV, MEL, MEL])
    proba = one_hot_ish([NV, NV, MEL, MEL])
    proba[1] = [0.45, 0.45, 0.1, 0, 0, 0, 0]
    result = metrics.evaluate(y, proba)
    assert result["n_undecided"] == 1
    assert result["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 2) / 2)
    assert result["accuracy"] == pytest.approx(3 / 4)
    # A plain argmax would break the tie towards nv and score it right; the ISIC rule does not.
    assert balanced_accuracy_score(y, proba.argmax(axis=1)) == pytest.approx(1.0)
    assert result["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, metrics.decide(proba)))
    # The undecided row has no column in the 7×7 matrix.
    assert np.asarray(result["confusion_matrix"]["matrix"]).sum() == 3


def test_absent_classes_are_left_out_of_the_mean_and_reported_as_none():
    y = np.array([NV, NV, NV, MEL, MEL, BKL])
    predicted = [NV, NV, MEL, MEL, NV, BKL]
    result = metrics.evaluate(y, one_hot_ish(predicted))
    assert result["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert result["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, predicted))
    for dx in ("bcc", "akiec", "vasc", "df"):
        assert result["per_class"][dx]["support"] == 0
        assert result["per_class"][dx]["recall"] is None
        assert dx in result["auc"]["skipped"]
        assert dx not in result["auc"]["per_class"]
    assert set(result["auc"]["per_class"]) == {"nv", "mel", "bkl"}
    json.dumps(result, allow_nan=False)  # the output is strict JSON: no NaN anywhere


def test_predicted_but_absent_class_has_zero_precision():
    y = np.array([NV, NV, MEL])
    result = metrics.evaluate(y, one_hot_ish([NV, DF, MEL]))
    # sklearn scores F1 as 0 (not undefined) once a class has predictions; recall stays undefined.
    assert result["per_class"]["df"] == {"precision": 0.0, "recall": None, "f1": 0.0, "support": 0}
    assert result["per_class"]["nv"]["recall"] == pytest.approx(0.5)


def test_malignant_sensitivity_and_specificity():
    y = np.array([MEL, BCC, AKIEC, MEL, NV, BKL, DF, VASC])
    # malignant: mel→bcc (still malignant), bcc→nv (missed), akiec right, mel tied (missed)
    # benign: nv→mel (referred), bkl right, df right, vasc tied (counted as referred)
    proba = one_hot_ish([BCC, NV, AKIEC, MEL, MEL, BKL, DF, VASC])
    proba[3] = [0.4, 0.4, 0.2, 0, 0, 0, 0]
    proba[7] = [0, 0, 0, 0, 0, 0.5, 0.5]
    result = metrics.evaluate(y, proba)["malignant"]
    assert result == pytest.approx({"sensitivity": 2 / 4, "specificity": 2 / 4})


def test_mel_threshold_reaches_the_target_and_is_the_highest_that_does():
    y = np.array([MEL] * 5 + [NV] * 5)
    p_mel = np.array([0.9, 0.8, 0.6, 0.3, 0.1, 0.7, 0.5, 0.2, 0.05, 0.01])
    proba = np.column_stack([1 - p_mel, p_mel, np.zeros((10, 5))])
    threshold = metrics.mel_threshold(y, proba, 0.8)
    assert threshold == pytest.approx(0.3)
    recall = ((p_mel >= threshold) & (y == MEL)).sum() / 5
    assert recall >= 0.8
    assert ((p_mel >= 0.31) & (y == MEL)).sum() / 5 < 0.8
    assert metrics.mel_threshold(y[5:], proba[5:], 0.8) is None  # no melanoma: no threshold
    with pytest.raises(ValueError, match="target"):
        metrics.mel_threshold(y, proba, 0.0)


def test_apply_mel_threshold_falls_back_to_the_argmax_of_the_other_classes():
    proba = np.array(
        [
            [0.5, 0.3, 0.2, 0, 0, 0, 0],  # P(mel) ≥ t: mel
            [0.1, 0.2, 0.7, 0, 0, 0, 0],  # below: bkl
            [0.4, 0.5, 0.1, 0, 0, 0, 0],  # mel is the argmax but below t: next best, nv
            [0.45, 0.1, 0.45, 0, 0, 0, 0],  # the rest tie: undecided
        ]
    )
    assert metrics.apply_mel_threshold(proba, 0.25).tolist()[:2] == [MEL, BKL]
    assert metrics.apply_mel_threshold(proba, 0.6).tolist() == [NV, BKL, NV, metrics.UNDECIDED]


def test_operating_point_uses_the_rule_fitted_on_validation_rows():
    y_val, proba_val = random_case(seed=2)
    y, proba = random_case(seed=3)
    result = metrics.evaluate(y, proba, y_val=y_val, proba_val=proba_val, target_mel_recall=0.8)
    op = result["operating_point"]
    rule = metrics.fit_rule(y_val, proba_val, 0.8)
    assert op["threshold_source"] == "validation" and op["split"] == "test"
    assert op["threshold"] == pytest.approx(rule.mel_threshold)
    assert op["prior_tau"] == rule.tau
    ruled = rule.decide(proba)
    assert op["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, ruled))
    assert op["baseline_balanced_accuracy"] == pytest.approx(result["balanced_accuracy"])
    benign = ~np.isin(y, [CLASS_INDEX[dx] for dx in ("mel", "bcc", "akiec")])
    referred = np.isin(ruled, [MEL, BCC, AKIEC])
    assert op["benign_referrals"] == int((benign & referred).sum())
    assert op["n_benign"] == int(benign.sum())
    assert op["mel_recall"] == pytest.approx(((ruled == MEL) & (y == MEL)).sum() / (y == MEL).sum())
    assert op["mel_specificity"] == pytest.approx(((ruled != MEL) & (y != MEL)).sum() / (y != MEL).sum())
    # Its validation figures sit beside the test ones, and the validation recall reaches the target.
    assert op["validation"]["split"] == "validation" and op["validation"]["mel_recall"] >= 0.8
    assert result["validation"]["n"] == len(y_val)


def test_no_operating_point_without_validation_rows():
    """Nothing is fitted on the evaluated rows: without validation rows there is no rule at all."""
    y, proba = random_case()
    op = metrics.evaluate(y, proba, y_val=np.array([], dtype=int), proba_val=np.zeros((0, 7)))[
        "operating_point"
    ]
    assert op["threshold_source"] is None and op["rule"] is None
    assert "mel_recall" not in op


def test_rule_is_fitted_on_validation_and_prefers_no_shift_on_ties():
    y, proba = random_case(n=200, seed=5)
    rule = metrics.fit_rule(y, proba, 0.8)
    assert rule.tau in metrics.PRIOR_SHIFT_GRID and rule.fitted_on == "validation" and rule.n == 200
    assert rule.prior == pytest.approx((np.bincount(y, minlength=7) + 1) / 207)
    # The chosen tau is the best of the grid on its own rows (so at least as good as no shift).
    ruled = metrics.balanced_accuracy(y, rule.decide(proba))
    for tau in metrics.PRIOR_SHIFT_GRID:
        draft = metrics.DecisionRule(rule.prior, tau, None, 0.8, temperature=rule.temperature)
        threshold = metrics.mel_threshold(y, draft.shifted(proba), 0.8)
        other = metrics.DecisionRule(rule.prior, tau, threshold, 0.8, temperature=rule.temperature)
        assert ruled >= metrics.balanced_accuracy(y, other.decide(proba))
    assert metrics.fit_rule(y, proba, 0.8, prior_shift=False).tau == 0.0
    # Well calibrated probabilities of a balanced problem need no shift: tau 0 wins its ties.
    balanced = np.repeat(np.arange(7), 20)
    assert metrics.fit_rule(balanced, one_hot_ish(balanced.tolist()), 0.8).tau == 0.0


def test_prior_shift_moves_decisions_away_from_a_frequent_class():
    proba = np.array([[0.5, 0.45, 0.05, 0, 0, 0, 0]])
    prior = (0.7, 0.1, 0.1, 0.025, 0.025, 0.025, 0.025)
    assert metrics.DecisionRule(prior, 0.0, None, 0.8).decide(proba).tolist() == [NV]
    assert metrics.DecisionRule(prior, -0.5, None, 0.8).decide(proba).tolist() == [MEL]
    # q(mel) = 0.65 after the shift: below a 0.9 threshold the next best class (nv) wins, above 0.6 mel.
    assert metrics.DecisionRule(prior, -0.5, 0.6, 0.8).decide(proba).tolist() == [MEL]
    rule = metrics.DecisionRule(prior, -0.5, 0.9, 0.8)
    assert rule.decide(proba).tolist() == [NV]
    assert metrics.DecisionRule.from_dict(json.loads(json.dumps(rule.to_dict()))) == rule


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
    rule = metrics.DecisionRule(prior, -0.5, 0.3, 0.8, n=10, temperature=2.5)
    payload = json.loads(json.dumps(rule.to_dict()))
    assert payload["temperature"] == 2.5 and "temperature scaling" in payload["text"]
    assert metrics.DecisionRule.from_dict(payload) == rule
    del payload["temperature"]
    old = metrics.DecisionRule.from_dict(payload)
    assert old.temperature == 1.0 and old == metrics.DecisionRule(prior, -0.5, 0.3, 0.8, n=10)
    assert "temperature" not in old.text()


def test_rule_decides_on_calibrated_then_shifted_probabilities():
    prior = (0.7, 0.1, 0.1, 0.025, 0.025, 0.025, 0.025)
    _, proba = over_confident_case(50, seed=4)
    rule = metrics.DecisionRule(prior, -0.5, 0.3, 0.8, temperature=3.0)
    calibrated = calibration.calibrate(proba, 3.0)
    np.testing.assert_allclose(rule.calibrated(proba), calibrated)
    q = calibrated * np.asarray(prior) ** -0.5
    np.testing.assert_allclose(rule.shifted(proba), q / q.sum(axis=1, keepdims=True))
    uncalibrated = metrics.DecisionRule(prior, -0.5, 0.3, 0.8)
    assert (rule.decide(proba) == uncalibrated.decide(calibrated)).all()
    # Calibration changes decisions here: the threshold applies to softened probabilities.
    assert (rule.decide(proba) != uncalibrated.decide(proba)).any()
    # Temperature 1 and tau 0: the probabilities are passed through untouched.
    plain = metrics.DecisionRule(prior, 0.0, None, 0.8)
    np.testing.assert_array_equal(plain.shifted(proba), proba)
    assert plain.calibrated(np.zeros((0, 7))).shape == (0, 7)


def test_fit_rule_calibrates_first_and_then_fits_as_before():
    y_val, proba_val = over_confident_case(3000, seed=11)
    _, proba_test = over_confident_case(500, seed=12)
    rule = metrics.fit_rule(y_val, proba_val, 0.8)
    assert rule.temperature > 2 and rule.temperature == pytest.approx(
        calibration.fit_temperature(y_val, proba_val)
    )
    # The same rule as one fitted without calibration on the pre-calibrated probabilities.
    calibrated_val = calibration.calibrate(proba_val, rule.temperature)
    plain = metrics.fit_rule(y_val, calibrated_val, 0.8, calibrate=False)
    assert plain.temperature == 1.0
    assert (plain.tau, plain.mel_threshold) == (rule.tau, rule.mel_threshold)
    np.testing.assert_array_equal(
        rule.decide(proba_test), plain.decide(calibration.calibrate(proba_test, rule.temperature))
    )
    np.testing.assert_array_equal(rule.decide(proba_val), plain.decide(calibrated_val))
    # calibrate=False keeps the old rule: no temperature, decisions on the raw probabilities.
    raw = metrics.fit_rule(y_val, proba_val, 0.8, calibrate=False)
    assert raw.temperature == 1.0 and "temperature" not in raw.text()


def test_shape_is_checked():
    with pytest.raises(ValueError, match="probabilities"):
        metrics.evaluate([0, 1], np.ones((2, 6)) / 6)
