"""finetune: MobileNet-0.25 (real ImageNet weights) fine-tuned for two short epochs on a few real HAM10000
images through the train stage; it saves a .keras model, reloads with identical predictions, averages its
TTA views, and the report uses its decision rule fitted on validation. ResNet50 (random weights, plumbing
only) with metadata fusion goes through the same path. The recipe's pieces (augmentation, sampler) are
checked on their own."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import DataFrame, SparkSession

from molescope import finetune, models, tables
from molescope.backbones import resolve_backbone
from molescope.constants import CLASSES
from molescope.registry import SIDECAR_FILE
from molescope.stages import report, train
from molescope.tables import PREDICTIONS_SCHEMA
from tests.conftest import HAM10000, MOBILENET_025_WEIGHTS, require
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
    assert sidecar["artifacts"]["keras"].endswith(f"/{models.KERAS_FILE}")
    assert (model_dir / sidecar["artifacts"]["keras"]).stat().st_size > 0
    assert set(models.SIDECAR_KEYS) <= sidecar.keys()
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
    loaded = models.load_model(spark, f"{out}/models/finetune")
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
    loaded = models.load_model(spark, f"{out}/models/finetune")
    spec = finetune.spec_from_dict(loaded.sidecar["params"]["backbone_spec"])
    data = finetune.collect_images(scoring_rows(spark, out, curated), INPUT_SIZE)
    assert data.pixels.shape == (len(data), INPUT_SIZE, INPUT_SIZE, 3)
    flip4 = finetune.predict_probabilities(loaded.keras_model, spec, data, "flip4")
    views = [data.pixels, data.pixels[:, :, ::-1], data.pixels[:, ::-1], data.pixels[:, ::-1, ::-1]]
    singles = [
        finetune.predict_probabilities(loaded.keras_model, spec, replace(data, pixels=v.copy()), "none")
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
    loaded = models.load_model(spark, f"{out}/models/finetune")
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


def test_augmentation_is_identity_at_the_centre_draw_and_flips_on_demand():
    import tensorflow as tf

    rgb = np.random.default_rng(0).integers(0, 256, size=(2, 24, 24, 3), dtype=np.uint8)
    centre = np.full((2, finetune.RANDOM_DRAWS), 0.5, dtype=np.float32)
    same = finetune.augment(tf.constant(rgb), tf.constant(centre)).numpy()
    np.testing.assert_allclose(same, rgb, atol=1e-3)
    flip = centre.copy()
    flip[:, 3] = 0.0  # below the flip probability: mirrored left-right
    np.testing.assert_allclose(
        finetune.augment(tf.constant(rgb), tf.constant(flip)).numpy(), rgb[:, :, ::-1], atol=1e-3
    )
    bright = centre.copy()
    bright[:, 8] = 1.0  # brightness x1.15
    out = finetune.augment(tf.constant(rgb), tf.constant(bright)).numpy()
    np.testing.assert_allclose(out, np.clip(rgb * (1 + finetune.COLOUR_JITTER), 0, 255), atol=1e-2)


def test_training_batches_are_reproducible_and_augmented():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint8)
    ids = {"image_id": [f"i{k}" for k in range(10)], "lesion_id": [None] * 10, "split": ["train"] * 10}
    data = finetune.ImageSet({**ids, "dx": [CLASSES[k % 7] for k in range(10)]}, pixels)
    config = finetune.FinetuneConfig(batch_size=4, input_size=32)
    indices = np.arange(10)

    def batches(epoch: int) -> list[np.ndarray]:
        return [x.numpy() for (x, _), _ in finetune.training_dataset(data, indices, config, epoch, None)]

    first, again, other = batches(1), batches(1), batches(2)
    assert [b.shape[0] for b in first] == [4, 4, 2]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(first[0], other[0])
    assert not np.allclose(first[0], pixels[:4])


def test_sampler_draws_classes_by_a_power_of_their_counts():
    labels = np.array([0] * 90 + [1] * 10)
    for power, expected in ((0.0, 0.5), (1.0, 0.1), (0.5, np.sqrt(10) / (np.sqrt(10) + np.sqrt(90)))):
        p = finetune.class_sampling_probabilities(labels, power)
        assert p.sum() == pytest.approx(1.0)
        assert p[labels == 1].sum() == pytest.approx(expected)
    drawn = finetune.epoch_indices(labels, 0.0, 4000, np.random.default_rng(0))
    assert abs((labels[drawn] == 1).mean() - 0.5) < 0.05


def test_image_batch_decodes_preprocesses_and_augments_reproducibly():
    """The bytes-per-batch path of distributed trainers: the pipeline's decoder, the backbone's
    preprocessing, and `augment` seeded by (seed, epoch, batch)."""
    from molescope.imaging import decode_resized

    blobs = [p.read_bytes() for p in sorted((require(HAM10000) / "images").glob("*.jpg"))[:3]]
    backbone = resolve_backbone("mobilenet", str(require(MOBILENET_025_WEIGHTS)), alpha=0.25)
    spec = replace(backbone, input_size=32)
    plain = finetune.image_batch(spec, blobs)
    assert plain.shape == (3, 32, 32, 3) and plain.dtype == np.float32
    decoded = np.stack([decode_resized(blob, 32) for blob in blobs]).astype(np.float32)
    np.testing.assert_allclose(plain, decoded / 127.5 - 1, atol=1e-5)  # MobileNet: x / 127.5 - 1
    first, again = (finetune.image_batch(spec, blobs, (7, 1, 0)) for _ in range(2))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, finetune.image_batch(spec, blobs, (7, 2, 0)))
    assert not np.allclose(first, plain)


def test_config_is_validated():
    with pytest.raises(ValueError, match="unfreeze"):
        finetune.FinetuneConfig(unfreeze="middle")
    with pytest.raises(ValueError, match="epochs"):
        finetune.FinetuneConfig(epochs=0)
    with pytest.raises(ValueError, match="tta"):
        finetune.FinetuneConfig(tta="flip3")
    with pytest.raises(ValueError, match="input_size"):
        finetune.FinetuneConfig(input_size=16)
