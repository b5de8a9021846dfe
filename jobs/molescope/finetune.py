"""Fine-tuning a backbone on the curated images: the `finetune` model type, trained on the driver.

The model is the featurize backbone (`molescope.backbones.build_model`, same weights) with its top
`layers` (or all) layers trainable, then Dropout → Dense softmax(7). BatchNorm layers always run in
inference mode (`backbone(x, training=False)`): with small fine-tuning batches their moving statistics
would otherwise be overwritten by noisy batch statistics. Its backbone is `--backbone/--weights/--alpha`, or
the features' backbone and weights_id with the weights source from `--weights` or the features reference JSON.

Data path and memory. `fit_finetune` selects the real training rows (image_id, lesion_id, dx, split, image,
weight) and `collect_rows` brings them to the driver one partition at a time (`toLocalIterator`). Only the
JPEG bytes are held: HAM10000 at 600×450 is ~10k × ~0.25 MB ≈ 2.5 GB, the 224-px copies ~0.05 GB; the
`--finetune-max-images` cap bounds the training part on small machines. A `keras.utils.PyDataset` decodes,
resizes, augments (training only, `molescope.augmentation`) and preprocesses one batch at a time, so decoded
pixels never exceed one batch (batch × 224 × 224 × 3 float32 ≈ 9.6 MB at batch 16). It is early-stopped on
the validation part and scores the validation and test images themselves.

Preprocessing happens outside the saved model (the family's `preprocess_input`), so the loader rebuilds it
from the sidecar's `backbone_spec`. TensorFlow/Keras are imported inside functions only.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from molescope import tables
from molescope.augmentation import augment_rgb
from molescope.backbones import BackboneSpec, build_model, preprocess, resolve_backbone
from molescope.balance import balanced_sample_weights
from molescope.constants import CLASS_INDEX, CLASSES, SPLIT_VALIDATION
from molescope.imaging import decode_resized
from molescope.model_specs import FitJob, Fitted, ModelSpec
from molescope.models import FeatureSpec, TrainedModel
from molescope.registry import (
    DEFAULT_SEED,
    UNFREEZE_CHOICES,
    UNFREEZE_TOP,
    WEIGHTS_IMAGENET,
    hyper_defaults,
)
from molescope.weights import matching_backbone

log = logging.getLogger(__name__)

FORMAT_FINETUNE = "keras-finetune"
DEFAULT_DROPOUT = 0.3
DEFAULT_PATIENCE = 2
PIXEL_MAX = 255.0
#: Label of rows whose dx is unknown (scored, never trained on).
NO_LABEL = -1
#: Columns `collect_rows` reads; `weight` is optional.
ROW_COLUMNS: tuple[str, ...] = ("image_id", "lesion_id", "dx", "split", "image")
#: The registry's defaults of the recipe (`--finetune-*`).
_DEFAULTS = hyper_defaults("finetune")


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = _DEFAULTS["epochs"]
    unfreeze: str = _DEFAULTS["unfreeze"]
    layers: int = _DEFAULTS["layers"]
    batch_size: int = _DEFAULTS["batch_size"]
    learning_rate: float = _DEFAULTS["learning_rate"]
    dropout: float = DEFAULT_DROPOUT
    patience: int = DEFAULT_PATIENCE
    seed: int = DEFAULT_SEED

    def __post_init__(self) -> None:
        if self.unfreeze not in UNFREEZE_CHOICES:
            raise ValueError(f"unfreeze must be one of {UNFREEZE_CHOICES}, got {self.unfreeze!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.layers < 0:
            raise ValueError("epochs and batch_size must be >= 1, layers >= 0")


@dataclass
class ImageRows:
    """Rows collected to the driver: identity columns, JPEG bytes, labels (NO_LABEL if unknown), weights."""

    image_id: list[str] = field(default_factory=list)
    lesion_id: list[str | None] = field(default_factory=list)
    dx: list[str | None] = field(default_factory=list)
    split: list[str | None] = field(default_factory=list)
    images: list[bytes] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.image_id)

    @property
    def labels(self) -> np.ndarray:
        return np.array([CLASS_INDEX.get(dx, NO_LABEL) for dx in self.dx], dtype=np.int64)

    def columns(self) -> dict[str, list[Any]]:
        """The identity columns as lists (models.predictions_frame's input)."""
        return {"image_id": self.image_id, "lesion_id": self.lesion_id, "dx": self.dx, "split": self.split}


def spec_to_dict(spec: BackboneSpec) -> dict[str, Any]:
    return asdict(spec)


def spec_from_dict(payload: dict[str, Any]) -> BackboneSpec:
    return BackboneSpec(**{key: payload[key] for key in BackboneSpec.__dataclass_fields__})


# ---------------------------------------------------------------- data


def collect_rows(df: DataFrame) -> ImageRows:
    """Bring ROW_COLUMNS (+ `weight` when present) to the driver, one partition at a time."""
    has_weight = "weight" in df.columns
    columns = [*ROW_COLUMNS, "weight"] if has_weight else list(ROW_COLUMNS)
    rows = ImageRows()
    for row in df.select(*columns).toLocalIterator():
        rows.image_id.append(row["image_id"])
        rows.lesion_id.append(row["lesion_id"])
        rows.dx.append(row["dx"])
        rows.split.append(row["split"])
        rows.images.append(bytes(row["image"]))
        rows.weights.append(float(row["weight"]) if has_weight and row["weight"] is not None else 1.0)
    return rows


def load_batch(spec: BackboneSpec, blobs: list[bytes], rng: np.random.Generator | None = None) -> np.ndarray:
    """Decode, resize (square input), augment when `rng` is given, preprocess → float32 batch."""
    images = [decode_resized(blob, spec.input_size) for blob in blobs]
    if rng is not None:
        images = [augment_rgb(rgb, rng) for rgb in images]
    return preprocess(spec, images)


@functools.cache
def _dataset_class() -> type:
    """keras.utils.PyDataset subclass, built on first use so that importing this module needs no Keras."""
    import keras

    class ImageDataset(keras.utils.PyDataset):
        """Batches of (preprocessed images, labels[, sample weights]); shuffled and augmented if training."""

        def __init__(
            self,
            spec: BackboneSpec,
            blobs: list[bytes],
            labels: np.ndarray,
            batch_size: int,
            sample_weight: np.ndarray | None = None,
            seed: int | None = None,
        ):
            super().__init__()
            self.spec, self.blobs, self.labels = spec, blobs, labels
            self.batch_size, self.sample_weight, self.seed = batch_size, sample_weight, seed
            self.epoch = 0
            self.order = np.arange(len(blobs))
            self._shuffle()

        @property
        def training(self) -> bool:
            return self.seed is not None

        def _shuffle(self) -> None:
            if self.training:
                self.order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.blobs))

        def __len__(self) -> int:
            return int(np.ceil(len(self.blobs) / self.batch_size))

        def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
            rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
            rng = np.random.default_rng([self.seed, self.epoch, index]) if self.training else None
            x = load_batch(self.spec, [self.blobs[i] for i in rows], rng)
            if self.sample_weight is None:
                return x, self.labels[rows]
            return x, self.labels[rows], self.sample_weight[rows]

        def on_epoch_end(self) -> None:
            self.epoch += 1
            self._shuffle()

    return ImageDataset


def image_dataset(
    spec: BackboneSpec,
    blobs: list[bytes],
    labels: np.ndarray,
    batch_size: int,
    sample_weight: np.ndarray | None = None,
    seed: int | None = None,
) -> Any:
    """A PyDataset over JPEG bytes; `seed` given = training (shuffle + augmentation), else fixed order."""
    return _dataset_class()(spec, blobs, labels, batch_size, sample_weight, seed)


# ---------------------------------------------------------------- model


def set_trainable(backbone: Any, unfreeze: str, layers: int) -> int:
    """Unfreeze all layers or the top `layers` of `backbone`; returns how many layers are trainable."""
    backbone.trainable = True
    if unfreeze == UNFREEZE_TOP:
        cut = max(0, len(backbone.layers) - layers)
        for layer in backbone.layers[:cut]:
            layer.trainable = False
    return sum(1 for layer in backbone.layers if layer.trainable and layer.weights)


def build_finetune_model(spec: BackboneSpec, config: FinetuneConfig) -> tuple[Any, int]:
    """Backbone (BatchNorm in inference mode) → Dropout → Dense softmax(7), compiled; + trainable layers."""
    import keras

    keras.utils.set_random_seed(config.seed)
    backbone = build_model(spec)
    trainable = set_trainable(backbone, config.unfreeze, config.layers)
    inputs = keras.Input(shape=(spec.input_size, spec.input_size, 3), name="image")
    pooled = backbone(inputs, training=False)
    hidden = keras.layers.Dropout(config.dropout, seed=config.seed)(pooled)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax", name="dx")(hidden)
    model = keras.Model(inputs, outputs, name="molescope_finetune")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate),
        loss="sparse_categorical_crossentropy",
        weighted_metrics=["accuracy"],
    )
    return model, trainable


def fit(
    spec: BackboneSpec,
    config: FinetuneConfig,
    train: ImageRows,
    sample_weight: np.ndarray,
    validation: ImageRows | None,
) -> tuple[Any, dict[str, Any]]:
    """Fine-tune on `train` (labelled rows only), early-stopped on `validation` when it has labelled rows."""
    import keras

    labels = train.labels
    if (labels == NO_LABEL).any():
        raise ValueError("fine-tuning rows must all have a known dx")
    model, trainable = build_finetune_model(spec, config)
    data = image_dataset(spec, train.images, labels, config.batch_size, sample_weight, config.seed)
    val_data, callbacks = None, []
    if validation is not None and len(validation):
        known = validation.labels != NO_LABEL
        blobs = [blob for blob, keep in zip(validation.images, known, strict=True) if keep]
        val_data = image_dataset(spec, blobs, validation.labels[known], config.batch_size)
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=config.patience, restore_best_weights=True
            )
        )
    started = time.monotonic()
    history = model.fit(data, validation_data=val_data, epochs=config.epochs, callbacks=callbacks, verbose=0)
    info = {
        "epochs_run": len(history.history["loss"]),
        "train_images": len(train),
        "val_images": 0 if val_data is None else len(val_data.blobs),
        "trainable_layers": trainable,
        "final_loss": float(history.history["loss"][-1]),
        "best_val_loss": float(min(history.history["val_loss"])) if val_data is not None else None,
        "fit_loop_seconds": round(time.monotonic() - started, 3),
    }
    log.info("finetune %s: %s", spec.name, info)
    return model, info


def predict_probabilities(model: Any, spec: BackboneSpec, blobs: list[bytes], batch_size: int) -> np.ndarray:
    """n×7 float64 probabilities, one decoded batch at a time (no augmentation)."""
    if not blobs:
        return np.zeros((0, len(CLASSES)))
    data = image_dataset(spec, blobs, np.zeros(len(blobs), dtype=np.int64), batch_size)
    return np.asarray(model.predict(data, verbose=0), dtype=np.float64)


# ---------------------------------------------------------------- the model type


def config_of(spec: ModelSpec, settings: Any) -> FinetuneConfig:
    """The recipe of `molescope train`'s `--finetune-*` settings (the row cap is not part of it)."""
    params = {k: v for k, v in spec.params(settings).items() if k in FinetuneConfig.__dataclass_fields__}
    return FinetuneConfig(**params, seed=settings.seed)


def finetune_backbone(job: FitJob) -> BackboneSpec:
    """--backbone/--weights/--alpha, else the features' backbone + weights_id (weights from --weights or the
    features reference JSON)."""
    s = job.settings
    ref = tables.read_ref(job.spark, s.features) or {}
    weights = s.weights or ref.get("weights")
    if s.backbone:
        return resolve_backbone(s.backbone, weights or WEIGHTS_IMAGENET, s.alpha, seed=s.seed)
    return matching_backbone(job.feature_spec, weights, "fine-tune", compare_dim=False)


def capped(rows: DataFrame, limit: int | None, seed: int) -> DataFrame:
    """At most `limit` rows, chosen by a seeded hash of image_id (the same ones on every run)."""
    if limit is None:
        return rows
    return rows.orderBy(F.xxhash64(F.lit(seed), F.col("image_id"))).limit(limit)


def training_images(job: FitJob, max_images: int | None) -> tuple[ImageRows, ImageRows]:
    """(real fit rows, validation rows) with their JPEG bytes, on the driver."""
    s = job.settings
    real = job.fit_rows.where(~F.col("synthetic")).select("image_id", "lesion_id", "dx", "split", "weight")
    train_rows = collect_rows(
        tables.with_curated_images(job.spark, capped(real, max_images, s.seed), s.curated)
    )
    validation = tables.conform(job.scoring.where(F.col("split") == SPLIT_VALIDATION), tables.FEATURES_SCHEMA)
    val_rows = collect_rows(tables.with_curated_images(job.spark, validation, s.curated))
    if len(train_rows) == 0:
        raise ValueError(f"finetune: no training images found under {s.curated}")
    return train_rows, val_rows


def fit_finetune(spec: ModelSpec, job: FitJob) -> Fitted:
    """Collect the real fit rows' and validation rows' images and fine-tune the backbone on them."""
    backbone = finetune_backbone(job)
    config = config_of(spec, job.settings)
    max_images = spec.params(job.settings)["max_images"]
    train_rows, val_rows = training_images(job, max_images)
    weights = np.asarray(train_rows.weights) if job.weighted else np.ones(len(train_rows))
    sample_weight = balanced_sample_weights(train_rows.labels, weights)
    started = time.monotonic()
    model, info = fit(backbone, config, train_rows, sample_weight, val_rows)
    seconds = time.monotonic() - started
    params = {**asdict(config), "max_images": max_images, "backbone_spec": spec_to_dict(backbone)}
    features = FeatureSpec(backbone.name, backbone.weights_id, backbone.feature_dim, None, False)
    trained = TrainedModel(spec.name, {}, None, model)
    return Fitted(
        trained, params, seconds, features, history=info, training_set={"curated": job.settings.curated}
    )


FINETUNE = ModelSpec("finetune", FORMAT_FINETUNE, fit_finetune)
