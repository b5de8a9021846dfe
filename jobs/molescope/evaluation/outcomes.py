"""From predictions to figures: labels, the ISIC CSV, validation choices, summaries, random-weights flags.

Pure functions on pandas frames of the predictions table (or label/probability arrays), shared by train,
report and score; the metric definitions themselves are `molescope.evaluation.scores`.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from molescope.core.constants import CLASS_INDEX, CLASSES, ISIC_COLUMNS, SPLIT_VALIDATION
from molescope.core.registry import PARAMS_FILE, RANDOM_WEIGHTS_PREFIX
from molescope.evaluation import calibration, drift, rules, scores


def probabilities(predictions: pd.DataFrame) -> np.ndarray:
    """The n×7 probability matrix of a predictions frame."""
    if predictions.empty:
        return np.zeros((0, len(CLASSES)))
    return np.vstack([np.asarray(p, dtype=float) for p in predictions["probability"]])


def labelled(predictions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) of the rows whose dx is known; labels follow CLASSES, as `label` does."""
    known = predictions[predictions["dx"].isin(CLASS_INDEX)]
    return known["dx"].map(CLASS_INDEX).to_numpy(dtype=int), probabilities(known)


def split_rows(predictions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(evaluated rows, validation rows). Without a `split` column every row is evaluated."""
    if "split" not in predictions.columns:
        return predictions, predictions.iloc[0:0]
    is_val = predictions["split"] == SPLIT_VALIDATION
    return predictions[~is_val], predictions[is_val]


def isic_submission(predictions: pd.DataFrame, temperature: float = 1.0) -> str:
    """ISIC 2018 Task 3 CSV: `image,MEL,NV,...`, one row per image, each row's 7 probabilities summing to 1,
    calibrated by the model's decision-rule `temperature` (1: as the model gave them).

    Rows are renormalised because float32 softmax outputs can miss 1 by more than a strict checker allows.
    """
    proba = calibration.calibrate(probabilities(predictions), temperature)
    proba = proba / proba.sum(axis=1, keepdims=True) if len(proba) else proba
    order = [CLASS_INDEX[column.lower()] for column in ISIC_COLUMNS]
    frame = pd.DataFrame(proba[:, order], columns=list(ISIC_COLUMNS))
    frame.insert(0, "image", predictions["image_id"].to_numpy())
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue()


def find_values(payload: Any, key: str) -> list[Any]:
    """Every value stored under `key` at any depth of nested dicts/lists."""
    if isinstance(payload, dict):
        here = [payload[key]] if key in payload else []
        return here + [found for value in payload.values() for found in find_values(value, key)]
    if isinstance(payload, list):
        return [found for value in payload for found in find_values(value, key)]
    return []


def random_weights(sidecars: dict[str, Any], params: Any) -> list[str]:
    """Names (models or 'params.json') whose weights_id says the backbone was random."""
    sources = {**sidecars, PARAMS_FILE: params}
    return [
        name
        for name, payload in sources.items()
        if any(str(v).lower().startswith(RANDOM_WEIGHTS_PREFIX) for v in find_values(payload, "weights_id"))
    ]


def figures(labels: np.ndarray, decided: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    """The champion metrics (and mean AUC) of decisions `decided` on labelled rows; ties count as wrong."""
    y = np.asarray(labels)
    is_mel, said_mel = y == scores.MEL, decided == scores.MEL
    all_labels = list(range(len(CLASSES)))
    return {
        "accuracy": float((decided == y).mean()),
        "balanced_accuracy": scores.balanced_accuracy(y, decided),
        "mel_recall": float(said_mel[is_mel].mean()) if is_mel.any() else None,
        "mel_specificity": float((~said_mel[~is_mel]).mean()) if (~is_mel).any() else None,
        "macro_f1": float(f1_score(y, decided, labels=all_labels, average="macro", zero_division=0)),
        "auc_mean": scores.roc_auc(y, np.asarray(proba, dtype=float))["mean"],
    }


def validation_choice(
    labels: np.ndarray, proba: np.ndarray, target_mel_recall: float, prior_shift: bool = True
) -> tuple[rules.DecisionRule | None, dict[str, Any]]:
    """(decision rule fitted on the validation rows, what it achieves there): what train records per model
    and picks the champion on. The figures are those of the rule's decisions (`argmax` beside them)."""
    rule = rules.fit_rule(labels, proba, target_mel_recall, prior_shift)
    if rule is None:
        return None, {"split": SPLIT_VALIDATION, "validation_rows": 0}
    calibrated, decided = rule.calibrated(proba), rule.decide(proba)
    return rule, {
        "split": SPLIT_VALIDATION,
        "validation_rows": len(labels),
        **figures(labels, decided, calibrated),
        "argmax": figures(labels, scores.decide(proba), calibrated),
        # The reference of score's drift check: a batch's decided mix is compared with the same rule's here.
        "decided_mix": drift.decided_mix(decided),
        "decision_rule": rule.to_dict(),
        "calibration": {
            "temperature": rule.temperature,
            **calibration.before_after(labels, proba, rule.temperature, points=False),
        },
    }


def choose_champion(per_model: dict[str, dict[str, Any]], metric: str) -> str | None:
    """Best model by `metric` (ties: the earlier model); None when no model has the metric."""
    scored = [(name, m[metric]) for name, m in per_model.items() if m.get(metric) is not None]
    if not scored:
        return None
    return max(scored, key=lambda item: item[1])[0]


def model_summary(m: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of one model's `metrics.evaluate` result (stage summaries, the CLI's log): the
    argmax figures of the evaluated split and the operating point's (rule fitted on validation)."""
    op = m["operating_point"]
    return {key: m[key] for key in ("split", "n", "accuracy", "balanced_accuracy", "melanoma_recall")} | {
        "auc_mean": m["auc"]["mean"],
        "threshold_source": op["threshold_source"],
        "operating_point": {key: op.get(key) for key in OPERATING_KEYS},
    }


#: The operating-point figures the summaries repeat.
OPERATING_KEYS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "mel_recall", "mel_specificity")


def summary_table(per_model: dict[str, dict[str, Any]]) -> str:
    """Fixed-width text: per model the split, n, argmax accuracy / balanced accuracy / melanoma recall, mean
    AUC, and the same at the operating point (decision rule fitted on validation) with mel specificity."""

    def cell(value: float | None) -> str:
        return "    n/a" if value is None else f"{value:7.3f}"

    header = f"{'model':<24} {'split':<10} {'n':>6} {'acc':>7} {'bal_acc':>7} {'mel_rec':>7} {'auc':>7}"
    lines = [header + "  | operating point: " + " ".join(f"{k[:7]:>7}" for k in OPERATING_KEYS)]
    for model, m in per_model.items():
        op = m["operating_point"]
        lines.append(
            f"{model:<24} {m.get('split') or '':<10} {m['n']:>6} {cell(m['accuracy'])} "
            f"{cell(m['balanced_accuracy'])} {cell(m['melanoma_recall'])} {cell(m['auc']['mean'])}  | "
            + " " * 17
            + " ".join(cell(op.get(key)) for key in OPERATING_KEYS)
        )
    return "\n".join(lines)
