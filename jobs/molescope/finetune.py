"""Fine-tuning a backbone on the curated images: the `finetune` model type, trained on the driver.

The recipe (defaults in `molescope.registry`, `--finetune-*`; docs/benchmarks.md, "Model quality", has the
measurements behind each choice):

- model: the featurize backbone (`molescope.backbones.build_model`, same weights) at `input_size`, all layers
  trainable (or the top `layers`), pooled output → Dropout 0.2 → [metadata vector, with `--metadata`] →
  Dense(7) logits; the saved model ends in a softmax;
- BatchNorm: the trained layers' BatchNorm runs in training mode and updates its moving statistics to
  dermoscopy (Keras 3 does so for a nested backbone even when it is called with `training=False`; the only
  real freeze is `layer.trainable = False`, which `unfreeze=top` applies to the layers it leaves frozen —
  frozen BatchNorm all the way down measured clearly worse);
- data: each epoch draws as many images as there are fit images, with replacement, class c with
  probability ∝ count_c^sampling_power (0.5: square-root balancing); augmented in TensorFlow ops
  (`augment`: one projective warp with rotation ±180°, zoom ×[1/1.15, 1.15], aspect ×[1/1.1, 1.1], shift ±5 %,
  horizontal flip, reflected border; saturation, contrast, brightness ×[0.85, 1.15]; hue untouched, colour is
  diagnostic); with metadata, 10 % of the samples see it as unknown, so scoring without metadata stays in
  what the model was trained on;
- loss and optimiser: cross-entropy with label smoothing, AdamW, linear warmup over a quarter of an epoch
  then cosine to 0; the epoch with the best validation balanced accuracy (plain argmax) is kept, and
  training stops after `patience` epochs without a better one;
- predictions: mean softmax over the test-time augmentation views `tta` (`registry.TTA_VIEWS`), in train's
  validation/test predictions and in `molescope score` alike (the sidecar records them).

Data path and memory. The rows come to the driver one partition at a time (`toLocalIterator`) and are decoded
once (`imaging.decode_resized`, the pipeline's one decoder, two threads) into a uint8 array at the input
size: 10k images at 224 px = 1.5 GB (288 px: 2.5 GB) in the driver's Python process, beside the JPEG bytes of
one partition. Batches are gathered from it and augmented in a `tf.data` pipeline (parallel map, prefetch),
so no decoded image is ever made twice.

The training loop is factored for other trainers (e.g. Horovod): `training_dataset` (the data, shardable),
`build_models` (the model), `make_train_step` (one optimisation step: a distributed gradient tape slots in
here) and `EpochTracker` (validation, best weights, early stopping, progress) are separate functions that
`fit` composes. TensorFlow/Keras are imported inside functions only.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from molescope import evaluation, metrics, tables
from molescope.backbones import BackboneSpec, build_model, preprocess_function, resolve_backbone
from molescope.constants import CLASS_INDEX, CLASSES, SPLIT_VALIDATION
from molescope.fusion import METADATA_COL, MetadataEncoding, without_metadata
from molescope.imaging import decode_resized
from molescope.model_specs import FitJob, Fitted, ModelSpec
from molescope.models import FeatureSpec, TrainedModel
from molescope.progress import Progress
from molescope.registry import (
    DEFAULT_SEED,
    TTA_NONE,
    TTA_VIEWS,
    UNFREEZE_CHOICES,
    UNFREEZE_TOP,
    WEIGHTS_IMAGENET,
    hyper_defaults,
)
from molescope.weights import matching_backbone

log = logging.getLogger(__name__)

FORMAT_FINETUNE = "keras-finetune"
DROPOUT = 0.2
#: Linear warmup, in epochs, before the cosine decay: the measured recipe warmed up over 52 steps of 32, half
#: of its 3,328-sample epochs, which is a quarter of these (an epoch here = as many samples as fit images).
WARMUP_EPOCHS = 0.25
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
#: Images per prediction batch (no gradients: larger than training batches).
PREDICT_BATCH = 64
#: Label of rows whose dx is unknown (scored, never trained on).
NO_LABEL = -1
#: Columns `collect_images` reads besides the image bytes.
ID_COLUMNS: tuple[str, ...] = ("image_id", "lesion_id", "dx", "split")
#: Random numbers drawn per sample by `augment` (8 transform/colour draws + metadata dropout).
RANDOM_DRAWS = 9
#: The registry's defaults of the recipe (`--finetune-*`).
_DEFAULTS = hyper_defaults("finetune")


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = _DEFAULTS["epochs"]
    input_size: int = _DEFAULTS["input_size"]
    tta: str = _DEFAULTS["tta"]
    unfreeze: str = _DEFAULTS["unfreeze"]
    layers: int = _DEFAULTS["layers"]
    batch_size: int = _DEFAULTS["batch_size"]
    learning_rate: float = _DEFAULTS["learning_rate"]
    weight_decay: float = _DEFAULTS["weight_decay"]
    label_smoothing: float = _DEFAULTS["label_smoothing"]
    sampling_power: float = _DEFAULTS["sampling_power"]
    patience: int = _DEFAULTS["patience"]
    dropout: float = DROPOUT
    seed: int = DEFAULT_SEED

    def __post_init__(self) -> None:
        if self.unfreeze not in UNFREEZE_CHOICES:
            raise ValueError(f"unfreeze must be one of {UNFREEZE_CHOICES}, got {self.unfreeze!r}")
        if self.tta not in TTA_VIEWS:
            raise ValueError(f"tta must be one of {tuple(TTA_VIEWS)}, got {self.tta!r}")
        if min(self.epochs, self.batch_size, self.patience) < 1 or self.layers < 0:
            raise ValueError("epochs, batch_size and patience must be >= 1, layers >= 0")
        if self.input_size < 32:
            raise ValueError(f"input_size must be at least 32 px, got {self.input_size}")


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


def spec_to_dict(spec: BackboneSpec) -> dict[str, Any]:
    return asdict(spec)


def spec_from_dict(payload: dict[str, Any]) -> BackboneSpec:
    return BackboneSpec(**{key: payload[key] for key in BackboneSpec.__dataclass_fields__})


# ---------------------------------------------------------------- data


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
    data: ImageSet, indices: np.ndarray, config: FinetuneConfig, epoch: int, unknown: np.ndarray | None
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
        seed = tf.stack([tf.constant(config.seed, tf.int64), tf.cast(epoch, tf.int64) * 1_000_003 + number])
        u = tf.random.stateless_uniform([tf.shape(batch)[0], RANDOM_DRAWS + 1], seed=seed)
        if unknown is not None:
            m = tf.where(u[:, RANDOM_DRAWS : RANDOM_DRAWS + 1] < METADATA_DROPOUT, tf.constant(unknown), m)
        return (augment(pixels, u), m), tf.one_hot(y, len(CLASSES))

    return (
        tf.data.Dataset.from_tensor_slices(indices.astype(np.int64))
        .batch(config.batch_size)
        .enumerate()
        .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def image_batch(
    spec: BackboneSpec, blobs: list[bytes], draws: tuple[int, int, int] | None = None
) -> np.ndarray:
    """Decoded, preprocessed float32 batch of JPEG bytes at the spec's input size; augmented like the
    training data (`augment`) when `draws` = (seed, epoch, batch) seeds the random draws. For trainers that
    receive their rows as bytes, one batch at a time (`molescope.distributed`)."""
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


# ---------------------------------------------------------------- model


def set_trainable(backbone: Any, unfreeze: str, layers: int) -> int:
    """Unfreeze all layers or the top `layers` of `backbone`; returns how many layers are trainable."""
    backbone.trainable = True
    if unfreeze == UNFREEZE_TOP:
        cut = max(0, len(backbone.layers) - layers)
        for layer in backbone.layers[:cut]:
            layer.trainable = False
    return sum(1 for layer in backbone.layers if layer.trainable and layer.weights)


def build_models(spec: BackboneSpec, config: FinetuneConfig, metadata_dim: int) -> tuple[Any, Any, int]:
    """(training model → logits, scoring model → probabilities, trainable backbone layers); they share
    every layer. Inputs: the preprocessed image, and the metadata vector when `metadata_dim` > 0."""
    import keras

    keras.utils.set_random_seed(config.seed)
    backbone = build_model(spec)
    trainable = set_trainable(backbone, config.unfreeze, config.layers)
    image = keras.Input(shape=(spec.input_size, spec.input_size, 3), name="image")
    inputs = [image]
    hidden = keras.layers.Dropout(config.dropout, seed=config.seed)(backbone(image))
    if metadata_dim:
        meta = keras.Input(shape=(metadata_dim,), name=METADATA_COL)
        inputs.append(meta)
        hidden = keras.layers.Concatenate(name="fused")([hidden, meta])
    logits = keras.layers.Dense(len(CLASSES), name="dx")(hidden)
    probabilities = keras.layers.Softmax(name="probabilities")(logits)
    training = keras.Model(inputs, logits, name="molescope_finetune_logits")
    return training, keras.Model(inputs, probabilities, name="molescope_finetune"), trainable


def learning_rate_schedule(peak: float, warmup_steps: int, total_steps: int) -> Any:
    """Linear warmup to `peak` over `warmup_steps`, then cosine decay to 0 at `total_steps`."""
    import keras

    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(1, total_steps - warmup_steps),
        warmup_target=peak,
        warmup_steps=warmup_steps,
    )


def make_train_step(model: Any, optimizer: Any, loss_fn: Any, preprocess: Any, with_metadata: bool) -> Any:
    """One optimisation step on a batch ((images 0..255, metadata), one-hot labels) → mean loss."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def train_step(images: Any, meta: Any, y: Any) -> Any:
        x = preprocess(images)
        with tf.GradientTape() as tape:
            logits = model([x, meta] if with_metadata else x, training=True)
            loss = loss_fn(y, logits)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    return train_step


# ---------------------------------------------------------------- prediction


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


# ---------------------------------------------------------------- training loop


@dataclass
class EpochTracker:
    """Per-epoch validation (plain argmax, no TTA), best weights, early stopping and the progress log."""

    validation: ImageSet
    predict: Any
    patience: int
    best_score: float = -1.0
    best_epoch: int = 0
    best_weights: list[np.ndarray] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def end_epoch(self, epoch: int, weights: list[Any], record: dict[str, Any]) -> bool:
        """Record the epoch; True when training should stop."""
        labels = self.validation.labels
        if len(labels):
            proba = self.predict(self.validation)
            scores = evaluation.figures(labels, metrics.decide(proba), proba)
            record |= {f"val_{k}": v for k, v in scores.items() if k != "mel_specificity"}
            score = scores["balanced_accuracy"]
        else:
            score = -record["loss"]  # no validation rows: keep the last epoch with the lowest loss
        self.history.append(record)
        log.info("finetune epoch %s", ", ".join(f"{k} {_fmt(v)}" for k, v in record.items()))
        if score > self.best_score:
            self.best_score, self.best_epoch = score, epoch
            self.best_weights = [w.numpy() for w in weights]
        return epoch - self.best_epoch >= self.patience


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def fit(
    spec: BackboneSpec,
    config: FinetuneConfig,
    train: ImageSet,
    validation: ImageSet,
    encoding: MetadataEncoding | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Fine-tune on `train` (labelled rows only); keeps the epoch of best validation balanced accuracy."""
    import keras

    labels = train.labels
    if (labels == NO_LABEL).any() or len(labels) == 0:
        raise ValueError("fine-tuning needs training rows, all with a known dx")
    validation = validation.subset(validation.labels != NO_LABEL)
    training_model, scoring_model, trainable = build_models(spec, config, encoding.dim if encoding else 0)
    steps = math.ceil(len(train) / config.batch_size)
    optimizer = keras.optimizers.AdamW(
        learning_rate_schedule(config.learning_rate, int(WARMUP_EPOCHS * steps), steps * config.epochs),
        weight_decay=config.weight_decay,
    )
    loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing)
    train_step = make_train_step(
        training_model, optimizer, loss_fn, preprocess_function(spec), encoding is not None
    )
    tracker = EpochTracker(
        validation, lambda data: predict_probabilities(scoring_model, spec, data, "none"), config.patience
    )
    unknown = None if encoding is None else np.asarray(encoding.unknown(), dtype=np.float32)
    rng = np.random.default_rng(config.seed)
    started = time.monotonic()
    for epoch in range(1, config.epochs + 1):
        epoch_started = time.monotonic()
        indices = epoch_indices(labels, config.sampling_power, len(train), rng)
        losses = [
            float(train_step(images, meta, y))
            for (images, meta), y in training_dataset(train, indices, config, epoch, unknown)
        ]
        seconds = time.monotonic() - epoch_started
        record = {
            "epoch": epoch,
            "of": config.epochs,
            "loss": float(np.mean(losses)),
            "img_per_s": round(len(indices) / seconds, 1),
            "train_s": round(seconds, 1),
        }
        if tracker.end_epoch(epoch, training_model.weights, record):
            log.info("finetune: no better validation balanced accuracy for %d epochs: stop", config.patience)
            break
    for variable, value in zip(training_model.weights, tracker.best_weights or [], strict=False):
        variable.assign(value)
    info = {
        "epochs_run": len(tracker.history),
        "best_epoch": tracker.best_epoch,
        "best_val_balanced_accuracy": tracker.best_score if len(validation) else None,
        "train_images": len(train),
        "samples_per_epoch": len(train),
        "val_images": len(validation),
        "trainable_layers": trainable,
        "fit_loop_seconds": round(time.monotonic() - started, 3),
        "epochs": tracker.history,
    }
    return scoring_model, info


# ---------------------------------------------------------------- the model type


def config_of(spec: ModelSpec, settings: Any) -> FinetuneConfig:
    """The recipe of `molescope train`'s `--finetune-*` settings (the row cap is not part of it)."""
    params = {k: v for k, v in spec.params(settings).items() if k in FinetuneConfig.__dataclass_fields__}
    return FinetuneConfig(**params, seed=settings.seed)


def finetune_backbone(job: FitJob, input_size: int) -> BackboneSpec:
    """--backbone/--weights/--alpha, else the features' backbone + weights_id (weights from --weights or the
    features reference JSON); at the recipe's input size."""
    s = job.settings
    ref = tables.read_ref(job.spark, s.features) or {}
    weights = s.weights or ref.get("weights")
    if s.backbone:
        backbone = resolve_backbone(s.backbone, weights or WEIGHTS_IMAGENET, s.alpha, seed=s.seed)
    else:
        backbone = matching_backbone(job.feature_spec, weights, "fine-tune", compare_dim=False)
    return replace(backbone, input_size=input_size)


def capped(rows: DataFrame, limit: int | None, seed: int) -> DataFrame:
    """At most `limit` rows, chosen by a seeded hash of image_id (the same ones on every run)."""
    if limit is None:
        return rows
    return rows.orderBy(F.xxhash64(F.lit(seed), F.col("image_id"))).limit(limit)


def training_images(
    job: FitJob, max_images: int | None, size: int, encoding: MetadataEncoding | None
) -> tuple[ImageSet, ImageSet]:
    """(real fit rows, validation rows), decoded on the driver; synthetic rows are left out (the sampler
    balances the classes and the augmentation runs on the fly)."""
    s = job.settings
    real = job.fit_rows.where(~F.col("synthetic"))
    train = collect_images(
        tables.with_curated_images(job.spark, capped(real, max_images, s.seed), s.curated), size, encoding
    )
    validation = job.scoring.where(F.col("split") == SPLIT_VALIDATION)
    val = collect_images(tables.with_curated_images(job.spark, validation, s.curated), size, encoding)
    if len(train) == 0:
        raise ValueError(f"finetune: no training images found under {s.curated}")
    return train, val


def fit_finetune(spec: ModelSpec, job: FitJob) -> Fitted:
    """Decode the real fit rows' and validation rows' images and fine-tune the backbone on them."""
    config = config_of(spec, job.settings)
    backbone = finetune_backbone(job, config.input_size)
    max_images = spec.params(job.settings)["max_images"]
    started = time.monotonic()
    train_rows, val_rows = training_images(job, max_images, config.input_size, job.metadata)
    model, info = fit(backbone, config, train_rows, val_rows, job.metadata)
    return fitted(spec, backbone, config, max_images, model, info, started, job.settings.curated)


def fitted(
    spec: ModelSpec, backbone: BackboneSpec, config: FinetuneConfig, max_images: int | None, model: Any,
    info: dict[str, Any], started: float, curated: str,
) -> Fitted:  # fmt: skip
    """What a fine-tuning trainer returns (one process or Horovod ranks): the scoring model, the recipe with
    the row cap and backbone as params, a placeholder feature spec (the model reads images)."""
    params = {**asdict(config), "max_images": max_images, "backbone_spec": spec_to_dict(backbone)}
    features = FeatureSpec(backbone.name, backbone.weights_id, backbone.feature_dim, None, False)
    trained = TrainedModel(spec.name, {}, None, model)
    return Fitted(
        trained, params, time.monotonic() - started, features, history=info, training_set={"curated": curated}
    )


def predict_images(trained: TrainedModel, rows: DataFrame, tta: str | None = None) -> DataFrame:
    """Predictions of a fine-tuned model for curated-image rows (image_id, lesion_id, dx, split, image and,
    for a model with metadata, age/sex/localization: missing ones encode as unknown); TTA views `tta`, by
    default the model's own."""
    from molescope.models import predictions_frame

    params = trained.sidecar["params"]
    spec = spec_from_dict(params["backbone_spec"])
    encoding = trained.metadata
    data = collect_images(without_metadata(rows) if encoding else rows, spec.input_size, encoding)
    probabilities = predict_probabilities(trained.keras_model, spec, data, tta or params.get("tta", TTA_NONE))
    return predictions_frame(rows.sparkSession, data.ids, probabilities, trained.name)


FINETUNE = ModelSpec("finetune", FORMAT_FINETUNE, fit_finetune)
