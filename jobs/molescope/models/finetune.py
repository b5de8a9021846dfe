"""Fine-tuning a backbone on the curated images: the `finetune` model type, trained on the driver.

The recipe (defaults in `molescope.core.registry`, `--finetune-*`; docs/benchmarks.md, "Model quality", has
the measurements behind each choice):

- model: the featurize backbone (`molescope.features.backbones.build_model`, same weights) at `input_size`,
  all layers trainable (or the top `layers`), pooled output → Dropout 0.2 → [metadata vector, with
  `--metadata`] → Dense(7) logits; the saved model ends in a softmax;
- BatchNorm: the trained layers' BatchNorm runs in training mode and updates its moving statistics to
  dermoscopy (Keras 3 does so for a nested backbone even when it is called with `training=False`; the only
  real freeze is `layer.trainable = False`, which `unfreeze=top` applies to the layers it leaves frozen —
  frozen BatchNorm all the way down measured clearly worse);
- data: the class-balanced sampler and the in-graph augmentation of `molescope.models.finetune_data`;
- loss and optimiser: cross-entropy with label smoothing, AdamW, linear warmup over a quarter of an epoch
  then cosine to 0; the epoch with the best validation balanced accuracy (plain argmax) is kept, and
  training stops after `patience` epochs without a better one;
- predictions: mean softmax over the test-time augmentation views `tta` (`registry.TTA_VIEWS`;
  `molescope.models.finetune_predict`), in train's
  validation/test predictions and in `molescope score` alike (the sidecar records them).

The training loop is factored for other trainers (e.g. Horovod): `finetune_data.training_dataset` (the
data, shardable), `build_models` (the model), `make_train_step` (one optimisation step: a distributed
gradient tape slots in here) and `EpochTracker` (validation, best weights, early stopping, progress) are
separate functions that `fit` composes. TensorFlow/Keras are imported inside functions only.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from molescope.core.constants import CLASSES, SPLIT_VALIDATION
from molescope.core.registry import (
    DEFAULT_SEED,
    TTA_NONE,
    TTA_VIEWS,
    UNFREEZE_CHOICES,
    UNFREEZE_TOP,
    WEIGHTS_IMAGENET,
    hyper_defaults,
)
from molescope.evaluation import outcomes
from molescope.evaluation.scores import decide
from molescope.features.backbones import BackboneSpec, build_model, preprocess_function, resolve_backbone
from molescope.features.spec import FeatureSpec
from molescope.features.weights import matching_backbone
from molescope.io import tables
from molescope.models import warm_start
from molescope.models.budget import StepClock
from molescope.models.finetune_data import NO_LABEL, ImageSet, collect_images, epoch_indices, training_dataset
from molescope.models.finetune_predict import predict_probabilities
from molescope.models.fusion import METADATA_COL, MetadataEncoding, without_metadata
from molescope.models.model_specs import FitJob, Fitted, ModelSpec
from molescope.models.trained import TrainedModel, load_model

log = logging.getLogger(__name__)

FORMAT_FINETUNE = "keras-finetune"
DROPOUT = 0.2
#: Linear warmup, in epochs, before the cosine decay: the measured recipe warmed up over 52 steps of 32, half
#: of its 3,328-sample epochs, which is a quarter of these (an epoch here = as many samples as fit images).
WARMUP_EPOCHS = 0.25
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
    warm_epochs: int = _DEFAULTS["warm_epochs"]
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


def spec_to_dict(spec: BackboneSpec) -> dict[str, Any]:
    return asdict(spec)


def spec_from_dict(payload: dict[str, Any]) -> BackboneSpec:
    return BackboneSpec(**{key: payload[key] for key in BackboneSpec.__dataclass_fields__})


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
            scores = outcomes.figures(labels, decide(proba), proba)
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
    deadline: float | None = None,
    initial: Any = None,
) -> tuple[Any, dict[str, Any]]:
    """Fine-tune on `train` (labelled rows only); keeps the epoch of best validation balanced accuracy.
    The first epoch's first steps estimate the fit's time (`budget.StepClock`): past `deadline` it fails.
    `initial`: a scoring model of the same network whose weights the fit starts from (a warm start)."""
    import keras

    labels = train.labels
    if (labels == NO_LABEL).any() or len(labels) == 0:
        raise ValueError("fine-tuning needs training rows, all with a known dx")
    validation = validation.subset(validation.labels != NO_LABEL)
    training_model, scoring_model, trainable = build_models(spec, config, encoding.dim if encoding else 0)
    if initial is not None:
        scoring_model.set_weights(initial.get_weights())  # the layers are shared with the training model
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
    clock = StepClock("finetune", config.epochs * len(train), config.epochs * len(validation), deadline)
    started = time.monotonic()
    for epoch in range(1, config.epochs + 1):
        epoch_started = time.monotonic()
        indices = epoch_indices(labels, config.sampling_power, len(train), rng)
        batches = training_dataset(train, indices, config.batch_size, config.seed, epoch, unknown)
        losses = []
        for (images, meta), y in batches:
            losses.append(float(train_step(images, meta, y)))
            clock.step(len(y))
        clock.check()
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
    """Decode the real fit rows' and validation rows' images and fine-tune the backbone on them: from the
    newest fine-tuned model for `warm_epochs` when `--warm-start` and its rule say so."""
    config = config_of(spec, job.settings)
    backbone = finetune_backbone(job, config.input_size)
    max_images = spec.params(job.settings)["max_images"]
    started = time.monotonic()
    train_rows, val_rows = training_images(job, max_images, config.input_size, job.metadata)
    decision, initial = warm_start_of(job, backbone, len(train_rows))
    if initial is not None:
        config = replace(config, epochs=config.warm_epochs, patience=min(config.patience, config.warm_epochs))
    model, info = fit(backbone, config, train_rows, val_rows, job.metadata, job.deadline, initial)
    info["warm_start"] = {**decision.record, "why": decision.why}
    result = fitted(spec, backbone, config, max_images, model, info, started, job.settings.curated)
    return replace(result, params={**result.params, "warm_start": decision.record})


def warm_start_of(job: FitJob, backbone: BackboneSpec, fit_images: int) -> tuple[warm_start.Decision, Any]:
    """The rule's decision for this fit, and the previous scoring model when it is a warm start."""
    s = job.settings
    rule = warm_start.Rule(s.full_retrain_every, s.full_retrain_growth)
    network = (backbone, job.metadata.dim if job.metadata else 0)
    decision = warm_start.plan(job.spark, s.warm_start, s.out, rule, fit_images, network)
    said = f"warm start from {decision.previous}: {decision.why}" if decision.warm else decision.why
    log.info("finetune: %s", said)
    return decision, load_model(job.spark, decision.previous).keras_model if decision.warm else None


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
    from molescope.models.trained import predictions_frame

    params = trained.sidecar["params"]
    spec = spec_from_dict(params["backbone_spec"])
    encoding = trained.metadata
    data = collect_images(without_metadata(rows) if encoding else rows, spec.input_size, encoding)
    probabilities = predict_probabilities(trained.keras_model, spec, data, tta or params.get("tta", TTA_NONE))
    return predictions_frame(rows.sparkSession, data.ids, probabilities, trained.name)


FINETUNE = ModelSpec("finetune", FORMAT_FINETUNE, fit_finetune, predict_images=predict_images)
