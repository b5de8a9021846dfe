"""Model types as code: one `ModelSpec` per model registered in `molescope.core.registry.MODEL_TYPES`.

The train stage fits, saves and scores every model through its spec; `TrainedModel.predict` (train, score)
maps its output to class probabilities through it. A spec says:

- `fit(spec, job) -> Fitted`: how the model is trained: on Spark (`spark_models.fit_spark`, with the
  lesion-grouped CV search), on the driver (`keras_head.fit_keras_head`) or on the images themselves
  (`finetune.fit_finetune`). A distributed trainer (e.g. Horovod) is one more such function;
- `build(params, features_col, seed, weighted)`: the Spark estimator, for Spark-fitted models;
- `params(settings)`: its estimator parameters, read from the registry's hyper-parameter settings (fields of
  `molescope.models.train_settings.TrainSettings`), so a model never gets another model's parameters;
- `grid(estimator, settings)`: the CV search grid (the registry's grid values plus the setting's value);
- `standardize` (registry): whether its features are standardised first;
- `probability()`: the column holding its 7 class probabilities in the scored frame.

The spec object lives in the model's own module and is named by the registry entry's `impl`
(`module:attribute`), imported on first use: an unknown or mistyped model fails loudly.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pyspark.ml.functions import vector_to_array
from pyspark.ml.tuning import ParamGridBuilder
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from molescope.core.registry import HyperParameter, ModelType, model_type

if TYPE_CHECKING:
    from pyspark.ml import Estimator

    from molescope.features.spec import FeatureSpec
    from molescope.models.fusion import MetadataEncoding
    from molescope.models.train_settings import TrainSettings
    from molescope.models.trained import TrainedModel

PROBABILITY_COL = "probability"


def vector_probability() -> Column:
    """The classifier's own `probability` vector as an array (every Spark classifier but one-vs-rest)."""
    return vector_to_array(F.col(PROBABILITY_COL))


@dataclass(frozen=True)
class FitJob:
    """What the train stage hands every trainer."""

    spark: SparkSession
    #: `molescope train`'s settings (the stage's `Settings` derives from it).
    settings: TrainSettings
    #: Labelled training rows with the vector column, synthetic ones included, validation lesions left out.
    fit_rows: DataFrame
    #: Validation (split 'validation') and test rows in the features schema: what gets scored.
    scoring: DataFrame
    #: The training features (backbone, weights_id, dim, PCA); `standardize` is the spec's to set.
    feature_spec: FeatureSpec
    weighted: bool
    #: With `--metadata`: the encoding of age/sex/localization the rows carry (fit and scored rows alike).
    metadata: MetadataEncoding | None = None
    #: `time.monotonic()` by which the train task must end (`--time-budget` from the stage's start), or None.
    deadline: float | None = None


@dataclass(frozen=True)
class Fitted:
    """A trainer's result: the fitted model (sidecar still empty) and how fitting went."""

    model: TrainedModel
    params: dict[str, Any]
    seconds: float
    feature_spec: FeatureSpec
    cv: dict[str, Any] | None = None
    history: dict[str, Any] | None = None
    #: Extra keys for the sidecar's training_set (e.g. the images root of an image model).
    training_set: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    #: The sidecar's `format` (how the artefacts are laid out).
    format: str
    fit: Callable[[ModelSpec, FitJob], Fitted]
    build: Callable[[dict[str, Any], str, int, bool], Estimator] | None = None
    #: The column of the 7 class probabilities in the scored frame.
    probability: Callable[[], Column] = vector_probability
    #: How an image model scores curated-image rows: (model, rows, TTA views) -> predictions; None for a
    #: feature model. Trained-model code calls it without naming any model type.
    predict_images: Callable[[TrainedModel, DataFrame, str | None], DataFrame] | None = None

    @property
    def info(self) -> ModelType:
        return model_type(self.name)

    @property
    def input(self) -> str:
        return self.info.input

    @property
    def standardize(self) -> bool:
        return self.info.standardize

    @property
    def hypers(self) -> tuple[HyperParameter, ...]:
        return self.info.hypers

    def params(self, settings: TrainSettings) -> dict[str, Any]:
        """{estimator param: value} of this model's hyper-parameter settings."""
        return {h.param: getattr(settings, h.name) for h in self.hypers}

    def grid(self, estimator: Any, settings: TrainSettings) -> list[dict]:
        """CV param maps over the hyper-parameters that have grid values (the setting's value included)."""
        builder = ParamGridBuilder()
        for h in self.hypers:
            if h.grid:
                builder.addGrid(estimator.getParam(h.param), sorted({*h.grid, getattr(settings, h.name)}))
        return builder.build()

    def feature_spec(self, base: FeatureSpec) -> FeatureSpec:
        return replace(base, standardize=self.standardize)


@functools.cache
def model_spec(name: str) -> ModelSpec:
    """The ModelSpec of registered model `name`; ValueError for an unknown name or a broken registration."""
    module_name, _, attribute = model_type(name).impl.partition(":")
    spec = getattr(importlib.import_module(module_name), attribute, None)
    if not isinstance(spec, ModelSpec) or spec.name != name:
        raise ValueError(
            f"registry entry {name!r} names {module_name}:{attribute}, which is not its ModelSpec"
        )
    return spec
