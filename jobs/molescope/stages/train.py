"""Train 7-class models (Spark LR / RF / one-vs-rest GBT, Keras head), score the test split, pick a champion.

Inputs: the run's `train_set` (features columns + weight, synthetic, source_image_id) and the features table
(`features/<backbone>/<weights_id>/`, partitioned by batch_id) whose `split == 'test'` rows are the test set.
Outputs under the run prefix `--out`:

- `models/<model>/`: the saved model + `molescope_model.json` sidecar (see `molescope.models`);
- `predictions/<model>/`: Parquet predictions (architecture.md schema) on the test split (`split = 'test'`)
  and on the validation part of the training split (`split = 'validation'`);
- `models/champion.json`: the best model by `--champion-metric` on the test split.

Validation part (`--validation-fraction`, default 0.1; 0 disables). Lesions whose hash of (seed, lesion_id)
falls below the fraction are held out of fitting; their real images are scored as `validation`, which is
where the report picks the melanoma operating point. A synthetic row (oversampled, SMOTE, augmented) belongs
to the lesion of its source image, so copies of a held-out lesion are dropped from fitting (no leakage)
and are not scored. Test metrics, sidecars and the champion use the test rows only, with the ISIC rules of
`molescope.metrics` (a row whose top probability ties is wrong).

Hyper-parameter search (`--cv-folds K`) is a CrossValidator whose folds are a hash of lesion_id, so all
images of a lesion (and the synthetic copies made from them) sit in one fold: no lesion is ever in both a
fold's training and validation parts.

The `mlp` head is trained on the driver from collected features (HAM10000: ~10k × 2048 float32, ~80 MB).
`finetune` fine-tunes the backbone on the curated images (`--curated`) on the driver (`molescope.finetune`:
JPEG bytes collected partition by partition, decoded per batch); it is early-stopped on the validation part
and scores the validation and test images themselves. Its backbone is `--backbone/--weights/--alpha`, or the
features' backbone and weights_id with the weights source from `--weights` or the features reference JSON.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.evaluation import Evaluator
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from sklearn.metrics import f1_score

from molescope import finetune, metrics, models, storage
from molescope.backbones import BackboneSpec, resolve_backbone
from molescope.constants import CLASSES, SPLIT_TEST, SPLIT_VALIDATION
from molescope.models import FeatureSpec, TrainedModel
from molescope.registry import (
    CHAMPION_FILE,
    CHAMPION_METRICS,
    DEFAULT_CHAMPION_METRIC,
    DEFAULT_MODELS,
    DEFAULT_SEED,
    DEFAULT_VALIDATION_FRACTION,
    FEATURES_REF_SUFFIX,
    MODEL_TYPES,
    UPSAMPLE_SUMMARY_FILE,
    WEIGHTS_IMAGENET,
)
from molescope.stages.upsample import (
    CURATED_IMAGE_SCHEMA,
    FEATURES_SCHEMA,
    backbone_spec,
    read_features,
    resolve_features_uri,
)

log = logging.getLogger(__name__)

FOLD_COL = "fold"
#: Keras validation split: lesions hashed into this many buckets, one bucket held out (~10%).
MLP_VAL_BUCKETS = 10
MLP_PATIENCE = 3
MLP_BATCH = 64
#: Salt so the Keras validation buckets are independent of the CV folds made with the same seed.
MLP_VAL_SALT = 7919
#: Small grids for --cv-folds > 0, around the CLI values (Spark param names of the classifier).
LR_REG_GRID = (0.001, 0.01, 0.1)
LR_ELASTIC_GRID = (0.0, 0.5)
RF_DEPTH_GRID = (5, 10)
GBT_DEPTH_GRID = (3, 5)
#: Salt so the validation part is independent of the CV folds and the mlp's early-stopping buckets.
VALIDATION_SALT = 104729
#: Resolution of the lesion hash mapped to [0, 1) for the validation part.
VALIDATION_UNIT_BUCKETS = 1 << 20
VAL_COL = "_validation"
GROUP_COL = "_source_lesion"


@dataclass(frozen=True)
class Settings:
    train_set: str
    features: str
    out: str
    batches: tuple[str, ...] | None = None
    models: tuple[str, ...] = DEFAULT_MODELS
    pca_k: int | None = None
    #: None: weight rows when the train_set weights are not all 1.
    use_weights: bool | None = None
    lr_reg: float = 0.01
    lr_elastic_net: float = 0.0
    lr_max_iter: int = 100
    rf_trees: int = 100
    rf_depth: int = 10
    gbt_iter: int = 20
    gbt_depth: int = 5
    cv_folds: int = 0
    seed: int = DEFAULT_SEED
    mlp_epochs: int = 20
    mlp_dropout: float = 0.5
    mlp_learning_rate: float = 1e-3
    champion_metric: str = DEFAULT_CHAMPION_METRIC
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION
    curated: str | None = None
    backbone: str | None = None
    weights: str | None = None
    alpha: float | None = None
    finetune_config: finetune.FinetuneConfig = field(default_factory=finetune.FinetuneConfig)
    finetune_max_images: int | None = None

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--train-set", required=True, help="train_set table URI (<run>/train_set)")
        parser.add_argument(
            "--features",
            required=True,
            help="features table URI or a *.json ref to it; split=='test' is scored",
        )
        parser.add_argument("--out", required=True, help="run prefix: writes models/ and predictions/")
        parser.add_argument("--batches", default=None, help="comma list of batch ids for the test set")
        parser.add_argument(
            "--models", default=",".join(DEFAULT_MODELS), help=f"comma list of {tuple(MODEL_TYPES)}"
        )
        parser.add_argument("--pca", default="none", help="PCA components before the classifier, or none")
        parser.add_argument(
            "--use-weights",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="weight column as weightCol (default: on when the weights are not all 1)",
        )
        parser.add_argument("--lr-reg", type=float, default=0.01)
        parser.add_argument("--lr-elastic-net", type=float, default=0.0)
        parser.add_argument("--lr-max-iter", type=int, default=100)
        parser.add_argument("--rf-trees", type=int, default=100)
        parser.add_argument("--rf-depth", type=int, default=10)
        parser.add_argument("--gbt-iter", type=int, default=20)
        parser.add_argument("--gbt-depth", type=int, default=5)
        parser.add_argument("--cv-folds", type=int, default=0, help="0: no search; K: lesion-grouped K-fold")
        parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
        parser.add_argument("--mlp-epochs", type=int, default=20)
        parser.add_argument("--mlp-dropout", type=float, default=0.5)
        parser.add_argument("--mlp-learning-rate", type=float, default=1e-3)
        parser.add_argument("--champion-metric", default=DEFAULT_CHAMPION_METRIC, choices=CHAMPION_METRICS)
        parser.add_argument(
            "--validation-fraction",
            type=float,
            default=DEFAULT_VALIDATION_FRACTION,
            help="share of training lesions held out and scored as split 'validation' (0: none)",
        )
        add_finetune_arguments(parser)

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> Settings:
        names = tuple(name.strip() for name in ns.models.split(",") if name.strip())
        unknown = sorted(set(names) - set(MODEL_TYPES))
        if unknown:
            raise ValueError(f"unknown models {unknown}; expected some of {tuple(MODEL_TYPES)}")
        if ns.cv_folds == 1 or ns.cv_folds < 0:
            raise ValueError("--cv-folds must be 0 (no search) or at least 2")
        if not 0 <= ns.validation_fraction < 1:
            raise ValueError("--validation-fraction must be in [0, 1)")
        if "finetune" in names and not ns.curated:
            raise ValueError("model finetune needs --curated (the curated images root)")
        batches = tuple(b.strip() for b in ns.batches.split(",") if b.strip()) if ns.batches else None
        return cls(
            train_set=ns.train_set,
            features=ns.features,
            out=ns.out,
            batches=batches,
            models=names,
            pca_k=None if ns.pca.lower() == "none" else int(ns.pca),
            use_weights=ns.use_weights,
            lr_reg=ns.lr_reg,
            lr_elastic_net=ns.lr_elastic_net,
            lr_max_iter=ns.lr_max_iter,
            rf_trees=ns.rf_trees,
            rf_depth=ns.rf_depth,
            gbt_iter=ns.gbt_iter,
            gbt_depth=ns.gbt_depth,
            cv_folds=ns.cv_folds,
            seed=ns.seed,
            mlp_epochs=ns.mlp_epochs,
            mlp_dropout=ns.mlp_dropout,
            mlp_learning_rate=ns.mlp_learning_rate,
            champion_metric=ns.champion_metric,
            validation_fraction=ns.validation_fraction,
            curated=ns.curated,
            backbone=ns.backbone,
            weights=ns.weights,
            alpha=ns.alpha,
            finetune_config=finetune.FinetuneConfig(
                epochs=ns.finetune_epochs,
                unfreeze=ns.finetune_unfreeze,
                layers=ns.finetune_layers,
                batch_size=ns.finetune_batch_size,
                learning_rate=ns.finetune_learning_rate,
                seed=ns.seed,
            ),
            finetune_max_images=ns.finetune_max_images,
        )


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI of the `finetune` model (images root, backbone, training schedule)."""
    parser.add_argument(
        "--curated", default=None, help="curated root (reads <curated>/images); finetune only"
    )
    parser.add_argument("--backbone", default=None, help="finetune backbone (default: the features' one)")
    parser.add_argument(
        "--weights",
        default=None,
        help="backbone weights source: imagenet | random | path | s3a:// (default: from the features ref)",
    )
    parser.add_argument("--alpha", type=float, default=None, help="MobileNet width, with --backbone")
    parser.add_argument("--finetune-epochs", type=int, default=finetune.DEFAULT_EPOCHS)
    parser.add_argument(
        "--finetune-unfreeze", default=finetune.UNFREEZE_TOP, choices=finetune.UNFREEZE_CHOICES
    )
    parser.add_argument(
        "--finetune-layers",
        type=int,
        default=finetune.DEFAULT_LAYERS,
        help="top layers trained (unfreeze top)",
    )
    parser.add_argument("--finetune-batch-size", type=int, default=finetune.DEFAULT_BATCH_SIZE)
    parser.add_argument("--finetune-learning-rate", type=float, default=finetune.DEFAULT_LEARNING_RATE)
    parser.add_argument(
        "--finetune-max-images", type=int, default=None, help="cap on training images (default: all)"
    )


# ---------------------------------------------------------------- pure transforms


def lesion_bucket(seed: int, buckets: int) -> Column:
    """Bucket in [0, buckets) from a hash of lesion_id (image_id when a row has no lesion)."""
    group = F.coalesce(F.col("lesion_id"), F.col("image_id"))
    return F.pmod(F.xxhash64(F.lit(seed), group), F.lit(buckets)).cast("int")


def assign_folds(df: DataFrame, k: int, seed: int) -> DataFrame:
    """Add `fold` so that every row of a lesion lands in the same fold (CrossValidator's foldCol)."""
    return df.withColumn(FOLD_COL, lesion_bucket(seed, k))


def test_split(features: DataFrame) -> DataFrame:
    return features.where(F.col("split") == SPLIT_TEST)


def with_source_lesion(train: DataFrame) -> DataFrame:
    """Add GROUP_COL: the lesion of a row's source image (its own lesion for real rows).

    A synthetic row's source is found through source_image_id among the real rows; when it is not there,
    the row's own lesion_id (which upsample copies from the source) stands in.
    """
    real = train.where(~F.col("synthetic")).select(
        F.col("image_id").alias("_source_id"), F.col("lesion_id").alias("_source_lesion_id")
    )
    joined = train.join(real, on=train["source_image_id"] == real["_source_id"], how="left")
    group = F.coalesce(F.col("_source_lesion_id"), F.col("lesion_id"), F.col("image_id"))
    return joined.withColumn(GROUP_COL, group).drop("_source_id", "_source_lesion_id")


def validation_flag(seed: int, fraction: float) -> Column:
    """True for rows whose source lesion's hash of (seed, lesion) falls in the held-out `fraction`."""
    bucket = F.pmod(
        F.xxhash64(F.lit(seed), F.lit(VALIDATION_SALT), F.col(GROUP_COL)), F.lit(VALIDATION_UNIT_BUCKETS)
    )
    return bucket < F.lit(round(fraction * VALIDATION_UNIT_BUCKETS))


def split_validation(train: DataFrame, fraction: float, seed: int) -> tuple[DataFrame, DataFrame]:
    """(fit part, validation part) of the training rows, lesion-disjoint.

    The fit part has no row of a held-out lesion, synthetic copies included; the validation part holds the
    held-out lesions' real rows only, with `split` set to 'validation'. fraction 0: (train, empty).
    """
    flagged = with_source_lesion(train).withColumn(VAL_COL, validation_flag(seed, fraction))
    fit = flagged.where(~F.col(VAL_COL)).drop(VAL_COL, GROUP_COL)
    validation = (
        flagged.where(F.col(VAL_COL) & ~F.col("synthetic"))
        .drop(VAL_COL, GROUP_COL)
        .withColumn("split", F.lit(SPLIT_VALIDATION))
    )
    return fit, validation


def features_columns(df: DataFrame) -> DataFrame:
    """The features schema's columns of `df`; a missing one (e.g. a train_set without batch_id) is null."""
    return df.select(
        *[
            F.col(f.name) if f.name in df.columns else F.lit(None).cast(f.dataType).alias(f.name)
            for f in FEATURES_SCHEMA.fields
        ]
    )


def scoring_rows(validation: DataFrame, test: DataFrame) -> DataFrame:
    """Validation + test rows in the features schema (what every feature model scores)."""
    return features_columns(validation).unionByName(features_columns(test))


def training_rows(train_set: DataFrame) -> DataFrame:
    """Labelled training rows with a vector column; rows with an unknown diagnosis cannot be used."""
    return models.with_vectors(models.with_label(train_set)).where(F.col(models.LABEL_COL).isNotNull())


def classifier_params(name: str, s: Settings) -> dict[str, Any]:
    """Spark params of each classifier from the CLI values."""
    if name == "lr":
        return {"regParam": s.lr_reg, "elasticNetParam": s.lr_elastic_net, "maxIter": s.lr_max_iter}
    if name == "rf":
        return {"numTrees": s.rf_trees, "maxDepth": s.rf_depth}
    if name == "gbt":
        return {"maxIter": s.gbt_iter, "maxDepth": s.gbt_depth}
    return {"dropout": s.mlp_dropout, "learning_rate": s.mlp_learning_rate, "epochs": s.mlp_epochs}


def param_grid(name: str, target: Any, s: Settings) -> list[dict]:
    """Small search grid around the CLI values (the CLI value is always one of the grid points)."""
    builder = ParamGridBuilder()
    if name == "lr":
        builder.addGrid(target.regParam, sorted({*LR_REG_GRID, s.lr_reg}))
        builder.addGrid(target.elasticNetParam, sorted({*LR_ELASTIC_GRID, s.lr_elastic_net}))
    elif name == "rf":
        builder.addGrid(target.maxDepth, sorted({*RF_DEPTH_GRID, s.rf_depth}))
    elif name == "gbt":
        builder.addGrid(target.maxDepth, sorted({*GBT_DEPTH_GRID, s.gbt_depth}))
    return builder.build()


class BalancedAccuracyEvaluator(Evaluator):
    """Mean per-class recall over the classes present, computed in Spark (CrossValidator's metric)."""

    def _evaluate(self, dataset: DataFrame) -> float:
        hit = (F.col(models.PREDICTION_COL) == F.col(models.LABEL_COL)).cast("double")
        recalls = dataset.groupBy(models.LABEL_COL).agg(F.avg(hit).alias("recall"))
        value = recalls.agg(F.avg("recall")).first()[0]
        return float(value) if value is not None else 0.0

    def isLargerBetter(self) -> bool:
        return True


# ---------------------------------------------------------------- metrics and selection


def test_metrics(
    labels: np.ndarray,
    proba: np.ndarray,
    val_labels: np.ndarray | None,
    val_proba: np.ndarray | None,
) -> dict[str, Any]:
    """Test-split metrics (rows with an unknown label already removed), the ISIC way (molescope.metrics).

    A row whose top probability ties is undecided and counts as wrong. `operating_point` is the melanoma
    threshold picked on the validation rows when given (else on the test rows), as the report picks it.
    """
    if len(labels) == 0:
        return {"test_rows": 0}
    full = metrics.evaluate(labels, proba, y_val=val_labels, proba_val=val_proba)
    decided = metrics.decide(np.asarray(proba, dtype=float))
    all_labels = list(range(len(CLASSES)))
    return {
        "test_rows": len(labels),
        "validation_rows": 0 if val_labels is None else len(val_labels),
        "n_undecided": full["n_undecided"],
        "accuracy": full["accuracy"],
        "balanced_accuracy": metrics.balanced_accuracy(np.asarray(labels), decided),
        "mel_recall": full["melanoma_recall"],
        "macro_f1": float(f1_score(labels, decided, labels=all_labels, average="macro", zero_division=0)),
        "auc_mean": full["auc"]["mean"],
        "operating_point": full["operating_point"],
    }


def choose_champion(per_model: dict[str, dict[str, Any]], metric: str) -> str | None:
    """Best model by `metric` (ties: the earlier model); None when no model has the metric."""
    scored = [(name, m[metric]) for name, m in per_model.items() if m.get(metric) is not None]
    if not scored:
        return None
    return max(scored, key=lambda item: item[1])[0]


def training_summary(train: DataFrame) -> dict[str, Any]:
    """Rows per class, synthetic rows and weight range of the (labelled) training rows."""
    by_class = train.groupBy("dx").agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.col("synthetic").cast("int")).alias("synthetic"),
        F.sum("weight").alias("weight"),
        F.min("weight").alias("min_weight"),
        F.max("weight").alias("max_weight"),
    )
    rows = {r["dx"]: r for r in by_class.collect()}
    return {
        "rows": int(sum(r["rows"] for r in rows.values())),
        "rows_per_class": {dx: int(rows[dx]["rows"]) if dx in rows else 0 for dx in CLASSES},
        "synthetic_rows": int(sum(r["synthetic"] or 0 for r in rows.values())),
        "weight_per_class": {dx: float(rows[dx]["weight"]) if dx in rows else 0.0 for dx in CLASSES},
        "weights_all_one": all(r["min_weight"] == 1.0 and r["max_weight"] == 1.0 for r in rows.values()),
    }


def feature_spec_of(train: DataFrame, pca_k: int | None, standardize: bool) -> FeatureSpec:
    """The train_set's single (backbone, weights_id, feature_dim); several mean a broken train_set."""
    specs = train.select("backbone", "weights_id", "feature_dim").distinct().limit(2).collect()
    if len(specs) != 1:
        raise models.FeatureSpecMismatch(f"train_set must have one feature spec, found {specs}")
    backbone, weights_id, dim = specs[0]
    return FeatureSpec(backbone, weights_id, int(dim), pca_k, standardize)


# ---------------------------------------------------------------- fitting


@dataclass(frozen=True)
class FitResult:
    pipeline: PipelineModel
    params: dict[str, Any]
    fit_seconds: float
    cv: dict[str, Any] | None
    keras_model: Any | None = None
    keras_history: dict[str, Any] | None = None


def fit_spark(name: str, train: DataFrame, spec: FeatureSpec, weighted: bool, s: Settings) -> FitResult:
    params = classifier_params(name, s)
    pipeline, estimator = models.build_pipeline(name, params, spec, s.seed, weighted)
    started = time.monotonic()
    if s.cv_folds == 0:
        return FitResult(pipeline.fit(train), params, time.monotonic() - started, None)
    target = models.grid_target(estimator)
    grid = param_grid(name, target, s)
    search = CrossValidator(
        estimator=pipeline,
        estimatorParamMaps=grid,
        evaluator=BalancedAccuracyEvaluator(),
        numFolds=s.cv_folds,
        foldCol=FOLD_COL,
        seed=s.seed,
    )
    fitted = search.fit(assign_folds(train, s.cv_folds, s.seed))
    seconds = time.monotonic() - started
    best = int(np.argmax(fitted.avgMetrics))
    best_params = {param.name: value for param, value in grid[best].items()}
    cv = {
        "folds": s.cv_folds,
        "fold_assignment": "pmod(xxhash64(seed, lesion_id), folds)",
        "metric": "balanced_accuracy",
        "grid": [
            {"params": {p.name: v for p, v in point.items()}, "metric": float(metric)}
            for point, metric in zip(grid, fitted.avgMetrics, strict=True)
        ],
        "best_params": best_params,
    }
    return FitResult(fitted.bestModel, {**params, **best_params}, seconds, cv)


def mlp_sample_weights(labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Row weight × balanced class weight (total / (classes × class total)), over the weighted counts."""
    totals = np.bincount(labels, weights=weights, minlength=len(CLASSES))
    present = totals > 0
    class_weight = np.zeros(len(CLASSES))
    class_weight[present] = totals.sum() / (present.sum() * totals[present])
    return weights * class_weight[labels]


def fit_mlp(train: DataFrame, spec: FeatureSpec, weighted: bool, s: Settings) -> FitResult:
    """Keras head on the driver, early-stopped on the real rows of a held-out ~10% of lesions.

    Synthetic copies of a held-out lesion are dropped from training (they would leak it) and from
    validation (validation measures real images only).
    """
    import keras

    stages, column = models.preprocessing_stages(spec)
    started = time.monotonic()
    preprocess = Pipeline(stages=stages).fit(train)
    held_out = lesion_bucket(s.seed + MLP_VAL_SALT, MLP_VAL_BUCKETS) == 0
    prepared = preprocess.transform(train).withColumn("_val", held_out)
    weight = F.col(models.WEIGHT_COL) if weighted else F.lit(1.0)
    matrix, pdf = collect_matrix_with(prepared, column, weight)
    val = pdf["_val"].to_numpy(dtype=bool)
    real = ~pdf["synthetic"].to_numpy(dtype=bool)
    labels = pdf[models.LABEL_COL].to_numpy().astype(int)
    x_train, y_train = matrix[~val], labels[~val]
    sample_weight = mlp_sample_weights(y_train, pdf["_w"].to_numpy(dtype=float)[~val])
    model = models.build_keras_head(matrix.shape[1], s.mlp_dropout, s.mlp_learning_rate, s.seed)
    callbacks, validation = [], None
    if (val & real).any():
        validation = (matrix[val & real], labels[val & real])
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=MLP_PATIENCE, restore_best_weights=True
            )
        )
    history = model.fit(
        x_train,
        y_train,
        sample_weight=sample_weight,
        validation_data=validation,
        epochs=s.mlp_epochs,
        batch_size=MLP_BATCH,
        callbacks=callbacks,
        shuffle=True,
        verbose=0,
    )
    seconds = time.monotonic() - started
    epochs_run = len(history.history["loss"])
    info = {
        "epochs_run": epochs_run,
        "train_rows": len(y_train),
        "val_rows": int((val & real).sum()),
        "final_loss": float(history.history["loss"][-1]),
        "best_val_loss": float(min(history.history["val_loss"])) if validation else None,
    }
    return FitResult(preprocess, classifier_params("mlp", s), seconds, None, model, info)


def collect_matrix_with(prepared: DataFrame, column: str, weight: Column) -> tuple[np.ndarray, Any]:
    with_weight = prepared.withColumn("_w", weight.cast("double"))
    return models.collect_matrix(with_weight, column, models.LABEL_COL, "synthetic", "_val", "_w")


# ---------------------------------------------------------------- I/O shell


def read_strategy(spark: SparkSession, train_set_uri: str) -> str | None:
    """Rebalancing strategy from the upsample summary beside the train_set, when there is one."""
    uri = storage.join(train_set_uri.rstrip("/").rsplit("/", 1)[0], UPSAMPLE_SUMMARY_FILE)
    if not storage.exists(spark, uri):
        return None
    summary = storage.read_json(spark, uri)
    return summary.get("strategy") if isinstance(summary, dict) else None


def save_artifacts(spark: SparkSession, model_uri: str, fit: FitResult) -> dict[str, str]:
    """Save the fitted pipeline (and Keras head); returns the sidecar's `artifacts` (paths relative)."""
    storage.delete(spark, model_uri)
    fit.pipeline.write().overwrite().save(storage.join(model_uri, models.PIPELINE_DIR))
    artifacts = {"pipeline": models.PIPELINE_DIR}
    if fit.keras_model is not None:
        models.save_keras(spark, fit.keras_model, storage.join(model_uri, models.KERAS_FILE))
        artifacts["keras"] = models.KERAS_FILE
    return artifacts


def labelled_arrays(pdf: Any) -> tuple[np.ndarray, np.ndarray]:
    """(labels, n×7 probabilities) of a predictions pandas frame."""
    labels = pdf["label"].to_numpy(dtype=int)
    proba = np.vstack(pdf["probability"].to_numpy()) if len(pdf) else np.zeros((0, len(CLASSES)))
    return labels, proba


def evaluate(spark: SparkSession, predictions_uri: str) -> dict[str, Any]:
    """Test metrics from the written predictions (collected: the test split is small); validation rows
    only choose the melanoma operating point."""
    pdf = (
        spark.read.parquet(predictions_uri)
        .where(F.col("label").isNotNull())
        .select("label", "probability", "split")
        .toPandas()
    )
    is_val = (pdf["split"] == SPLIT_VALIDATION).to_numpy()
    test_labels, test_proba = labelled_arrays(pdf[pdf["split"] == SPLIT_TEST])
    val_labels, val_proba = labelled_arrays(pdf[is_val])
    return test_metrics(test_labels, test_proba, val_labels, val_proba)


def write_outputs(
    spark: SparkSession, s: Settings, trained: TrainedModel, predictions: DataFrame
) -> dict[str, Any]:
    """Write the predictions, evaluate them, then the sidecar (last: its presence means complete)."""
    predictions_uri = storage.join(s.out, "predictions", trained.name)
    predictions.select(*models.PREDICTIONS_SCHEMA.fieldNames()).write.mode("overwrite").parquet(
        predictions_uri
    )
    result = evaluate(spark, predictions_uri)
    model_uri = storage.join(s.out, "models", trained.name)
    storage.write_json(spark, storage.join(model_uri, models.SIDECAR), {**trained.sidecar, "test": result})
    log.info("%s: %s", trained.name, result)
    return result


def base_sidecar(
    name: str, fmt: str, params: dict[str, Any], spec: FeatureSpec, seconds: float, s: Settings
) -> dict[str, Any]:
    """The sidecar keys every model shares (see models.SIDECAR_KEYS)."""
    return {
        "sidecar_version": models.SIDECAR_VERSION,
        "model": name,
        "format": fmt,
        "classes": list(CLASSES),
        "params": params,
        "feature_spec": spec.to_dict(),
        "fit_seconds": round(seconds, 3),
        "seed": s.seed,
        "validation_fraction": s.validation_fraction,
    }


def train_one(
    spark: SparkSession,
    name: str,
    fit_rows: DataFrame,
    scoring: DataFrame,
    base_spec: FeatureSpec,
    training_set: dict[str, Any],
    weighted: bool,
    s: Settings,
) -> dict[str, Any]:
    """Fit, save, score (validation + test) and evaluate one feature model; returns fit seconds + metrics."""
    spec = replace(base_spec, standardize=name in models.STANDARDIZED_MODELS)
    log.info("fitting %s (weighted=%s, pca=%s, cv_folds=%d)", name, weighted, spec.pca_k, s.cv_folds)
    fit = (
        fit_mlp(fit_rows, spec, weighted, s)
        if name == "mlp"
        else fit_spark(name, fit_rows, spec, weighted, s)
    )
    log.info("fitted %s in %.1fs", name, fit.fit_seconds)
    fmt = models.FORMAT_KERAS if fit.keras_model is not None else models.FORMAT_SPARK
    sidecar = {
        **base_sidecar(name, fmt, {**fit.params, "weighted": weighted}, spec, fit.fit_seconds, s),
        "training_set": training_set,
        "cv": fit.cv,
        "keras_history": fit.keras_history,
    }
    model_uri = storage.join(s.out, "models", name)
    sidecar["artifacts"] = save_artifacts(spark, model_uri, fit)
    trained = TrainedModel(name, sidecar, fit.pipeline, fit.keras_model)
    result = write_outputs(spark, s, trained, trained.predict(scoring))
    return {"fit_seconds": round(fit.fit_seconds, 3), **result}


# ---------------------------------------------------------------- finetune


def weights_from_ref(spark: SparkSession, features: str) -> str | None:
    """The weights source featurize recorded in its reference JSON (`weights`), if --features is one."""
    if not features.endswith(FEATURES_REF_SUFFIX):
        return None
    ref = storage.read_json(spark, features)
    return ref.get("weights") if isinstance(ref, dict) else None


def finetune_backbone(spark: SparkSession, s: Settings, spec: FeatureSpec) -> BackboneSpec:
    """--backbone/--weights/--alpha, else the features' backbone + weights_id (weights from --weights/ref)."""
    weights = s.weights or weights_from_ref(spark, s.features)
    if s.backbone:
        return resolve_backbone(s.backbone, weights or WEIGHTS_IMAGENET, s.alpha, seed=s.seed)
    return backbone_spec(spec.backbone, spec.weights_id, weights)


def with_images(spark: SparkSession, rows: DataFrame, curated: str) -> DataFrame:
    """`rows` joined to their curated JPEG bytes; rows without an image drop out.

    image_id alone is the key: clean keeps one curated row per image_id across batches.
    """
    images = spark.read.schema(CURATED_IMAGE_SCHEMA).parquet(storage.join(curated, "images"))
    return rows.join(images.select("image_id", "image"), on="image_id", how="inner")


def capped(rows: DataFrame, limit: int | None, seed: int) -> DataFrame:
    """At most `limit` rows, chosen by a seeded hash of image_id (the same ones on every run)."""
    if limit is None:
        return rows
    return rows.orderBy(F.xxhash64(F.lit(seed), F.col("image_id"))).limit(limit)


def fit_finetune(
    spark: SparkSession,
    s: Settings,
    bb: BackboneSpec,
    fit_rows: DataFrame,
    validation: DataFrame,
    weighted: bool,
) -> tuple[Any, dict[str, Any], float]:
    """Collect the real fit rows' and validation rows' images, fine-tune; returns (model, info, seconds)."""
    real = fit_rows.where(~F.col("synthetic")).select("image_id", "lesion_id", "dx", "split", "weight")
    train_rows = finetune.collect_rows(
        with_images(spark, capped(real, s.finetune_max_images, s.seed), s.curated)
    )
    val_rows = finetune.collect_rows(with_images(spark, features_columns(validation), s.curated))
    if len(train_rows) == 0:
        raise ValueError(f"finetune: no training images found under {s.curated}")
    weights = np.asarray(train_rows.weights) if weighted else np.ones(len(train_rows))
    sample_weight = mlp_sample_weights(train_rows.labels, weights)
    started = time.monotonic()
    model, info = finetune.fit(bb, s.finetune_config, train_rows, sample_weight, val_rows)
    return model, info, time.monotonic() - started


def train_finetune(
    spark: SparkSession,
    fit_rows: DataFrame,
    scoring: DataFrame,
    base_spec: FeatureSpec,
    training_set: dict[str, Any],
    weighted: bool,
    s: Settings,
) -> dict[str, Any]:
    """Fine-tune the backbone on the images, save `.keras`, score validation + test images, evaluate."""
    name = "finetune"
    bb = finetune_backbone(spark, s, base_spec)
    validation = scoring.where(F.col("split") == SPLIT_VALIDATION)
    model, info, seconds = fit_finetune(spark, s, bb, fit_rows, validation, weighted)
    spec = FeatureSpec(bb.name, bb.weights_id, bb.feature_dim, None, False)
    params = {
        **asdict(s.finetune_config),
        "weighted": weighted,
        "max_images": s.finetune_max_images,
        "backbone_spec": finetune.spec_to_dict(bb),
    }
    sidecar = {
        **base_sidecar(name, models.FORMAT_FINETUNE, params, spec, seconds, s),
        "training_set": {**training_set, "curated": s.curated},
        "cv": None,
        "keras_history": info,
        "artifacts": {"keras": models.KERAS_FILE},
    }
    model_uri = storage.join(s.out, "models", name)
    storage.delete(spark, model_uri)
    models.save_keras(spark, model, storage.join(model_uri, models.KERAS_FILE))
    trained = TrainedModel(name, sidecar, None, model)
    predictions = trained.predict_images(with_images(spark, scoring, s.curated))
    return {"fit_seconds": round(seconds, 3), **write_outputs(spark, s, trained, predictions)}


# ---------------------------------------------------------------- run


def validation_summary(fit_rows: DataFrame, validation: DataFrame, fraction: float) -> dict[str, Any]:
    counts = validation.agg(F.count(F.lit(1)).alias("rows"), F.countDistinct("lesion_id").alias("lesions"))
    row = counts.first()
    return {
        "fraction": fraction,
        "assignment": "pmod(xxhash64(seed, salt, source lesion), 2^20) < fraction * 2^20",
        "validation_rows": int(row["rows"]),
        "validation_lesions": int(row["lesions"]),
        "fit_rows": int(fit_rows.count()),
    }


def run(spark: SparkSession, settings: Settings) -> dict:
    train = training_rows(spark.read.parquet(settings.train_set)).cache()
    summary = training_summary(train)
    if summary["rows"] == 0:
        raise ValueError(f"no labelled rows in {settings.train_set}")
    weighted = settings.use_weights if settings.use_weights is not None else not summary["weights_all_one"]
    spec = feature_spec_of(train, settings.pca_k, standardize=False)
    # --features is the table or the DAG's `<run>/features.json` reference to it (upsample's reader).
    features_table = resolve_features_uri(spark, settings.features)
    test = test_split(read_features(spark, features_table, settings.batches))
    models.check_feature_spec(spec, test)
    fit_rows, validation = split_validation(train, settings.validation_fraction, settings.seed)
    fit_rows = fit_rows.cache()
    scoring = scoring_rows(validation, test).cache()
    training_set = {
        "uri": settings.train_set,
        "features_uri": features_table,
        "strategy": read_strategy(spark, settings.train_set),
        **summary,
        "validation": validation_summary(fit_rows, validation, settings.validation_fraction),
    }
    per_model = {}
    for name in settings.models:
        if name in models.IMAGE_MODELS:
            per_model[name] = train_finetune(spark, fit_rows, scoring, spec, training_set, weighted, settings)
        else:
            per_model[name] = train_one(
                spark, name, fit_rows, scoring, spec, training_set, weighted, settings
            )
    for frame in (train, fit_rows, scoring):
        frame.unpersist()
    champion = choose_champion(per_model, settings.champion_metric)
    storage.write_json(
        spark,
        storage.join(settings.out, "models", CHAMPION_FILE),
        {
            "champion": champion,
            "metric": settings.champion_metric,
            "split": SPLIT_TEST,
            "models": per_model,
        },
    )
    for name, model_metrics in per_model.items():
        model_metrics["champion"] = name == champion
    return {
        "models": per_model,
        "champion": champion,
        "champion_metric": settings.champion_metric,
        "weighted": weighted,
        "training_rows": summary["rows"],
        "validation_rows": training_set["validation"]["validation_rows"],
    }
