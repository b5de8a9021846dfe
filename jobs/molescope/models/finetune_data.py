"""The fine-tuning input pipeline: decoding the curated rows once on the driver, the class-balanced sampler
and the in-graph augmentation (`molescope.models.finetune` composes them with the model and the fit).

- data: each epoch draws as many images as there are fit images, with replacement, class c with
  probability ∝ count_c^sampling_power (0.5: square-root balancing); augmented in TensorFlow ops
  (`augment`: one projective warp with rotation ±180°, zoom ×[1/1.15, 1.15], aspect ×[1/1.1, 1.1], shift ±5 %,
  horizontal flip, reflected border; saturation, contrast, brightness ×[0.85, 1.15]; hue untouched, colour is
  diagnostic); with metadata, 10 % of the samples see it as unknown, so scoring without metadata stays in
  what the model was trained on.
- memory: the rows come to the driver one partition at a time (`toLocalIterator`) and are decoded once
  (`imaging.decode_resized`, the pipeline's one decoder, two threads) into a uint8 array at the input size:
  10k images at 224 px = 1.5 GB (288 px: 2.5 GB) in the driver's Python process, beside the JPEG bytes of one
  partition. Batches are gathered from it and augmented in a `tf.data` pipeline (parallel map, prefetch), so
  no decoded image is ever made twice.

TensorFlow is imported inside functions only.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from molescope.core.constants import CLASS_INDEX, CLASSES
from molescope.core.progress import Progress
from molescope.features.backbones import BackboneSpec, preprocess_function
from molescope.io.imaging import decode_resized
from molescope.models.fusion import METADATA_COL, MetadataEncoding
from molescope.models.trained import ID_COLUMNS

#: Share of training samples whose metadata is replaced by "unknown" (with --metadata).
METADATA_DROPOUT = 0.1
#: Augmentation ranges (see the module docstring).
ROTATION = math.pi
ZOOM = 1.15
STRETCH = 1.1
SHIFT = 0.05
FLIP_PROBABILITY = 0.5
COLOUR_JITTER = 0.15
PIXEL_MAX = 255.0
#: Threads decoding JPEGs (Pillow releases the GIL while decoding).
DECODE_THREADS = 2
#: Rows decoded per thread-pool round.
DECODE_CHUNK = 256
#: Label of rows whose dx is unknown (scored, never trained on).
NO_LABEL = -1
#: Random numbers drawn per sample by `augment` (8 transform/colour draws + metadata dropout).
RANDOM_DRAWS = 9


@dataclass
class ImageSet:
    """Rows decoded on the driver: identity columns, uint8 pixels (n × size × size × 3), metadata vectors."""

    ids: dict[str, list[Any]]
    pixels: np.ndarray
    metadata: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def labels(self) -> np.ndarray:
        return np.array([CLASS_INDEX.get(dx, NO_LABEL) for dx in self.ids["dx"]], dtype=np.int64)

    def subset(self, keep: np.ndarray) -> ImageSet:
        ids = {k: [v for v, kept in zip(values, keep, strict=True) if kept] for k, values in self.ids.items()}
        meta = None if self.metadata is None else self.metadata[keep]
        return ImageSet(ids, self.pixels[keep], meta)


def collect_images(df: DataFrame, size: int, encoding: MetadataEncoding | None = None) -> ImageSet:
    """Decode the rows' `image` bytes to size × size uint8 (one partition on the driver at a time)."""
    columns = [F.col(c) for c in ID_COLUMNS] + [F.col("image")]
    if encoding is not None:
        columns.append(encoding.column().alias(METADATA_COL))
    rows = df.select(*columns)
    total = rows.count()
    pixels = np.empty((total, size, size, 3), dtype=np.uint8)
    meta = None if encoding is None else np.empty((total, encoding.dim), dtype=np.float32)
    ids: dict[str, list[Any]] = {c: [] for c in ID_COLUMNS}
    progress = Progress("finetune: decoded images", total)
    chunk: list[bytes] = []
    with ThreadPoolExecutor(DECODE_THREADS) as pool:

        def flush() -> None:
            start = progress.done
            for i, rgb in enumerate(pool.map(lambda blob: decode_resized(blob, size), chunk)):
                pixels[start + i] = rgb
            progress.add(len(chunk))
            chunk.clear()

        for row in rows.toLocalIterator():
            if len(ids["image_id"]) >= total:
                raise RuntimeError("finetune: the rows changed while they were being collected")
            for c in ID_COLUMNS:
                ids[c].append(row[c])
            if meta is not None:
                meta[len(ids["image_id"]) - 1] = row[METADATA_COL]
            chunk.append(bytes(row["image"]))
            if len(chunk) >= DECODE_CHUNK:
                flush()
        flush()
    progress.finish()
    return ImageSet(ids, pixels[: progress.done], None if meta is None else meta[: progress.done])


def class_sampling_probabilities(labels: np.ndarray, power: float) -> np.ndarray:
    """Per-row probability of being drawn: class c ∝ count_c^power, uniform within a class."""
    counts = np.bincount(labels, minlength=len(CLASSES)).astype(float)
    per_class = np.where(counts > 0, counts**power, 0.0)
    per_class /= per_class.sum()
    return per_class[labels] / counts[labels]


def epoch_indices(labels: np.ndarray, power: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` row indices drawn with replacement by the class-balanced sampler."""
    return rng.choice(len(labels), size=n, replace=True, p=class_sampling_probabilities(labels, power))


def transforms(u: Any, size: int) -> Any:
    """Per-sample projective transforms (output pixel → input pixel) from uniform draws u[:, 0:6]."""
    import tensorflow as tf

    theta = (2 * u[:, 0] - 1) * ROTATION
    zoom = tf.exp((2 * u[:, 1] - 1) * math.log(ZOOM))
    stretch = tf.sqrt(tf.exp((2 * u[:, 2] - 1) * math.log(STRETCH)))
    zx, zy = zoom * stretch, zoom / stretch
    fx = tf.where(u[:, 3] < FLIP_PROBABILITY, -1.0, 1.0)
    tx, ty = (2 * u[:, 4] - 1) * SHIFT * size, (2 * u[:, 5] - 1) * SHIFT * size
    cos, sin, centre = tf.cos(theta), tf.sin(theta), (size - 1) / 2.0
    a0, a1 = cos * fx / zx, -sin / zx
    b0, b1 = sin * fx / zy, cos / zy
    a2 = centre - (a0 + a1) * centre + tx
    b2 = centre - (b0 + b1) * centre + ty
    zero = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zero, zero], axis=1)


def augment(images: Any, u: Any) -> Any:
    """Warp (rotation, zoom, aspect, shift, flip; reflected border) and colour jitter of a uint8 batch →
    float32 in [0, 255]; `u` holds the batch's uniform draws (RANDOM_DRAWS per sample)."""
    import tensorflow as tf

    x = tf.cast(images, tf.float32)
    size = images.shape[1]
    x = tf.raw_ops.ImageProjectiveTransformV3(
        images=x,
        transforms=transforms(u, size),
        output_shape=tf.constant([size, size]),
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )
    saturation, contrast, brightness = (
        tf.reshape(1 + (2 * u[:, k] - 1) * COLOUR_JITTER, [-1, 1, 1, 1]) for k in (6, 7, 8)
    )
    grey = tf.reduce_mean(x, axis=3, keepdims=True)
    x = grey + (x - grey) * saturation
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    return tf.clip_by_value((mean + (x - mean) * contrast) * brightness, 0.0, PIXEL_MAX)


def training_dataset(
    data: ImageSet,
    indices: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int,
    unknown: np.ndarray | None,
) -> Any:
    """tf.data batches ((augmented float images, metadata), labels) of the sampled `indices`.

    Draws are stateless, seeded by (seed, epoch, batch): a run is reproducible up to thread-level float
    non-determinism. A distributed trainer shards the returned dataset (`dataset.shard`).
    """
    import tensorflow as tf

    labels, meta = data.labels, data.metadata
    if meta is None:
        meta = np.zeros((len(data), 0), dtype=np.float32)

    def gather(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return data.pixels[batch], meta[batch], labels[batch]

    def load(number: Any, batch: Any) -> tuple[Any, Any]:
        pixels, m, y = tf.numpy_function(gather, [batch], (tf.uint8, tf.float32, tf.int64))
        pixels.set_shape([None, *data.pixels.shape[1:]])
        m.set_shape([None, meta.shape[1]])
        draw = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64) * 1_000_003 + number])
        u = tf.random.stateless_uniform([tf.shape(batch)[0], RANDOM_DRAWS + 1], seed=draw)
        if unknown is not None:
            m = tf.where(u[:, RANDOM_DRAWS : RANDOM_DRAWS + 1] < METADATA_DROPOUT, tf.constant(unknown), m)
        return (augment(pixels, u), m), tf.one_hot(y, len(CLASSES))

    return (
        tf.data.Dataset.from_tensor_slices(indices.astype(np.int64))
        .batch(batch_size)
        .enumerate()
        .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def image_batch(
    spec: BackboneSpec, blobs: list[bytes], draws: tuple[int, int, int] | None = None
) -> np.ndarray:
    """Decoded, preprocessed float32 batch of JPEG bytes at the spec's input size; augmented like the
    training data (`augment`) when `draws` = (seed, epoch, batch) seeds the random draws. For trainers that
    receive their rows as bytes, one batch at a time (`molescope.distributed.launch`)."""
    import tensorflow as tf

    size = spec.input_size
    pixels = np.empty((len(blobs), size, size, 3), dtype=np.uint8)
    for i, blob in enumerate(blobs):
        pixels[i] = decode_resized(blob, size)
    x = tf.cast(pixels, tf.float32)
    if draws is not None:
        seed, epoch, batch = draws
        u = tf.random.stateless_uniform([len(blobs), RANDOM_DRAWS], seed=[seed, epoch * 1_000_003 + batch])
        x = augment(pixels, u)
    return np.asarray(preprocess_function(spec)(x), dtype=np.float32)
