"""Model builders, scoring and persistence shared by the train stage and the stages that score later.

Every model is a preprocessing chain (features array → vector, optional StandardScaler, optional PCA)
followed by a classifier:

- `lr`, `rf`, `gbt`: the whole chain is one Spark `PipelineModel` saved under `<model_uri>/pipeline/`.
  Spark's GBTClassifier is binary, so `gbt` is a `OneVsRest` of GBTs; its per-class probabilities are
  recomputed from the one-vs-rest margins (see `gbt_probability`).
- `mlp`: the study's transfer-learning head (Dropout → Dense softmax) in Keras, trained on the driver.
  The Spark preprocessing is saved as a `PipelineModel` under `<model_uri>/pipeline/` and the head as
  `<model_uri>/model.keras`.
- `finetune`: the backbone itself (partly or fully unfrozen) plus a softmax head, trained on the curated
  images (see `molescope.finetune`); saved as `<model_uri>/model.keras` only. It scores images, not
  features: use `TrainedModel.predict_images`.

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
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from pyspark.ml import Estimator, Pipeline, PipelineModel, Transformer
from pyspark.ml.classification import (
    GBTClassifier,
    LogisticRegression,
    OneVsRest,
    RandomForestClassifier,
)
from pyspark.ml.feature import PCA, StandardScaler
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from molescope import storage
from molescope.constants import CLASS_INDEX, CLASSES
from molescope.registry import INPUT_IMAGES, MODEL_TYPES, SIDECAR_FILE, model_names

log = logging.getLogger(__name__)

SIDECAR = SIDECAR_FILE
PIPELINE_DIR = "pipeline"
KERAS_FILE = "model.keras"
#: Version of the sidecar layout; bump when keys change meaning.
SIDECAR_VERSION = 1
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
)
FORMAT_SPARK = "spark-pipeline"
FORMAT_KERAS = "spark-pipeline+keras"
FORMAT_FINETUNE = "keras-finetune"

SPARK_MODELS: tuple[str, ...] = ("lr", "rf", "gbt")
#: Models that score images (curated JPEG bytes) rather than feature vectors.
IMAGE_MODELS: tuple[str, ...] = model_names(INPUT_IMAGES)
STANDARDIZED_MODELS: frozenset[str] = frozenset(name for name, m in MODEL_TYPES.items() if m.standardize)

FEATURES_COL = "features"
LABEL_COL = "label"
WEIGHT_COL = "weight"
VECTOR_COL = "features_vec"
SCALED_COL = "features_scaled"
PCA_COL = "features_pca"
RAW_COL = "rawPrediction"
PROBABILITY_COL = "probability"
PREDICTION_COL = "prediction"
SPLIT_COL = "split"

#: GBTClassifier minimises log-loss on margins F with p(positive) = 1 / (1 + exp(-2F)).
GBT_MARGIN_SCALE = 2.0
#: Binary GBT fits run concurrently inside OneVsRest; two keeps both local cores busy on small data.
OVR_PARALLELISM = 2
#: Rows scored per Keras predict batch.
KERAS_PREDICT_BATCH = 512

PREDICTIONS_SCHEMA = T.StructType(
    [
        T.StructField("image_id", T.StringType()),
        T.StructField("lesion_id", T.StringType()),
        T.StructField("dx", T.StringType()),
        T.StructField("label", T.IntegerType()),
        T.StructField("prediction", T.IntegerType()),
        T.StructField("probability", T.ArrayType(T.DoubleType())),
        T.StructField("model", T.StringType()),
        T.StructField("split", T.StringType()),
    ]
)


class FeatureSpecMismatch(ValueError):
    """Features handed to a model differ from the ones it was trained on."""


@dataclass(frozen=True)
class FeatureSpec:
    """What a model expects as input: which backbone features, and how they are reduced."""

    backbone: str
    weights_id: str
    feature_dim: int
    pca_k: int | None
    standardize: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> FeatureSpec:
        return cls(**{key: payload[key] for key in cls.__dataclass_fields__})


# ---------------------------------------------------------------- pure transforms


def label_expr(dx: Column) -> Column:
    """Label index of `dx` in CLASSES order; null for an unknown or missing diagnosis."""
    mapping = F.create_map(*[x for i, dx_name in enumerate(CLASSES) for x in (F.lit(dx_name), F.lit(i))])
    return mapping[dx].cast(T.IntegerType())


def with_label(df: DataFrame) -> DataFrame:
    return df.withColumn(LABEL_COL, label_expr(F.col("dx")))


def with_vectors(df: DataFrame) -> DataFrame:
    """Spark ML estimators take a Vector column; the tables store `features` as array<float>."""
    return df.withColumn(VECTOR_COL, array_to_vector(F.col(FEATURES_COL)))


def gbt_probability(raw: Column) -> Column:
    """Per-class probabilities from a OneVsRest-of-GBT `rawPrediction` (the positive-class margins).

    Each binary GBT's own `probability[1]` is sigmoid(2·margin); OneVsRest keeps only the margins, so the
    sigmoid is reapplied and the 7 one-vs-rest probabilities are normalised to sum to 1 for ranking/AUC.
    """
    positive = F.transform(
        vector_to_array(raw), lambda m: F.lit(1.0) / (F.lit(1.0) + F.exp(-GBT_MARGIN_SCALE * m))
    )
    total = F.aggregate(positive, F.lit(0.0), lambda acc, p: acc + p)
    return F.transform(positive, lambda p: p / total)


def to_predictions(scored: DataFrame, model_name: str) -> DataFrame:
    """The predictions table contract from a scored frame (label, prediction, probability columns)."""
    probability = (
        gbt_probability(F.col(RAW_COL)) if model_name == "gbt" else vector_to_array(F.col(PROBABILITY_COL))
    )
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


# ---------------------------------------------------------------- builders


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


def classifier(name: str, params: dict[str, Any], features_col: str, seed: int, weighted: bool) -> Estimator:
    """The Spark classifier for `name` with `params` (Spark param names, e.g. regParam, numTrees)."""
    common: dict[str, Any] = {"featuresCol": features_col, "labelCol": LABEL_COL}
    if weighted:
        common["weightCol"] = WEIGHT_COL
    if name == "lr":
        return LogisticRegression(family="multinomial", **common, **params)
    if name == "rf":
        return RandomForestClassifier(seed=seed, **common, **params)
    if name == "gbt":
        binary = GBTClassifier(featuresCol=features_col, labelCol=LABEL_COL, seed=seed, **params)
        return OneVsRest(classifier=binary, parallelism=OVR_PARALLELISM, **common)
    raise ValueError(f"not a Spark model: {name!r} (expected one of {SPARK_MODELS})")


def build_pipeline(
    name: str, params: dict[str, Any], spec: FeatureSpec, seed: int, weighted: bool
) -> tuple[Pipeline, Estimator]:
    """Preprocessing + classifier pipeline, and the classifier itself (the param grid targets it)."""
    stages, column = preprocessing_stages(spec)
    estimator = classifier(name, params, column, seed, weighted)
    return Pipeline(stages=[*stages, estimator]), estimator


def grid_target(estimator: Estimator) -> Estimator:
    """The estimator whose params a grid sets: the binary GBT inside a OneVsRest, else itself."""
    return estimator.getClassifier() if isinstance(estimator, OneVsRest) else estimator


# ---------------------------------------------------------------- Keras head


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


def collect_matrix(df: DataFrame, vector_col: str, *columns: str) -> tuple[np.ndarray, Any]:
    """Collect a vector column to the driver as a float32 matrix, with `columns` as a pandas frame.

    Used only by the Keras head: HAM10000 is ~10k rows × 2048 floats (~80 MB), which the driver holds.
    """
    pdf = df.select(*columns, vector_to_array(F.col(vector_col), "float32").alias("_x")).toPandas()
    matrix = np.stack(pdf.pop("_x").to_numpy()) if len(pdf) else np.zeros((0, 0), dtype=np.float32)
    return matrix.astype(np.float32, copy=False), pdf


# ---------------------------------------------------------------- loading and scoring


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


@dataclass
class TrainedModel:
    """A fitted model with its sidecar; `predict` turns a features table into the predictions table."""

    name: str
    sidecar: dict[str, Any]
    pipeline: PipelineModel | None
    keras_model: Any | None = None

    @property
    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec.from_dict(self.sidecar["feature_spec"])

    def predict(self, features: DataFrame, check: bool = True) -> DataFrame:
        """Predictions (architecture.md schema) for every row of a features-schema frame."""
        if self.pipeline is None:
            raise ValueError(f"model {self.name!r} scores images: use predict_images on curated rows")
        if check:
            check_feature_spec(self.feature_spec, features)
        if SPLIT_COL not in features.columns:
            features = features.withColumn(SPLIT_COL, F.lit(None).cast(T.StringType()))
        prepared = self.pipeline.transform(with_vectors(features))
        if self.keras_model is None:
            return to_predictions(prepared, self.name)
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

    def predict_images(self, images: DataFrame, batch_size: int | None = None) -> DataFrame:
        """Predictions for curated-image rows (image_id, lesion_id, dx, split, image) of a `finetune` model.

        The rows are brought to the driver one partition at a time (JPEG bytes only) and scored there.
        """
        from molescope import finetune

        if self.keras_model is None or self.name not in IMAGE_MODELS:
            raise ValueError(f"model {self.name!r} scores features: use predict")
        spec = finetune.spec_from_dict(self.sidecar["params"]["backbone_spec"])
        rows = finetune.collect_rows(images)
        size = batch_size or int(self.sidecar["params"]["batch_size"])
        probabilities = finetune.predict_probabilities(self.keras_model, spec, rows.images, size)
        return predictions_frame(images.sparkSession, rows.columns(), probabilities, self.name)


#: Identity columns a predictions row copies from the scored row.
ID_COLUMNS: tuple[str, ...] = ("image_id", "lesion_id", "dx", SPLIT_COL)


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
    return spark.createDataFrame(rows, schema=PREDICTIONS_SCHEMA)


def load_model(spark: SparkSession, model_uri: str) -> TrainedModel:
    """Load a model saved by the train stage from `<run>/models/<model>/` (sidecar first)."""
    sidecar = storage.read_json(spark, storage.join(model_uri, SIDECAR))
    artifacts = sidecar["artifacts"]
    pipeline = None
    if "pipeline" in artifacts:
        pipeline = PipelineModel.load(storage.join(model_uri, artifacts["pipeline"]))
    keras_model = None
    if sidecar["format"] in (FORMAT_KERAS, FORMAT_FINETUNE):
        keras_model = load_keras(spark, storage.join(model_uri, artifacts["keras"]))
    return TrainedModel(name=sidecar["model"], sidecar=sidecar, pipeline=pipeline, keras_model=keras_model)
