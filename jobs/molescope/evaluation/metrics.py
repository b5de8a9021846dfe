"""Every metric for one model on labelled rows (`evaluate`), as the ISIC 2018 Task 3 challenge scores them.

The label and probability scores (ties count as wrong, absent classes are left out) are
`molescope.evaluation.scores`; the decision rule, fitted on validation rows only, is
`molescope.evaluation.rules`; calibration figures are `molescope.evaluation.calibration`. Every function is
pure (NumPy in, JSON-able Python out) so the report stage and the tests share one definition.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score

from molescope.core.registry import DEFAULT_TARGET_MEL_RECALL
from molescope.evaluation import calibration
from molescope.evaluation.rules import FITTED_ON, DecisionRule, fit_rule, rule_figures
from molescope.evaluation.scores import (
    UNDECIDED,
    as_arrays,
    balanced_accuracy,
    confusion,
    decide,
    malignant_scores,
    melanoma_scores,
    per_class_scores,
    roc_auc,
)


def operating_point(
    y: np.ndarray,
    proba: np.ndarray,
    rule: DecisionRule | None,
    target_recall: float,
    split: str,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The decision rule (fitted on validation) and what it does on the evaluated rows (`split`), with its
    validation figures beside them; without a rule, why there is none."""
    result: dict[str, Any] = {
        "target_mel_recall": target_recall,
        "threshold_source": None if rule is None else rule.fitted_on,
        "threshold": None if rule is None else rule.mel_threshold,
        "prior_tau": None if rule is None else rule.tau,
        "split": split,
    }
    if rule is None:
        return {
            **result,
            "rule": None,
            "reason": "no validation rows: the rule is never fitted on the evaluated rows",
        }
    figures = rule_figures(y, proba, rule)
    result |= {"rule": rule.text(), "decision_rule": rule.to_dict(), **figures}
    if validation is not None and len(validation[0]):
        result[FITTED_ON] = {"split": FITTED_ON, **rule_figures(*validation, rule)}
    return result


def calibration_block(
    y: np.ndarray,
    proba: np.ndarray,
    rule: DecisionRule | None,
    split: str,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The rule's temperature (1: none, or no rule) and the calibration figures before and after it on the
    evaluated rows and, when given, on the validation rows it was fitted on."""
    temperature = 1.0 if rule is None else rule.temperature
    splits = {split: calibration.before_after(y, proba, temperature)}
    if validation is not None and len(validation[0]):
        splits[FITTED_ON] = calibration.before_after(*validation, temperature)
    return {
        "temperature": temperature,
        "fitted_on": None if rule is None else rule.fitted_on,
        "splits": splits,
    }


def headline(y: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    """Argmax accuracy, balanced accuracy, melanoma recall and mean AUC of labelled rows."""
    predicted = decide(proba)
    return {
        "n": len(y),
        "accuracy": float(accuracy_score(y, predicted)),
        "balanced_accuracy": balanced_accuracy(y, predicted),
        "melanoma_recall": melanoma_scores(y, predicted)["recall"],
        "auc_mean": roc_auc(y, proba)["mean"],
    }


def evaluate(
    y_true: Sequence[int],
    proba: np.ndarray,
    *,
    y_val: Sequence[int] | None = None,
    proba_val: np.ndarray | None = None,
    target_mel_recall: float = DEFAULT_TARGET_MEL_RECALL,
    rule: DecisionRule | None = None,
    prior_shift: bool = True,
    split: str = "test",
) -> dict[str, Any]:
    """Every metric for one model on labelled rows of `split` (the top-level figures: plain argmax).

    The decision rule is `rule` when given (e.g. a model's own, fitted when it was trained), else fitted on
    the validation rows when given (non-empty, `fit_rule`), else there is none: nothing is ever fitted on
    the evaluated rows. With validation rows, `validation` holds their argmax figures.
    """
    y, p = as_arrays(y_true, proba)
    if len(y) == 0:
        raise ValueError("no labelled rows to evaluate")
    has_val = y_val is not None and proba_val is not None and len(y_val) > 0
    validation = as_arrays(y_val, proba_val) if has_val else None
    if rule is None and validation is not None:
        rule = fit_rule(*validation, target_mel_recall, prior_shift)
    temperature = 1.0 if rule is None else rule.temperature
    predicted = decide(p)
    melanoma = melanoma_scores(y, predicted)
    result = {
        "split": split,
        "n": len(y),
        "n_undecided": int((predicted == UNDECIDED).sum()),
        "accuracy": float(accuracy_score(y, predicted)),
        "balanced_accuracy": balanced_accuracy(y, predicted),
        "melanoma_recall": melanoma["recall"],
        "melanoma_precision": melanoma["precision"],
        "per_class": per_class_scores(y, predicted),
        "confusion_matrix": confusion(y, predicted),
        # On the probabilities as the product writes them (calibrated by the rule's temperature, which
        # leaves every argmax above as it is): the AUC an ISIC scorer computes from the written CSV.
        "auc": roc_auc(y, calibration.calibrate(p, temperature)),
        "malignant": malignant_scores(y, predicted),
        "operating_point": operating_point(y, p, rule, target_mel_recall, split, validation),
        "calibration": calibration_block(y, p, rule, split, validation),
    }
    if validation is not None:
        y_val, p_val = validation
        result[FITTED_ON] = {"split": FITTED_ON, **headline(y_val, calibration.calibrate(p_val, temperature))}
    return result
