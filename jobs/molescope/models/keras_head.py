"""The `mlp` model type: the study's transfer-learning head (Dropout → Dense softmax) on frozen-backbone
features, trained in Keras on the driver from collected features (HAM10000: ~10k × 2048 float32, ~80 MB).

The Spark preprocessing (scaler, PCA) is fitted and saved as a `PipelineModel`, the head as `model.keras`.
Early stopping watches the real rows of a held-out ~10% of lesions; synthetic copies of a held-out lesion are
dropped from training (they would leak it) and from validation (validation measures real images only).
Classes are balanced by sample weight (`molescope.rebalance.balance`) on top of the rows' own weights.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from pyspark.ml import Pipeline
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from molescope.core.constants import CLASSES
from molescope.intake.split import lesion_bucket
from molescope.models.model_specs import FitJob, Fitted, ModelSpec
from molescope.models.trained import LABEL_COL, WEIGHT_COL, TrainedModel, collect_matrix, preprocessing_stages
from molescope.rebalance.balance import balanced_sample_weights

FORMAT_KERAS = "spark-pipeline+keras"
#: Early-stopping split: lesions hashed into this many buckets, one bucket held out (~10%).
VAL_BUCKETS = 10
#: Salt so these buckets are independent of the CV folds made with the same seed.
VAL_SALT = 7919
PATIENCE = 3
BATCH = 64


def build_keras_head(input_dim: int, dropout: float, learning_rate: float, seed: int) -> Any:
    """The study's transfer-learning head on frozen-backbone features: Dropout → Dense softmax(7)."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(input_dim,), name="features")
    hidden = keras.layers.Dropout(dropout, seed=seed)(inputs)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax", name="dx")(hidden)
    model = keras.Model(inputs, outputs, name="molescope_mlp")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        weighted_metrics=["accuracy"],
    )
    return model


def training_frame(job: FitJob, preprocess: Any) -> DataFrame:
    """The preprocessed fit rows with `_val` (held out for early stopping) and `_w` (row weight): what the
    head trains on, here collected to the driver, with `--distributed horovod` sharded over the ranks."""
    held_out = lesion_bucket(job.settings.seed + VAL_SALT, VAL_BUCKETS) == 0
    weight = F.col(WEIGHT_COL) if job.weighted else F.lit(1.0)
    return (
        preprocess.transform(job.fit_rows)
        .withColumn("_val", held_out)
        .withColumn("_w", weight.cast("double"))
    )


def _training_arrays(job: FitJob, preprocess: Any, column: str) -> tuple[np.ndarray, Any]:
    """(features matrix, frame of label / synthetic / held-out flag / row weight) on the driver."""
    return collect_matrix(training_frame(job, preprocess), column, LABEL_COL, "synthetic", "_val", "_w")


def fit_keras_head(spec: ModelSpec, job: FitJob) -> Fitted:
    """Fit the preprocessing on Spark, then the head on the driver, early-stopped on held-out real rows."""
    import keras

    params = spec.params(job.settings)
    features = spec.feature_spec(job.feature_spec)
    stages, column = preprocessing_stages(features)
    started = time.monotonic()
    preprocess = Pipeline(stages=stages).fit(job.fit_rows)
    matrix, pdf = _training_arrays(job, preprocess, column)
    val = pdf["_val"].to_numpy(dtype=bool)
    scored = val & ~pdf["synthetic"].to_numpy(dtype=bool)
    labels = pdf[LABEL_COL].to_numpy().astype(int)
    sample_weight = balanced_sample_weights(labels[~val], pdf["_w"].to_numpy(dtype=float)[~val])
    model = build_keras_head(matrix.shape[1], params["dropout"], params["learning_rate"], job.settings.seed)
    validation = (matrix[scored], labels[scored]) if scored.any() else None
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=PATIENCE, restore_best_weights=True)
    history = model.fit(
        matrix[~val],
        labels[~val],
        sample_weight=sample_weight,
        validation_data=validation,
        epochs=params["epochs"],
        batch_size=BATCH,
        callbacks=[stop] if validation else [],
        shuffle=True,
        verbose=0,
    ).history
    info = {
        "epochs_run": len(history["loss"]),
        "train_rows": int((~val).sum()),
        "val_rows": int(scored.sum()),
        "final_loss": float(history["loss"][-1]),
        "best_val_loss": float(min(history["val_loss"])) if validation else None,
    }
    trained = TrainedModel(spec.name, {}, preprocess, model)
    return Fitted(trained, params, time.monotonic() - started, features, history=info)


KERAS_HEAD = ModelSpec("mlp", FORMAT_KERAS, fit_keras_head)
