"""Balanced class weights (scikit-learn's `balanced` rule) for the upsample stage and the driver-side models.

A class's weight is total / (classes present × class total), over row weights when given: the classes'
weighted sizes come out equal. Rows already balanced by weight (upsample's class_weight strategy) thus get
class weights of 1 instead of being balanced twice.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
from sklearn.utils.class_weight import compute_class_weight


def class_weights(labels: np.ndarray, sample_weight: np.ndarray | None = None) -> dict[Hashable, float]:
    """{class: weight} of the classes present in `labels`."""
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels, sample_weight=sample_weight)
    return {
        cls.item() if hasattr(cls, "item") else cls: float(w) for cls, w in zip(present, weights, strict=True)
    }


def class_weights_of_counts(counts: Mapping[str, float]) -> dict[str, float]:
    """{class: weight} from class sizes (one weighted row per class stands for the class)."""
    names = np.array(list(counts))
    return {str(k): v for k, v in class_weights(names, np.array(list(counts.values()), dtype=float)).items()}


def balanced_sample_weights(labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Row weight × balanced class weight (over the weighted class sizes) for every row."""
    by_class = class_weights(labels, weights)
    return weights * np.array([by_class[label] for label in labels.tolist()])
