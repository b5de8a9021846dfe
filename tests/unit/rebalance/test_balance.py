"""molescope.rebalance.balance: scikit-learn's balanced class weights, over row weights when there are any."""

from __future__ import annotations

import numpy as np
import pytest

from molescope.rebalance.balance import balanced_sample_weights, class_weights_of_counts


def test_balanced_sample_weights_balance_classes():
    labels = np.array([0, 0, 0, 0, 1, 2])
    weights = balanced_sample_weights(labels, np.ones(6))
    per_class = np.bincount(labels, weights=weights)
    np.testing.assert_allclose(per_class, [2.0, 2.0, 2.0])


def test_rows_balanced_by_weight_are_not_balanced_twice():
    labels = np.array([0, 0, 0, 0, 1, 2])
    weights = np.array([0.5, 0.5, 0.5, 0.5, 2.0, 2.0])  # already equal class totals
    np.testing.assert_allclose(balanced_sample_weights(labels, weights), weights)


def test_class_weights_of_counts():
    counts = {"nv": 12, "mel": 5, "bkl": 3, "df": 1}
    weights = class_weights_of_counts(counts)
    assert weights == {dx: pytest.approx(21 / (4 * n)) for dx, n in counts.items()}
