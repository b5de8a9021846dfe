"""molescope.evaluation.metrics against scikit-learn and hand-counted cases: ties, absent classes, operating
point."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from molescope.core.constants import CLASS_INDEX, CLASSES
from molescope.evaluation import metrics, rules, scores
from tests.unit.evaluation.cases import AKIEC, BCC, BKL, DF, MEL, NV, VASC, one_hot_ish, random_case


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
    assert result["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, scores.decide(proba)))
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


def test_operating_point_uses_the_rule_fitted_on_validation_rows():
    y_val, proba_val = random_case(seed=2)
    y, proba = random_case(seed=3)
    result = metrics.evaluate(y, proba, y_val=y_val, proba_val=proba_val, target_mel_recall=0.8)
    op = result["operating_point"]
    rule = rules.fit_rule(y_val, proba_val, 0.8)
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


def test_shape_is_checked():
    with pytest.raises(ValueError, match="probabilities"):
        metrics.evaluate([0, 1], np.ones((2, 6)) / 6)
