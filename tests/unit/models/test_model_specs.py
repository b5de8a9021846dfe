"""Model types: every registry entry resolves to its ModelSpec, which gives each model its own parameters and
grid; unknown names fail loudly; the one-vs-rest GBT probabilities come from its margins."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pyspark.ml.classification import LogisticRegression
from pyspark.sql import functions as F

from molescope.core import registry
from molescope.models.model_specs import model_spec
from molescope.models.spark_models import gbt_probability
from molescope.stages import train


def test_every_registered_model_has_its_spec():
    for name, model_type in registry.MODEL_TYPES.items():
        spec = model_spec(name)
        assert spec.name == name and spec.info is model_type
        assert (spec.build is None) == (spec.fit.__name__ != "fit_spark"), name


def test_unknown_model_fails_loudly(monkeypatch):
    with pytest.raises(ValueError, match="unknown model 'svm'"):
        model_spec("svm")
    broken = registry.ModelType("svm", "molescope.models.spark_models:LOGISTIC_REGRESSION")
    monkeypatch.setitem(registry.MODEL_TYPES, "svm", broken)
    with pytest.raises(ValueError, match="not its ModelSpec"):
        model_spec("svm")


def test_each_model_gets_its_own_params():
    settings = train.Settings(train_set="t", features="f", out="o", lr_reg=0.3, rf_trees=7, mlp_dropout=0.2)
    assert model_spec("lr").params(settings) == {"regParam": 0.3, "elasticNetParam": 0.0, "maxIter": 100}
    assert model_spec("rf").params(settings) == {"numTrees": 7, "maxDepth": 10}
    assert model_spec("mlp").params(settings) == {"epochs": 20, "dropout": 0.2, "learning_rate": 1e-3}
    assert model_spec("finetune").params(settings)["max_images"] is None


def test_grid_always_holds_the_settings_value():
    settings = train.Settings(train_set="t", features="f", out="o", lr_reg=0.05)
    grid = model_spec("lr").grid(LogisticRegression(), settings)
    named = [{param.name: value for param, value in point.items()} for point in grid]
    points = {(p["regParam"], p["elasticNetParam"]) for p in named}
    assert points == {(r, e) for r in (0.001, 0.01, 0.05, 0.1) for e in (0.0, 0.5)}
    assert model_spec("mlp").grid(None, settings) == [{}]  # no grid values: a single point, nothing searched


def test_gbt_probability_normalises_one_vs_rest_margins(spark):
    from pyspark.ml.linalg import Vectors

    margins = [0.5, -1.0, 2.0, 0.0, -3.0, 1.0, -0.5]
    df = spark.createDataFrame([(Vectors.dense(margins),)], ["rawPrediction"])
    probability = df.select(gbt_probability(F.col("rawPrediction")).alias("p")).first()["p"]
    positive = [1 / (1 + math.exp(-2 * m)) for m in margins]
    np.testing.assert_allclose(probability, [p / sum(positive) for p in positive], rtol=1e-12)
    assert int(np.argmax(probability)) == int(np.argmax(margins))
