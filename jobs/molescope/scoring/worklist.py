"""The triage worklist of a scored batch: which images a person should look at first, and why.

Pure pandas/NumPy on the written predictions and the model's decision rule (fitted on its run's validation
rows, `molescope.evaluation.rules.DecisionRule`): no Spark, so the score stage and the tests share it.

- Order: calibrated melanoma probability, highest first (ties: image_id), the rule's temperature applied.
  Calibrated, so "0.6" means roughly what it says, and it is comparable across models and retrains.
- Flagged: the rule decides mel (its melanoma operating point, set on validation for the target recall).
  Without a rule (a model trained without validation rows) nothing can be flagged; the page says so.
- Shown: every flagged image, the `top` highest of the rest, and in a labelled batch every melanoma the rule
  missed (the cards a reviewer most needs to see), each once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from molescope.core.constants import CLASS_INDEX, CLASSES, MELANOMA
from molescope.evaluation import outcomes, scores
from molescope.evaluation.rules import DecisionRule

MEL = CLASS_INDEX[MELANOMA]
#: Columns of `rank`'s frame, in order.
COLUMNS = ("rank", "image_id", "dx", "mel_probability", "decided", "flagged", "missed_melanoma", "shown")


def rank(predictions: pd.DataFrame, rule: DecisionRule | None, top: int) -> pd.DataFrame:
    """Every scored image in worklist order with its calibrated probabilities (`probabilities`, CLASSES
    order), the rule's decision (`decided`, a class name; argmax without a rule), `flagged` (None without a
    rule), `missed_melanoma` (a labelled mel the rule did not flag) and whether its card is `shown`."""
    proba = outcomes.probabilities(predictions)
    calibrated = proba if rule is None else rule.calibrated(proba)
    decided = scores.decide(proba) if rule is None else rule.decide(proba)
    frame = pd.DataFrame(
        {
            "image_id": predictions["image_id"].to_numpy(),
            "dx": predictions["dx"].to_numpy() if "dx" in predictions else None,
            "mel_probability": calibrated[:, MEL] if len(proba) else np.zeros(0),
            "decided": [CLASSES[d] if d >= 0 else "undecided" for d in decided],
            "probabilities": list(calibrated),
        }
    )
    frame["flagged"] = None if rule is None else frame["decided"] == MELANOMA
    frame["missed_melanoma"] = (frame["dx"] == MELANOMA) & (frame["decided"] != MELANOMA)
    frame = frame.sort_values(["mel_probability", "image_id"], ascending=[False, True], kind="stable")
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    flagged = frame["flagged"].eq(True)
    frame["shown"] = flagged | frame["missed_melanoma"] | (frame["rank"] <= top)
    return frame.reset_index(drop=True)


def class_mix(frame: pd.DataFrame, rule: DecisionRule | None) -> list[tuple[str, int, float, float | None]]:
    """Per class: images decided, their share of the batch, and the class's share of the model's validation
    rows (the rule's prior: what the model was trained on looks like, before upsampling)."""
    n = max(len(frame), 1)
    counts = frame["decided"].value_counts()
    return [
        (dx, int(counts.get(dx, 0)), counts.get(dx, 0) / n, None if rule is None else rule.prior[i])
        for i, dx in enumerate(CLASSES)
    ]
