"""Batch drift: does a scored batch look like the data its model was trained on?

A batch from a new dermatoscope, clinic or export pipeline differs in colour and exposure before it differs
in anything a metric would show (a new batch has no labels). Two kinds of evidence, each scored with the
population stability index (PSI), a simple and widely used test:

- **Image statistics**, per image (`image_summaries`): brightness (mean luma), contrast (luma standard
  deviation), saturation (mean HSV saturation) and redness (red's share of the total intensity), on the
  image resized to SUMMARY_PX square, so that a batch of another resolution is compared on the same scale
  (and a summary costs ~0.2 ms, not the ~3 ms of a 200x150 image). Train stores
  their decile edges over a sample of its training images (`reference`, in the model's sidecar); the batch's
  images are binned on those edges.
- **The decided class mix**: the share of each class under the model's decision rule, on the batch against
  the same rule on the model's validation rows (`decided_mix`). Mixes of the same rule are compared: the rule
  over-calls melanoma on purpose, so a batch must not be compared with the true class frequencies.

PSI = Σ (batch share − reference share) · ln(batch share / reference share), shares floored at `FLOOR`.
Conventional reading, used here: < 0.1 stable, 0.1-0.25 moderate, ≥ 0.25 shift. A sample from the reference
distribution itself has PSI ≈ (bins − 1) / n, so below `MIN_IMAGES` images no verdict is given (the figures
still are). `make bench-drift` measures both the false alarms and the power on real images. Pure NumPy: the
train and score stages and the tests share it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from molescope.core.constants import CLASSES

#: Side of the square image the summaries are computed on (`imaging.decode_resized`).
SUMMARY_PX = 64
#: The per-image summaries, in `image_summaries` order.
SUMMARIES: tuple[str, ...] = ("brightness", "contrast", "saturation", "redness")
#: Reference bins per image summary (deciles of the training sample).
BINS = 10
#: PSI levels: at or above MODERATE "moderate", at or above SHIFT "shift".
MODERATE, SHIFT = 0.1, 0.25
#: Fewest batch images for a verdict. Sampling noise alone gives PSI ≈ 9 / n per test with 10 bins: on
#: real HAM10000 batches from the reference's own source the largest of the four image PSIs had a median of
#: 0.15 at 100 images (17 of 20 batches "moderate" or worse), 0.047 at 300 (20 of 20 stable).
MIN_IMAGES = 300
#: Share floor: an empty bin on one side must not make PSI infinite.
FLOOR = 1e-4
#: BT.601 luma weights.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
STABLE, NOT_TESTED = "stable", "not tested"
LEVELS = (STABLE, "moderate", "shift")


def image_summaries(rgb: np.ndarray) -> tuple[float, ...]:
    """The SUMMARIES of one (H, W, 3) uint8 image (the product passes it at SUMMARY_PX), each in [0, 1]."""
    x = np.asarray(rgb, dtype=np.float32) / 255.0
    luma = x @ LUMA
    top, bottom = x.max(axis=2), x.min(axis=2)
    saturation = np.divide(top - bottom, top, out=np.zeros_like(top), where=top > 0)
    total = float(x.sum())
    redness = float(x[..., 0].sum()) / total if total > 0 else 1 / 3
    return float(luma.mean()), float(luma.std()), float(saturation.mean()), redness


def shares(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """The share of `values` in each of the len(edges) + 1 bins the inner `edges` make."""
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return counts / max(len(values), 1)


def reference(values: np.ndarray) -> dict[str, Any]:
    """What train stores of its training images' summaries (n × len(SUMMARIES)): per summary the inner
    decile edges, the training shares on them (not exactly 0.1 where values tie) and the median."""
    values = np.asarray(values, dtype=float).reshape(-1, len(SUMMARIES))
    summaries = {}
    for column, name in enumerate(SUMMARIES):
        column_values = values[:, column]
        edges = np.quantile(column_values, np.arange(1, BINS) / BINS).round(6).tolist()
        summaries[name] = {
            "edges": edges,
            "shares": shares(column_values, edges).round(6).tolist(),
            "median": round(float(np.median(column_values)), 6),
        }
    return {"n": len(values), "bins": BINS, "summaries": summaries}


def decided_mix(decided: Sequence[int] | np.ndarray) -> dict[str, float]:
    """Share of each class among decisions (class indices; undecided rows count in no class)."""
    decided = np.asarray(decided, dtype=int)
    counts = np.bincount(decided[decided >= 0], minlength=len(CLASSES))
    return {dx: round(float(c) / max(len(decided), 1), 6) for dx, c in zip(CLASSES, counts, strict=True)}


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    e = np.maximum(np.asarray(expected, dtype=float), FLOOR)
    a = np.maximum(np.asarray(actual, dtype=float), FLOOR)
    return float(((a - e) * np.log(a / e)).sum())


def level(value: float) -> str:
    return LEVELS[int(value >= MODERATE) + int(value >= SHIFT)]


def image_tests(ref: Mapping[str, Any], values: np.ndarray) -> list[dict[str, Any]]:
    values = np.asarray(values, dtype=float).reshape(-1, len(SUMMARIES))
    tests = []
    for column, name in enumerate(SUMMARIES):
        stored = ref["summaries"][name]
        value = psi(stored["shares"], shares(values[:, column], stored["edges"]))
        tests.append(
            {
                "test": name,
                "psi": round(value, 4),
                "level": level(value),
                "reference": stored["median"],
                "batch": round(float(np.median(values[:, column])), 6) if len(values) else None,
            }
        )
    return tests


def mix_test(reference_mix: Mapping[str, float], batch_mix: Mapping[str, float]) -> dict[str, Any]:
    value = psi([reference_mix[dx] for dx in CLASSES], [batch_mix[dx] for dx in CLASSES])
    return {
        "test": "decided class mix",
        "psi": round(value, 4),
        "level": level(value),
        "reference": dict(reference_mix),
        "batch": dict(batch_mix),
    }


def compare(
    n: int,
    image_reference: Mapping[str, Any] | None,
    values: np.ndarray | None,
    reference_mix: Mapping[str, float] | None,
    batch_mix: Mapping[str, float] | None,
) -> dict[str, Any]:
    """The drift report of a batch of `n` images: each test's PSI and level, the worst level as the
    `verdict` (NOT_TESTED below MIN_IMAGES images or without any reference), and `notes` saying what could
    not be tested. `values`: the batch's image summaries (needed only with an image reference)."""
    tests: list[dict[str, Any]] = []
    notes: list[str] = []
    if image_reference and values is not None:
        tests += image_tests(image_reference, values)
    else:
        notes.append("image statistics not tested: the model was trained without them (train --curated)")
    if reference_mix and batch_mix:
        tests.append(mix_test(reference_mix, batch_mix))
    else:
        notes.append("class mix not tested: the model has no decision rule fitted on validation rows")
    if n < MIN_IMAGES:
        notes.append(f"no verdict: {n} images, fewer than the {MIN_IMAGES} a PSI needs to be read")
    worst = max((LEVELS.index(t["level"]) for t in tests), default=None)
    return {
        "method": f"PSI on reference deciles; < {MODERATE} stable, {MODERATE}-{SHIFT} moderate, "
        f">= {SHIFT} shift",
        "n": n,
        "reference_images": image_reference["n"] if image_reference else None,
        "verdict": NOT_TESTED if worst is None or n < MIN_IMAGES else LEVELS[worst],
        "tests": tests,
        "notes": notes,
    }
