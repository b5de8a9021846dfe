"""The decision rule: how a model's probabilities become decisions, with every constant fitted on the
validation rows (`fit_rule`) and never on the rows it is evaluated on.

Its steps (temperature scaling, prior shift, melanoma operating point) are documented on `DecisionRule`;
`rule_figures` says what a rule achieves on labelled rows next to the plain argmax. Ties and absent classes
are handled as `molescope.evaluation.scores` handles them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, precision_score, recall_score, roc_curve

from molescope.core.constants import CLASSES, SPLIT_VALIDATION
from molescope.core.registry import DEFAULT_TARGET_MEL_RECALL
from molescope.evaluation import calibration
from molescope.evaluation.scores import MALIGNANT_LABELS, MEL, as_arrays, balanced_accuracy, clean, decide

#: Where a decision rule's constants come from: never the rows it is evaluated on.
FITTED_ON = SPLIT_VALIDATION
#: Prior-shift exponents `fit_rule` tries (-1 fully undoes a prior, +1 doubles it).
PRIOR_SHIFT_GRID: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(-10, 11))


def mel_threshold(y_true: Sequence[int], proba: np.ndarray, target_recall: float) -> float | None:
    """The highest threshold t on P(mel) whose rule `P(mel) ≥ t` reaches `target_recall` melanoma recall.

    The highest such t refers the fewest other lesions. None when y_true holds no melanoma or no negatives.
    """
    if not 0 < target_recall <= 1:
        raise ValueError(f"target melanoma recall must be in (0, 1], got {target_recall}")
    y, p = as_arrays(y_true, proba)
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
    y, p = as_arrays(y_val, proba_val)
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
    y, p = as_arrays(y_true, proba)
    baseline, ruled = decide(p), rule.decide(p)
    is_mel, said_mel = y == MEL, ruled == MEL
    n_benign = int((~np.isin(y, MALIGNANT_LABELS)).sum())
    referrals, base_referrals = _benign_referrals(y, ruled), _benign_referrals(y, baseline)
    return {
        "n": len(y),
        "accuracy": float(accuracy_score(y, ruled)) if len(y) else None,
        "balanced_accuracy": balanced_accuracy(y, ruled) if len(y) else None,
        "mel_recall": clean(recall_score(is_mel, said_mel, zero_division=np.nan)),
        "mel_specificity": clean(recall_score(~is_mel, ~said_mel, zero_division=np.nan)),
        "mel_precision": clean(precision_score(is_mel, said_mel, zero_division=np.nan)),
        "baseline_accuracy": float(accuracy_score(y, baseline)) if len(y) else None,
        "baseline_balanced_accuracy": balanced_accuracy(y, baseline) if len(y) else None,
        "benign_referrals": referrals,
        "baseline_benign_referrals": base_referrals,
        "extra_benign_referrals": referrals - base_referrals,
        "benign_referral_rate": clean(referrals / n_benign) if n_benign else None,
        "n_benign": n_benign,
    }
