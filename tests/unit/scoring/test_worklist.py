"""molescope.scoring.worklist: the triage order, the flags and the shown cards, against hand-made rules."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from molescope.core.constants import CLASS_INDEX, CLASSES
from molescope.evaluation.rules import DecisionRule
from molescope.scoring import worklist

MEL, NV = CLASS_INDEX["mel"], CLASS_INDEX["nv"]
UNIFORM = (1 / len(CLASSES),) * len(CLASSES)


def predictions(mel: list[float], dx: list[str | None] | None = None) -> pd.DataFrame:
    """One row per melanoma probability; the rest of each row's mass on nv."""
    rows = []
    for p in mel:
        proba = np.zeros(len(CLASSES))
        proba[MEL], proba[NV] = p, 1 - p
        rows.append(proba.tolist())
    ids = [f"ISIC_{i:07d}" for i in range(len(mel))]
    return pd.DataFrame({"image_id": ids, "dx": dx or [None] * len(mel), "probability": rows})


def rule(threshold: float | None, temperature: float = 1.0) -> DecisionRule:
    return DecisionRule(UNIFORM, 0.0, threshold, 0.8, n=100, temperature=temperature)


def test_order_is_calibrated_melanoma_probability_then_image_id():
    frame = worklist.rank(predictions([0.2, 0.9, 0.5, 0.9]), rule(0.6, temperature=2.0), top=10)
    assert frame["image_id"].tolist() == ["ISIC_0000001", "ISIC_0000003", "ISIC_0000002", "ISIC_0000000"]
    assert frame["rank"].tolist() == [1, 2, 3, 4]
    # T = 2 softens: 0.9 -> 0.9^0.5 / (0.9^0.5 + 0.1^0.5) = 0.75.
    assert frame["mel_probability"].iloc[0] == pytest.approx(0.75, abs=1e-5)  # zeros are clipped to 1e-12
    assert sum(frame["probabilities"].iloc[0]) == pytest.approx(1.0)


def test_flagged_follows_the_rule_on_calibrated_probabilities_and_every_flag_is_shown():
    # Calibrated with T = 2: 0.9 -> 0.75, 0.7 -> 0.604, 0.5 -> 0.5, 0.2 -> 0.333.
    frame = worklist.rank(predictions([0.2, 0.9, 0.5, 0.7]), rule(0.6, temperature=2.0), top=1)
    flagged = dict(zip(frame["image_id"], frame["flagged"], strict=True))
    assert flagged == {
        "ISIC_0000001": True,
        "ISIC_0000003": True,
        "ISIC_0000002": False,
        "ISIC_0000000": False,
    }
    # top=1 shows the first; the second is flagged, so shown as well; the rest are not.
    assert frame["shown"].tolist() == [True, True, False, False]


def test_missed_melanomas_of_a_labelled_batch_are_shown_whatever_their_rank():
    labels = ["nv", "mel", "mel", "nv"]
    frame = worklist.rank(predictions([0.95, 0.1, 0.7, 0.05], labels), rule(0.5), top=1)
    by_id = frame.set_index("image_id")
    assert by_id.loc["ISIC_0000001", "missed_melanoma"] and by_id.loc["ISIC_0000001", "shown"]
    assert not by_id.loc["ISIC_0000002", "missed_melanoma"]  # flagged: not missed
    assert not by_id.loc["ISIC_0000003", "shown"]


def test_without_a_rule_nothing_is_flagged_and_the_order_uses_the_models_probabilities():
    frame = worklist.rank(predictions([0.3, 0.8]), None, top=1)
    assert frame["flagged"].isna().all()
    assert frame["mel_probability"].tolist() == pytest.approx([0.8, 0.3])
    assert frame["decided"].tolist() == ["mel", "nv"]
    assert frame["shown"].tolist() == [True, False]


def test_class_mix_counts_the_rules_decisions_beside_its_prior():
    prior = (0.6, 0.1, 0.1, 0.1, 0.05, 0.03, 0.02)
    with_prior = DecisionRule(prior, 0.0, 0.5, 0.8, n=100)
    mix = worklist.class_mix(worklist.rank(predictions([0.9, 0.6, 0.1, 0.2]), with_prior, top=5), with_prior)
    assert [row[0] for row in mix] == list(CLASSES)
    by_class = {dx: (n, share, p) for dx, n, share, p in mix}
    assert by_class["mel"] == (2, 0.5, 0.1) and by_class["nv"] == (2, 0.5, 0.6)
    assert by_class["df"] == (0, 0.0, 0.02)


def test_an_empty_batch_gives_an_empty_worklist():
    frame = worklist.rank(predictions([]), rule(0.5), top=5)
    assert frame.empty and list(frame.columns[:1]) == ["rank"]
