"""From predictions to figures: labels, the ISIC CSV, test metrics, summary tables, random-weights flags.

Pure functions on pandas frames of the predictions table (or label/probability arrays), shared by train,
report and score; the metric definitions themselves are `molescope.metrics`.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from molescope import metrics
from molescope.constants import CLASS_INDEX, CLASSES, ISIC_COLUMNS, SPLIT_VALIDATION
from molescope.registry import PARAMS_FILE, RANDOM_WEIGHTS_PREFIX


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


def isic_submission(predictions: pd.DataFrame) -> str:
    """ISIC 2018 Task 3 CSV: `image,MEL,NV,...`, one row per image, each row's 7 probabilities summing to 1.

    Rows are renormalised because float32 softmax outputs can miss 1 by more than a strict checker allows.
    """
    proba = probabilities(predictions)
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


def metrics_on_test(
    labels: np.ndarray,
    proba: np.ndarray,
    val_labels: np.ndarray | None,
    val_proba: np.ndarray | None,
) -> dict[str, Any]:
    """Test-split metrics (rows with an unknown label already removed), the ISIC way (molescope.metrics).

    A row whose top probability ties is undecided and counts as wrong. `operating_point` is the melanoma
    threshold picked on the validation rows when given (else on the test rows), as the report picks it.
    """
    if len(labels) == 0:
        return {"test_rows": 0}
    full = metrics.evaluate(labels, proba, y_val=val_labels, proba_val=val_proba)
    decided = metrics.decide(np.asarray(proba, dtype=float))
    all_labels = list(range(len(CLASSES)))
    return {
        "test_rows": len(labels),
        "validation_rows": 0 if val_labels is None else len(val_labels),
        "n_undecided": full["n_undecided"],
        "accuracy": full["accuracy"],
        "balanced_accuracy": metrics.balanced_accuracy(np.asarray(labels), decided),
        "mel_recall": full["melanoma_recall"],
        "macro_f1": float(f1_score(labels, decided, labels=all_labels, average="macro", zero_division=0)),
        "auc_mean": full["auc"]["mean"],
        "operating_point": full["operating_point"],
    }


def choose_champion(per_model: dict[str, dict[str, Any]], metric: str) -> str | None:
    """Best model by `metric` (ties: the earlier model); None when no model has the metric."""
    scored = [(name, m[metric]) for name, m in per_model.items() if m.get(metric) is not None]
    if not scored:
        return None
    return max(scored, key=lambda item: item[1])[0]


def model_summary(m: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of one model's `metrics.evaluate` result (stage summaries, the CLI's log)."""
    return {key: m[key] for key in ("n", "accuracy", "balanced_accuracy", "melanoma_recall")} | {
        "auc_mean": m["auc"]["mean"],
        "threshold_source": m["operating_point"]["threshold_source"],
    }


def summary_table(per_model: dict[str, dict[str, Any]]) -> str:
    """A fixed-width text table of each model's n, accuracy, balanced accuracy and melanoma recall."""

    def cell(value: float | None) -> str:
        return "    n/a" if value is None else f"{value:7.3f}"

    lines = [f"{'model':<24} {'n':>6} {'acc':>7} {'bal_acc':>7} {'mel_rec':>7}"]
    for model, m in per_model.items():
        lines.append(
            f"{model:<24} {m['n']:>6} {cell(m['accuracy'])} {cell(m['balanced_accuracy'])} "
            f"{cell(m['melanoma_recall'])}"
        )
    return "\n".join(lines)
