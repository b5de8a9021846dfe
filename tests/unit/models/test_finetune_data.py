"""finetune_data: the fine-tuning input pipeline's pieces on their own: the in-graph augmentation, seeded
training batches, the class-balanced sampler, and the bytes-per-batch path of distributed trainers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from molescope.core.constants import CLASSES
from molescope.features.backbones import resolve_backbone
from molescope.models import finetune_data
from tests.conftest import HAM10000, MOBILENET_025_WEIGHTS, require


def test_augmentation_is_identity_at_the_centre_draw_and_flips_on_demand():
    import tensorflow as tf

    rgb = np.random.default_rng(0).integers(0, 256, size=(2, 24, 24, 3), dtype=np.uint8)
    centre = np.full((2, finetune_data.RANDOM_DRAWS), 0.5, dtype=np.float32)
    same = finetune_data.augment(tf.constant(rgb), tf.constant(centre)).numpy()
    np.testing.assert_allclose(same, rgb, atol=1e-3)
    flip = centre.copy()
    flip[:, 3] = 0.0  # below the flip probability: mirrored left-right
    np.testing.assert_allclose(
        finetune_data.augment(tf.constant(rgb), tf.constant(flip)).numpy(), rgb[:, :, ::-1], atol=1e-3
    )
    bright = centre.copy()
    bright[:, 8] = 1.0  # brightness x1.15
    out = finetune_data.augment(tf.constant(rgb), tf.constant(bright)).numpy()
    np.testing.assert_allclose(out, np.clip(rgb * (1 + finetune_data.COLOUR_JITTER), 0, 255), atol=1e-2)


def test_training_batches_are_reproducible_and_augmented():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint8)
    ids = {"image_id": [f"i{k}" for k in range(10)], "lesion_id": [None] * 10, "split": ["train"] * 10}
    data = finetune_data.ImageSet({**ids, "dx": [CLASSES[k % 7] for k in range(10)]}, pixels)
    indices = np.arange(10)

    def batches(epoch: int) -> list[np.ndarray]:
        return [x.numpy() for (x, _), _ in finetune_data.training_dataset(data, indices, 4, 42, epoch, None)]

    first, again, other = batches(1), batches(1), batches(2)
    assert [b.shape[0] for b in first] == [4, 4, 2]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(first[0], other[0])
    assert not np.allclose(first[0], pixels[:4])


def test_sampler_draws_classes_by_a_power_of_their_counts():
    labels = np.array([0] * 90 + [1] * 10)
    for power, expected in ((0.0, 0.5), (1.0, 0.1), (0.5, np.sqrt(10) / (np.sqrt(10) + np.sqrt(90)))):
        p = finetune_data.class_sampling_probabilities(labels, power)
        assert p.sum() == pytest.approx(1.0)
        assert p[labels == 1].sum() == pytest.approx(expected)
    drawn = finetune_data.epoch_indices(labels, 0.0, 4000, np.random.default_rng(0))
    assert abs((labels[drawn] == 1).mean() - 0.5) < 0.05


def test_image_batch_decodes_preprocesses_and_augments_reproducibly():
    """The bytes-per-batch path of distributed trainers: the pipeline's decoder, the backbone's
    preprocessing, and `augment` seeded by (seed, epoch, batch)."""
    from molescope.io.imaging import decode_resized

    blobs = [p.read_bytes() for p in sorted((require(HAM10000) / "images").glob("*.jpg"))[:3]]
    backbone = resolve_backbone("mobilenet", str(require(MOBILENET_025_WEIGHTS)), alpha=0.25)
    spec = replace(backbone, input_size=32)
    plain = finetune_data.image_batch(spec, blobs)
    assert plain.shape == (3, 32, 32, 3) and plain.dtype == np.float32
    decoded = np.stack([decode_resized(blob, 32) for blob in blobs]).astype(np.float32)
    np.testing.assert_allclose(plain, decoded / 127.5 - 1, atol=1e-5)  # MobileNet: x / 127.5 - 1
    first, again = (finetune_data.image_batch(spec, blobs, (7, 1, 0)) for _ in range(2))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, finetune_data.image_batch(spec, blobs, (7, 2, 0)))
    assert not np.allclose(first, plain)
