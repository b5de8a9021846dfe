"""Rebalance the training split: oversample, augment, SMOTE or class weights, chosen per run.

HAM10000 is 67 % nv and has 115 df images; a model trained on it as-is under-calls the minority classes.
This stage reads a features table, keeps only the rows with split == 'train' (the test split is never read
into the result, so it cannot be rebalanced or leaked) and writes `<out>/train_set/` with the features
columns plus `weight double, synthetic boolean, source_image_id string`, a summary of class counts before
and after (`<out>/upsample_summary.json`) and a bar chart of them (`<out>/upsample_classes.png`).

Strategies:

- `none`: the train rows as they are, weight 1.0.
- `oversample`: every original row is kept once; extra exact copies (new `image_id`
  `<source>~os<k>`, `synthetic` true) bring each class up to its target.
- `augment`: extra rows are new images made by label-preserving transforms of a class's own train
  images (flips, 90° rotations, ±15° rotations, 0.9–1.1 scales, ±10 % brightness/contrast), encoded to
  JPEG and featurized with the same backbone as the input table (`molescope.stages.featurize`).
- `smote`: extra rows are points on the segment between a train row and one of its k nearest
  same-class neighbours in feature space.
- `class_weight`: rows as they are, weight = n_total / (n_classes * n_class), for the training
  stage's `weightCol`.

Targets (`--target`): `majority` (the largest class count), an integer count, or `ratio:<f>` (that
fraction of the majority count, rounded). Classes already at or above the target are kept as they are,
never downsampled. Which rows get one copy more than the others (the remainder when the extra count is
not a multiple of the class size) is decided by a hash of (seed, image_id), so the result depends only on
the seed and the input rows, not on partitioning.

Scale limits: oversample/augment rank rows in a window partitioned by class, and SMOTE gathers one
class's train rows into one pandas frame (groupBy + applyInPandas) to find neighbours, so one class's
train rows must fit in one task's memory: ~6,700 x 256 floats for HAM10000's nv, a few MB. The
neighbour search is brute force in chunks, O(n_class^2 * dim) per class.
"""

from __future__ import annotations

import argparse
import io
import logging
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from molescope import storage
from molescope.constants import CLASSES, SPLIT_TRAIN
from molescope.engines import KERAS, Engine
from molescope.imaging import decode_rgb
from molescope.registry import (
    DEFAULT_K_NEIGHBORS,
    DEFAULT_SEED,
    DEFAULT_STRATEGY,
    ENGINE_AUTO,
    ENGINES,
    FEATURES_REF_SUFFIX,
    RANDOM_WEIGHTS_PREFIX,
    RESAMPLING,
    STRATEGIES,
    STRATEGY_AUGMENT,
    STRATEGY_CLASS_WEIGHT,
    STRATEGY_OVERSAMPLE,
    STRATEGY_SMOTE,
    TARGET_MAJORITY,
    TARGET_RATIO_PREFIX,
    UPSAMPLE_CHART_FILE,
    UPSAMPLE_SUMMARY_FILE,
)
from molescope.stages.featurize import FEATURES_SCHEMA, compute_features, engine_for_table

if TYPE_CHECKING:
    from molescope.backbones import BackboneSpec

log = logging.getLogger(__name__)

DEFAULT_FEATURIZE_BATCH_SIZE = 32

#: Synthetic image ids are `<source image_id>~<tag><k>`: unique, and the source is readable at a glance.
SYNTHETIC_ID_SEPARATOR = "~"
TAG_OVERSAMPLE = "os"
TAG_AUGMENT = "aug"
TAG_SMOTE = "smote"
#: Salt of the remainder draw, so it is independent of other xxhash64(seed, image_id) uses in the pipeline.
SALT_REMAINDER = 1

#: Augmentation bounds: small enough that the lesion's shape and colour cues stay diagnostic.
MAX_ROTATION_DEG = 15.0
SCALE_RANGE = (0.9, 1.1)
BRIGHTNESS_RANGE = (0.9, 1.1)
CONTRAST_RANGE = (0.9, 1.1)
JPEG_QUALITY = 95

#: Rows per chunk of the brute-force neighbour search: bounds the distance matrix at chunk x n_class.
KNN_CHUNK_ROWS = 512

FEATURES_COLUMNS: tuple[str, ...] = tuple(FEATURES_SCHEMA.fieldNames())
TRAIN_SET_SCHEMA = T.StructType(
    [
        *FEATURES_SCHEMA.fields,
        T.StructField("weight", T.DoubleType()),
        T.StructField("synthetic", T.BooleanType()),
        T.StructField("source_image_id", T.StringType()),
    ]
)
TRAIN_SET_COLUMNS: tuple[str, ...] = tuple(TRAIN_SET_SCHEMA.fieldNames())
#: The curated-images columns augment needs (a subset of the curated schema; batch_id is the partition).
CURATED_IMAGE_SCHEMA = T.StructType(
    [
        T.StructField("image_id", T.StringType()),
        T.StructField("image", T.BinaryType()),
        T.StructField("batch_id", T.StringType()),
    ]
)
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

TRAIN_SET_DIR = "train_set"
#: The key of a features reference JSON naming the table (featurize --ref-out writes it).
REF_URI_KEY = "uri"

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


def class_counts(df: DataFrame) -> dict[str, int]:
    """Rows per class, CLASSES order first, then any unknown label (only 7-ish numbers reach the driver)."""
    found = {row["dx"]: int(row["count"]) for row in df.groupBy("dx").count().collect()}
    ordered = [dx for dx in CLASSES if dx in found] + sorted(dx for dx in found if dx not in CLASSES)
    return {dx: found[dx] for dx in ordered}


def _class_map(values: Mapping[str, Any]) -> Column:
    """A literal map column dx -> value; the handful of classes fits in the plan."""
    pairs = [item for dx, v in values.items() for item in (F.lit(dx), F.lit(v))]
    return F.create_map(*pairs) if pairs else F.create_map()


# ------------------------------------------------------------------------------------ shared helpers


def _originals(train: DataFrame, weight: Column | None = None) -> DataFrame:
    """Train rows as train_set rows: not synthetic, their own source, weight 1.0 unless given."""
    return train.select(
        *FEATURES_COLUMNS,
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
    return df.withColumn(
        _EXTRA,
        (F.floor(needed / n) + F.when(F.row_number().over(ranked) <= needed % n, 1).otherwise(0)).cast(
            T.IntegerType()
        ),
    )


def _synthetic_id(tag: str) -> Column:
    return F.concat(F.col("image_id"), F.lit(SYNTHETIC_ID_SEPARATOR + tag), F.col(_K).cast(T.StringType()))


# -------------------------------------------------------------------------------------------- strategies


def no_rebalance(train: DataFrame) -> DataFrame:
    """Strategy `none`: the train rows as train_set rows, weight 1.0."""
    return _originals(train).select(*TRAIN_SET_COLUMNS)


def class_weights(train: DataFrame) -> DataFrame:
    """Strategy `class_weight`: rows unchanged, weight = n_total / (n_classes * n_class)."""
    counts = class_counts(train)
    total = sum(counts.values())
    weights = {dx: total / (len(counts) * n) for dx, n in counts.items()}
    return _originals(train, weight=_class_map(weights)[F.col("dx")]).select(*TRAIN_SET_COLUMNS)


def oversample(train: DataFrame, class_targets: Mapping[str, int], seed: int) -> DataFrame:
    """Strategy `oversample`: keep every row once and add exact copies up to each class's target."""
    copies = (
        _with_extra(train, class_targets, seed)
        .filter(F.col(_EXTRA) > 0)
        .withColumn(_K, F.explode(F.sequence(F.lit(1), F.col(_EXTRA))))
    )
    synthetic = copies.select(
        _synthetic_id(TAG_OVERSAMPLE).alias("image_id"),
        *[c for c in FEATURES_COLUMNS if c != "image_id"],
        F.lit(1.0).alias("weight"),
        F.lit(True).alias("synthetic"),
        F.col("image_id").alias("source_image_id"),
    )
    return no_rebalance(train).unionByName(synthetic.select(*TRAIN_SET_COLUMNS))


def _class_rng(seed: int, dx: str) -> np.random.Generator:
    # crc32, not hash(): Python's str hash is salted per process.
    return np.random.default_rng([seed, zlib.crc32(dx.encode("utf-8"))])


def _nearest_neighbours(points: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Indices (len(rows) x k) of the k nearest other points to points[rows], Euclidean, brute force."""
    sq_norms = np.einsum("ij,ij->i", points, points)
    found = np.empty((len(rows), k), dtype=np.int64)
    for start in range(0, len(rows), KNN_CHUNK_ROWS):
        chunk = rows[start : start + KNN_CHUNK_ROWS]
        dist = sq_norms[chunk, None] + sq_norms[None, :] - 2.0 * points[chunk] @ points.T
        dist[np.arange(len(chunk)), chunk] = np.inf  # a point is not its own neighbour
        nearest = np.argpartition(dist, k - 1, axis=1)[:, :k]
        # argpartition leaves the k unordered; sort them so the draw below is reproducible.
        order = np.take_along_axis(dist, nearest, axis=1).argsort(axis=1, kind="stable")
        found[start : start + len(chunk)] = np.take_along_axis(nearest, order, axis=1)
    return found


def smote_class(group: pd.DataFrame, k_neighbors: int, seed: int) -> pd.DataFrame:
    """SMOTE for one class's train rows (with `_extra`): returns only the synthetic rows.

    Each new point is base + gap * (neighbour - base), gap ~ U[0, 1), neighbour drawn from the base's
    k nearest same-class rows. A class of one row has no neighbour: its new points equal it.
    """
    group = group.sort_values("image_id", kind="stable").reset_index(drop=True)
    points = np.stack(group["features"].to_numpy()).astype(np.float64)
    bases = np.repeat(np.arange(len(group)), group[_EXTRA].to_numpy())
    k = min(k_neighbors, len(group) - 1)
    rng = _class_rng(seed, str(group["dx"].iloc[0]))
    if k > 0 and len(bases):
        sources = np.unique(bases)
        neighbours = _nearest_neighbours(points, sources, k)
        row_of_source = np.searchsorted(sources, bases)
        partners = neighbours[row_of_source, rng.integers(0, k, size=len(bases))]
    else:
        partners = bases
    gaps = rng.random(len(bases))[:, None]
    new_points = points[bases] + gaps * (points[partners] - points[bases])
    source = group.iloc[bases].reset_index(drop=True)
    # Number each base's points 1..extra so ids stay unique and readable.
    k_of_base = source.groupby("image_id").cumcount() + 1
    out = source[[c for c in FEATURES_COLUMNS if c != "features"]].copy()
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


# ------------------------------------------------------------------------------------------- augment


def _image_rng(seed: int, image_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(image_id.encode("utf-8"))])


def _border_colour(rgb: np.ndarray) -> tuple[int, int, int]:
    """Median colour of the image border: fills the corners a rotation uncovers with skin, not black."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    median = np.median(border, axis=0)
    return int(median[0]), int(median[1]), int(median[2])


def augment_image(data: bytes, seed: int, image_id: str) -> bytes:
    """One label-preserving random transform of a JPEG, drawn from (seed, new image_id); JPEG out.

    Flips and 90° turns are free for dermoscopy (no canonical orientation); rotation, scale and
    brightness/contrast stay small and hue is untouched, since colour is a diagnostic cue.
    """
    rgb = decode_rgb(data)
    rng = _image_rng(seed, image_id)
    image = Image.fromarray(rgb)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    image = image.rotate(90.0 * int(rng.integers(0, 4)), expand=True)
    angle = rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)
    scale = rng.uniform(*SCALE_RANGE)
    width, height = image.size
    image = image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=_border_colour(rgb))
    scaled = image.resize(
        (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR
    )
    image = _fit(scaled, width, height, _border_colour(rgb))
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(*BRIGHTNESS_RANGE))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(*CONTRAST_RANGE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _fit(image: Image.Image, width: int, height: int, fill: tuple[int, int, int]) -> Image.Image:
    """Centre-crop (zoom in) or centre-pad (zoom out) back to width x height."""
    canvas = Image.new("RGB", (width, height), fill)
    canvas.paste(image, ((width - image.size[0]) // 2, (height - image.size[1]) // 2))
    return canvas


def _augment_batches(batches: Iterator[pd.DataFrame], seed: int) -> Iterator[pd.DataFrame]:
    for batch in batches:
        out = batch[list(AUGMENTED_IMAGE_SCHEMA.fieldNames())].copy()
        out["image"] = [
            augment_image(data, seed, image_id)
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
    sources = images.join(plan.select("image_id", _EXTRA), on="image_id", how="inner").withColumn(
        _K, F.explode(F.sequence(F.lit(1), F.col(_EXTRA)))
    )
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
    batch_size: int = DEFAULT_FEATURIZE_BATCH_SIZE,
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
    synthetic = featurized.select(
        *FEATURES_COLUMNS,
        F.lit(1.0).alias("weight"),
        F.lit(True).alias("synthetic"),
        "source_image_id",
    )
    return no_rebalance(train).unionByName(synthetic.select(*TRAIN_SET_COLUMNS))


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
    found = {
        r["dx"]: {"rows": int(r["rows"]), "synthetic": int(r["synthetic"]), "weighted": r["weighted"]}
        for r in rows
    }
    ordered = [dx for dx in CLASSES if dx in found] + sorted(dx for dx in found if dx not in CLASSES)
    return {dx: found[dx] for dx in ordered}


def chart_png(strategy: str, before: Mapping[str, int], after: Mapping[str, float]) -> bytes:
    """Grouped bar chart of class counts before and after (weighted for class_weight)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(before)
    x = np.arange(len(classes))
    width = 0.4
    fig, ax = plt.subplots(figsize=(8, 4.5))
    try:
        bars_before = ax.bar(x - width / 2, [before[c] for c in classes], width, label="before")
        label = "after (sum of weights)" if strategy == STRATEGY_CLASS_WEIGHT else "after"
        bars_after = ax.bar(x + width / 2, [after.get(c, 0) for c in classes], width, label=label)
        ax.bar_label(bars_before, fmt="%.0f", fontsize=7)
        ax.bar_label(bars_after, fmt="%.0f", fontsize=7)
        ax.set_xticks(x, classes)
        ax.set_ylabel("training rows")
        ax.set_title(f"Training class counts, strategy: {strategy}")
        ax.legend()
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()
    finally:
        plt.close(fig)


# ------------------------------------------------------------------------------------------- I/O shell


@dataclass(frozen=True)
class Settings:
    features: str
    out: str
    batches: tuple[str, ...] | None = None
    strategy: str = DEFAULT_STRATEGY
    target: str = TARGET_MAJORITY
    seed: int = DEFAULT_SEED
    k_neighbors: int = DEFAULT_K_NEIGHBORS
    curated: str | None = None
    weights: str | None = None
    featurize_batch_size: int = DEFAULT_FEATURIZE_BATCH_SIZE
    engine: str = ENGINE_AUTO

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        parse_target(self.target)
        if self.k_neighbors < 1:
            raise ValueError("k-neighbors must be >= 1")
        if self.strategy == STRATEGY_AUGMENT and not self.curated:
            raise ValueError("strategy augment needs --curated (the curated images root)")

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--features", required=True, help="features table: <features>/<backbone>/<weights_id>"
        )
        parser.add_argument(
            "--batches", default=None, help="comma-separated batch ids to include (default all)"
        )
        parser.add_argument(
            "--out", required=True, help="run prefix: writes train_set/ and the summary there"
        )
        parser.add_argument("--strategy", choices=STRATEGIES, default=DEFAULT_STRATEGY)
        parser.add_argument(
            "--target", default=TARGET_MAJORITY, help="per-class target: majority | <count> | ratio:<float>"
        )
        parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
        parser.add_argument("--k-neighbors", type=int, default=DEFAULT_K_NEIGHBORS, help="SMOTE neighbours")
        parser.add_argument("--curated", default=None, help="curated root (augment reads <curated>/images)")
        parser.add_argument(
            "--weights",
            default=None,
            help="augment: the weights source featurize used, needed when weights_id is sha256:...",
        )
        parser.add_argument(
            "--featurize-batch-size", type=int, default=DEFAULT_FEATURIZE_BATCH_SIZE, help="augment only"
        )
        parser.add_argument(
            "--engine", choices=ENGINES, default=ENGINE_AUTO, help="augment only: featurize's --engine"
        )

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> Settings:
        batches = tuple(b.strip() for b in ns.batches.split(",") if b.strip()) if ns.batches else None
        return cls(
            features=ns.features,
            out=ns.out,
            batches=batches or None,
            strategy=ns.strategy,
            target=ns.target,
            seed=ns.seed,
            k_neighbors=ns.k_neighbors,
            curated=ns.curated,
            weights=ns.weights,
            featurize_batch_size=ns.featurize_batch_size,
            engine=ns.engine,
        )


def resolve_features_uri(spark: SparkSession, uri: str) -> str:
    """The features table URI: `uri` itself, or the one named by a reference JSON file (`*.json`).

    The DAG hands stages `<run>/features.json` written by featurize (`{"uri": <table>, ...}`).
    """
    if not uri.endswith(FEATURES_REF_SUFFIX):
        return uri
    ref = storage.read_json(spark, uri)
    if isinstance(ref, dict) and isinstance(ref.get(REF_URI_KEY), str):
        return ref[REF_URI_KEY]
    raise ValueError(f"{uri}: no features table URI under {REF_URI_KEY!r}")


def read_features(spark: SparkSession, uri: str, batches: Sequence[str] | None) -> DataFrame:
    # An explicit schema keeps batch_id a string (partition inference would turn "007" into 7).
    df = spark.read.schema(FEATURES_SCHEMA).parquet(resolve_features_uri(spark, uri))
    return df.filter(F.col("batch_id").isin(list(batches))) if batches else df


def backbone_spec(backbone: str, weights_id: str, weights: str | None) -> BackboneSpec:
    """The featurize BackboneSpec that produced (backbone, weights_id), so new vectors share its space.

    `imagenet` and `random-seed<N>` ids name their source; a `sha256:` id needs the weights file
    (`weights`), whose hash must match.
    """
    from molescope.backbones import WEIGHTS_IMAGENET, WEIGHTS_RANDOM, resolve_backbone

    seed = 0
    if weights is None and weights_id == WEIGHTS_IMAGENET:
        weights = WEIGHTS_IMAGENET
    elif weights is None and weights_id.startswith(RANDOM_WEIGHTS_PREFIX):
        weights, seed = WEIGHTS_RANDOM, int(weights_id[len(RANDOM_WEIGHTS_PREFIX) :])
    elif weights is None:
        raise ValueError(f"features made with weights {weights_id!r}: augment needs --weights (their source)")
    spec = resolve_backbone(backbone, weights, seed=seed)
    if spec.name != backbone or spec.weights_id != weights_id:
        raise ValueError(
            f"--weights {weights!r} resolves to {spec.name}/{spec.weights_id}, not the table's "
            f"{backbone}/{weights_id}"
        )
    return spec


def _table_spec(train: DataFrame, weights: str | None) -> BackboneSpec:
    """The spec of the table's single backbone/weights_id (one distinct pair reaches the driver)."""
    pairs = train.select("backbone", "weights_id").distinct().collect()
    if len(pairs) != 1:
        raise ValueError(f"augment needs one backbone/weights_id in the features table, found {pairs}")
    return backbone_spec(pairs[0]["backbone"], pairs[0]["weights_id"], weights)


def rebalance(
    spark: SparkSession, train: DataFrame, settings: Settings, class_targets: Mapping[str, int]
) -> DataFrame:
    """Dispatch to the chosen strategy."""
    if settings.strategy == STRATEGY_OVERSAMPLE:
        return oversample(train, class_targets, settings.seed)
    if settings.strategy == STRATEGY_SMOTE:
        return smote(train, class_targets, settings.k_neighbors, settings.seed)
    if settings.strategy == STRATEGY_CLASS_WEIGHT:
        return class_weights(train)
    if settings.strategy == STRATEGY_AUGMENT:
        images = spark.read.schema(CURATED_IMAGE_SCHEMA).parquet(
            storage.join(settings.curated or "", "images")
        )
        spec = _table_spec(train, settings.weights)
        batch_size = settings.featurize_batch_size
        table = resolve_features_uri(spark, settings.features)
        engine = engine_for_table(spark, spec, settings.engine, batch_size, table)
        return augment(train, images, class_targets, settings.seed, spec, batch_size, engine)
    return no_rebalance(train)


def run(spark: SparkSession, settings: Settings) -> dict:
    features_table = resolve_features_uri(spark, settings.features)
    features = read_features(spark, features_table, settings.batches)
    # Only the train split goes any further: test rows are never resampled, weighted or written.
    train = features.filter(F.col("split") == SPLIT_TRAIN)
    before = class_counts(train)
    if not before:
        raise ValueError(f"no train rows in {settings.features} (batches {settings.batches})")
    class_targets = targets(before, settings.target) if settings.strategy in RESAMPLING else dict(before)
    out_table = storage.join(settings.out, TRAIN_SET_DIR)
    rebalance(spark, train, settings, class_targets).select(*TRAIN_SET_COLUMNS).write.mode(
        "overwrite"
    ).parquet(out_table)
    written = spark.read.schema(TRAIN_SET_SCHEMA).parquet(out_table)
    leaked = written.filter(F.col("split") != SPLIT_TRAIN).limit(1).count()
    if leaked:
        raise AssertionError("train_set holds non-train rows")
    after = after_counts(written)
    summary = {
        "strategy": settings.strategy,
        "target": settings.target if settings.strategy in RESAMPLING else None,
        "seed": settings.seed,
        "k_neighbors": settings.k_neighbors if settings.strategy == STRATEGY_SMOTE else None,
        "batches": list(settings.batches) if settings.batches else None,
        "features": features_table,
        "train_set": out_table,
        "before": before,
        "targets": class_targets,
        "after": {dx: v["rows"] for dx, v in after.items()},
        "synthetic": {dx: v["synthetic"] for dx, v in after.items()},
        "weighted_after": {dx: round(v["weighted"], 6) for dx, v in after.items()},
        "rows_before": sum(before.values()),
        "rows_after": sum(v["rows"] for v in after.values()),
        "target_met": all(after.get(dx, {"rows": 0})["rows"] >= t for dx, t in class_targets.items()),
    }
    storage.write_json(spark, storage.join(settings.out, UPSAMPLE_SUMMARY_FILE), summary)
    chart_after = (
        summary["weighted_after"] if settings.strategy == STRATEGY_CLASS_WEIGHT else summary["after"]
    )
    storage.write_bytes(
        spark,
        storage.join(settings.out, UPSAMPLE_CHART_FILE),
        chart_png(settings.strategy, before, chart_after),
    )
    log.info("upsample %s: %s -> %s", settings.strategy, before, summary["after"])
    return summary
