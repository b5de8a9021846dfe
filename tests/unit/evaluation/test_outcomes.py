"""molescope.evaluation.outcomes: validation figures and the champion choice, the ISIC CSV, random-weights
flags."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from molescope.core.constants import CLASSES, ISIC_COLUMNS
from molescope.evaluation import outcomes


def one_hot(predictions: list[int]) -> np.ndarray:
    proba = np.full((len(predictions), len(CLASSES)), 0.01)
    proba[np.arange(len(predictions)), predictions] = 0.94
    return proba


def test_figures_and_champion_choice():
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    proba = one_hot([0, 0, 0, 0, 0, 1, 2, 0])
    figures = outcomes.figures(labels, proba.argmax(axis=1), proba)
    assert figures["accuracy"] == pytest.approx(6 / 8)
    assert figures["balanced_accuracy"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert figures["mel_recall"] == pytest.approx(0.5)
    assert figures["mel_specificity"] == pytest.approx(1.0)
    per_model = {
        "lr": {"balanced_accuracy": 0.6},
        "rf": {"balanced_accuracy": 0.7},
        "x": {"validation_rows": 0},
    }
    assert outcomes.choose_champion(per_model, "balanced_accuracy") == "rf"
    assert outcomes.choose_champion({"x": {"validation_rows": 0}}, "balanced_accuracy") is None


def test_validation_choice_fits_the_rule_on_the_rows_it_is_given():
    """The figures are those of the rule's own decisions on the validation rows; none without rows."""
    rng = np.random.default_rng(4)
    labels = np.concatenate([np.arange(7), rng.integers(0, 7, 73)])
    proba = rng.dirichlet(np.ones(7), size=80)
    proba[np.arange(80), labels] += 0.3
    proba /= proba.sum(axis=1, keepdims=True)
    rule, figures = outcomes.validation_choice(labels, proba, 0.8)
    assert figures["split"] == "validation" and figures["validation_rows"] == 80
    decided = rule.decide(proba)
    assert figures["balanced_accuracy"] == pytest.approx(outcomes.scores.balanced_accuracy(labels, decided))
    assert figures["mel_recall"] >= 0.8
    assert figures["decision_rule"]["fitted_on"] == "validation"
    assert outcomes.validation_choice(labels[:0], proba[:0], 0.8) == (
        None,
        {"split": "validation", "validation_rows": 0},
    )


def test_isic_submission_reorders_and_renormalises():
    proba = np.arange(1, 8, dtype=float)  # CLASSES order: nv=1 ... df=7, summing to 28
    frame = pd.DataFrame({"image_id": ["a"], "probability": [proba.tolist()]})
    lines = outcomes.isic_submission(frame).splitlines()
    assert lines[0] == ",".join(["image", *ISIC_COLUMNS])
    values = dict(zip(ISIC_COLUMNS, map(float, lines[1].split(",")[1:]), strict=True))
    assert values["MEL"] == pytest.approx(2 / 28) and values["DF"] == pytest.approx(7 / 28)
    assert sum(values.values()) == pytest.approx(1.0)


def test_random_weights_are_found_at_any_depth():
    sidecars = {"lr": {"feature_spec": {"weights_id": "random-seed3"}}, "rf": {"weights_id": "imagenet"}}
    params = {"params": {"weights_id": "random-seed0"}}
    assert outcomes.random_weights(sidecars, params) == ["lr", "params.json"]
    assert outcomes.random_weights({"rf": sidecars["rf"]}, None) == []
