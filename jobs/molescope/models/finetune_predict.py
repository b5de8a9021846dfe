"""Predictions of a fine-tuned network: the mean softmax over test-time augmentation views.

Used by the fit (per-epoch validation, no views), by train's validation/test predictions and by
`molescope score` (the views the sidecar records). TensorFlow is imported inside functions only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from molescope.core.constants import CLASSES
from molescope.core.registry import TTA_VIEWS
from molescope.features.backbones import BackboneSpec, preprocess_function
from molescope.models.finetune_data import ImageSet

#: Images per prediction batch (no gradients: larger than training batches).
PREDICT_BATCH = 64


def view(images: Any, name: str) -> Any:
    """One test-time view of a square NHWC batch (`registry.TTA_VIEWS` names)."""
    import tensorflow as tf

    if name.startswith("transpose"):
        images = tf.transpose(images, [0, 2, 1, 3])
        name = name.removeprefix("transpose").lstrip("_") or "identity"
    if name in ("hflip", "hvflip"):
        images = images[:, :, ::-1]
    if name in ("vflip", "hvflip"):
        images = images[:, ::-1]
    return images


def predict_probabilities(
    model: Any, spec: BackboneSpec, data: ImageSet, tta: str, batch_size: int = PREDICT_BATCH
) -> np.ndarray:
    """n×7 float64: the mean softmax of `model` over the TTA views of every image."""
    import tensorflow as tf

    if len(data) == 0:
        return np.zeros((0, len(CLASSES)))
    preprocess = preprocess_function(spec)
    views = TTA_VIEWS[tta]
    with_metadata = data.metadata is not None

    @tf.function(reduce_retracing=True)
    def step(pixels: Any, meta: Any) -> Any:
        x = preprocess(tf.cast(pixels, tf.float32))
        outputs = [model([view(x, v), meta] if with_metadata else view(x, v), training=False) for v in views]
        return tf.add_n(outputs) / len(outputs)

    meta = data.metadata if with_metadata else np.zeros((len(data), 0), dtype=np.float32)
    chunks = [
        step(tf.constant(data.pixels[i : i + batch_size]), tf.constant(meta[i : i + batch_size])).numpy()
        for i in range(0, len(data), batch_size)
    ]
    return np.concatenate(chunks).astype(np.float64)
