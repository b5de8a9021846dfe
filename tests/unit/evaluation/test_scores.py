"""molescope.evaluation.scores against hand-counted cases: ties."""

from __future__ import annotations

import numpy as np

from molescope.evaluation import scores
from tests.unit.evaluation.cases import NV


def test_decide_marks_tied_rows_undecided():
    proba = np.array(
        [
            [0.4, 0.4, 0.2, 0, 0, 0, 0],  # tie at the top: undecided
            [0.5, 0.2, 0.2, 0.1, 0, 0, 0],  # tie below the top: decided
            [1 / 7] * 7,
        ]
    )
    assert scores.decide(proba).tolist() == [scores.UNDECIDED, NV, scores.UNDECIDED]
