"""Real HAM10000 images (a few per class, whole lesions per split) written as curated images + placeholder
features: the inputs of the fine-tuning tests, shared by the one-process and Horovod ones."""

from __future__ import annotations

import csv
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from molescope.core.constants import CLASSES
from molescope.io.tables import FEATURES_SCHEMA
from tests.conftest import HAM10000, require
from tests.unit.published_tables import publish_curated, publish_features, publish_train_set

#: Images per class taken from the metadata (in file order); 7 × 5 = 35 real images.
PER_CLASS = 5
#: Every third lesion (in sorted order) is a test lesion.
TEST_EVERY = 3
MAX_IMAGES = 16
DUMMY_DIM = 4
BATCH_ID = "b1"
INPUT_SIZE = 96
CURATED_SCHEMA = T.StructType(
    [
        T.StructField("image_id", T.StringType()),
        T.StructField("lesion_id", T.StringType()),
        T.StructField("dx", T.StringType()),
        T.StructField("age", T.DoubleType()),
        T.StructField("sex", T.StringType()),
        T.StructField("localization", T.StringType()),
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
            float(r["age"]) if r["age"] else None,
            r["sex"],
            r["localization"],
            r["split"],
            (require(HAM10000) / "images" / f"{r['image_id']}.jpg").read_bytes(),
            BATCH_ID,
        )
        for r in meta
    ]
    curated_uri = str(root / "curated")
    frame = spark.createDataFrame(curated, schema=CURATED_SCHEMA)
    publish_curated(spark, curated_uri, frame)
    features = features_frame(spark, meta, weights_id)
    features_uri = str(root / "features")
    publish_features(spark, features_uri, features)
    train_set = features.where(F.col("split") == "train").select(
        "*",
        F.lit(1.0).alias("weight"),
        F.lit(False).alias("synthetic"),
        F.col("image_id").alias("source_image_id"),
    )
    train_set_uri = str(root / "run" / "train_set")
    publish_train_set(spark, train_set_uri, train_set)
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
