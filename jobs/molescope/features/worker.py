"""The Python-worker side of featurization: engine set-up per process, TensorFlow threads and GPUs, the
mapInPandas function, and the accumulators the driver reads progress from.

Threads. Every task owns `spark.task.cpus` cores (1 by default), so:
- CPU: the engine gets `spark.task.cpus` threads (`MOLESCOPE_TF_THREADS` overrides; TensorFlow: intra-op,
  with 1 inter-op thread), decoding runs inline. With local[N] that is N single-threaded inference processes
  on N cores: no oversubscription, and independent processes scale at least as well as one with N threads.
- GPU (TensorFlow sees one): TF threads are left alone, GPU memory grows on demand (several workers share a
  GPU), and each task decodes with max(2, `spark.task.cpus`) threads while the GPU runs the previous chunk.
  With Spark GPU scheduling (`spark.task.resource.gpu.amount`, on a cluster) a worker makes only the GPUs
  assigned to its task visible to TensorFlow, so executors on a multi-GPU node spread out.

The model is loaded once per worker process (cached: Spark reuses its Python workers); only a worker's first
task pays the engine's start-up.
"""

from __future__ import annotations

import logging
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
from pyspark.sql import SparkSession

from molescope.core import failpoints
from molescope.core.progress import Progress
from molescope.core.registry import ENGINE_LITERT
from molescope.features.backbones import BackboneSpec, load_model, preprocess
from molescope.features.engines import SPARK_GPU_RESOURCE, Engine, litert_runner
from molescope.io.imaging import ImageError, decode_resized

log = logging.getLogger(__name__)

#: Decoding threads per task on GPU even with spark.task.cpus=1: one decodes while the GPU computes.
GPU_MIN_DECODE_THREADS = 2
#: Overrides the TensorFlow intra-op threads per CPU task (default: spark.task.cpus); set on the executors.
ENV_TF_THREADS = "MOLESCOPE_TF_THREADS"


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
class Counters:
    """Driver-visible counters the workers add to: images done, devices used, slowest model start-up (s)."""

    images: Any
    devices: Any
    startup_s: Any

    @classmethod
    def new(cls, spark: SparkSession) -> Counters:
        context = spark.sparkContext
        return cls(
            images=context.accumulator(0),
            devices=context.accumulator(set(), _SetParam()),
            startup_s=context.accumulator(0.0, _MaxParam()),
        )


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


def featurize_fn(
    spec: BackboneSpec, engine: Engine, mixed_precision: bool, counters: Counters, batch_size: int
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The mapInPandas function: image bytes in, `features` out, every other column passed through."""

    def featurize(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        started = time.monotonic()
        _configure_worker_logging()
        context = TaskContext.get()
        failpoints.pause("task:featurize", context.partitionId() if context else None)
        task_cpus = max(1, context.cpus()) if context else 1
        device, to_batch, predict = _worker_engine(spec, engine, mixed_precision, task_cpus, context)
        counters.startup_s.add(time.monotonic() - started)
        # On GPU, decoding the next chunk overlaps inference (at least 2 threads); on CPU it would compete.
        decode_threads = max(GPU_MIN_DECODE_THREADS, task_cpus) if device.startswith("GPU") else 1
        partition = context.partitionId() if context else 0
        progress = Progress(f"featurize {spec.name} partition {partition} ({device})")
        counters.devices.add({device})
        # Where the task's time goes (logged at the end): input+decode, inference, Spark taking the output.
        spent = {"input+decode": 0.0, "predict": 0.0, "output": 0.0}
        mark = time.monotonic()
        for chunk, batch in _prepared(
            _chunks(batches, batch_size), spec.input_size, to_batch, decode_threads
        ):
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
