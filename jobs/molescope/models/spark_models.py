"""The Spark ML model types: multinomial logistic regression (`lr`), random forest (`rf`) and one-vs-rest
gradient-boosted trees (`gbt`), fitted as one Spark `Pipeline` (preprocessing + classifier), optionally with
a lesion-grouped cross-validated search over the registry's grid.

Spark's GBTClassifier is binary, so `gbt` is a `OneVsRest` of GBTs; its per-class probabilities are
recomputed from the one-vs-rest margins (`gbt_probability`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from pyspark.ml import Estimator, Pipeline
from pyspark.ml.classification import GBTClassifier, LogisticRegression, OneVsRest, RandomForestClassifier
from pyspark.ml.evaluation import Evaluator
from pyspark.ml.functions import vector_to_array
from pyspark.ml.tuning import CrossValidator
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from molescope.intake.split import FOLD_ASSIGNMENT, FOLD_COL, assign_folds
from molescope.models.model_specs import FitJob, Fitted, ModelSpec
from molescope.models.trained import LABEL_COL, PREDICTION_COL, WEIGHT_COL, TrainedModel, preprocessing_stages

FORMAT_SPARK = "spark-pipeline"
RAW_COL = "rawPrediction"
#: GBTClassifier minimises log-loss on margins F with p(positive) = 1 / (1 + exp(-2F)).
GBT_MARGIN_SCALE = 2.0
#: Binary GBT fits run concurrently inside OneVsRest; two keeps both local cores busy on small data.
OVR_PARALLELISM = 2


def _common(features_col: str, weighted: bool) -> dict[str, Any]:
    common: dict[str, Any] = {"featuresCol": features_col, "labelCol": LABEL_COL}
    if weighted:
        common["weightCol"] = WEIGHT_COL
    return common


def logistic_regression(params: dict[str, Any], features_col: str, seed: int, weighted: bool) -> Estimator:
    return LogisticRegression(family="multinomial", **_common(features_col, weighted), **params)


def random_forest(params: dict[str, Any], features_col: str, seed: int, weighted: bool) -> Estimator:
    return RandomForestClassifier(seed=seed, **_common(features_col, weighted), **params)


def one_vs_rest_gbt(params: dict[str, Any], features_col: str, seed: int, weighted: bool) -> Estimator:
    binary = GBTClassifier(featuresCol=features_col, labelCol=LABEL_COL, seed=seed, **params)
    return OneVsRest(classifier=binary, parallelism=OVR_PARALLELISM, **_common(features_col, weighted))


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


class BalancedAccuracyEvaluator(Evaluator):
    """Mean per-class recall over the classes present, computed in Spark (CrossValidator's metric)."""

    def _evaluate(self, dataset: DataFrame) -> float:
        hit = (F.col(PREDICTION_COL) == F.col(LABEL_COL)).cast("double")
        recalls = dataset.groupBy(LABEL_COL).agg(F.avg(hit).alias("recall"))
        value = recalls.agg(F.avg("recall")).first()[0]
        return float(value) if value is not None else 0.0

    def isLargerBetter(self) -> bool:
        return True


def grid_target(estimator: Estimator) -> Estimator:
    """The estimator whose params a grid sets: the binary GBT inside a OneVsRest, else itself."""
    return estimator.getClassifier() if isinstance(estimator, OneVsRest) else estimator


def fit_spark(spec: ModelSpec, job: FitJob) -> Fitted:
    """Fit preprocessing + classifier on Spark; with `--cv-folds K`, the best grid point of a lesion-grouped
    K-fold search by balanced accuracy (the folds never split a lesion)."""
    s = job.settings
    params = spec.params(s)
    features = spec.feature_spec(job.feature_spec)
    stages, column = preprocessing_stages(features)
    estimator = spec.build(params, column, s.seed, job.weighted)
    pipeline = Pipeline(stages=[*stages, estimator])
    started = time.monotonic()
    if s.cv_folds == 0:
        model = TrainedModel(spec.name, {}, pipeline.fit(job.fit_rows))
        return Fitted(model, params, time.monotonic() - started, features)
    grid = spec.grid(grid_target(estimator), s)
    search = CrossValidator(
        estimator=pipeline,
        estimatorParamMaps=grid,
        evaluator=BalancedAccuracyEvaluator(),
        numFolds=s.cv_folds,
        foldCol=FOLD_COL,
        seed=s.seed,
    )
    fitted = search.fit(assign_folds(job.fit_rows, s.cv_folds, s.seed))
    seconds = time.monotonic() - started
    best_params = {param.name: value for param, value in grid[int(np.argmax(fitted.avgMetrics))].items()}
    cv = {
        "folds": s.cv_folds,
        "fold_assignment": FOLD_ASSIGNMENT,
        "metric": "balanced_accuracy",
        "grid": [
            {"params": {p.name: v for p, v in point.items()}, "metric": float(metric)}
            for point, metric in zip(grid, fitted.avgMetrics, strict=True)
        ],
        "best_params": best_params,
    }
    model = TrainedModel(spec.name, {}, fitted.bestModel)
    return Fitted(model, {**params, **best_params}, seconds, features, cv=cv)


LOGISTIC_REGRESSION = ModelSpec("lr", FORMAT_SPARK, fit_spark, build=logistic_regression)
RANDOM_FOREST = ModelSpec("rf", FORMAT_SPARK, fit_spark, build=random_forest)
GRADIENT_BOOSTED_TREES = ModelSpec(
    "gbt", FORMAT_SPARK, fit_spark, build=one_vs_rest_gbt, probability=lambda: gbt_probability(F.col(RAW_COL))
)
