"""augmentation: the seeded image augmentation of upsample's `augment` strategy."""

from __future__ import annotations

import numpy as np

from molescope.rebalance import augmentation


def test_augmentation_keeps_shape_and_is_seeded():
    rgb = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    a = augmentation.augment_rgb(rgb, np.random.default_rng(5))
    b = augmentation.augment_rgb(rgb, np.random.default_rng(5))
    assert a.shape == rgb.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    # Flips/turns and ±10 % jitter: the pixel multiset stays close to the original's.
    assert abs(float(a.mean()) - float(rgb.mean())) < 0.15 * float(rgb.mean())
