"""finetune: MobileNet-0.25 (real ImageNet weights) fine-tuned for two short epochs on a few real HAM10000
images through the train stage; it saves a .keras model, reloads with identical predictions, averages its
TTA views, and the report uses its decision rule fitted on validation. ResNet50 (random weights, plumbing
only) with metadata fusion goes through the same path."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import DataFrame, SparkSession

from molescope.core.constants import CLASSES
from molescope.core.errors import InputError
from molescope.core.registry import SIDECAR_FILE
from molescope.features.backbones import BackboneSpec, resolve_backbone
from molescope.io import tables
from molescope.io.tables import PREDICTIONS_SCHEMA
from molescope.models import finetune, finetune_data, finetune_predict, trained, warm_start
from molescope.stages import report, train
from tests.conftest import MOBILENET_025_WEIGHTS, require
from tests.unit.image_rows import (
    INPUT_SIZE,
    MAX_IMAGES,
    write_inputs,
)
from tests.unit.published_tables import read_predictions


def run_train(spark: SparkSession, root: Path, weights_id: str, *args: str) -> tuple[dict, str, str]:
    curated, features_uri, train_set_uri = write_inputs(spark, root, weights_id)
    out = str(root / "run")
    parser = argparse.ArgumentParser()
    train.Settings.add_arguments(parser)
    argv = [
        *("--train-set", train_set_uri, "--features", features_uri, "--out", out),
        *("--models", "finetune", "--curated", curated, "--validation-fraction", "0.3"),
        *("--finetune-batch-size", "8", "--finetune-max-images", str(MAX_IMAGES)),
        *args,
    ]
    return train.run(spark, train.Settings.from_args(parser.parse_args(argv))), out, curated


@pytest.fixture(scope="module")
def finetune_run(spark, tmp_path_factory):
    weights = str(require(MOBILENET_025_WEIGHTS))
    spec = resolve_backbone("mobilenet", weights, alpha=0.25)
    args = ("--weights", weights, "--finetune-epochs", "2", "--finetune-input-size", str(INPUT_SIZE))
    top = ("--finetune-unfreeze", "top", "--finetune-layers", "6")
    return run_train(spark, tmp_path_factory.mktemp("finetune"), spec.weights_id, *args, *top)


@pytest.fixture(scope="module")
def resnet_metadata_run(spark, tmp_path_factory):
    """ResNet50 with random weights (plumbing only), all layers, metadata fused into the head."""
    args = ("--backbone", "resnet50", "--weights", "random", "--finetune-epochs", "1", "--metadata")
    small = ("--finetune-input-size", "64", "--finetune-tta", "hflip")
    return run_train(spark, tmp_path_factory.mktemp("resnet"), "random-seed42", *args, *small)


def scoring_rows(spark: SparkSession, out: str, curated: str, *columns: str) -> DataFrame:
    written = read_predictions(spark, out, "finetune")
    images = tables.read_curated(spark, curated).select("image_id", "image", *columns)
    return written.select("image_id", "lesion_id", "dx", "split").join(images, on="image_id", how="inner")


def test_finetune_runs_and_saves_a_keras_model(finetune_run):
    summary, out, _ = finetune_run
    model_dir = Path(out, "models", "finetune")
    sidecar = json.loads((model_dir / SIDECAR_FILE).read_text())
    # The model is saved in a version folder the sidecar names (crash-safe publish).
    assert sidecar["artifacts"]["keras"].endswith(f"/{trained.KERAS_FILE}")
    assert (model_dir / sidecar["artifacts"]["keras"]).stat().st_size > 0
    assert set(trained.SIDECAR_KEYS) <= sidecar.keys()
    assert sidecar["format"] == finetune.FORMAT_FINETUNE
    assert sidecar["feature_spec"]["backbone"] == "mobilenet_0.25"
    assert sidecar["feature_spec"]["weights_id"].startswith("sha256:")
    assert sidecar["params"]["backbone_spec"]["input_size"] == INPUT_SIZE
    assert sidecar["params"]["tta"] == "flip4" and sidecar["metadata"] is None
    history = sidecar["keras_history"]
    assert history["epochs_run"] == 2 and history["best_epoch"] in (1, 2)
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    assert all(e["img_per_s"] > 0 and 0 <= e["val_balanced_accuracy"] <= 1 for e in history["epochs"])
    assert history["train_images"] == MAX_IMAGES
    assert history["val_images"] > 0
    assert 0 < history["trainable_layers"] <= 6
    assert sidecar["decision_rule"]["fitted_on"] == "validation"
    assert sidecar["validation"]["validation_rows"] == summary["validation_rows"]
    assert summary["champion"] == "finetune" and summary["champion_split"] == "validation"


def test_predictions_cover_validation_and_test_images(spark, finetune_run):
    summary, out, _ = finetune_run
    written = read_predictions(spark, out, "finetune")
    assert written.schema == PREDICTIONS_SCHEMA
    rows = written.collect()
    splits = [r["split"] for r in rows]
    assert splits.count("validation") == summary["validation_rows"] > 0
    assert splits.count("test") > 0
    for row in rows:
        assert len(row["probability"]) == len(CLASSES)
        assert abs(sum(row["probability"]) - 1.0) < 1e-4
        assert row["prediction"] == int(np.argmax(row["probability"]))


def test_reloaded_model_predicts_identically(spark, finetune_run):
    _, out, curated = finetune_run
    written = read_predictions(spark, out, "finetune")
    loaded = trained.load_model(spark, f"{out}/models/finetune")
    again = {r["image_id"]: r for r in loaded.predict_images(scoring_rows(spark, out, curated)).collect()}
    before = {r["image_id"]: r for r in written.collect()}
    assert again.keys() == before.keys()
    for image_id, row in before.items():
        assert again[image_id]["prediction"] == row["prediction"]
        assert again[image_id]["split"] == row["split"]
        np.testing.assert_allclose(again[image_id]["probability"], row["probability"], rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="predict_images"):
        loaded.predict(written)


def test_tta_is_the_mean_softmax_of_the_flipped_views(spark, finetune_run):
    _, out, curated = finetune_run
    loaded = trained.load_model(spark, f"{out}/models/finetune")
    spec = finetune.spec_from_dict(loaded.sidecar["params"]["backbone_spec"])
    data = finetune_data.collect_images(scoring_rows(spark, out, curated), INPUT_SIZE)
    assert data.pixels.shape == (len(data), INPUT_SIZE, INPUT_SIZE, 3)
    flip4 = finetune_predict.predict_probabilities(loaded.keras_model, spec, data, "flip4")
    views = [data.pixels, data.pixels[:, :, ::-1], data.pixels[:, ::-1], data.pixels[:, ::-1, ::-1]]
    singles = [
        finetune_predict.predict_probabilities(
            loaded.keras_model, spec, replace(data, pixels=v.copy()), "none"
        )
        for v in views
    ]
    np.testing.assert_allclose(flip4, np.mean(singles, axis=0), rtol=1e-4, atol=1e-6)
    assert not np.allclose(flip4, singles[0], atol=1e-6)  # the views do differ


def test_report_uses_the_rule_fitted_on_validation(spark, finetune_run):
    _, out, _ = finetune_run
    result = report.run(spark, report.Settings(run=out, history=str(Path(out) / "history.jsonl")))
    assert result["models"]["finetune"]["threshold_source"] == "validation"
    written = json.loads(Path(out, "metrics", "finetune.json").read_text())
    assert written["operating_point"]["rule_from"] == "model sidecar (train)"
    assert written["split"] == "test" and written["tta"] == "flip4"


def test_resnet50_with_metadata_trains_and_scores_with_and_without_metadata(spark, resnet_metadata_run):
    summary, out, curated = resnet_metadata_run
    loaded = trained.load_model(spark, f"{out}/models/finetune")
    assert loaded.sidecar["params"]["backbone_spec"]["family"] == "resnet50"
    assert loaded.metadata is not None and loaded.sidecar["params"]["tta"] == "hflip"
    assert [tuple(i.shape) for i in loaded.keras_model.inputs] == [
        (None, 64, 64, 3),
        (None, loaded.metadata.dim),
    ]
    assert summary["metadata"] is True
    with_meta = loaded.predict_images(scoring_rows(spark, out, curated, "age", "sex", "localization"))
    without = loaded.predict_images(scoring_rows(spark, out, curated))  # no metadata columns: unknown
    a = {r["image_id"]: r["probability"] for r in with_meta.collect()}
    b = {r["image_id"]: r["probability"] for r in without.collect()}
    assert a.keys() == b.keys() and len(a) > 0
    assert all(abs(sum(p) - 1) < 1e-5 for p in b.values())
    assert any(not np.allclose(a[k], b[k]) for k in a)  # the metadata input is used


def test_a_fine_tune_past_the_time_budget_fails_in_its_first_epoch_and_saves_nothing(spark, tmp_path):
    """Through the train stage: the budget (1 s) is spent before the fit starts, so the estimate from the
    first steps exceeds what is left; the stage fails with the one-line error and writes no model."""
    args = ("--backbone", "mobilenet_0.25", "--weights", "random", "--finetune-input-size", "32")
    with pytest.raises(
        InputError, match=r"^finetune: ~.* exceeds the .* left of the train task's time budget"
    ):
        run_train(spark, tmp_path, "random-seed42", *args, "--finetune-epochs", "50", "--time-budget", "1")
    assert not (tmp_path / "run" / "models").exists()


def test_a_warm_start_begins_from_the_previous_model_and_records_the_chain(spark, finetune_run, tmp_path):
    """The second fit starts from the first one's weights: with a vanishing learning rate its head equals
    the first model's (a cold start's head is a fresh random one), for `--finetune-warm-epochs` epochs."""
    _, first_out, _ = finetune_run
    previous = f"{first_out}/models/finetune"
    weights = str(require(MOBILENET_025_WEIGHTS))
    spec = resolve_backbone("mobilenet", weights, alpha=0.25)
    args = ("--weights", weights, "--finetune-input-size", str(INPUT_SIZE), "--finetune-unfreeze", "top")
    args += ("--finetune-layers", "6", "--finetune-learning-rate", "1e-12", "--finetune-warm-epochs", "1")
    _, out, _ = run_train(spark, tmp_path, spec.weights_id, *args, "--warm-start", previous)
    warm = trained.load_model(spark, f"{out}/models/finetune")
    before = trained.load_model(spark, previous)
    assert warm.sidecar["params"]["warm_start"] == {"chain": 2, "full_fit_rows": MAX_IMAGES, "from": previous}
    assert warm.sidecar["keras_history"]["epochs_run"] == 1
    head = [m.get_layer("dx").get_weights()[0] for m in (warm.keras_model, before.keras_model)]
    np.testing.assert_allclose(head[0], head[1], atol=1e-6)


def test_the_previous_model_is_the_newest_finetune_of_another_run(spark, finetune_run, tmp_path):
    _, first_out, _ = finetune_run
    runs_root = str(Path(first_out).parent)
    sidecar = trained.load_model(spark, f"{first_out}/models/finetune").sidecar
    network = (BackboneSpec(**sidecar["params"]["backbone_spec"]), 0)
    found = warm_start.find_previous(spark, runs_root, str(tmp_path / "this-run"), network)
    assert found is not None and found.rstrip("/").endswith(f"{Path(first_out).name}/models/finetune")
    assert warm_start.find_previous(spark, runs_root, first_out, network) is None  # never this run's own
    assert warm_start.find_previous(spark, str(tmp_path), str(tmp_path / "x"), network) is None  # the first


def test_a_warm_start_from_another_network_fails_in_one_line(spark, finetune_run, tmp_path):
    _, first_out, _ = finetune_run
    weights = str(require(MOBILENET_025_WEIGHTS))
    spec = resolve_backbone("mobilenet", weights, alpha=0.25)
    args = ("--weights", weights, "--finetune-input-size", str(INPUT_SIZE + 32))
    with pytest.raises(InputError, match=r"another network \(input_size .*; use --warm-start none$"):
        run_train(spark, tmp_path, spec.weights_id, *args, "--warm-start", f"{first_out}/models/finetune")


def test_config_is_validated():
    with pytest.raises(ValueError, match="unfreeze"):
        finetune.FinetuneConfig(unfreeze="middle")
    with pytest.raises(ValueError, match="epochs"):
        finetune.FinetuneConfig(epochs=0)
    with pytest.raises(ValueError, match="tta"):
        finetune.FinetuneConfig(tta="flip3")
    with pytest.raises(ValueError, match="input_size"):
        finetune.FinetuneConfig(input_size=16)
