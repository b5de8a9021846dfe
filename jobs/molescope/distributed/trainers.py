"""`molescope train --distributed horovod`: the Keras models fitted data-parallel by
`molescope.distributed.launch`.

The train stage fits every model through `fit(spec, job)`. With `--distributed none` that is the model's
own trainer (`spec.fit`). With `horovod`, the models of `registry.HOROVOD_MODELS` are fitted here by
`launch.fit_distributed` on `--num-proc` Spark barrier tasks (one Horovod rank each, Gloo), and the
Spark ML models keep their trainer: Spark's executors fit them already.

Each trainer below is its single-process twin with the training rows kept in Spark instead of collected to
the driver: the same preprocessing (fitted on Spark), the same rows held out for early stopping, the same
class-balanced sample weights (class totals summed on Spark), the same model builder, hyper-parameters,
patience and monitor, and the same `Fitted` (ModelSpec format, params, FeatureSpec), so the saved model and
its sidecar are what report and score already read. What data parallelism changes: every rank takes batches
of the model's batch size (the global batch is `num_proc` times larger, and the learning rate is scaled by
`num_proc`); the ranks' rows are a seeded hash of image_id; an epoch is `num_proc` × the smallest shard's
steps. The sidecar's history records it under `distributed`.

The shards and rank 0's `model.keras` are staged under `<out>/_distributed/<model>/` (rewritten by a re-run,
deleted once the model is loaded). Bad input fails before any rank starts: Horovod missing, fewer Spark
task slots than ranks (`common.DistributedTrainingError`, one line).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import numpy as np
from pyspark.ml import Pipeline
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from molescope.core.constants import SPLIT_VALIDATION
from molescope.core.registry import DISTRIBUTED_HOROVOD, DISTRIBUTED_NONE, HOROVOD_MODELS, MODEL_TYPES
from molescope.distributed.common import DistributedConfig
from molescope.distributed.datasets import FeatureBatches, ImageBatches
from molescope.distributed.launch import (
    DistributedResult,
    check_slots,
    fit_distributed,
    require_horovod,
)
from molescope.io import storage, tables
from molescope.models import finetune, keras_head
from molescope.models.model_specs import FitJob, Fitted, ModelSpec
from molescope.models.trained import (
    LABEL_COL,
    WEIGHT_COL,
    TrainedModel,
    label_expr,
    load_keras,
    preprocessing_stages,
)
from molescope.rebalance.balance import class_weights

log = logging.getLogger(__name__)

#: Staging root under the run prefix (hidden from Spark listings: it starts with `_`).
STAGING_DIR = "_distributed"
X_COL = "x"


def check_settings(models: tuple[str, ...], distributed: str, num_proc: int, metadata: bool = False) -> None:
    """The train settings' distributed checks (ValueError naming the flag)."""
    if num_proc < 1:
        raise ValueError(f"--num-proc must be at least 1, got {num_proc}")
    if distributed == DISTRIBUTED_HOROVOD and metadata:
        # The ranks' batches carry the image or feature vector only; fusing metadata there is not built yet.
        raise ValueError(
            f"--distributed {DISTRIBUTED_HOROVOD} does not support --metadata yet: drop one of them"
        )
    if distributed == DISTRIBUTED_HOROVOD and not set(models) & set(HOROVOD_MODELS):
        raise ValueError(
            f"--distributed {DISTRIBUTED_HOROVOD} fits only {', '.join(HOROVOD_MODELS)} (Spark fits "
            f"{', '.join(m for m in MODEL_TYPES if m not in HOROVOD_MODELS)} on its executors already); "
            f"--models {','.join(models)} has none of them: drop --distributed or add one"
        )


def preflight(spark: SparkSession, settings: Any) -> None:
    """Before anything is read: with --distributed horovod, Horovod importable with Gloo and the cluster
    able to run the ranks at once (common.DistributedTrainingError otherwise)."""
    if settings.distributed == DISTRIBUTED_HOROVOD:
        require_horovod()
        check_slots(spark, settings.num_proc)


def fit(spec: ModelSpec, job: FitJob) -> Fitted:
    """Fit `spec` the way `--distributed` asks (the train stage's one call)."""
    if job.settings.distributed == DISTRIBUTED_NONE or spec.name not in TRAINERS:
        return spec.fit(spec, job)
    log.info("%s: data-parallel on %d Horovod ranks", spec.name, job.settings.num_proc)
    return TRAINERS[spec.name](spec, job)


# ---------------------------------------------------------------- shared pieces


def staging_uri(job: FitJob, model: str) -> str:
    return storage.join(job.settings.out, STAGING_DIR, model)


def balanced_weight(rows: DataFrame, weight_col: str) -> Column:
    """Row weight × balanced class weight over the weighted class totals of `rows` (balance's rule, the
    totals summed on Spark: equal to `balanced_sample_weights` on the collected rows)."""
    totals = rows.groupBy(LABEL_COL).agg(F.sum(weight_col).alias("total")).collect()
    labels = np.array([int(r[LABEL_COL]) for r in totals])
    by_class = class_weights(labels, np.array([float(r["total"]) for r in totals]))
    mapping = F.create_map(*[F.lit(x) for label, w in by_class.items() for x in (int(label), float(w))])
    return (F.col(weight_col) * mapping[F.col(LABEL_COL)]).cast("float")


def run_horovod(
    job: FitJob,
    model: str,
    train: DataFrame,
    validation: DataFrame | None,
    build: Any,
    batches: Any,
    **cfg: Any,
) -> tuple[Any, DistributedResult]:
    """fit_distributed with the run's ranks and seed; (rank 0's model, loaded on the driver, its result)."""
    s = job.settings
    config = DistributedConfig(staging_uri(job, model), num_proc=s.num_proc, seed=s.seed, **cfg)
    result = fit_distributed(job.spark, train, build, batches, config, validation)
    keras_model = load_keras(job.spark, result.model_uri)
    storage.delete(job.spark, config.staging_uri)
    return keras_model, result


def distributed_info(result: DistributedResult, num_proc: int) -> dict[str, Any]:
    """What the sidecar's history adds about the run (how the ranks split the rows, when it stopped)."""
    history = result.history
    return {
        "backend": DISTRIBUTED_HOROVOD,
        "num_proc": num_proc,
        "shard_rows": result.shard_rows,
        "seconds": round(result.seconds, 3),
        "monitor": history["monitor"],
        "best_epoch": history["best_epoch"],
        "epoch_seconds": history["epoch_seconds"],
    }


def loss_summary(history: dict[str, Any]) -> dict[str, Any]:
    """The single-process trainers' history keys."""
    return {
        "epochs_run": history["epochs_run"],
        "final_loss": float(history["loss"][-1]),
        "best_val_loss": float(min(history["val_loss"])) if history["val_loss"] else None,
    }


def non_empty(df: DataFrame) -> DataFrame | None:
    return None if df.isEmpty() else df


# ---------------------------------------------------------------- mlp


def fit_mlp(spec: ModelSpec, job: FitJob) -> Fitted:
    """keras_head.fit_keras_head on Horovod ranks: preprocessing fitted on Spark, rows sharded (not
    collected to the driver)."""
    s, params = job.settings, spec.params(job.settings)
    features = spec.feature_spec(job.feature_spec)
    stages, column = preprocessing_stages(features)
    started = time.monotonic()
    preprocess = Pipeline(stages=stages).fit(job.fit_rows)
    prepared = keras_head.training_frame(job, preprocess)
    x = vector_to_array(F.col(column), "float32").alias(X_COL)
    fit_part = prepared.where(~F.col("_val"))
    train = fit_part.select("image_id", x, LABEL_COL, balanced_weight(fit_part, "_w").alias(WEIGHT_COL))
    scored = prepared.where(F.col("_val") & ~F.col("synthetic"))
    validation = non_empty(scored.select("image_id", x, LABEL_COL, F.lit(1.0).alias(WEIGHT_COL)))
    dim = features.pca_k or features.feature_dim
    build = functools.partial(
        keras_head.build_keras_head, dim, params["dropout"], params["learning_rate"], s.seed
    )
    batches = FeatureBatches(
        keras_head.BATCH, x_col=X_COL, y_col=LABEL_COL, weight_col=WEIGHT_COL, seed=s.seed
    )
    model, result = run_horovod(
        job,
        spec.name,
        train,
        validation,
        build,
        batches,
        epochs=params["epochs"],
        patience=keras_head.PATIENCE,
    )
    info = {
        **loss_summary(result.history),
        "train_rows": sum(result.shard_rows),
        "val_rows": 0 if validation is None else validation.count(),
        "distributed": distributed_info(result, s.num_proc),
    }
    trained = TrainedModel(spec.name, {}, preprocess, model)
    return Fitted(trained, params, time.monotonic() - started, features, history=info)


# ---------------------------------------------------------------- finetune


def build_finetune(backbone: Any, config: finetune.FinetuneConfig) -> Any:
    """What the ranks build: the recipe's network ending in its softmax, compiled with AdamW at the recipe's
    peak step (a constant the ranks scale by their number; no warmup/cosine schedule and no class sampler on
    the ranks: the rows carry balanced sample weights instead)."""
    import keras

    model = finetune.build_models(backbone, config, 0)[1]
    optimizer = keras.optimizers.AdamW(config.learning_rate, weight_decay=config.weight_decay)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    return model


def trainable_layers(model: Any) -> int:
    """Layers with weights the fine-tuning trained inside the backbone (finetune.set_trainable's count)."""
    backbone = next(layer for layer in model.layers if hasattr(layer, "layers"))
    return sum(1 for layer in backbone.layers if layer.trainable and layer.weights)


def image_rows(job: FitJob, max_images: int | None) -> tuple[DataFrame, DataFrame | None]:
    """(training rows, validation rows) as finetune.training_images selects them, with their JPEG bytes:
    image_id, image, label, weight (balanced over the training rows' classes)."""
    s = job.settings
    weight = (F.col(WEIGHT_COL) if job.weighted else F.lit(1.0)).cast("double").alias("_w")
    real = job.fit_rows.where(~F.col("synthetic")).select("image_id", LABEL_COL, weight)
    capped = tables.with_curated_images(job.spark, finetune.capped(real, max_images, s.seed), s.curated)
    if capped.isEmpty():
        raise ValueError(f"finetune: no training images found under {s.curated}")
    train = capped.select("image_id", "image", LABEL_COL, balanced_weight(capped, "_w").alias(WEIGHT_COL))
    held_out = job.scoring.where(F.col("split") == SPLIT_VALIDATION).select("image_id", "dx")
    validation = tables.with_curated_images(job.spark, held_out, s.curated).select(
        "image_id", "image", label_expr(F.col("dx")).alias(LABEL_COL), F.lit(1.0).alias(WEIGHT_COL)
    )
    return train, non_empty(validation.where(F.col(LABEL_COL).isNotNull()))


def fit_finetune(spec: ModelSpec, job: FitJob) -> Fitted:
    """finetune.fit_finetune on Horovod ranks: every rank decodes only its own shard's images."""
    s = job.settings
    config = finetune.config_of(spec, s)
    backbone = finetune.finetune_backbone(job, config.input_size)
    max_images = spec.params(s)["max_images"]
    started = time.monotonic()
    train, validation = image_rows(job, max_images)
    build = functools.partial(build_finetune, backbone, config)
    batches = ImageBatches(
        backbone, config.batch_size, y_col=LABEL_COL, weight_col=WEIGHT_COL, seed=config.seed
    )
    model, result = run_horovod(
        job, spec.name, train, validation, build, batches, epochs=config.epochs, patience=config.patience
    )
    info = {
        **loss_summary(result.history),
        "train_images": sum(result.shard_rows),
        "val_images": 0 if validation is None else validation.count(),
        "trainable_layers": trainable_layers(model),
        "distributed": distributed_info(result, s.num_proc),
    }
    return finetune.fitted(spec, backbone, config, max_images, model, info, started, s.curated)


#: The Horovod trainer of each model of registry.HOROVOD_MODELS.
TRAINERS = {"mlp": fit_mlp, "finetune": fit_finetune}
