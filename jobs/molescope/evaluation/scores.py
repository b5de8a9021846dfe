"""Classification scores on (true labels, n×7 probabilities), as the ISIC 2018 Task 3 challenge scores them.

Labels are indices into `molescope.core.constants.CLASSES`; probability columns are in the same order. Every
function is pure (NumPy in, JSON-able Python out) so the report stage and the tests share one definition.
The decision rule built on them is `molescope.evaluation.rules`; the whole evaluation of a model,
`molescope.evaluation.metrics`.

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
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from molescope.core.constants import CLASS_INDEX, CLASSES, MALIGNANT, MELANOMA

#: Prediction for a row whose top probabilities tie; matches no class, so it is always wrong.
UNDECIDED = -1
MEL = CLASS_INDEX[MELANOMA]
LABELS: tuple[int, ...] = tuple(range(len(CLASSES)))
MALIGNANT_LABELS: tuple[int, ...] = tuple(sorted(CLASS_INDEX[dx] for dx in MALIGNANT))


def clean(value: float) -> float | None:
    """A float for JSON: NaN (an undefined ratio) becomes None."""
    value = float(value)
    return None if np.isnan(value) else value


def as_arrays(y_true: Sequence[int] | np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
            "precision": clean(precision[i]),
            "recall": clean(recall[i]),
            "f1": clean(f1[i]),
            "support": int(support[i]),
        }
        for i, dx in enumerate(CLASSES)
    }


def melanoma_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float | None]:
    truth, predicted = y_true == MEL, y_pred == MEL
    return {
        "recall": clean(recall_score(truth, predicted, zero_division=np.nan)),
        "precision": clean(precision_score(truth, predicted, zero_division=np.nan)),
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
    y, p = as_arrays(y_true, proba)
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
        "sensitivity": clean(recall_score(truth, predicted, zero_division=np.nan)),
        "specificity": clean(recall_score(~truth, ~predicted, zero_division=np.nan)),
    }
