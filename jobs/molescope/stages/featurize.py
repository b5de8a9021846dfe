"""featurize: curated images → CNN feature vectors (one row per image) for one backbone + weights.

Reads `<curated>/images`, computes features for the images that have none yet for the same backbone and
weights (`--recompute`: all), and writes `<features>/<backbone>/<weights dir>/batch_id=<id>/` (Parquet, the
features schema of docs/architecture.md). The weights dir is `weights_id` with `:` replaced by `-`, because
Hadoop paths cannot hold a colon (`sha256:ab12…` → `sha256-ab12…`); the `weights_id` column keeps the colon.

The transform and the engines are `molescope.features` (the engine is prepared on the driver while Spark
counts the images); the worker runtime (threads, GPUs, accumulators) is `molescope.featurize_worker`.
Size concurrency with `spark.task.cpus`: e.g. 16 cores, 1 GPU → `--conf spark.task.cpus=4` = 4 tasks feeding
the GPU, each with 4 decoding threads. `--mixed-precision` runs the model in float16 (features stay float32).

Writes. A normal run is incremental: new rows are *appended* to their batch partitions (mode append), so
existing rows of a partition that gains images are never deleted; the left-anti join on image_id makes a rerun
a no-op, and a failed job commits nothing, so appending is idempotent. `--recompute` computes every selected
image and replaces the touched batch partitions (deleted, then appended: the S3A magic committer has no
dynamic partition overwrite), leaving the others; use it after a batch was re-cleaned (removed or changed
images are not detected by image_id).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from molescope import storage, tables
from molescope.backbones import BackboneSpec, resolve_backbone
from molescope.engines import Engine
from molescope.features import (
    ROWS_PER_PARTITION,
    StageProgress,
    batch_counts,
    compute_features,
    engine_for_table,
    features_uri,
    partition_count,
    select_missing,
    task_slots,
)
from molescope.featurize_worker import Counters
from molescope.registry import DEFAULT_BACKBONE, DEFAULT_BATCH_SIZE, ENGINE_AUTO, ENGINES, WEIGHTS_IMAGENET
from molescope.settings import CliSettings, option

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings(CliSettings):
    curated: str = option(help="curated root URI (reads <curated>/images)")
    features: str = option(help="features root URI")
    batch_id: str | None = option(None, help="only this curated batch (default: all)")
    backbone: str = option(DEFAULT_BACKBONE, help="resnet50, mobilenet[_<alpha>], ...")
    weights: str = option(WEIGHTS_IMAGENET, help="imagenet | random | local path | s3a:// or s3:// URI")
    alpha: float | None = option(None, type=float, help="width multiplier (mobilenet*)")
    seed: int = option(0, type=int, help="seed of --weights random")
    batch_size: int = option(DEFAULT_BATCH_SIZE, type=int, help="images per predict")
    recompute: bool = option(False, action="store_true", help="recompute features that exist")
    mixed_precision: bool = option(False, action="store_true", help="float16 compute (GPU)")
    engine: str = option(
        ENGINE_AUTO,
        choices=ENGINES,
        help="keras (TensorFlow, GPU), litert (CPU, XNNPACK) or auto: keras for GPU jobs, else litert",
    )
    partitions: int = option(0, type=int, help=f"0: task slots or ~{ROWS_PER_PARTITION} images each")
    ref_out: str | None = option(None, help='also write {"uri": <features table>, ...} JSON here')


def read_existing_ids(spark: SparkSession, uri: str) -> DataFrame | None:
    """image_ids that already have features at `uri`, or None when there is no table yet."""
    if not storage.exists(spark, uri):
        return None
    # An explicit schema makes an empty or half-created folder read as an empty table instead of failing.
    return spark.read.schema(tables.FEATURES_SCHEMA).parquet(uri).select("image_id")


def write_ref(spark: SparkSession, uri: str, table_uri: str, spec: BackboneSpec) -> None:
    """The reference later stages read (`uri` key): which features table this run made or extended."""
    ref = {
        tables.REF_URI_KEY: table_uri,
        "backbone": spec.name,
        "weights_id": spec.weights_id,
        "feature_dim": spec.feature_dim,
        "weights": spec.weights,
    }
    storage.write_json(spark, uri, ref)


@dataclass(frozen=True)
class Plan:
    """What a run computes: the images without features and, per batch, (selected, to compute)."""

    todo: DataFrame
    counts: dict[str, tuple[int, int]]

    @property
    def selected(self) -> int:
        return sum(s for s, _ in self.counts.values())

    @property
    def n_todo(self) -> int:
        return sum(t for _, t in self.counts.values())


def plan(spark: SparkSession, settings: Settings, out_uri: str) -> Plan:
    images = tables.read_curated(spark, settings.curated, settings.batch_id)
    existing = None if settings.recompute else read_existing_ids(spark, out_uri)
    counts = {r["batch_id"]: (r["selected"], r["todo"]) for r in batch_counts(images, existing).collect()}
    return Plan(select_missing(images, existing), counts)


def write_features(
    spark: SparkSession, settings: Settings, features: DataFrame, plan_: Plan, out: str
) -> None:
    if settings.recompute:
        # The S3A magic committer cannot overwrite partitions dynamically: drop the partitions being
        # recomputed, then append. A failure in between leaves them absent, and a re-run recomputes them.
        for batch, (_, batch_todo) in sorted(plan_.counts.items()):
            if batch_todo:
                storage.delete(spark, storage.partition_uri(out, "batch_id", batch))
    features.write.mode("append").partitionBy("batch_id").parquet(out)


def plan_with_engine(
    spark: SparkSession, settings: Settings, spec: BackboneSpec, out: str
) -> tuple[Plan, Engine]:
    """The plan, and the engine prepared meanwhile (a LiteRT conversion runs TensorFlow in a child)."""
    with ThreadPoolExecutor(1, thread_name_prefix="engine") as pool:
        ready = pool.submit(
            engine_for_table,
            spark,
            spec,
            settings.engine,
            settings.batch_size,
            out,
            mixed_precision=settings.mixed_precision,
        )
        todo = plan(spark, settings, out)
        return todo, ready.result()


def compute_and_write(
    spark: SparkSession, settings: Settings, spec: BackboneSpec, todo: Plan, engine: Engine, out: str
) -> dict[str, Any]:
    """Featurize the plan's images into `out`; the run's figures (time, rate, devices)."""
    partitions = settings.partitions or partition_count(todo.n_todo, task_slots(spark))
    counters = Counters.new(spark)
    features = compute_features(
        todo.todo,
        spec,
        settings.batch_size,
        mixed_precision=settings.mixed_precision,
        partitions=partitions,
        counters=counters,
        engine=engine,
    )
    started = time.monotonic()
    with StageProgress(f"featurize {spec.name}", todo.n_todo, counters.images) as stage:
        write_features(spark, settings, features, todo, out)
    seconds = time.monotonic() - started
    stage.progress.finish()
    return {
        "seconds": round(seconds, 2),
        "images_per_s": round(todo.n_todo / seconds, 1),
        "device": ",".join(sorted(counters.devices.value)),
        "partitions": partitions,
        "worker_startup_s": round(counters.startup_s.value, 2),
        "task_cpus": int(spark.sparkContext.getConf().get("spark.task.cpus", "1")),
    }


def run(spark: SparkSession, settings: Settings) -> dict:
    spec = resolve_backbone(settings.backbone, settings.weights, settings.alpha, settings.seed)
    out_uri = features_uri(settings.features, spec)
    if settings.ref_out:
        # Written first: it names the table whether or not this run has anything new to add to it.
        write_ref(spark, settings.ref_out, out_uri, spec)
    todo, engine = plan_with_engine(spark, settings, spec, out_uri)
    summary: dict[str, Any] = {
        "backbone": spec.name,
        "weights": spec.weights,
        "weights_id": spec.weights_id,
        "feature_dim": spec.feature_dim,
        "features_uri": out_uri,
        "batch_id": settings.batch_id,
        "images_selected": todo.selected,
        "images_computed": todo.n_todo,
        "images_skipped": todo.selected - todo.n_todo,
        "engine": engine.name,
        "engine_reason": engine.reason,
    }
    log.info(
        "featurize %s (%s): %d images, %d to compute", spec.name, spec.weights_id, todo.selected, todo.n_todo
    )
    if todo.n_todo == 0:
        return {**summary, "seconds": 0.0, "images_per_s": 0.0, "device": None, "partitions": 0}
    return {**summary, **compute_and_write(spark, settings, spec, todo, engine, out_uri)}
