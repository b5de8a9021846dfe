"""molescope.evaluation: the train stage's test metrics (ISIC rules), the champion choice, the ISIC CSV."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from molescope import evaluation
from molescope.constants import CLASSES, ISIC_COLUMNS


def one_hot(predictions: list[int]) -> np.ndarray:
    proba = np.full((len(predictions), len(CLASSES)), 0.01)
    proba[np.arange(len(predictions)), predictions] = 0.94
    return proba


def test_metrics_and_champion_choice():
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    metrics = evaluation.metrics_on_test(labels, one_hot([0, 0, 0, 0, 0, 1, 2, 0]), None, None)
    assert metrics["accuracy"] == pytest.approx(6 / 8)
    assert metrics["balanced_accuracy"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert metrics["mel_recall"] == pytest.approx(0.5)
    assert metrics["operating_point"]["threshold_source"] == "test"
    per_model = {"lr": {"balanced_accuracy": 0.6}, "rf": {"balanced_accuracy": 0.7}, "x": {"test_rows": 0}}
    assert evaluation.choose_champion(per_model, "balanced_accuracy") == "rf"
    assert evaluation.choose_champion({"x": {"test_rows": 0}}, "balanced_accuracy") is None


def test_metrics_count_tied_rows_as_wrong_and_use_validation_threshold():
    """ISIC rule: a row whose top probabilities tie is undecided, hence wrong (argmax would call it nv)."""
    labels = np.array([0, 0, 1, 1])
    proba = one_hot([0, 0, 1, 1])
    proba[0, :2] = 0.45  # nv and mel tie on a true nv row
    metrics = evaluation.metrics_on_test(labels, proba, labels, one_hot([0, 0, 1, 1]))
    assert metrics["n_undecided"] == 1
    assert metrics["accuracy"] == pytest.approx(3 / 4)
    assert metrics["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert metrics["operating_point"]["threshold_source"] == "validation"


def test_isic_submission_reorders_and_renormalises():
    proba = np.arange(1, 8, dtype=float)  # CLASSES order: nv=1 ... df=7, summing to 28
    frame = pd.DataFrame({"image_id": ["a"], "probability": [proba.tolist()]})
    lines = evaluation.isic_submission(frame).splitlines()
    assert lines[0] == ",".join(["image", *ISIC_COLUMNS])
    values = dict(zip(ISIC_COLUMNS, map(float, lines[1].split(",")[1:]), strict=True))
    assert values["MEL"] == pytest.approx(2 / 28) and values["DF"] == pytest.approx(7 / 28)
    assert sum(values.values()) == pytest.approx(1.0)


def test_random_weights_are_found_at_any_depth():
    sidecars = {"lr": {"feature_spec": {"weights_id": "random-seed3"}}, "rf": {"weights_id": "imagenet"}}
    params = {"params": {"weights_id": "random-seed0"}}
    assert evaluation.random_weights(sidecars, params) == ["lr", "params.json"]
    assert evaluation.random_weights({"rf": sidecars["rf"]}, None) == []
