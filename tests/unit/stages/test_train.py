"""Train stage: models learn a 7-cluster problem, reload identically; CV folds and the validation part
respect lesions; the report picks its operating point on the validation predictions."""

from __future__ import annotations

import argparse
import json
import math
import typing
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from molescope.core.constants import CLASSES, SPLIT_VALIDATION
from molescope.core.registry import (
    CHAMPION_FILE,
    DEFAULT_TARGET_MEL_RECALL,
    DEFAULT_VALIDATION_FRACTION,
    LOCALIZATION_VALUES,
    SIDECAR_FILE,
    hyper_parameters,
)
from molescope.core.settings import HYPER, declared_hypers, hyper_annotation, hyper_declarations
from molescope.evaluation import rules, scores
from molescope.evaluation.calibration import fit_temperature, negative_log_likelihood
from molescope.evaluation.drift import decided_mix
from molescope.io import tables
from molescope.io.tables import PREDICTIONS_SCHEMA
from molescope.models import trained
from molescope.models.train_settings import TrainSettings
from molescope.stages import report, train
from tests.unit.feature_rows import (
    BACKBONE,
    DIM,
    FAST_ARGS,
    RF_DEPTH_GRID,
    TEST_ROWS,
    TRAIN_ROWS,
    WEIGHTS_ID,
    cluster_rows,
    features_frame,
    write_inputs,
)
from tests.unit.published_tables import publish_curated, read_predictions


def parse(argv: list[str]) -> train.Settings:
    parser = argparse.ArgumentParser()
    train.Settings.add_arguments(parser)
    return train.Settings.from_args(parser.parse_args(argv))


@pytest.fixture(scope="module")
def all_models_run(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    train_set_uri, features_uri = write_inputs(spark, root)
    out = str(root / "run")
    settings = parse(
        [
            *("--train-set", train_set_uri, "--features", features_uri, "--out", out),
            *("--models", "lr,rf,gbt,mlp", *FAST_ARGS),
        ]
    )
    summary = train.run(spark, settings)
    return summary, out, features_uri


@pytest.mark.parametrize("name", ["lr", "rf", "gbt", "mlp"])
def test_each_model_beats_majority_baseline_on_validation(all_models_run, name):
    summary, _, _ = all_models_run
    metrics = summary["models"][name]
    assert metrics["split"] == SPLIT_VALIDATION
    assert metrics["validation_rows"] == summary["validation_rows"] > 0
    assert metrics["argmax"]["accuracy"] > max(TRAIN_ROWS.values()) / sum(TRAIN_ROWS.values()) + 0.2
    # Majority-class prediction has balanced accuracy 1/7.
    assert metrics["balanced_accuracy"] > 1 / len(CLASSES) + 0.4
    assert metrics["fit_seconds"] > 0


@pytest.mark.parametrize("name", ["lr", "rf", "gbt", "mlp"])
def test_saved_model_reloads_with_identical_predictions(spark, all_models_run, name):
    _, out, features_uri = all_models_run
    written = read_predictions(spark, out, name)
    assert written.schema == PREDICTIONS_SCHEMA
    written = written.where(F.col("split") == "test")
    loaded = trained.load_model(spark, f"{out}/models/{name}")
    test = train.test_split(tables.read_features(spark, features_uri))
    again = loaded.predict(test)
    left = {r["image_id"]: (r["prediction"], r["probability"]) for r in written.collect()}
    right = {r["image_id"]: (r["prediction"], r["probability"]) for r in again.collect()}
    assert left.keys() == right.keys()
    for image_id, (prediction, probability) in left.items():
        assert right[image_id][0] == prediction
        np.testing.assert_allclose(right[image_id][1], probability, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["lr", "rf", "gbt", "mlp"])
def test_probabilities_are_seven_values_summing_to_one(spark, all_models_run, name):
    _, out, _ = all_models_run
    rows = read_predictions(spark, out, name).collect()
    for row in rows:
        assert len(row["probability"]) == len(CLASSES)
        assert math.isclose(sum(row["probability"]), 1.0, rel_tol=1e-5)
        assert row["prediction"] == int(np.argmax(row["probability"]))
        assert row["label"] == CLASSES.index(row["dx"])
        assert row["model"] == name


def test_sidecar_carries_spec_params_and_training_summary(spark, all_models_run):
    _, out, _ = all_models_run
    for name in ("lr", "rf", "gbt", "mlp"):
        sidecar = json.loads(Path(out, "models", name, SIDECAR_FILE).read_text())
        assert set(trained.SIDECAR_KEYS) <= sidecar.keys()
        assert sidecar["feature_spec"] == {
            "backbone": BACKBONE,
            "weights_id": WEIGHTS_ID,
            "feature_dim": DIM,
            "pca_k": None,
            "standardize": name in ("lr", "mlp"),
        }
        assert sidecar["training_set"]["rows_per_class"] == TRAIN_ROWS
        assert sidecar["training_set"]["synthetic_rows"] == 0
        assert sidecar["params"]["weighted"] is False
        assert sidecar["classes"] == list(CLASSES)
    assert json.loads(Path(out, "models", "rf", SIDECAR_FILE).read_text())["params"]["numTrees"] == 10


def test_predictions_hold_validation_and_test_rows(spark, all_models_run):
    summary, out, _ = all_models_run
    for name in ("lr", "rf", "gbt", "mlp"):
        rows = read_predictions(spark, out, name).collect()
        splits = [r["split"] for r in rows]
        assert splits.count("test") == sum(TEST_ROWS.values())
        assert splits.count(SPLIT_VALIDATION) == summary["validation_rows"] > 0
        validation_ids = {r["image_id"] for r in rows if r["split"] == SPLIT_VALIDATION}
        assert all(image_id.startswith("train_") for image_id in validation_ids)
        assert summary["models"][name]["validation_rows"] == summary["validation_rows"]


def test_validation_lesions_are_not_fitted_on(spark, all_models_run):
    """Every training image of a validation lesion is a validation row, so no lesion is in both parts."""
    _, out, _ = all_models_run
    predictions = read_predictions(spark, out, "lr").where(F.col("split") == "validation")
    validation_ids = {r["image_id"] for r in predictions.collect()}
    validation_lesions = {r["lesion_id"] for r in predictions.collect()}
    train_set_table = tables.train_set(f"{out}/train_set")
    train_set = tables.read_table(spark, train_set_table).collect()
    of_those_lesions = {r["image_id"] for r in train_set if r["lesion_id"] in validation_lesions}
    assert of_those_lesions == validation_ids
    sidecar = json.loads(Path(out, "models", "lr", SIDECAR_FILE).read_text())
    validation = sidecar["training_set"]["validation"]
    assert validation["fit_rows"] == len(train_set) - len(validation_ids)
    assert validation["validation_lesions"] == len(validation_lesions)


def test_report_picks_the_threshold_on_validation_rows(spark, all_models_run):
    _, out, _ = all_models_run
    result = report.run(spark, report.Settings(run=out, history=str(Path(out) / "history.jsonl")))
    assert set(result["models"]) == {"lr", "rf", "gbt", "mlp"}
    for m in result["models"].values():
        assert m["threshold_source"] == "validation"
        assert m["n"] == sum(TEST_ROWS.values())


def test_champion_is_the_best_balanced_accuracy_on_validation(all_models_run):
    summary, out, _ = all_models_run
    champion = json.loads(Path(out, "models", CHAMPION_FILE).read_text())
    best = max(summary["models"].items(), key=lambda item: item[1]["balanced_accuracy"])
    assert champion["champion"] == summary["champion"]
    assert champion["split"] == summary["champion_split"] == SPLIT_VALIDATION
    assert champion["value"] == best[1]["balanced_accuracy"]
    assert summary["models"][champion["champion"]]["balanced_accuracy"] == best[1]["balanced_accuracy"]
    assert [m["champion"] for m in summary["models"].values()].count(True) == 1


@pytest.mark.parametrize("name", ["lr", "mlp"])
def test_validation_figures_and_rule_come_from_the_validation_rows_only(spark, all_models_run, name):
    """Recomputed from the written validation predictions alone: train's figures never used a test row."""
    _, out, _ = all_models_run
    rows = read_predictions(spark, out, name).where(F.col("split") == SPLIT_VALIDATION).collect()
    labels = np.array([r["label"] for r in rows])
    proba = np.array([r["probability"] for r in rows])
    rule = rules.fit_rule(labels, proba, DEFAULT_TARGET_MEL_RECALL)
    sidecar = json.loads(Path(out, "models", name, SIDECAR_FILE).read_text())
    assert sidecar["decision_rule"] == json.loads(json.dumps(rule.to_dict()))
    assert sidecar["validation"]["balanced_accuracy"] == pytest.approx(
        scores.balanced_accuracy(labels, rule.decide(proba))
    )
    # The temperature is the validation rows' NLL minimum: never worse there than the model's own P.
    calibrated = sidecar["validation"]["calibration"]
    assert calibrated["temperature"] == rule.temperature == pytest.approx(fit_temperature(labels, proba))
    assert calibrated["after"]["nll"] <= calibrated["before"]["nll"]
    assert calibrated["before"]["nll"] == pytest.approx(negative_log_likelihood(labels, proba))
    # The drift check's class-mix reference: the rule's own decisions on these rows.
    assert sidecar["validation"]["decided_mix"] == decided_mix(rule.decide(proba))
    assert "test" not in sidecar


def test_pca_weights_and_grouped_cv(spark, tmp_path):
    train_set_uri, features_uri = write_inputs(spark, tmp_path, class_weights=True)
    out = str(tmp_path / "run")
    # The DAG passes featurize's reference file rather than the table itself.
    ref = tmp_path / "run" / "features.json"
    ref.write_text(json.dumps({"uri": features_uri}))
    # RF: the smallest grid (tree depth), so the search stays quick.
    argv = ["--train-set", train_set_uri, "--features", str(ref), "--out", out, "--models", "rf"]
    settings = parse([*argv, "--pca", "4", "--cv-folds", "2", *FAST_ARGS])
    summary = train.run(spark, settings)
    assert summary["weighted"] is True
    assert summary["models"]["rf"]["balanced_accuracy"] > 1 / len(CLASSES) + 0.4
    sidecar = trained.load_model(spark, f"{out}/models/rf").sidecar
    assert sidecar["feature_spec"]["pca_k"] == 4
    assert sidecar["params"]["weighted"] is True
    assert len(sidecar["cv"]["grid"]) == len({*RF_DEPTH_GRID, 4})
    assert sidecar["params"]["maxDepth"] == sidecar["cv"]["best_params"]["maxDepth"]
    assert sidecar["training_set"]["features_uri"] == features_uri


def test_feature_spec_mismatch_is_refused(spark, tmp_path):
    test = features_frame(spark, TEST_ROWS, "test", seed=3)
    spec = trained.FeatureSpec(BACKBONE, "other-weights", DIM, None, False)
    with pytest.raises(trained.FeatureSpecMismatch):
        trained.check_feature_spec(spec, test)
    trained.check_feature_spec(trained.FeatureSpec(BACKBONE, WEIGHTS_ID, DIM, None, True), test)


def test_pca_k_larger_than_features_is_refused():
    with pytest.raises(ValueError, match="PCA"):
        trained.preprocessing_stages(trained.FeatureSpec(BACKBONE, WEIGHTS_ID, DIM, DIM + 1, False))


def test_settings_parse_and_validate():
    settings = parse(["--train-set", "t", "--features", "f", "--out", "o", "--batches", "a, b", "--pca", "8"])
    assert settings.batches == ("a", "b")
    assert settings.pca_k == 8
    assert settings.models == ("lr", "rf", "gbt")
    assert settings.use_weights is None
    assert (
        parse(["--train-set", "t", "--features", "f", "--out", "o", "--no-use-weights"]).use_weights is False
    )
    with pytest.raises(ValueError, match="unknown models"):
        parse(["--train-set", "t", "--features", "f", "--out", "o", "--models", "lr,svm"])
    with pytest.raises(ValueError, match="cv-folds"):
        parse(["--train-set", "t", "--features", "f", "--out", "o", "--cv-folds", "1"])
    assert settings.validation_fraction == DEFAULT_VALIDATION_FRACTION
    with pytest.raises(ValueError, match="validation-fraction"):
        parse(["--train-set", "t", "--features", "f", "--out", "o", "--validation-fraction", "1"])
    with pytest.raises(ValueError, match="curated"):
        parse(["--train-set", "t", "--features", "f", "--out", "o", "--models", "finetune"])
    with pytest.raises(ValueError, match="--finetune-input-size 16: must be >= 32"):
        parse(["--train-set", "t", "--features", "f", "--out", "o", "--finetune-input-size", "16"])
    with pytest.raises(ValueError, match=r"--lr-reg -1\.0: must be >= 0"):
        parse(["--train-set", "t", "--features", "f", "--out", "o", "--lr-reg", "-1"])
    with pytest.raises(ValueError, match="--metadata needs --curated"):
        parse(["--train-set", "t", "--features", "f", "--out", "o", "--metadata"])
    with pytest.raises(ValueError, match="--validation-fraction 0 leaves no rows to choose the champion"):
        parse(["--train-set", "t", "--features", "f", "--out", "o", "--validation-fraction", "0"])
    with pytest.raises(ValueError, match="--full-retrain-every must be >= 1"):
        parse(["--train-set", "t", "--features", "f", "--out", "o", "--full-retrain-every", "0"])
    warm_horovod = ["--warm-start", "s3a://b/runs", "--distributed", "horovod", "--models", "mlp"]
    with pytest.raises(ValueError, match=r"--warm-start with --distributed horovod: .*none$"):
        parse(["--train-set", "t", "--features", "f", "--out", "o", *warm_horovod])
    one = parse(
        ["--train-set", "t", "--features", "f", "--out", "o", "--models", "lr", "--validation-fraction", "0"]
    )
    assert one.validation_fraction == 0 and one.metadata is False and one.prior_shift is True


def test_train_settings_declare_exactly_the_registry_hyper_parameters():
    """TrainSettings spells a field per registry hyper-parameter for type checkers (the registry keeps its
    default, flag and bounds): the two must agree, or paste the lines this prints into TrainSettings."""
    registry_hypers = list(hyper_parameters())
    declared = declared_hypers(TrainSettings)
    wanted = f"TrainSettings must declare, in this order:\n{hyper_declarations()}"
    assert list(declared) == [h.name for h in registry_hypers], wanted
    hints = typing.get_type_hints(TrainSettings)
    for h in registry_hypers:
        assert declared[h.name].name == h.name, wanted
        assert hints[h.name] == hyper_annotation(h), wanted
        assert declared[h.name].default == h.default
    # Nothing is added at run time: the stage's Settings is the declared class, as a type checker reads it.
    assert train.Settings.__bases__ == (TrainSettings,)
    assert [f.name for f in fields(train.Settings)] == [f.name for f in fields(TrainSettings)]
    # No other field takes a hyper-parameter's name (its default and bounds would not be the registry's).
    plain = {f.name for f in fields(TrainSettings) if HYPER not in f.metadata}
    assert not plain & {h.name for h in registry_hypers}


def test_settings_validate_hyper_parameters_against_the_registry_schema():
    base = {"train_set": "t", "features": "f", "out": "o"}
    with pytest.raises(ValueError, match=r"--finetune-tta: 'flip3' is not one of"):
        train.Settings(**base, finetune_tta="flip3")
    with pytest.raises(ValueError, match=r"--rf-trees 0: must be >= 1"):
        train.Settings(**base, rf_trees=0)
    with pytest.raises(ValueError, match=r"--mlp-dropout 1.0: must be < 1"):
        train.Settings(**base, mlp_dropout=1.0)
    with pytest.raises(ValueError, match="--distributed horovod fits only"):
        train.Settings(**base, models=("lr",), distributed="horovod")
    assert isinstance(train.Settings(**base), TrainSettings)


def write_metadata(spark: SparkSession, root: Path, informative: bool) -> str:
    """A curated table holding age/sex/localization of every synthetic image (localization = the class
    when `informative`, else every field null)."""
    from molescope.io.tables import CURATED_SCHEMA

    rows = []
    for split, counts, seed in (("train", TRAIN_ROWS, 1), ("test", TEST_ROWS, 2)):
        for image_id, lesion_id, dx, *_ in cluster_rows(counts, split, seed):
            site = LOCALIZATION_VALUES[CLASSES.index(dx)] if informative else None
            age, sex = (50.0, "female") if informative else (None, None)
            rows.append((image_id, lesion_id, dx, None, age, sex, site, None, split, 1, 1, "", b"", "", "b1"))
    curated = str(root / "curated")
    frame = spark.createDataFrame(rows, schema=CURATED_SCHEMA)
    publish_curated(spark, curated, frame)
    return curated


def test_metadata_fusion_appends_the_encoding_and_scores_without_metadata(spark, tmp_path):
    from molescope.models.fusion import MetadataEncoding

    train_set_uri, features_uri = write_inputs(spark, tmp_path)
    curated = write_metadata(spark, tmp_path, informative=True)
    out = str(tmp_path / "run")
    argv = ["--train-set", train_set_uri, "--features", features_uri, "--out", out, "--models", "lr"]
    summary = train.run(spark, parse([*argv, "--metadata", "--curated", curated, *FAST_ARGS]))
    assert summary["metadata"] is True
    loaded = trained.load_model(spark, f"{out}/models/lr")
    # A feature model records the curated root: score's case review reads its similar cases' dx_type there.
    assert loaded.sidecar["training_set"]["curated"] == curated
    # This hand-written curated table holds no decodable image: no drift reference, and the fit goes on.
    assert loaded.sidecar["training_set"]["image_statistics"] is None
    encoding = MetadataEncoding.from_dict(loaded.sidecar["metadata"])
    assert encoding == loaded.metadata and encoding.dim == 2 + 2 + 14
    classifier = loaded.pipeline.stages[-1]
    assert classifier.numFeatures == DIM + encoding.dim
    test = train.test_split(tables.read_features(spark, features_uri))
    # Without the metadata columns every row is encoded as unknown, and it still scores.
    without = loaded.predict(test).collect()
    assert len(without) == sum(TEST_ROWS.values())
    assert all(abs(sum(r["probability"]) - 1) < 1e-6 for r in without)


def test_metadata_fusion_refuses_training_rows_without_metadata(spark, tmp_path):
    train_set_uri, features_uri = write_inputs(spark, tmp_path)
    curated = write_metadata(spark, tmp_path, informative=False)
    argv = ["--train-set", train_set_uri, "--features", features_uri, "--out", str(tmp_path / "run")]
    with pytest.raises(ValueError, match="--metadata: the training rows have no age, sex or localization"):
        train.run(spark, parse([*argv, "--models", "lr", "--metadata", "--curated", curated]))
    assert not (tmp_path / "run" / "models").exists()  # refused before anything was fitted
