"""Images → feature vectors, as a lazy Spark transform (featurize, upsample's augment and score use it).

Execution: `mapInPandas` over Arrow batches. Each Python worker loads the model once and, per chunk of
`batch_size` rows, decodes the JPEG bytes, resizes to the backbone's input size, applies its preprocessing and
runs the model (`molescope.features.worker`). Images are never collected to the driver.

Engines (molescope.features.engines): `keras` runs the Keras model in TensorFlow in every worker (GPU
capable); `litert` runs the model converted once on the driver (in a child process; cached under
`<features root>/_engines/`) by XNNPACK, and its workers never import TensorFlow. Both give the same
features to float32 rounding, so they share one features table.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from molescope.core.progress import Progress
from molescope.core.registry import DEFAULT_BATCH_SIZE, ENGINE_LITERT, ENGINES_DIR
from molescope.features.backbones import BackboneSpec
from molescope.features.engines import KERAS, Engine, prepare_engine
from molescope.features.worker import Counters, featurize_fn
from molescope.io import storage
from molescope.io.tables import FEATURE_COLUMNS

log = logging.getLogger(__name__)

#: Partitions of about this many images: small enough for load balance and progress, large enough that the
#: per-task overhead stays negligible.
ROWS_PER_PARTITION = 1024
#: Seconds between stage-level progress lines on the driver.
PROGRESS_EVERY_S = 10.0
#: Columns carried from the input to the features table unchanged (null when the input lacks them).
PASSTHROUGH_COLUMNS: tuple[str, ...] = ("lesion_id", "dx", "split", "batch_id")


def compute_features(
    images: DataFrame,
    spec: BackboneSpec,
    batch_size: int = DEFAULT_BATCH_SIZE,
    *,
    mixed_precision: bool = False,
    partitions: int | None = None,
    extra_columns: Sequence[str] = (),
    counters: Counters | None = None,
    engine: Engine = KERAS,
) -> DataFrame:
    """Features of `images` (`image_id`, `image` JPEG bytes, passthrough columns) in the features schema.

    `engine`: from `engines.prepare_engine` (a `litert` one was converted for this `spec` and `batch_size`).
    Lazy: nothing runs until the result is written or counted. `partitions` hash-repartitions the images by
    image_id first (do it when the input has fewer partitions than task slots). `extra_columns` are carried
    after the schema columns (e.g. `source_image_id` for upsample). Passthrough columns missing from the input
    are null. A JPEG that cannot be decoded fails the job with its image_id.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if engine.name == ENGINE_LITERT and engine.batch_size != batch_size:
        raise ValueError(f"LiteRT model converted for batch {engine.batch_size}, not {batch_size}")
    counters = counters or Counters.new(images.sparkSession)
    carried = [c for c in (*PASSTHROUGH_COLUMNS, *extra_columns) if c in images.columns]
    source = images.select("image_id", "image", *carried)
    if partitions:
        source = source.repartition(partitions, "image_id")
    out_fields = [f for f in source.schema.fields if f.name != "image"]
    out_schema = T.StructType([*out_fields, T.StructField("features", T.ArrayType(T.FloatType()))])
    featurized = source.mapInPandas(
        featurize_fn(spec, engine, mixed_precision, counters, batch_size), out_schema
    )
    missing = [F.lit(None).cast("string").alias(c) for c in PASSTHROUGH_COLUMNS if c not in carried]
    return featurized.select(
        "*",
        *missing,
        F.lit(spec.name).alias("backbone"),
        F.lit(spec.weights_id).alias("weights_id"),
        F.lit(spec.feature_dim).cast("int").alias("feature_dim"),
    ).select(*FEATURE_COLUMNS, *extra_columns)


def select_missing(images: DataFrame, existing_ids: DataFrame | None) -> DataFrame:
    """Images whose image_id has no features yet (all of them when `existing_ids` is None)."""
    if existing_ids is None:
        return images
    return images.join(existing_ids.select("image_id").distinct(), on="image_id", how="left_anti")


def batch_counts(images: DataFrame, existing_ids: DataFrame | None) -> DataFrame:
    """Per batch_id: `selected` images and `todo` (those without features), in one pass over the images."""
    if existing_ids is None:
        marked, todo = images, F.lit(1)
    else:
        have = existing_ids.select("image_id").distinct().withColumn("_has_features", F.lit(True))
        marked = images.join(have, on="image_id", how="left")
        todo = F.when(F.col("_has_features").isNull(), 1).otherwise(0)
    return marked.groupBy("batch_id").agg(
        F.count(F.lit(1)).alias("selected"), F.sum(todo).cast("long").alias("todo")
    )


def features_uri(root: str, spec: BackboneSpec) -> str:
    """`<features root>/<backbone>/<weights dir>`: one table per backbone + weights."""
    return storage.join(root, spec.name, spec.weights_dir)


def task_slots(spark: SparkSession) -> int:
    context = spark.sparkContext
    task_cpus = int(context.getConf().get("spark.task.cpus", "1"))
    return max(1, context.defaultParallelism // task_cpus)


def partition_count(n_images: int, slots: int) -> int:
    """At least one partition per task slot, ~ROWS_PER_PARTITION images each, a multiple of the slots."""
    wanted = max(slots, math.ceil(n_images / ROWS_PER_PARTITION))
    return math.ceil(wanted / slots) * slots


def engines_cache_of(table_uri: str, spec: BackboneSpec) -> str | None:
    """The engine cache of the features root that `table_uri` (`<root>/<backbone>/<weights dir>`) is in.

    None for a table outside that layout: no cache is then written next to a folder of unknown purpose.
    """
    root, backbone, weights_dir = ["", "", "", *table_uri.rstrip("/").rsplit("/", 2)][-3:]
    if not root or (backbone, weights_dir) != (spec.name, spec.weights_dir):
        return None
    return storage.join(root, ENGINES_DIR)


def engine_for_table(
    spark: SparkSession,
    spec: BackboneSpec,
    choice: str,
    batch_size: int,
    table_uri: str | None,
    *,
    mixed_precision: bool = False,
) -> Engine:
    """`engines.prepare_engine`, caching in the features root of `table_uri` (no cache without one)."""
    cache = engines_cache_of(table_uri, spec) if table_uri else None
    return prepare_engine(spark, spec, choice, batch_size, mixed_precision=mixed_precision, cache_root=cache)


class StageProgress:
    """Logs stage-wide `done/total, images/s` from the workers' accumulator while a job runs."""

    def __init__(self, label: str, total: int, counter: Any):
        self.progress = Progress(label, total=total, every_s=0.0)
        self.counter = counter
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="featurize-progress")

    def _loop(self) -> None:
        while not self._stop.wait(PROGRESS_EVERY_S):
            self.progress.done = int(self.counter.value)
            log.info(self.progress.line())

    def __enter__(self) -> StageProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.progress.done = int(self.counter.value)
