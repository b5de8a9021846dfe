"""Synthetic labelled feature rows (clustered per class, whole lesions per split) written as the train stage's
inputs: shared by the train tests and the Horovod train tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from molescope.core.constants import CLASSES
from molescope.core.registry import MODEL_TYPES
from molescope.io.tables import FEATURES_SCHEMA
from tests.unit.published_tables import publish_features, publish_train_set

DIM = 16
#: The CV grid of the random forest's depth (its registry entry).
RF_DEPTH_GRID = next(h.grid for h in MODEL_TYPES["rf"].hypers if h.name == "rf_depth")
BACKBONE = "mobilenet"
WEIGHTS_ID = "synthetic-test"
#: nv is the majority class, as in HAM10000.
TRAIN_ROWS = {"nv": 80, "mel": 25, "bkl": 25, "bcc": 25, "akiec": 25, "vasc": 25, "df": 25}
TEST_ROWS = {"nv": 30, "mel": 8, "bkl": 8, "bcc": 8, "akiec": 8, "vasc": 8, "df": 8}
IMAGES_PER_LESION = 2
CLUSTER_SPREAD = 4.0
FAST_ARGS = [
    "--lr-max-iter", "20",
    "--rf-trees", "10", "--rf-depth", "4",
    "--gbt-iter", "4", "--gbt-depth", "3",
    "--mlp-epochs", "40", "--mlp-learning-rate", "0.02",
]  # fmt: skip


def cluster_rows(counts: dict[str, int], split: str, seed: int) -> list[tuple]:
    """Rows of 7 Gaussian clusters (one per class) in DIM dimensions; 2 images per lesion."""
    centres = np.random.default_rng(0).normal(0.0, CLUSTER_SPREAD, size=(len(CLASSES), DIM))
    rng = np.random.default_rng(seed)
    rows = []
    for label, dx in enumerate(CLASSES):
        for i in range(counts[dx]):
            x = centres[label] + rng.normal(0.0, 1.0, DIM)
            lesion = f"{split}_{dx}_L{i // IMAGES_PER_LESION}"
            rows.append(
                (
                    f"{split}_{dx}_{i}",
                    lesion,
                    dx,
                    split,
                    BACKBONE,
                    WEIGHTS_ID,
                    DIM,
                    x.astype(float).tolist(),
                    "b1",
                )
            )
    return rows


def features_frame(spark: SparkSession, counts: dict[str, int], split: str, seed: int) -> DataFrame:
    return spark.createDataFrame(cluster_rows(counts, split, seed), schema=FEATURES_SCHEMA)


def write_inputs(spark: SparkSession, root: Path, class_weights: bool = False) -> tuple[str, str]:
    """A run's train_set and a features table (train + test rows) under `root`."""
    features_uri = str(root / "features" / BACKBONE / WEIGHTS_ID)
    train_rows = features_frame(spark, TRAIN_ROWS, "train", seed=1)
    test_rows = features_frame(spark, TEST_ROWS, "test", seed=2)
    publish_features(spark, features_uri, train_rows.unionByName(test_rows))
    weight = F.lit(1.0)
    if class_weights:
        weight = F.when(F.col("dx") == "nv", F.lit(0.4)).otherwise(F.lit(1.0))
    train_set = train_rows.drop("batch_id").select(
        "*",
        weight.alias("weight"),
        F.lit(False).alias("synthetic"),
        F.col("image_id").alias("source_image_id"),
    )
    train_set_uri = str(root / "run" / "train_set")
    publish_train_set(spark, train_set_uri, train_set)
    return train_set_uri, features_uri
