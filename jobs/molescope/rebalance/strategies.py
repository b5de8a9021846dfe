"""The rebalancing strategies of the upsample stage, as pure transforms of a training split.

- `none`: the train rows as they are, weight 1.0.
- `oversample`: every original row is kept once; extra exact copies (new `image_id` `<source>~os<k>`,
  `synthetic` true) bring each class up to its target.
- `augment`: extra rows are new images made by `molescope.rebalance.augmentation` from a class's own train
  images, encoded to JPEG and featurized with the same backbone as the input table
  (`molescope.features.extract`).
- `smote`: extra rows are points on the segment between a train row and one of its k nearest same-class
  neighbours in feature space (scikit-learn's NearestNeighbors).
- `class_weight`: rows as they are, weight = n_total / (n_classes * n_class) (scikit-learn's balanced rule),
  for the training stage's `weightCol`.

Targets: `majority` (the largest class count), an integer count, or `ratio:<f>` (that fraction of the
majority count, rounded). Classes already at or above the target are kept as they are, never downsampled.
Which rows get one copy more than the others (the remainder when the extra count is not a multiple of the
class size) is decided by a hash of (seed, image_id), so the result depends only on the seed and the input
rows, not on partitioning.

Scale limits: oversample/augment rank rows in a window partitioned by class, and SMOTE gathers one class's
train rows into one pandas frame (groupBy + applyInPandas) to find neighbours, so one class's train rows must
fit in one task's memory: ~6,700 x 256 floats for HAM10000's nv, a few MB.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T
from sklearn.neighbors import NearestNeighbors

from molescope.core.constants import CLASSES, SPLIT_TRAIN
from molescope.core.registry import DEFAULT_BATCH_SIZE, TARGET_MAJORITY, TARGET_RATIO_PREFIX
from molescope.features.backbones import BackboneSpec
from molescope.features.engines import KERAS, Engine
from molescope.features.extract import compute_features
from molescope.io.tables import FEATURE_COLUMNS, TRAIN_SET_COLUMNS, TRAIN_SET_SCHEMA
from molescope.rebalance.augmentation import augment_jpeg, image_rng
from molescope.rebalance.balance import class_weights_of_counts

#: Synthetic image ids are `<source image_id>~<tag><k>`: unique, and the source is readable at a glance.
SYNTHETIC_ID_SEPARATOR = "~"
TAG_OVERSAMPLE = "os"
TAG_AUGMENT = "aug"
TAG_SMOTE = "smote"
#: Salt of the remainder draw, so it is independent of other xxhash64(seed, image_id) uses in the pipeline.
SALT_REMAINDER = 1
#: Augmented images before featurization: the passthrough columns plus the new JPEG bytes.
AUGMENTED_IMAGE_SCHEMA = T.StructType(
    [
        T.StructField("image_id", T.StringType()),
        T.StructField("source_image_id", T.StringType()),
        T.StructField("lesion_id", T.StringType()),
        T.StructField("dx", T.StringType()),
        T.StructField("split", T.StringType()),
        T.StructField("batch_id", T.StringType()),
        T.StructField("image", T.BinaryType()),
    ]
)
# Internal column names.
_EXTRA = "_extra"
_K = "_k"


# --------------------------------------------------------------------------------------------- targets


def parse_target(spec: str) -> tuple[str, float]:
    """Validate a target spec: ('majority', 0) | ('count', n) | ('ratio', f)."""
    text = spec.strip().lower()
    if text == TARGET_MAJORITY:
        return TARGET_MAJORITY, 0.0
    if text.startswith(TARGET_RATIO_PREFIX):
        try:
            ratio = float(text[len(TARGET_RATIO_PREFIX) :])
        except ValueError:
            ratio = 0.0
        if ratio <= 0:
            raise ValueError(f"target ratio must be > 0, got {spec!r}")
        return "ratio", ratio
    if text.isdigit() and int(text) > 0:
        return "count", float(int(text))
    raise ValueError(f"target must be 'majority', a positive count or 'ratio:<float>', got {spec!r}")


def targets(counts: Mapping[str, int], target_spec: str) -> dict[str, int]:
    """Target row count per class present in `counts`; never below a class's current count.

    Classes with no rows stay at 0: there is nothing to resample them from.
    """
    kind, value = parse_target(target_spec)
    majority = max(counts.values(), default=0)
    if kind == TARGET_MAJORITY:
        goal = majority
    elif kind == "ratio":
        goal = round(value * majority)
    else:
        goal = int(value)
    return {dx: (max(n, goal) if n > 0 else 0) for dx, n in counts.items()}


def in_class_order(found: Mapping[str, Any]) -> dict[str, Any]:
    """`found` keyed by class in CLASSES order, then any unknown label."""
    ordered = [dx for dx in CLASSES if dx in found] + sorted(dx for dx in found if dx not in CLASSES)
    return {dx: found[dx] for dx in ordered}


def class_counts(df: DataFrame) -> dict[str, int]:
    """Rows per class (only 7-ish numbers reach the driver)."""
    return in_class_order({row["dx"]: int(row["count"]) for row in df.groupBy("dx").count().collect()})


def _class_map(values: Mapping[str, Any]) -> Column:
    """A literal map column dx -> value; the handful of classes fits in the plan."""
    pairs = [item for dx, v in values.items() for item in (F.lit(dx), F.lit(v))]
    return F.create_map(*pairs) if pairs else F.create_map()


# ------------------------------------------------------------------------------------ shared helpers


def _originals(train: DataFrame, weight: Column | None = None) -> DataFrame:
    """Train rows as train_set rows: not synthetic, their own source, weight 1.0 unless given."""
    return train.select(
        *FEATURE_COLUMNS,
        (weight if weight is not None else F.lit(1.0)).cast(T.DoubleType()).alias("weight"),
        F.lit(False).alias("synthetic"),
        F.col("image_id").alias("source_image_id"),
    )


def _with_extra(df: DataFrame, class_targets: Mapping[str, int], seed: int) -> DataFrame:
    """Add `_extra`: how many synthetic rows each row is the source of, so each class hits its target.

    A class with n rows and target t needs t - n extra rows: every row sources (t - n) // n, and the
    (t - n) % n rows ranked first by a seeded hash of image_id source one more. Ranking by a hash (ties
    by image_id) rather than F.rand keeps the choice independent of partitioning.
    """
    by_class = Window.partitionBy("dx")
    ranked = Window.partitionBy("dx").orderBy(
        F.xxhash64(F.lit(seed), F.lit(SALT_REMAINDER), F.col("image_id")), F.col("image_id")
    )
    n = F.count(F.lit(1)).over(by_class)
    needed = F.greatest(F.coalesce(_class_map(class_targets)[F.col("dx")], n) - n, F.lit(0))
    extra = F.floor(needed / n) + F.when(F.row_number().over(ranked) <= needed % n, 1).otherwise(0)
    return df.withColumn(_EXTRA, extra.cast(T.IntegerType()))


def _exploded(df: DataFrame) -> DataFrame:
    """One row per synthetic row to make (`_k` = 1.._extra) of the rows that source any."""
    return df.filter(F.col(_EXTRA) > 0).withColumn(_K, F.explode(F.sequence(F.lit(1), F.col(_EXTRA))))


def _synthetic_id(tag: str) -> Column:
    return F.concat(F.col("image_id"), F.lit(SYNTHETIC_ID_SEPARATOR + tag), F.col(_K).cast(T.StringType()))


def _synthetic(rows: DataFrame) -> DataFrame:
    """Featurized synthetic rows (features columns + source_image_id) as train_set rows."""
    return rows.select(
        *FEATURE_COLUMNS, F.lit(1.0).alias("weight"), F.lit(True).alias("synthetic"), "source_image_id"
    )


# -------------------------------------------------------------------------------------------- strategies


def no_rebalance(train: DataFrame) -> DataFrame:
    """Strategy `none`: the train rows as train_set rows, weight 1.0."""
    return _originals(train).select(*TRAIN_SET_COLUMNS)


def class_weights(train: DataFrame) -> DataFrame:
    """Strategy `class_weight`: rows unchanged, weight = n_total / (n_classes * n_class)."""
    weights = class_weights_of_counts(class_counts(train))
    return _originals(train, weight=_class_map(weights)[F.col("dx")]).select(*TRAIN_SET_COLUMNS)


def oversample(train: DataFrame, class_targets: Mapping[str, int], seed: int) -> DataFrame:
    """Strategy `oversample`: keep every row once and add exact copies up to each class's target."""
    copies = _exploded(_with_extra(train, class_targets, seed))
    synthetic = copies.select(
        _synthetic_id(TAG_OVERSAMPLE).alias("image_id"),
        *[c for c in FEATURE_COLUMNS if c != "image_id"],
        F.col("image_id").alias("source_image_id"),
    )
    return no_rebalance(train).unionByName(_synthetic(synthetic))


def smote_class(group: pd.DataFrame, k_neighbors: int, seed: int) -> pd.DataFrame:
    """SMOTE for one class's train rows (with `_extra`): returns only the synthetic rows.

    Each new point is base + gap * (neighbour - base), gap ~ U[0, 1), neighbour drawn from the base's
    k nearest same-class rows. A class of one row has no neighbour: its new points equal it.
    """
    group = group.sort_values("image_id", kind="stable").reset_index(drop=True)
    points = np.stack(group["features"].to_numpy()).astype(np.float64)
    bases = np.repeat(np.arange(len(group)), group[_EXTRA].to_numpy())
    k = min(k_neighbors, len(group) - 1)
    rng = image_rng(seed, str(group["dx"].iloc[0]))
    partners = bases
    if k > 0 and len(bases):
        # Without query points, kneighbors leaves each point out of its own neighbours.
        _, neighbours = NearestNeighbors(n_neighbors=k).fit(points).kneighbors()
        partners = neighbours[bases, rng.integers(0, k, size=len(bases))]
    gaps = rng.random(len(bases))[:, None]
    new_points = points[bases] + gaps * (points[partners] - points[bases])
    source = group.iloc[bases].reset_index(drop=True)
    # Number each base's points 1..extra so ids stay unique and readable.
    k_of_base = source.groupby("image_id").cumcount() + 1
    out = source[[c for c in FEATURE_COLUMNS if c != "features"]].copy()
    out["image_id"] = source["image_id"] + SYNTHETIC_ID_SEPARATOR + TAG_SMOTE + k_of_base.astype(str)
    out["features"] = list(new_points.astype(np.float32))
    out["weight"] = 1.0
    out["synthetic"] = True
    out["source_image_id"] = source["image_id"]
    return out[list(TRAIN_SET_COLUMNS)]


def smote(train: DataFrame, class_targets: Mapping[str, int], k_neighbors: int, seed: int) -> DataFrame:
    """Strategy `smote`: originals plus, per class below target, points between same-class neighbours.

    One class's train rows meet in one applyInPandas call (see the module docstring for the limit);
    classes already at their target are not shipped to Python at all.
    """
    counts = class_counts(train)
    below = [dx for dx, n in counts.items() if class_targets.get(dx, 0) > n]
    # Whole classes go to Python (every row is a candidate neighbour), but only the classes below target.
    sources = _with_extra(train.filter(F.col("dx").isin(below)), class_targets, seed)
    synthetic = sources.groupBy("dx").applyInPandas(
        lambda group: smote_class(group, k_neighbors, seed), schema=TRAIN_SET_SCHEMA
    )
    return no_rebalance(train).unionByName(synthetic.select(*TRAIN_SET_COLUMNS))


def _augment_batches(batches: Iterator[pd.DataFrame], seed: int) -> Iterator[pd.DataFrame]:
    for batch in batches:
        out = batch[list(AUGMENTED_IMAGE_SCHEMA.fieldNames())].copy()
        out["image"] = [
            augment_jpeg(data, seed, image_id)
            for data, image_id in zip(batch["image"], batch["image_id"], strict=True)
        ]
        yield out


def augment_images(images: DataFrame, class_targets: Mapping[str, int], seed: int) -> DataFrame:
    """New images for classes below target (schema AUGMENTED_IMAGE_SCHEMA), none for the others.

    `images`: one row per train image with image_id, lesion_id, dx, batch_id, image (JPEG bytes).
    Each new row keeps its source's lesion_id and batch_id, points back via source_image_id, and is
    split 'train'. The transform is drawn from (seed, new image_id), so it is the same on every run.
    """
    # Rank on the narrow (image_id, dx) projection, then bring the JPEG bytes of the chosen sources only:
    # a window over the bytes would sort a whole class's images in one task.
    plan = _with_extra(images.select("image_id", "dx"), class_targets, seed).filter(F.col(_EXTRA) > 0)
    sources = _exploded(images.join(plan.select("image_id", _EXTRA), on="image_id", how="inner"))
    planned = sources.select(
        _synthetic_id(TAG_AUGMENT).alias("image_id"),
        F.col("image_id").alias("source_image_id"),
        "lesion_id",
        "dx",
        F.lit(SPLIT_TRAIN).alias("split"),
        "batch_id",
        "image",
    )
    return planned.mapInPandas(lambda it: _augment_batches(it, seed), schema=AUGMENTED_IMAGE_SCHEMA).select(
        *AUGMENTED_IMAGE_SCHEMA.fieldNames()
    )


def augment(
    train: DataFrame,
    images: DataFrame,
    class_targets: Mapping[str, int],
    seed: int,
    spec: BackboneSpec,
    batch_size: int = DEFAULT_BATCH_SIZE,
    engine: Engine = KERAS,
) -> DataFrame:
    """Strategy `augment`: originals plus featurized augmented images of their train images.

    `images`: curated rows with image_id, batch_id, image. `spec`: the featurize backbone spec the
    input features were made with, so new vectors live in the same space. `engine`: featurize's inference
    engine (default keras).
    """
    with_bytes = train.select("image_id", "lesion_id", "dx", "batch_id").join(
        images.select("image_id", "batch_id", "image"), on=["image_id", "batch_id"], how="inner"
    )
    new_images = augment_images(with_bytes, class_targets, seed)
    featurized = compute_features(
        new_images, spec, batch_size, extra_columns=("source_image_id",), engine=engine
    )
    return no_rebalance(train).unionByName(_synthetic(featurized))


# ---------------------------------------------------------------------------------------------- summary


def after_counts(train_set: DataFrame) -> dict[str, dict[str, float]]:
    """Per class: rows, synthetic rows and the sum of weights (the class's effective size)."""
    rows = (
        train_set.groupBy("dx")
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.sum(F.col("synthetic").cast(T.IntegerType())).alias("synthetic"),
            F.sum("weight").alias("weighted"),
        )
        .collect()
    )
    return in_class_order(
        {
            r["dx"]: {"rows": int(r["rows"]), "synthetic": int(r["synthetic"]), "weighted": r["weighted"]}
            for r in rows
        }
    )
