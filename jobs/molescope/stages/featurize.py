"""featurize: curated images → CNN feature vectors (one row per image) for one backbone + weights.

Reads `<curated>/images`, computes features for the images that have none yet for the same backbone and
weights (`--recompute`: all), and writes `<features>/<backbone>/<weights dir>/batch_id=<id>/` (Parquet, the
features schema of docs/architecture.md). The weights dir is `weights_id` with `:` replaced by `-`, because
Hadoop paths cannot hold a colon (`sha256:ab12…` → `sha256-ab12…`); the `weights_id` column keeps the colon.

Execution: `mapInPandas` over Arrow batches. Each Python worker loads the model once (cached per process;
Spark reuses its Python workers) and, per chunk of `batch_size` rows, decodes the JPEG bytes, resizes to the
backbone's input size, applies its preprocessing and runs the model. Images are never collected to the driver.

Engines (`--engine`, molescope.engines): `keras` runs the Keras model in TensorFlow in every worker (GPU
capable); `litert` runs the model converted once on the driver (in a child process, while Spark counts the
images; cached under `<features root>/_engines/`) by XNNPACK, and its workers never import TensorFlow;
`auto` (default) takes keras for GPU or mixed-precision jobs, litert otherwise. Both give the same features
to float32 rounding, so they share one features table.

Threads. Every task owns `spark.task.cpus` cores (1 by default), so:
- CPU: the engine gets `spark.task.cpus` threads (`MOLESCOPE_TF_THREADS` overrides; TensorFlow: intra-op,
  with 1 inter-op thread), decoding runs inline. With local[N] that is N single-threaded inference processes
  on N cores: no oversubscription, and independent processes scale at least as well as one with N threads.
- GPU (TensorFlow sees one): TF threads are left alone, GPU memory grows on demand (several workers share a
  GPU), and each task decodes with max(2, `spark.task.cpus`) threads while the GPU runs the previous chunk.
  Size concurrency with `spark.task.cpus`: e.g. 16 cores, 1 GPU → `--conf spark.task.cpus=4` = 4 tasks
  feeding the GPU, each with 4 decoding threads. `--mixed-precision` runs the model in float16 (features
  stay float32). With Spark GPU scheduling (`spark.task.resource.gpu.amount`, on a cluster) a worker makes
  only the GPUs assigned to its task visible to TensorFlow, so executors on a multi-GPU node spread out.

Writes. A normal run is incremental: new rows are *appended* to their batch partitions (mode append), so
existing rows of a partition that gains images are never deleted; the left-anti join on image_id makes a rerun
a no-op, and a failed job commits nothing, so appending is idempotent. `--recompute` computes every selected
image and replaces the touched batch partitions (deleted, then appended: the S3A magic committer has no
dynamic partition overwrite), leaving the others; use it
after a batch was re-cleaned (removed or changed images are not detected by image_id).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pyspark import AccumulatorParam, TaskContext
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from molescope import storage
from molescope.backbones import BackboneSpec, load_model, preprocess, resolve_backbone
from molescope.engines import KERAS, SPARK_GPU_RESOURCE, Engine, litert_runner, prepare_engine
from molescope.imaging import ImageError, decode_resized
from molescope.progress import Progress
from molescope.registry import (
    DEFAULT_BACKBONE,
    DEFAULT_BATCH_SIZE,
    ENGINE_AUTO,
    ENGINE_LITERT,
    ENGINES,
    ENGINES_DIR,
    WEIGHTS_IMAGENET,
)

log = logging.getLogger(__name__)

#: Partitions of about this many images: small enough for load balance and progress, large enough that the
#: per-task overhead stays negligible.
ROWS_PER_PARTITION = 1024
#: Decoding threads per task on GPU even with spark.task.cpus=1: one decodes while the GPU computes.
GPU_MIN_DECODE_THREADS = 2
#: Overrides the TensorFlow intra-op threads per CPU task (default: spark.task.cpus); set on the executors.
ENV_TF_THREADS = "MOLESCOPE_TF_THREADS"
#: Seconds between stage-level progress lines on the driver.
PROGRESS_EVERY_S = 10.0
#: Columns carried from the input to the features table unchanged (null when the input lacks them).
PASSTHROUGH_COLUMNS: tuple[str, ...] = ("lesion_id", "dx", "split", "batch_id")
FEATURES_SCHEMA = T.StructType(
    [
        T.StructField("image_id", T.StringType()),
        T.StructField("lesion_id", T.StringType()),
        T.StructField("dx", T.StringType()),
        T.StructField("split", T.StringType()),
        T.StructField("backbone", T.StringType()),
        T.StructField("weights_id", T.StringType()),
        T.StructField("feature_dim", T.IntegerType()),
        T.StructField("features", T.ArrayType(T.FloatType())),
        T.StructField("batch_id", T.StringType()),
    ]
)
FEATURE_COLUMNS: tuple[str, ...] = tuple(FEATURES_SCHEMA.fieldNames())


class _SetParam(AccumulatorParam):
    """Accumulator of a set of strings (the devices the workers ran on)."""

    def zero(self, value: set[str]) -> set[str]:
        return set()

    def addInPlace(self, value1: set[str], value2: set[str]) -> set[str]:
        value1 |= value2
        return value1


class _MaxParam(AccumulatorParam):
    """Accumulator keeping the largest float added (the slowest worker start-up)."""

    def zero(self, value: float) -> float:
        return 0.0

    def addInPlace(self, value1: float, value2: float) -> float:
        return max(value1, value2)


@dataclass(frozen=True)
class _Counters:
    """Driver-visible counters the workers add to: images done, devices used, slowest model start-up (s)."""

    images: Any
    devices: Any
    startup_s: Any


# --- workers


def _configure_worker_logging() -> None:
    """Python workers start with no handlers; route molescope's INFO lines to the executor's stderr."""
    logger = logging.getLogger("molescope")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


_tf_lock = threading.Lock()
_tf_device: str | None = None


def assigned_gpus(resources: dict[str, Any] | None) -> list[int]:
    """GPU indices Spark assigned to the task (`TaskContext.resources()`); [] without GPU scheduling.

    On a cluster with `spark.{executor,task}.resource.gpu.amount`, each task gets GPU addresses ("0", "1",
    ...); without them every worker would use TensorFlow's GPU:0, several executors sharing one GPU while
    the others idle. Local mode has no GPU scheduling: TensorFlow then uses the GPUs it sees.
    """
    info = (resources or {}).get(SPARK_GPU_RESOURCE)
    addresses = getattr(info, "addresses", None) or []
    return sorted({int(a) for a in addresses if str(a).strip().isdigit()})


def select_gpus(gpus: Sequence[Any], indices: Sequence[int]) -> list[Any]:
    """The devices of `gpus` (TensorFlow's list) at Spark's assigned `indices`.

    When an index is out of range (a discovery script numbering GPUs differently from TensorFlow), the
    assignment cannot be honoured: warn and keep every GPU TensorFlow sees.
    """
    if any(i >= len(gpus) for i in indices):
        log.warning(
            "Spark assigned GPUs %s but TensorFlow sees %d: using all of them", list(indices), len(gpus)
        )
        return list(gpus)
    return [gpus[i] for i in indices]


def _configure_tensorflow(task_cpus: int, gpu_indices: Sequence[int] = ()) -> str:
    """Set up TensorFlow once per process; return the device it will use ("GPU:<name>" or "CPU").

    `gpu_indices`: the GPUs Spark assigned to the first task of this worker (kept for its later tasks:
    an executor's tasks share the executor's GPUs).
    """
    global _tf_device
    with _tf_lock:
        if _tf_device is not None:
            return _tf_device
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus and gpu_indices:
            gpus = select_gpus(gpus, gpu_indices)
        try:
            if gpus:
                tf.config.set_visible_devices(gpus, "GPU")
                for gpu in gpus:
                    tf.config.experimental.set_memory_growth(gpu, True)
            else:
                tf.config.threading.set_intra_op_parallelism_threads(task_cpus)
                tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError as exc:
            # TF was already initialised in this worker (e.g. by another UDF): keep its settings.
            log.warning("TensorFlow already initialised, thread/GPU settings unchanged: %s", exc)
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            _tf_device = f"GPU:{details.get('device_name', gpus[0].name)}"
        else:
            _tf_device = "CPU"
        return _tf_device


def _decode_resized(image_id: str, data: bytes, size: int) -> np.ndarray:
    try:
        return decode_resized(data, size)
    except ImageError as exc:
        # Curated images were decoded by clean; a failure here is a broken input, not a row to drop.
        raise ImageError(exc.reason, f"image {image_id}: {exc.detail}") from exc


def _chunks(batches: Iterator[pd.DataFrame], batch_size: int) -> Iterator[pd.DataFrame]:
    for pdf in batches:
        for start in range(0, len(pdf), batch_size):
            yield pdf.iloc[start : start + batch_size]


def _prepared(
    chunks: Iterator[pd.DataFrame],
    size: int,
    to_batch: Callable[[list[np.ndarray]], np.ndarray],
    decode_threads: int,
) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """(chunk, model input) pairs; with several decode threads the next chunk decodes meanwhile.

    `to_batch` turns the decoded (size, size, 3) images into the engine's input batch.
    """

    def prepare(chunk: pd.DataFrame, mapper: Callable) -> np.ndarray:
        images = list(mapper(_decode_resized, chunk["image_id"], chunk["image"], [size] * len(chunk)))
        return to_batch(images)

    if decode_threads <= 1:
        for chunk in chunks:
            yield chunk, prepare(chunk, map)
        return
    with (
        ThreadPoolExecutor(decode_threads, thread_name_prefix="decode") as pool,
        ThreadPoolExecutor(1, thread_name_prefix="prefetch") as prefetch,
    ):
        pending: tuple[pd.DataFrame, Future] | None = None
        for chunk in chunks:
            future = prefetch.submit(prepare, chunk, pool.map)
            if pending is not None:
                yield pending[0], pending[1].result()
            pending = (chunk, future)
        if pending is not None:
            yield pending[0], pending[1].result()


def _tick(spent: dict[str, float], name: str, since: float) -> float:
    now = time.monotonic()
    spent[name] += now - since
    return now


def _worker_engine(
    spec: BackboneSpec, engine: Engine, mixed_precision: bool, task_cpus: int, context: TaskContext | None
) -> tuple[str, Callable[[list[np.ndarray]], np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """(device label, images → model input, model input → features) of this worker, built once per process."""
    threads = int(os.environ.get(ENV_TF_THREADS) or task_cpus)
    if engine.name == ENGINE_LITERT:
        run = litert_runner(engine.key, lambda: engine.flatbuffer.value, threads)
        return f"CPU:{ENGINE_LITERT}", np.stack, run
    gpu_indices = assigned_gpus(context.resources()) if context else []
    device = _configure_tensorflow(threads, gpu_indices)
    model = load_model(spec, mixed_precision)

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_on_batch(batch), dtype=np.float32)

    return device, lambda images: preprocess(spec, images), predict


def _featurize_fn(
    spec: BackboneSpec, engine: Engine, mixed_precision: bool, counters: _Counters
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The mapInPandas function: image bytes in, `features` out, every other column passed through."""

    def featurize(batches: Iterator[pd.DataFrame], batch_size: int) -> Iterator[pd.DataFrame]:
        started = time.monotonic()
        _configure_worker_logging()
        context = TaskContext.get()
        task_cpus = max(1, context.cpus()) if context else 1
        device, to_batch, predict = _worker_engine(spec, engine, mixed_precision, task_cpus, context)
        # Only a worker's first task pays the engine's start-up (imports, model); later ones find the cache.
        counters.startup_s.add(time.monotonic() - started)
        # On GPU, decoding the next chunk overlaps inference (at least 2 threads); on CPU it would compete.
        decode_threads = max(GPU_MIN_DECODE_THREADS, task_cpus) if device.startswith("GPU") else 1
        partition = context.partitionId() if context else 0
        progress = Progress(f"featurize {spec.name} partition {partition} ({device})")
        counters.devices.add({device})
        # Where the task's time goes (logged at the end): input+decode, inference, Spark taking the output.
        spent = {"input+decode": 0.0, "predict": 0.0, "output": 0.0}
        mark = time.monotonic()
        chunks = _chunks(batches, batch_size)
        for chunk, batch in _prepared(chunks, spec.input_size, to_batch, decode_threads):
            mark = _tick(spent, "input+decode", mark)
            features = predict(batch)
            mark = _tick(spent, "predict", mark)
            out = chunk.drop(columns=["image"])
            out["features"] = list(features)
            progress.add(len(chunk))
            counters.images.add(len(chunk))
            yield out
            mark = _tick(spent, "output", mark)
        times = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in spent.items())
        log.info("%s (%s)", progress.finish(), times)

    return featurize


# --- transforms


def compute_features(
    images: DataFrame,
    spec: BackboneSpec,
    batch_size: int = DEFAULT_BATCH_SIZE,
    *,
    mixed_precision: bool = False,
    partitions: int | None = None,
    extra_columns: Sequence[str] = (),
    counters: _Counters | None = None,
    engine: Engine = KERAS,
) -> DataFrame:
    """Features of `images` (`image_id`, `image` JPEG bytes, passthrough columns) in the features schema.

    `engine`: from `engines.prepare_engine` (a `litert` one was converted for this `spec` and `batch_size`).
    Lazy: nothing runs until the result is written or counted. `partitions` hash-repartitions the images by
    image_id first (do it when the input has fewer partitions than task slots). `extra_columns` are carried
    after the schema columns (e.g. `synthetic` for upsample). Passthrough columns missing from the input are
    null. A JPEG that cannot be decoded fails the job with its image_id.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if engine.name == ENGINE_LITERT and engine.batch_size != batch_size:
        raise ValueError(f"LiteRT model converted for batch {engine.batch_size}, not {batch_size}")
    if counters is None:
        counters = new_counters(images.sparkSession)
    carried = [c for c in (*PASSTHROUGH_COLUMNS, *extra_columns) if c in images.columns]
    source = images.select("image_id", "image", *carried)
    if partitions:
        source = source.repartition(partitions, "image_id")
    out_fields = [f for f in source.schema.fields if f.name != "image"]
    out_schema = T.StructType([*out_fields, T.StructField("features", T.ArrayType(T.FloatType()))])
    fn = _featurize_fn(spec, engine, mixed_precision, counters)
    featurized = source.mapInPandas(lambda batches: fn(batches, batch_size), out_schema)
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


def new_counters(spark: SparkSession) -> _Counters:
    context = spark.sparkContext
    return _Counters(
        images=context.accumulator(0),
        devices=context.accumulator(set(), _SetParam()),
        startup_s=context.accumulator(0.0, _MaxParam()),
    )


# --- I/O shell


def features_uri(root: str, spec: BackboneSpec) -> str:
    """`<features root>/<backbone>/<weights dir>`: one table per backbone + weights."""
    return storage.join(root, spec.name, spec.weights_dir)


@dataclass(frozen=True)
class Settings:
    curated: str
    features: str
    batch_id: str | None = None
    backbone: str = DEFAULT_BACKBONE
    weights: str = WEIGHTS_IMAGENET
    alpha: float | None = None
    seed: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE
    recompute: bool = False
    mixed_precision: bool = False
    partitions: int = 0
    engine: str = ENGINE_AUTO
    ref_out: str | None = None

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--curated", required=True, help="curated root URI (reads <curated>/images)")
        parser.add_argument("--features", required=True, help="features root URI")
        parser.add_argument("--batch-id", default=None, help="only this curated batch (default: all)")
        parser.add_argument("--backbone", default=DEFAULT_BACKBONE, help="resnet50, mobilenet[_<alpha>], ...")
        parser.add_argument(
            "--weights", default=WEIGHTS_IMAGENET, help="imagenet | random | local path | s3a:// or s3:// URI"
        )
        parser.add_argument("--alpha", type=float, default=None, help="width multiplier (mobilenet*)")
        parser.add_argument("--seed", type=int, default=0, help="seed of --weights random")
        parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per predict")
        parser.add_argument("--recompute", action="store_true", help="recompute features that exist")
        parser.add_argument("--mixed-precision", action="store_true", help="float16 compute (GPU)")
        parser.add_argument(
            "--engine",
            choices=ENGINES,
            default=ENGINE_AUTO,
            help="keras (TensorFlow, GPU), litert (CPU, XNNPACK) or auto: keras for GPU jobs, else litert",
        )
        parser.add_argument(
            "--partitions", type=int, default=0, help=f"0: task slots or ~{ROWS_PER_PARTITION} images each"
        )
        parser.add_argument(
            "--ref-out",
            default=None,
            help='also write {"uri": <features table>, ...} JSON here',
        )

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> Settings:
        return cls(
            curated=ns.curated,
            features=ns.features,
            batch_id=ns.batch_id,
            backbone=ns.backbone,
            weights=ns.weights,
            alpha=ns.alpha,
            seed=ns.seed,
            batch_size=ns.batch_size,
            recompute=ns.recompute,
            mixed_precision=ns.mixed_precision,
            partitions=ns.partitions,
            engine=ns.engine,
            ref_out=getattr(ns, "ref_out", None),
        )


def read_curated(spark: SparkSession, curated: str, batch_id: str | None) -> DataFrame:
    images = spark.read.parquet(storage.join(curated, "images"))
    return images if batch_id is None else images.where(F.col("batch_id") == batch_id)


def read_existing_ids(spark: SparkSession, uri: str) -> DataFrame | None:
    """image_ids that already have features at `uri`, or None when there is no table yet."""
    if not storage.exists(spark, uri):
        return None
    # An explicit schema makes an empty or half-created folder read as an empty table instead of failing.
    return spark.read.schema(FEATURES_SCHEMA).parquet(uri).select("image_id")


def task_slots(spark: SparkSession) -> int:
    context = spark.sparkContext
    task_cpus = int(context.getConf().get("spark.task.cpus", "1"))
    return max(1, context.defaultParallelism // task_cpus)


def partition_count(n_images: int, slots: int) -> int:
    """At least one partition per task slot, ~ROWS_PER_PARTITION images each, a multiple of the slots."""
    wanted = max(slots, math.ceil(n_images / ROWS_PER_PARTITION))
    return math.ceil(wanted / slots) * slots


class _StageProgress:
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

    def __enter__(self) -> _StageProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.progress.done = int(self.counter.value)


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


def write_ref(spark: SparkSession, uri: str, table_uri: str, spec: BackboneSpec) -> None:
    """The reference later stages read (`uri` key): which features table this run made or extended."""
    ref = {
        "uri": table_uri,
        "backbone": spec.name,
        "weights_id": spec.weights_id,
        "feature_dim": spec.feature_dim,
        "weights": spec.weights,
    }
    storage.write_json(spark, uri, ref)


def run(spark: SparkSession, settings: Settings) -> dict:
    spec = resolve_backbone(settings.backbone, settings.weights, settings.alpha, settings.seed)
    out_uri = features_uri(settings.features, spec)
    if settings.ref_out:
        # Written first: it names the table whether or not this run has anything new to add to it.
        write_ref(spark, settings.ref_out, out_uri, spec)
    # The engine (a LiteRT conversion imports TensorFlow on the driver) is prepared while Spark counts.
    with ThreadPoolExecutor(1, thread_name_prefix="engine") as pool:
        engine_ready = pool.submit(
            engine_for_table,
            spark,
            spec,
            settings.engine,
            settings.batch_size,
            out_uri,
            mixed_precision=settings.mixed_precision,
        )
        images = read_curated(spark, settings.curated, settings.batch_id)
        existing = None if settings.recompute else read_existing_ids(spark, out_uri)
        todo = select_missing(images, existing)
        counts = {r["batch_id"]: (r["selected"], r["todo"]) for r in batch_counts(images, existing).collect()}
        engine = engine_ready.result()
    selected = sum(s for s, _ in counts.values())
    n_todo = sum(t for _, t in counts.values())
    summary: dict[str, Any] = {
        "backbone": spec.name,
        "weights": spec.weights,
        "weights_id": spec.weights_id,
        "feature_dim": spec.feature_dim,
        "features_uri": out_uri,
        "batch_id": settings.batch_id,
        "images_selected": selected,
        "images_computed": n_todo,
        "images_skipped": selected - n_todo,
        "engine": engine.name,
        "engine_reason": engine.reason,
    }
    log.info("featurize %s (%s): %d images, %d to compute", spec.name, spec.weights_id, selected, n_todo)
    if n_todo == 0:
        return {**summary, "seconds": 0.0, "images_per_s": 0.0, "device": None, "partitions": 0}
    partitions = settings.partitions or partition_count(n_todo, task_slots(spark))
    counters = new_counters(spark)
    features = compute_features(
        todo,
        spec,
        settings.batch_size,
        mixed_precision=settings.mixed_precision,
        partitions=partitions,
        counters=counters,
        engine=engine,
    )
    if settings.recompute:
        # The S3A magic committer cannot overwrite partitions dynamically: drop the partitions being
        # recomputed, then append. A failure in between leaves them absent, and a re-run recomputes them.
        for batch, (_, batch_todo) in sorted(counts.items()):
            if batch_todo:
                storage.delete(spark, storage.partition_uri(out_uri, "batch_id", batch))
    started = time.monotonic()
    with _StageProgress(f"featurize {spec.name}", n_todo, counters.images) as stage:
        features.write.mode("append").partitionBy("batch_id").parquet(out_uri)
    seconds = time.monotonic() - started
    stage.progress.finish()
    return {
        **summary,
        "seconds": round(seconds, 2),
        "images_per_s": round(n_todo / seconds, 1),
        "device": ",".join(sorted(counters.devices.value)),
        "partitions": partitions,
        "worker_startup_s": round(counters.startup_s.value, 2),
        "task_cpus": int(spark.sparkContext.getConf().get("spark.task.cpus", "1")),
    }
