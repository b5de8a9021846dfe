"""Trained models: preprocessing, saving and loading, and predicting (used by train and by score).

Every feature model is a preprocessing chain (features array → vector, optional StandardScaler, optional PCA)
followed by its estimator (`molescope.models.model_specs`): a Spark `PipelineModel` under
`<model_uri>/pipeline/`, plus `<model_uri>/model.keras` for a Keras head trained on the driver. An image model
(`finetune`) is a `model.keras` only and scores the curated JPEG bytes itself.

Predictions carry a `split` column copied from the scored rows: `test` for the test split and `validation`
for the lesion-grouped validation part of the training split (the report picks its melanoma threshold there).

Each model directory holds a `molescope_model.json` sidecar (see `SIDECAR_KEYS`); `load_model` reads it
first, so a scorer gets the right artefacts and can check that its features match (`check_feature_spec`).
TensorFlow is imported only inside the functions that need it: the Spark models never pay for it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from pyspark.ml import Estimator, PipelineModel, Transformer
from pyspark.ml.feature import PCA, StandardScaler
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from molescope.core.constants import CLASS_INDEX, CLASSES
from molescope.core.registry import INPUT_IMAGES, SIDECAR_FILE
from molescope.evaluation.rules import DecisionRule
from molescope.features.spec import FeatureSpec, FeatureSpecMismatch
from molescope.io import storage, tables
from molescope.models.fusion import MetadataEncoding, without_metadata
from molescope.models.model_specs import model_spec

log = logging.getLogger(__name__)

PIPELINE_DIR = "pipeline"
KERAS_FILE = "model.keras"
#: Version of the sidecar layout; bump when keys change meaning (2: `validation` figures and the
#: `decision_rule` fitted there replace the test figures; `metadata` encoding).
SIDECAR_VERSION = 2
#: Keys every sidecar carries (the scorer relies on these).
SIDECAR_KEYS: tuple[str, ...] = (
    "sidecar_version",
    "model",
    "format",
    "classes",
    "params",
    "feature_spec",
    "training_set",
    "fit_seconds",
    "seed",
    "cv",
    "artifacts",
    "metadata",
    "decision_rule",
    "validation",
)
FEATURES_COL = "features"
LABEL_COL = "label"
WEIGHT_COL = "weight"
VECTOR_COL = "features_vec"
SCALED_COL = "features_scaled"
PCA_COL = "features_pca"
PREDICTION_COL = "prediction"
SPLIT_COL = "split"
#: Rows scored per Keras predict batch.
KERAS_PREDICT_BATCH = 512
#: Identity columns a predictions row copies from the scored row.
ID_COLUMNS: tuple[str, ...] = ("image_id", "lesion_id", "dx", SPLIT_COL)


# ---------------------------------------------------------------- pure transforms


def label_expr(dx: Column) -> Column:
    """Label index of `dx` in CLASSES order; null for an unknown or missing diagnosis."""
    mapping = F.create_map(*[x for i, dx_name in enumerate(CLASSES) for x in (F.lit(dx_name), F.lit(i))])
    return mapping[dx].cast(T.IntegerType())


def with_label(df: DataFrame) -> DataFrame:
    return df.withColumn(LABEL_COL, label_expr(F.col("dx")))


def with_vectors(df: DataFrame, metadata: MetadataEncoding | None = None) -> DataFrame:
    """Spark ML estimators take a Vector column; the tables store `features` as array<float>. With a
    metadata encoding the row's encoded age/sex/localization follow the features (missing ones: unknown)."""
    values = F.col(FEATURES_COL)
    if metadata is not None:
        df = without_metadata(df)
        values = F.concat(values, metadata.column())
    return df.withColumn(VECTOR_COL, array_to_vector(values))


def preprocessing_stages(spec: FeatureSpec) -> tuple[list[Transformer | Estimator], str]:
    """Scaler and PCA stages for `spec`, and the name of the column the classifier should read."""
    stages: list[Transformer | Estimator] = []
    column = VECTOR_COL
    if spec.standardize:
        # Centred as well as scaled: the backbone features are non-negative (post-ReLU pooling).
        stages.append(StandardScaler(inputCol=column, outputCol=SCALED_COL, withMean=True, withStd=True))
        column = SCALED_COL
    if spec.pca_k is not None:
        if not 0 < spec.pca_k <= spec.feature_dim:
            raise ValueError(f"PCA k={spec.pca_k} must be in 1..{spec.feature_dim}")
        stages.append(PCA(k=spec.pca_k, inputCol=column, outputCol=PCA_COL))
        column = PCA_COL
    return stages, column


def to_predictions(scored: DataFrame, probability: Column, model_name: str) -> DataFrame:
    """The predictions table contract from a scored frame (prediction column + the model's probabilities)."""
    return scored.select(
        F.col("image_id").cast(T.StringType()),
        F.col("lesion_id").cast(T.StringType()),
        F.col("dx").cast(T.StringType()),
        label_expr(F.col("dx")).alias("label"),
        F.col(PREDICTION_COL).cast(T.IntegerType()).alias("prediction"),
        probability.cast(T.ArrayType(T.DoubleType())).alias("probability"),
        F.lit(model_name).alias("model"),
        F.col(SPLIT_COL).cast(T.StringType()).alias("split"),
    )


def predictions_frame(
    spark: SparkSession, ids: dict[str, list[Any]], probabilities: np.ndarray, model_name: str
) -> DataFrame:
    """The predictions table from driver-side results: ID_COLUMNS lists and an n×7 probability matrix."""
    rows = [
        (
            image_id,
            lesion_id,
            dx,
            CLASS_INDEX.get(dx) if dx is not None else None,
            int(np.argmax(probs)),
            [float(p) for p in probs],
            model_name,
            split,
        )
        for image_id, lesion_id, dx, split, probs in zip(
            *(ids[column] for column in ID_COLUMNS), probabilities, strict=True
        )
    ]
    return spark.createDataFrame(rows, schema=tables.PREDICTIONS_SCHEMA)


def collect_matrix(df: DataFrame, vector_col: str, *columns: str) -> tuple[np.ndarray, Any]:
    """Collect a vector column to the driver as a float32 matrix, with `columns` as a pandas frame.

    Used only by driver-side models: HAM10000 is ~10k rows × 2048 floats (~80 MB), which the driver holds.
    """
    pdf = df.select(*columns, vector_to_array(F.col(vector_col), "float32").alias("_x")).toPandas()
    matrix = np.stack(pdf.pop("_x").to_numpy()) if len(pdf) else np.zeros((0, 0), dtype=np.float32)
    return matrix.astype(np.float32, copy=False), pdf


def check_feature_spec(spec: FeatureSpec, features: DataFrame) -> None:
    """Raise FeatureSpecMismatch unless every row of `features` has the model's backbone, weights and dim."""
    found = (
        features.select("backbone", "weights_id", "feature_dim")
        .distinct()
        .limit(2)  # more than one distinct spec is already a mismatch
        .collect()
    )
    expected = (spec.backbone, spec.weights_id, spec.feature_dim)
    for row in found:
        if (row["backbone"], row["weights_id"], row["feature_dim"]) != expected:
            raise FeatureSpecMismatch(
                f"model expects {expected}, features have {tuple(row)} "
                f"(distinct specs found: {[tuple(r) for r in found]})"
            )


# ---------------------------------------------------------------- the trained model


@dataclass
class TrainedModel:
    """A fitted model with its sidecar; `predict` turns feature (or image) rows into the predictions table."""

    name: str
    sidecar: dict[str, Any]
    pipeline: PipelineModel | None
    keras_model: Any | None = None

    @property
    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec.from_dict(self.sidecar["feature_spec"])

    @cached_property
    def rule(self) -> DecisionRule | None:
        """The decision rule train fitted on the model's validation rows (its sidecar's; parsed once), None
        without one."""
        payload = self.sidecar.get("decision_rule")
        return DecisionRule.from_dict(payload) if payload else None

    @property
    def temperature(self) -> float:
        """The temperature its probabilities are calibrated with (1.0: a model without a rule)."""
        return 1.0 if self.rule is None else self.rule.temperature

    @property
    def scores_images(self) -> bool:
        return model_spec(self.name).input == INPUT_IMAGES

    @property
    def metadata(self) -> MetadataEncoding | None:
        """The metadata encoding the model was trained with (None: images only)."""
        return MetadataEncoding.from_dict(self.sidecar.get("metadata"))

    def predict(self, rows: DataFrame, check: bool = True, tta: str | None = None) -> DataFrame:
        """Predictions (architecture.md schema) for every row: features-schema rows, or for an image model
        curated-image rows (image_id, lesion_id, dx, split, image) with its TTA views (`tta`, by default the
        ones it was trained with). A model with metadata reads age/sex/localization when the rows have
        them (unknown otherwise)."""
        if self.scores_images:
            if "image" not in rows.columns:
                raise ValueError(f"model {self.name!r} scores images: use predict_images on curated rows")
            return self.predict_images(rows, tta)
        if check:
            check_feature_spec(self.feature_spec, rows)
        if SPLIT_COL not in rows.columns:
            rows = rows.withColumn(SPLIT_COL, F.lit(None).cast(T.StringType()))
        prepared = self.pipeline.transform(with_vectors(rows, self.metadata))
        if self.keras_model is None:
            return to_predictions(prepared, model_spec(self.name).probability(), self.name)
        return self._predict_keras(prepared)

    def _predict_keras(self, prepared: DataFrame) -> DataFrame:
        _, column = preprocessing_stages(self.feature_spec)
        matrix, pdf = collect_matrix(prepared, column, *ID_COLUMNS)
        probabilities = (
            self.keras_model.predict(matrix, batch_size=KERAS_PREDICT_BATCH, verbose=0).astype(np.float64)
            if len(matrix)
            else np.zeros((0, len(CLASSES)))
        )
        return predictions_frame(prepared.sparkSession, pdf.to_dict("list"), probabilities, self.name)

    def predict_images(self, images: DataFrame, tta: str | None = None) -> DataFrame:
        """Predictions of an image model for curated-image rows (image_id, lesion_id, dx, split, image),
        brought to the driver one partition at a time and scored there."""
        predict_images = model_spec(self.name).predict_images
        if self.keras_model is None or predict_images is None:
            raise ValueError(f"model {self.name!r} scores features: use predict")
        return predict_images(self, images, tta)


# ---------------------------------------------------------------- persistence


def save_keras(spark: SparkSession, model: Any, uri: str) -> None:
    """Keras writes only to local files: save to a temp file, then copy the bytes to the Hadoop URI."""
    with tempfile.TemporaryDirectory(prefix="molescope-keras-") as tmp:
        path = os.path.join(tmp, KERAS_FILE)
        model.save(path)
        with open(path, "rb") as handle:
            storage.write_bytes(spark, uri, handle.read())


def load_keras(spark: SparkSession, uri: str) -> Any:
    import keras

    with tempfile.TemporaryDirectory(prefix="molescope-keras-") as tmp:
        path = os.path.join(tmp, KERAS_FILE)
        with open(path, "wb") as handle:
            handle.write(storage.read_bytes(spark, uri))
        return keras.models.load_model(path)


def save_artifacts(spark: SparkSession, model_uri: str, model: TrainedModel) -> dict[str, str]:
    """Save the model's pipeline and/or Keras model into a new version folder of `model_uri`; the sidecar's
    `artifacts` (paths relative to `model_uri`). Nothing loads them until the sidecar naming them is written
    (`publish_sidecar`), so a kill here leaves the previous model in place."""
    version = tables.version_name()
    artifacts = {}
    if model.pipeline is not None:
        artifacts["pipeline"] = f"{version}/{PIPELINE_DIR}"
        model.pipeline.write().save(storage.join(model_uri, artifacts["pipeline"]))
    if model.keras_model is not None:
        artifacts["keras"] = f"{version}/{KERAS_FILE}"
        save_keras(spark, model.keras_model, storage.join(model_uri, artifacts["keras"]))
    return artifacts


def publish_sidecar(spark: SparkSession, model_uri: str, sidecar: dict[str, Any]) -> None:
    """Write the sidecar (one atomic write: the model it names is now the model) and delete the versions of
    the model it does not name."""
    storage.write_json(spark, storage.join(model_uri, SIDECAR_FILE), sidecar)
    keep = {path.split("/", 1)[0] for path in sidecar.get("artifacts", {}).values()}
    tables.delete_versions(spark, model_uri, keep)


def load_model(spark: SparkSession, model_uri: str) -> TrainedModel:
    """Load a model saved by the train stage from `<run>/models/<model>/` (sidecar first)."""
    sidecar = storage.read_json(spark, storage.join(model_uri, SIDECAR_FILE))
    model_spec(sidecar["model"])  # an unregistered model type fails here, before any artefact is read
    artifacts = sidecar["artifacts"]
    pipeline = None
    if "pipeline" in artifacts:
        pipeline = PipelineModel.load(storage.join(model_uri, artifacts["pipeline"]))
    keras_model = None
    if "keras" in artifacts:
        keras_model = load_keras(spark, storage.join(model_uri, artifacts["keras"]))
    return TrainedModel(name=sidecar["model"], sidecar=sidecar, pipeline=pipeline, keras_model=keras_model)
