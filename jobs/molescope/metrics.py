"""Classification metrics on (true labels, n×7 probabilities), as the ISIC 2018 Task 3 challenge scores them.

Labels are indices into `molescope.constants.CLASSES`; probability columns are in the same order. Every
function is pure (NumPy in, JSON-able Python out) so the report stage and the tests share one definition.

Decisions this module makes, in one place:

- **Ties.** ISIC 2018 counts a row whose highest probability is shared by two or more classes as wrong
  ("undecided"). `decide` predicts `UNDECIDED` (-1) for such rows, and every label-based metric here
  (accuracy, balanced accuracy, per-class, melanoma, malignant) uses that prediction. The confusion matrix
  has no column for undecided rows; their count is reported separately as `n_undecided`.
- **Absent classes.** Balanced accuracy is the mean recall over the classes present in `y_true`, exactly as
  `sklearn.metrics.balanced_accuracy_score` computes it (a class with no true rows has no recall). Per-class
  recall/F1 of an absent class, and any other ratio with a zero denominator, is `None` in the output.
  ROC AUC skips classes absent from `y_true` (or making up all of it) and lists them under `skipped`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from molescope.constants import CLASS_INDEX, CLASSES, MALIGNANT, MELANOMA
from molescope.registry import DEFAULT_TARGET_MEL_RECALL

#: Prediction for a row whose top probabilities tie; matches no class, so it is always wrong.
UNDECIDED = -1
MEL = CLASS_INDEX[MELANOMA]
LABELS: tuple[int, ...] = tuple(range(len(CLASSES)))
MALIGNANT_LABELS: tuple[int, ...] = tuple(sorted(CLASS_INDEX[dx] for dx in MALIGNANT))


def _clean(value: float) -> float | None:
    """A float for JSON: NaN (an undefined ratio) becomes None."""
    value = float(value)
    return None if np.isnan(value) else value


def _as_arrays(y_true: Sequence[int] | np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(proba, dtype=float)
    if p.ndim != 2 or p.shape[1] != len(CLASSES) or p.shape[0] != y.shape[0]:
        raise ValueError(f"expected {y.shape[0]}×{len(CLASSES)} probabilities, got {p.shape}")
    return y, p


def decide(proba: np.ndarray) -> np.ndarray:
    """Argmax per row, or UNDECIDED where the maximum is shared (exact equality, as the ISIC scorer does)."""
    p = np.asarray(proba, dtype=float)
    top = p.max(axis=1, keepdims=True)
    tied = (p == top).sum(axis=1) > 1
    return np.where(tied, UNDECIDED, p.argmax(axis=1))


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """ISIC 2018 balanced multiclass accuracy: mean per-class recall over the classes present in y_true."""
    with warnings.catch_warnings():
        # UNDECIDED is a predicted "class" absent from y_true; sklearn warns and (correctly) leaves it out.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(y_true, y_pred))


def per_class_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, dict[str, Any]]:
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=list(LABELS), zero_division=np.nan
    )
    return {
        dx: {
            "precision": _clean(precision[i]),
            "recall": _clean(recall[i]),
            "f1": _clean(f1[i]),
            "support": int(support[i]),
        }
        for i, dx in enumerate(CLASSES)
    }


def melanoma_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float | None]:
    truth, predicted = y_true == MEL, y_pred == MEL
    return {
        "recall": _clean(recall_score(truth, predicted, zero_division=np.nan)),
        "precision": _clean(precision_score(truth, predicted, zero_division=np.nan)),
    }


def confusion(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """7×7 counts, rows = true class, columns = predicted class, both in CLASSES order."""
    matrix = confusion_matrix(y_true, y_pred, labels=list(LABELS))
    return {"labels": list(CLASSES), "matrix": matrix.astype(int).tolist()}


def roc_auc(y_true: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    """One-vs-rest ROC AUC per class; classes without both positives and negatives are skipped."""
    per_class: dict[str, float] = {}
    skipped: list[str] = []
    for i, dx in enumerate(CLASSES):
        positives = y_true == i
        if positives.all() or not positives.any():
            skipped.append(dx)
            continue
        per_class[dx] = float(roc_auc_score(positives, proba[:, i]))
    mean = float(np.mean(list(per_class.values()))) if per_class else None
    return {"per_class": per_class, "mean": mean, "skipped": skipped}


def roc_curves(y_true: Sequence[int], proba: np.ndarray) -> dict[str, dict[str, list[float]]]:
    """One-vs-rest ROC curve points {dx: {fpr, tpr}} for the classes `roc_auc` scores (for plotting)."""
    y, p = _as_arrays(y_true, proba)
    curves = {}
    for i, dx in enumerate(CLASSES):
        positives = y == i
        if positives.all() or not positives.any():
            continue
        fpr, tpr, _ = roc_curve(positives, p[:, i])
        curves[dx] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    return curves


def malignant_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float | None]:
    """Malignant (mel, bcc, akiec) vs benign sensitivity and specificity of the predicted class.

    An undecided row counts as wrong on either side: a missed malignant lesion, or a benign one referred.
    """
    truth = np.isin(y_true, MALIGNANT_LABELS)
    predicted = np.where(y_pred == UNDECIDED, ~truth, np.isin(y_pred, MALIGNANT_LABELS))
    return {
        "sensitivity": _clean(recall_score(truth, predicted, zero_division=np.nan)),
        "specificity": _clean(recall_score(~truth, ~predicted, zero_division=np.nan)),
    }


def mel_threshold(y_true: Sequence[int], proba: np.ndarray, target_recall: float) -> float | None:
    """The highest threshold t on P(mel) whose rule `P(mel) ≥ t` reaches `target_recall` melanoma recall.

    The highest such t refers the fewest other lesions. None when y_true holds no melanoma or no negatives.
    """
    if not 0 < target_recall <= 1:
        raise ValueError(f"target melanoma recall must be in (0, 1], got {target_recall}")
    y, p = _as_arrays(y_true, proba)
    truth = y == MEL
    if truth.all() or not truth.any():
        return None
    # roc_curve's thresholds are decreasing and tpr[i] is the recall of `score >= thresholds[i]`.
    _, tpr, thresholds = roc_curve(truth, p[:, MEL], drop_intermediate=False)
    reaching = np.flatnonzero(tpr >= target_recall)
    return float(thresholds[reaching[0]])


def apply_mel_threshold(proba: np.ndarray, threshold: float) -> np.ndarray:
    """Predict mel where P(mel) ≥ threshold, else the tie-aware argmax of the other six classes."""
    p = np.asarray(proba, dtype=float)
    others = p.copy()
    # -inf can never be a row's maximum (rows hold 7 finite values), so mel drops out of the argmax.
    others[:, MEL] = -np.inf
    return np.where(p[:, MEL] >= threshold, MEL, decide(others))


def _benign_referrals(y_true: np.ndarray, y_pred: np.ndarray) -> int:
    """Benign lesions predicted as a malignant class, i.e. sent on for a specialist's look."""
    benign = ~np.isin(y_true, MALIGNANT_LABELS)
    return int((benign & np.isin(y_pred, MALIGNANT_LABELS)).sum())


def operating_point(
    y_test: Sequence[int],
    proba_test: np.ndarray,
    threshold: float | None,
    target_recall: float,
    threshold_source: str,
) -> dict[str, Any]:
    """What the melanoma rule at `threshold` (see `mel_threshold`) costs on the test split vs argmax."""
    y, p = _as_arrays(y_test, proba_test)
    result: dict[str, Any] = {
        "target_mel_recall": target_recall,
        "threshold": threshold,
        "threshold_source": threshold_source,
        "rule": None
        if threshold is None
        else f"predict mel when P(mel) >= {threshold:.4g}, else the most probable other class",
    }
    if threshold is None:
        return result
    baseline, ruled = decide(p), apply_mel_threshold(p, threshold)
    n_benign = int((~np.isin(y, MALIGNANT_LABELS)).sum())
    base_referrals, rule_referrals = _benign_referrals(y, baseline), _benign_referrals(y, ruled)
    base_ba, rule_ba = balanced_accuracy(y, baseline), balanced_accuracy(y, ruled)
    melanoma = melanoma_scores(y, ruled)
    return {
        **result,
        "test_mel_recall": melanoma["recall"],
        "test_mel_precision": melanoma["precision"],
        "balanced_accuracy": rule_ba,
        "baseline_balanced_accuracy": base_ba,
        "balanced_accuracy_cost": base_ba - rule_ba,
        "benign_referrals": rule_referrals,
        "baseline_benign_referrals": base_referrals,
        "extra_benign_referrals": rule_referrals - base_referrals,
        "benign_referral_rate": _clean(rule_referrals / n_benign) if n_benign else None,
        "n_benign": n_benign,
    }


def evaluate(
    y_true: Sequence[int],
    proba: np.ndarray,
    *,
    y_val: Sequence[int] | None = None,
    proba_val: np.ndarray | None = None,
    target_mel_recall: float = DEFAULT_TARGET_MEL_RECALL,
) -> dict[str, Any]:
    """Every metric for one model on labelled rows; the operating point's threshold comes from validation
    rows when given (non-empty), else from the evaluated rows themselves (`threshold_source` says which)."""
    y, p = _as_arrays(y_true, proba)
    if len(y) == 0:
        raise ValueError("no labelled rows to evaluate")
    predicted = decide(p)
    has_val = y_val is not None and proba_val is not None and len(y_val) > 0
    source = "validation" if has_val else "test"
    threshold = mel_threshold(*((y_val, proba_val) if has_val else (y, p)), target_mel_recall)
    melanoma = melanoma_scores(y, predicted)
    return {
        "n": len(y),
        "n_undecided": int((predicted == UNDECIDED).sum()),
        "accuracy": float(accuracy_score(y, predicted)),
        "balanced_accuracy": balanced_accuracy(y, predicted),
        "melanoma_recall": melanoma["recall"],
        "melanoma_precision": melanoma["precision"],
        "per_class": per_class_scores(y, predicted),
        "confusion_matrix": confusion(y, predicted),
        "auc": roc_auc(y, p),
        "malignant": malignant_scores(y, predicted),
        "operating_point": operating_point(y, p, threshold, target_mel_recall, source),
    }
