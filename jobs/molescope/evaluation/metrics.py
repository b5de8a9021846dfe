"""Classification metrics on (true labels, n×7 probabilities), as the ISIC 2018 Task 3 challenge scores them.

Labels are indices into `molescope.core.constants.CLASSES`; probability columns are in the same order. Every
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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
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

from molescope.core.constants import CLASS_INDEX, CLASSES, MALIGNANT, MELANOMA, SPLIT_VALIDATION
from molescope.core.registry import DEFAULT_TARGET_MEL_RECALL
from molescope.evaluation import calibration

#: Prediction for a row whose top probabilities tie; matches no class, so it is always wrong.
UNDECIDED = -1
MEL = CLASS_INDEX[MELANOMA]
LABELS: tuple[int, ...] = tuple(range(len(CLASSES)))
MALIGNANT_LABELS: tuple[int, ...] = tuple(sorted(CLASS_INDEX[dx] for dx in MALIGNANT))
#: Where a decision rule's constants come from: never the rows it is evaluated on.
FITTED_ON = SPLIT_VALIDATION
#: Prior-shift exponents `fit_rule` tries (-1 fully undoes a prior, +1 doubles it).
PRIOR_SHIFT_GRID: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(-10, 11))


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


# ------------------------------------------------------------------------------------- decision rule


@dataclass(frozen=True)
class DecisionRule:
    """How probabilities become decisions; every constant is fitted on validation rows (`fit_rule`).

    0. Temperature scaling: P ← softmax(log P / temperature) (`calibration.calibrate`; 1: none), so the
       probabilities the next steps shift and threshold are calibrated. It never changes a row's argmax.
    1. Prior shift: q_c ∝ p_c · prior_c^tau. tau < 0 moves decisions away from frequent classes (nv), tau > 0
       towards them; 0 leaves the probabilities as they are.
    2. Melanoma operating point: predict mel when q_mel ≥ mel_threshold (the highest threshold whose
       validation melanoma recall reaches target_mel_recall), otherwise the most probable other class.
       No threshold (validation without melanoma): plain argmax of q.
    """

    prior: tuple[float, ...]
    tau: float
    mel_threshold: float | None
    target_mel_recall: float
    #: Rows the constants were fitted on.
    fitted_on: str = FITTED_ON
    n: int = 0
    #: Last, with a default: rules saved before calibration existed (no such key) load as uncalibrated.
    temperature: float = 1.0

    def calibrated(self, proba: np.ndarray) -> np.ndarray:
        """The temperature-scaled probabilities (the rule's step 0), e.g. to report calibrated figures."""
        return calibration.calibrate(proba, self.temperature)

    def shifted(self, proba: np.ndarray) -> np.ndarray:
        """Calibrated, then prior-shifted probabilities: what the melanoma threshold and argmax apply to."""
        p = self.calibrated(proba)
        if self.tau == 0 or len(p) == 0:
            return p
        q = p * np.asarray(self.prior, dtype=float) ** self.tau
        return q / q.sum(axis=1, keepdims=True)

    def decide(self, proba: np.ndarray) -> np.ndarray:
        q = self.shifted(proba)
        return decide(q) if self.mel_threshold is None else apply_mel_threshold(q, self.mel_threshold)

    def text(self) -> str:
        shift = "" if self.tau == 0 else f"q = P · prior^{self.tau:g} (renormalised); "
        if self.temperature != 1:
            shift = f"P = softmax(log P / {self.temperature:.4g}) (temperature scaling); {shift}"
        if self.mel_threshold is None:
            return f"{shift}the most probable class (no melanoma threshold: no melanoma in validation)"
        return (
            f"{shift}predict mel when q(mel) >= {self.mel_threshold:.4g}, else the most probable other class"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "prior": list(self.prior), "text": self.text()}

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> DecisionRule:
        values = {key: payload[key] for key in cls.__dataclass_fields__ if key in payload}
        return cls(**{**values, "prior": tuple(values["prior"])})


def class_prior(y_true: np.ndarray) -> tuple[float, ...]:
    """Add-one smoothed class frequencies (no class gets probability 0)."""
    counts = np.bincount(np.asarray(y_true, dtype=int), minlength=len(CLASSES)) + 1.0
    return tuple(float(c) for c in counts / counts.sum())


def fit_rule(
    y_val: Sequence[int],
    proba_val: np.ndarray,
    target_mel_recall: float = DEFAULT_TARGET_MEL_RECALL,
    prior_shift: bool = True,
    calibrate: bool = True,
) -> DecisionRule | None:
    """The decision rule of the validation rows: with `calibrate`, first the temperature minimising their
    NLL (`calibration.fit_temperature`); then tau from PRIOR_SHIFT_GRID maximising the validation balanced
    accuracy of the whole rule (ties: the tau closest to 0), then the melanoma threshold for that tau, both
    on the calibrated probabilities (a threshold means the same across retrains only if they are).

    The prior is the validation rows' own (smoothed) class frequencies. None without validation rows.
    """
    y, p = _as_arrays(y_val, proba_val)
    if len(y) == 0:
        return None
    prior = class_prior(y)
    temperature = calibration.fit_temperature(y, p) if calibrate else 1.0
    best: DecisionRule | None = None
    best_score = -1.0
    for tau in sorted(PRIOR_SHIFT_GRID if prior_shift else (0.0,), key=abs):
        draft = DecisionRule(prior, tau, None, target_mel_recall, n=len(y), temperature=temperature)
        threshold = mel_threshold(y, draft.shifted(p), target_mel_recall)
        rule = replace(draft, mel_threshold=threshold)
        score = balanced_accuracy(y, rule.decide(p))
        if score > best_score:
            best, best_score = rule, score
    return best


def rule_figures(y_true: Sequence[int], proba: np.ndarray, rule: DecisionRule) -> dict[str, Any]:
    """What `rule` achieves on labelled rows, next to the plain argmax (`baseline_*`)."""
    y, p = _as_arrays(y_true, proba)
    baseline, ruled = decide(p), rule.decide(p)
    is_mel, said_mel = y == MEL, ruled == MEL
    n_benign = int((~np.isin(y, MALIGNANT_LABELS)).sum())
    referrals, base_referrals = _benign_referrals(y, ruled), _benign_referrals(y, baseline)
    return {
        "n": len(y),
        "accuracy": float(accuracy_score(y, ruled)) if len(y) else None,
        "balanced_accuracy": balanced_accuracy(y, ruled) if len(y) else None,
        "mel_recall": _clean(recall_score(is_mel, said_mel, zero_division=np.nan)),
        "mel_specificity": _clean(recall_score(~is_mel, ~said_mel, zero_division=np.nan)),
        "mel_precision": _clean(precision_score(is_mel, said_mel, zero_division=np.nan)),
        "baseline_accuracy": float(accuracy_score(y, baseline)) if len(y) else None,
        "baseline_balanced_accuracy": balanced_accuracy(y, baseline) if len(y) else None,
        "benign_referrals": referrals,
        "baseline_benign_referrals": base_referrals,
        "extra_benign_referrals": referrals - base_referrals,
        "benign_referral_rate": _clean(referrals / n_benign) if n_benign else None,
        "n_benign": n_benign,
    }


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
    y, p = _as_arrays(y_true, proba)
    if len(y) == 0:
        raise ValueError("no labelled rows to evaluate")
    has_val = y_val is not None and proba_val is not None and len(y_val) > 0
    validation = _as_arrays(y_val, proba_val) if has_val else None
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
