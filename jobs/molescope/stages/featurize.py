"""featurize: curated images → CNN feature vectors (one row per image) for one backbone + weights.

Reads `<curated>/images`, computes features for the images that have none yet for the same backbone and
weights (`--recompute`: all), and writes `<features>/<backbone>/<weights dir>/batch_id=<id>/` (Parquet, the
features schema of docs/architecture.md). The weights dir is `weights_id` with `:` replaced by `-`, because
Hadoop paths cannot hold a colon (`sha256:ab12…` → `sha256-ab12…`); the `weights_id` column keeps the colon.

The transform and the engines are `molescope.features.extract` (the engine is prepared on the driver while
Spark counts the images); the worker runtime (threads, GPUs, accumulators) is `molescope.features.worker`.
Size concurrency with `spark.task.cpus`: e.g. 16 cores, 1 GPU → `--conf spark.task.cpus=4` = 4 tasks feeding
the GPU, each with 4 decoding threads. `--mixed-precision` runs the model in float16 (features stay float32).

Writes (`molescope.io.tables`). Each batch is written by its own Spark job into a new version folder
`<table>/batch_id=<id>/v<time>-<random>/` and published by the batch's manifest
`<table>/_manifests/<id>.json`, written last in one atomic PUT. A normal run is incremental: the new
manifest names the batch's earlier files plus the new folder, so rows of a partition that gains images are
never rewritten, and the left-anti join on image_id (against the published rows only) makes a re-run a
no-op. `--recompute` computes every selected image and publishes the new folder alone (use it after a batch
was re-cleaned: removed or changed images are not detected by image_id). A run killed or failing at any
point publishes nothing for the batches it had not finished: their previous rows stay as they were, its
files are never read, and they are deleted by the next run that publishes the batch. `--ref-out` is
removed when the run starts and written when every batch is published, so a failed run leaves none behind.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from molescope.core.errors import InvariantError
from molescope.core.registry import (
    DEFAULT_BACKBONE,
    DEFAULT_BATCH_SIZE,
    ENGINE_AUTO,
    ENGINES,
    WEIGHTS_IMAGENET,
)
from molescope.core.settings import CliSettings, option
from molescope.features.backbones import BackboneSpec, resolve_backbone
from molescope.features.engines import Engine
from molescope.features.extract import (
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
from molescope.features.worker import Counters
from molescope.io import storage, tables

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
    """What a run computes: per batch, the published version and (selected, to compute) images."""

    table: tables.Table
    curated: str
    existing: dict[str, tables.Version]
    counts: dict[str, tuple[int, int]]
    #: image_ids with published features (None under --recompute: every selected image is computed).
    have: DataFrame | None

    @property
    def selected(self) -> int:
        return sum(s for s, _ in self.counts.values())

    @property
    def n_todo(self) -> int:
        return sum(t for _, t in self.counts.values())

    def todo(self, spark: SparkSession, batch_id: str) -> DataFrame:
        """The batch's curated images without published features."""
        return select_missing(tables.read_curated(spark, self.curated, batch_id), self.have)


def plan(spark: SparkSession, settings: Settings, out: tables.Table) -> Plan:
    images = tables.read_curated(spark, settings.curated, settings.batch_id)
    batches = None if settings.batch_id is None else [settings.batch_id]
    existing = tables.published_batches(spark, out, batches)
    have = None
    if not settings.recompute and existing:
        have = tables.read_files(spark, out, [f for v in existing.values() for f in v.files]).select(
            "image_id"
        )
    counts = {r["batch_id"]: (r["selected"], r["todo"]) for r in batch_counts(images, have).collect()}
    return Plan(out, settings.curated, existing, counts, have)


def publish_batch(
    spark: SparkSession,
    settings: Settings,
    todo: Plan,
    batch_id: str,
    features: DataFrame,
    spec: BackboneSpec,
) -> tables.Version:
    """Write the batch's new features as a version, publish it (with the batch's earlier files unless
    --recompute) and delete unpublished or superseded versions of the batch."""
    expected = todo.counts[batch_id][1]
    new = tables.write_version(spark, todo.table, features, batch_id, expected_rows=expected)
    earlier = todo.existing.get(batch_id, tables.EMPTY)
    version = new if settings.recompute else earlier + new
    if len(set(version.files)) != len(version.files):
        raise InvariantError(f"{todo.table.folder(batch_id)}: a file would be published twice")
    document = tables.manifest(
        {todo.table.name: version},
        batch_id=batch_id,
        backbone=spec.name,
        weights_id=spec.weights_id,
        feature_dim=spec.feature_dim,
        curated=settings.curated,
    )
    tables.publish(spark, todo.table.manifest_uri(batch_id), document)
    tables.collect_garbage(spark, todo.table, batch_id)
    return version


def plan_with_engine(
    spark: SparkSession, settings: Settings, spec: BackboneSpec, out: tables.Table
) -> tuple[Plan, Engine]:
    """The plan, and the engine prepared meanwhile (a LiteRT conversion runs TensorFlow in a child)."""
    with ThreadPoolExecutor(1, thread_name_prefix="engine") as pool:
        ready = pool.submit(
            engine_for_table,
            spark,
            spec,
            settings.engine,
            settings.batch_size,
            out.root,
            mixed_precision=settings.mixed_precision,
        )
        todo = plan(spark, settings, out)
        return todo, ready.result()


def compute_and_write(
    spark: SparkSession, settings: Settings, spec: BackboneSpec, todo: Plan, engine: Engine
) -> dict[str, Any]:
    """Featurize the plan's images, one job and one publish per batch; the run's figures."""
    slots = task_slots(spark)
    counters = Counters.new(spark)
    partitions = []
    started = time.monotonic()
    with StageProgress(f"featurize {spec.name}", todo.n_todo, counters.images) as stage:
        for batch_id, (_, n_todo) in sorted(todo.counts.items()):
            if not n_todo:
                continue
            partitions.append(settings.partitions or partition_count(n_todo, slots))
            features = compute_features(
                todo.todo(spark, batch_id),
                spec,
                settings.batch_size,
                mixed_precision=settings.mixed_precision,
                partitions=partitions[-1],
                counters=counters,
                engine=engine,
            )
            publish_batch(spark, settings, todo, batch_id, features, spec)
    seconds = time.monotonic() - started
    stage.progress.finish()
    return {
        "seconds": round(seconds, 2),
        "images_per_s": round(todo.n_todo / seconds, 1),
        "device": ",".join(sorted(counters.devices.value)),
        "partitions": sum(partitions),
        "worker_startup_s": round(counters.startup_s.value, 2),
        "task_cpus": int(spark.sparkContext.getConf().get("spark.task.cpus", "1")),
    }


def run(spark: SparkSession, settings: Settings) -> dict:
    spec = resolve_backbone(settings.backbone, settings.weights, settings.alpha, settings.seed)
    out = tables.features_table(features_uri(settings.features, spec))
    if settings.ref_out:
        # Written again at the end: a failed run leaves no reference a later stage could follow.
        storage.delete(spark, settings.ref_out)
    todo, engine = plan_with_engine(spark, settings, spec, out)
    summary: dict[str, Any] = {
        "backbone": spec.name,
        "weights": spec.weights,
        "weights_id": spec.weights_id,
        "feature_dim": spec.feature_dim,
        "features_uri": out.root,
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
        summary |= {"seconds": 0.0, "images_per_s": 0.0, "device": None, "partitions": 0}
    else:
        summary |= compute_and_write(spark, settings, spec, todo, engine)
    if settings.ref_out:
        write_ref(spark, settings.ref_out, out.root, spec)
    return summary
