"""finetune: MobileNet-0.25 (real ImageNet weights) fine-tuned for one epoch on a few real HAM10000 images
through the train stage; it saves a .keras model, reloads with identical predictions, and the report picks
its operating point on the validation rows."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from molescope import augmentation, finetune, models
from molescope.backbones import resolve_backbone
from molescope.constants import CLASSES
from molescope.registry import SIDECAR_FILE
from molescope.stages import report, train
from molescope.tables import FEATURES_SCHEMA, PREDICTIONS_SCHEMA
from tests.conftest import HAM10000, MOBILENET_025_WEIGHTS, require

#: Images per class taken from the metadata (in file order); 7 × 5 = 35 real images.
PER_CLASS = 5
#: Every third lesion (in sorted order) is a test lesion.
TEST_EVERY = 3
MAX_IMAGES = 16
DUMMY_DIM = 4
BATCH_ID = "b1"
CURATED_SCHEMA = T.StructType(
    [
        T.StructField("image_id", T.StringType()),
        T.StructField("lesion_id", T.StringType()),
        T.StructField("dx", T.StringType()),
        T.StructField("split", T.StringType()),
        T.StructField("image", T.BinaryType()),
        T.StructField("batch_id", T.StringType()),
    ]
)


def sample_metadata() -> list[dict[str, str]]:
    """PER_CLASS metadata rows per class whose image file exists; split by lesion."""
    root = require(HAM10000)
    picked: dict[str, list[dict[str, str]]] = {dx: [] for dx in CLASSES}
    with open(root / "HAM10000_metadata.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if len(picked[row["dx"]]) < PER_CLASS and (root / "images" / f"{row['image_id']}.jpg").exists():
                picked[row["dx"]].append(row)
    rows = [row for dx in CLASSES for row in picked[dx]]
    lesions = sorted({row["lesion_id"] for row in rows})
    test_lesions = set(lesions[::TEST_EVERY])
    for row in rows:
        row["split"] = "test" if row["lesion_id"] in test_lesions else "train"
    return rows


def write_inputs(spark: SparkSession, root: Path, weights_id: str) -> tuple[str, str, str]:
    """Curated images, a features table with dummy vectors (finetune never reads them) and a train_set."""
    meta = sample_metadata()
    curated = [
        (
            r["image_id"],
            r["lesion_id"],
            r["dx"],
            r["split"],
            (require(HAM10000) / "images" / f"{r['image_id']}.jpg").read_bytes(),
            BATCH_ID,
        )
        for r in meta
    ]
    curated_uri = str(root / "curated")
    frame = spark.createDataFrame(curated, schema=CURATED_SCHEMA)
    frame.write.mode("overwrite").partitionBy("batch_id").parquet(f"{curated_uri}/images")
    features = features_frame(spark, meta, weights_id)
    features_uri = str(root / "features")
    features.write.mode("overwrite").partitionBy("batch_id").parquet(features_uri)
    train_set = features.where(F.col("split") == "train").select(
        "*",
        F.lit(1.0).alias("weight"),
        F.lit(False).alias("synthetic"),
        F.col("image_id").alias("source_image_id"),
    )
    train_set_uri = str(root / "run" / "train_set")
    train_set.write.mode("overwrite").parquet(train_set_uri)
    return curated_uri, features_uri, train_set_uri


def features_frame(spark: SparkSession, meta: list[dict[str, str]], weights_id: str) -> DataFrame:
    rows = [
        (
            r["image_id"],
            r["lesion_id"],
            r["dx"],
            r["split"],
            "mobilenet_0.25",
            weights_id,
            DUMMY_DIM,
            [0.0] * DUMMY_DIM,
            BATCH_ID,
        )
        for r in meta
    ]
    return spark.createDataFrame(rows, schema=FEATURES_SCHEMA)


@pytest.fixture(scope="module")
def finetune_run(spark, tmp_path_factory):
    weights = str(require(MOBILENET_025_WEIGHTS))
    spec = resolve_backbone("mobilenet", weights, alpha=0.25)
    root = tmp_path_factory.mktemp("finetune")
    curated, features_uri, train_set_uri = write_inputs(spark, root, spec.weights_id)
    out = str(root / "run")
    parser = argparse.ArgumentParser()
    train.Settings.add_arguments(parser)
    argv = [
        *("--train-set", train_set_uri, "--features", features_uri, "--out", out),
        *("--models", "finetune", "--curated", curated, "--weights", weights),
        *("--validation-fraction", "0.3", "--finetune-epochs", "1", "--finetune-batch-size", "8"),
        *("--finetune-layers", "6", "--finetune-max-images", str(MAX_IMAGES)),
    ]
    settings = train.Settings.from_args(parser.parse_args(argv))
    summary = train.run(spark, settings)
    return summary, out, curated


def test_finetune_runs_and_saves_a_keras_model(finetune_run):
    summary, out, _ = finetune_run
    model_dir = Path(out, "models", "finetune")
    assert (model_dir / models.KERAS_FILE).stat().st_size > 0
    sidecar = json.loads((model_dir / SIDECAR_FILE).read_text())
    assert set(models.SIDECAR_KEYS) <= sidecar.keys()
    assert sidecar["format"] == finetune.FORMAT_FINETUNE
    assert sidecar["feature_spec"]["backbone"] == "mobilenet_0.25"
    assert sidecar["feature_spec"]["weights_id"].startswith("sha256:")
    history = sidecar["keras_history"]
    assert history["epochs_run"] == 1
    assert history["train_images"] == MAX_IMAGES
    assert history["val_images"] > 0
    assert 0 < history["trainable_layers"] <= 6
    assert summary["champion"] == "finetune"
    assert summary["models"]["finetune"]["test_rows"] > 0


def test_predictions_cover_validation_and_test_images(spark, finetune_run):
    summary, out, _ = finetune_run
    written = spark.read.parquet(f"{out}/predictions/finetune")
    assert written.schema == PREDICTIONS_SCHEMA
    rows = written.collect()
    splits = [r["split"] for r in rows]
    assert splits.count("validation") == summary["validation_rows"] > 0
    assert splits.count("test") == summary["models"]["finetune"]["test_rows"]
    for row in rows:
        assert len(row["probability"]) == len(CLASSES)
        assert abs(sum(row["probability"]) - 1.0) < 1e-4
        assert row["prediction"] == int(np.argmax(row["probability"]))


def test_reloaded_model_predicts_identically(spark, finetune_run):
    _, out, curated = finetune_run
    written = spark.read.parquet(f"{out}/predictions/finetune")
    loaded = models.load_model(spark, f"{out}/models/finetune")
    images = spark.read.parquet(f"{curated}/images").select("image_id", "image")
    scoring = written.select("image_id", "lesion_id", "dx", "split").join(images, on="image_id", how="inner")
    again = {r["image_id"]: r for r in loaded.predict_images(scoring).collect()}
    before = {r["image_id"]: r for r in written.collect()}
    assert again.keys() == before.keys()
    for image_id, row in before.items():
        assert again[image_id]["prediction"] == row["prediction"]
        assert again[image_id]["split"] == row["split"]
        np.testing.assert_allclose(again[image_id]["probability"], row["probability"], rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="predict_images"):
        loaded.predict(written)


def test_report_uses_the_validation_rows(spark, finetune_run):
    _, out, _ = finetune_run
    result = report.run(spark, report.Settings(run=out, history=str(Path(out) / "history.jsonl")))
    assert result["models"]["finetune"]["threshold_source"] == "validation"


def test_augmentation_keeps_shape_and_is_seeded():
    rgb = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    a = augmentation.augment_rgb(rgb, np.random.default_rng(5))
    b = augmentation.augment_rgb(rgb, np.random.default_rng(5))
    assert a.shape == rgb.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    # Flips/turns and ±10 % jitter: the pixel multiset stays close to the original's.
    assert abs(float(a.mean()) - float(rgb.mean())) < 0.15 * float(rgb.mean())


def test_config_is_validated():
    with pytest.raises(ValueError, match="unfreeze"):
        finetune.FinetuneConfig(unfreeze="middle")
    with pytest.raises(ValueError, match="epochs"):
        finetune.FinetuneConfig(epochs=0)
