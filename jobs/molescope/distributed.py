"""Data-parallel Keras 3 training with Horovod on Spark (Gloo): the `mlp` head and `finetune` on N tasks.

`fit_distributed` stages the training (and validation) rows as Parquet partitioned by a seeded hash of a
key column (`_shard=<rank>`), then runs `horovod.spark.run` on `num_proc` Spark tasks. Each rank reads only
its own partition with pyarrow (local paths or s3a://, credentials from the environment like S3A), builds
the caller's model and trains it with the caller's batches:

- the learning rate is multiplied by the number of ranks (each rank keeps its batch size, so the global
  batch grows by the same factor);
- gradients are averaged by `hvd.DistributedGradientTape` in our own train step. With Keras 3,
  `horovod.tensorflow.keras.DistributedOptimizer` runs but silently skips the averaging (horovod#4290), and
  Horovod must be handed the backing `tf.Variable` of each Keras variable (`v.value`);
- model and optimizer variables are broadcast from rank 0 before the first step; every rank runs the same
  number of steps per epoch (the smallest shard's), otherwise the collectives would wait forever;
- the floating non-trainable variables (BatchNorm moving statistics) are averaged at the end of every
  epoch: each rank updates them from its own batches;
- validation sums (loss, confusion counts) are allreduced, so every rank sees the same `val_loss` and
  balanced accuracy and takes the same early-stopping decision;
- rank 0 logs, returns the history and writes `<staging>/model.keras`; every rank returns a digest of its
  final weights and the driver refuses a run whose ranks disagree.

Failures are loud and bounded: no Horovod, or fewer task slots than ranks, fail before any job starts; a
rank's exception is reported as `rank N failed: <error>`, a killed rank by its exit code (Horovod then stops
the others); tasks that cannot start time out (`start_timeout_s`). Not covered: a rank that is alive but
stuck (the others wait in their collective; Horovod's stall shutdown did not fire in this set-up).
Model building stays with the caller: `build_model` and `make_dataset` are picklable factories (module-level
functions or `functools.partial`) that run on the executors. TensorFlow/Horovod are imported lazily.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from molescope import storage
from molescope.backbones import BackboneSpec
from molescope.errors import MolescopeError
from molescope.registry import DEFAULT_NUM_PROC, DISTRIBUTED_HOROVOD
from molescope.sparkconf import ENV_S3_ENDPOINT

log = logging.getLogger(__name__)

SHARD_COL = "_shard"
MODEL_FILE = "model.keras"
MONITORS: dict[str, str] = {"val_loss": "min", "val_balanced_accuracy": "max"}
HISTORY_KEYS: tuple[str, ...] = ("loss", "val_loss", "val_balanced_accuracy", "epoch_rows", "epoch_seconds")
#: Marker a failing rank prints before exiting; the driver turns it into the task's error message.
RANK_ERROR = "MOLESCOPE_RANK_ERROR"
_FORWARDED = re.compile(rf"{RANK_ERROR} rank=(\d+) (.*)")
#: How horovod.runner.gloo_run names the first process that exited non-zero.
_FIRST_FAILED = re.compile(r"Process name: (\S+) Exit code: (-?\d+)")
#: A rank's error is cut to this many characters (TensorFlow errors carry whole stack traces).
ERROR_CHARS = 300


class DistributedTrainingError(MolescopeError, RuntimeError):
    """Distributed training cannot start or a rank failed; the message is one line."""


@dataclass(frozen=True)
class DistributedConfig:
    """How to run: ranks, epochs, early stopping, where the shards and the model go."""

    staging_uri: str
    num_proc: int = DEFAULT_NUM_PROC
    epochs: int = 20
    patience: int = 3
    monitor: str = "val_loss"
    key_col: str = "image_id"
    scale_lr: bool = True
    seed: int = 42
    #: Seconds the Spark tasks may take to start and register (Horovod's start_timeout).
    start_timeout_s: int = 120

    def __post_init__(self) -> None:
        if self.num_proc < 1 or self.epochs < 1 or self.patience < 1:
            raise ValueError("num_proc, epochs and patience must be >= 1")
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {tuple(MONITORS)}, got {self.monitor!r}")


@dataclass(frozen=True)
class RankJob:
    """What every rank receives (pickled by Horovod): the factories and where its data is."""

    build_model: Callable[[], Any]
    make_dataset: Callable[..., Any]
    config: DistributedConfig
    has_validation: bool


@dataclass
class DistributedResult:
    model_uri: str
    history: dict[str, Any]
    shard_rows: list[int] = field(default_factory=list)
    #: sha256 of each rank's final weights (all equal, or fit_distributed raises).
    rank_digests: list[str] = field(default_factory=list)
    seconds: float = 0.0


# ---------------------------------------------------------------- driver side


def require_horovod() -> Any:
    """horovod.spark, checked to have Gloo and the TensorFlow ops; a one-line error otherwise."""
    try:
        import horovod.spark
        import horovod.tensorflow as hvd
    except ImportError as error:
        raise DistributedTrainingError(
            f"--distributed {DISTRIBUTED_HOROVOD} needs Horovod with TensorFlow ops ({error}); "
            "`make setup` builds it"
        ) from None
    if not hvd.gloo_built():
        raise DistributedTrainingError("this Horovod was built without Gloo: rebuild with `make setup`")
    return horovod.spark


def task_slots(spark: SparkSession) -> int:
    """Tasks the cluster can run at once now (the number Spark's barrier mode checks against)."""
    sc = spark.sparkContext._jsc.sc()
    return int(sc.maxNumConcurrentTasks(sc.resourceProfileManager().defaultResourceProfile()))


def check_slots(spark: SparkSession, num_proc: int) -> None:
    """DistributedTrainingError unless the cluster can run `num_proc` tasks at once (barrier mode would
    otherwise wait for slots that never come)."""
    slots = task_slots(spark)
    if slots < num_proc:
        raise DistributedTrainingError(
            f"{num_proc} Horovod ranks need {num_proc} concurrent Spark tasks, the cluster "
            f"has {slots} slots: lower --num-proc or add executors"
        )


def shard_column(key_col: str, num_proc: int, seed: int) -> Column:
    """Rank of a row: a seeded hash of its key, so a re-run gives every rank the same rows."""
    return F.pmod(F.xxhash64(F.lit(seed), F.col(key_col)), F.lit(num_proc)).cast("int")


def stage_shards(df: DataFrame, uri: str, config: DistributedConfig) -> list[int]:
    """Write `df` as Parquet partitioned by rank (replacing what was there); rows per rank."""
    sharded = df.withColumn(SHARD_COL, shard_column(config.key_col, config.num_proc, config.seed))
    writer = sharded.repartition(config.num_proc, SHARD_COL).write.mode("overwrite")
    writer.partitionBy(SHARD_COL).parquet(uri)
    spark = df.sparkSession
    counts = dict(spark.read.parquet(uri).groupBy(SHARD_COL).count().collect())
    return [int(counts.get(rank, 0)) for rank in range(config.num_proc)]


def fit_distributed(
    spark: SparkSession,
    train_df: DataFrame,
    build_model: Callable[[], Any],
    make_dataset: Callable[..., Any],
    config: DistributedConfig,
    validation_df: DataFrame | None = None,
) -> DistributedResult:
    """Train `build_model()` on `train_df` with `config.num_proc` Horovod ranks; rank 0 saves the model.

    `build_model()` returns a compiled Keras model (its optimizer and loss are used); `make_dataset(table,
    training)` turns a rank's pyarrow Table into a sequence of batches `(x, y[, sample_weight])` with
    `len()`, indexing and optionally `on_epoch_end()` (a keras.utils.PyDataset fits).
    """
    hvd_spark = require_horovod()
    check_slots(spark, config.num_proc)
    started = time.monotonic()
    storage.delete(spark, config.staging_uri)  # no model of an earlier run passes for this one's
    try:
        shard_rows = stage_shards(train_df, join(config.staging_uri, "train"), config)
        if min(shard_rows) == 0:
            raise DistributedTrainingError(f"a rank would get no training rows (rows per rank: {shard_rows})")
        if validation_df is not None:
            stage_shards(validation_df, join(config.staging_uri, "validation"), config)
        log.info("distributed: %d ranks, training rows per rank %s", config.num_proc, shard_rows)
        results = run_ranks(hvd_spark, RankJob(build_model, make_dataset, config, validation_df is not None))
    finally:
        for part in ("train", "validation"):  # the shards are copies of the training rows
            storage.delete(spark, join(config.staging_uri, part))
    digests = [result["digest"] for result in results]
    if len(set(digests)) != 1:
        raise DistributedTrainingError(f"ranks ended with different weights (digests {digests})")
    seconds = time.monotonic() - started
    model_uri = join(config.staging_uri, MODEL_FILE)
    return DistributedResult(model_uri, results[0]["history"], shard_rows, digests, seconds)


class _RankOutput:
    """Stream the ranks' forwarded output goes to: passed through, and scanned for RANK_ERROR lines."""

    def __init__(self, target: Any):
        self.target, self.errors, self._lock = target, [], threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self.errors.extend(_FORWARDED.findall(text))
            return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()


def run_ranks(hvd_spark: Any, job: RankJob) -> list[dict[str, Any]]:
    """horovod.spark.run with Gloo; a failure becomes `rank N failed: <that rank's error>`."""
    out, err = _RankOutput(sys.stdout), _RankOutput(sys.stderr)
    try:
        return hvd_spark.run(
            rank_main,
            args=(job,),
            num_proc=job.config.num_proc,
            use_gloo=True,
            start_timeout=job.config.start_timeout_s,
            stdout=out,
            stderr=err,
            verbose=0,
        )
    except Exception as error:
        raise DistributedTrainingError(failure_message(error, out.errors + err.errors)) from error


def failure_message(error: Exception, rank_errors: list[tuple[str, str]]) -> str:
    """One line: the first error a rank printed (the cause; the other ranks' errors follow from it, e.g. a
    broadcast failing because that rank is gone), or, when the rank Horovod saw exit first printed nothing,
    that it died (killed, out of memory). Horovod's exit order alone is not the cause: under load a rank
    failing in a collective may be reaped before the rank that broke it."""
    text = " ".join(str(error).split())
    first = _FIRST_FAILED.search(text)
    if first is not None and first.group(1) not in dict(rank_errors):
        rank, code = first.groups()
        return f"rank {rank} died with exit code {code} before reporting an error (killed, or out of memory?)"
    if rank_errors:
        return f"rank {rank_errors[0][0]} failed: {rank_errors[0][1]}"
    return f"Horovod run failed: {text}"


# ---------------------------------------------------------------- storage seen from a rank


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path) for a local path, file: or s3a:// URI; S3 settings from the environment."""
    from pyarrow import fs

    parsed = urlparse(uri)
    if parsed.scheme in ("s3a", "s3"):
        endpoint = urlparse(os.environ.get(ENV_S3_ENDPOINT) or "https://")
        s3 = fs.S3FileSystem(
            endpoint_override=endpoint.netloc or None,
            scheme=endpoint.scheme,
            region=os.environ.get("AWS_REGION", "us-east-1"),
        )
        return s3, parsed.netloc + parsed.path
    if parsed.scheme in ("", "file"):
        return fs.LocalFileSystem(), parsed.path
    raise DistributedTrainingError(f"staging URI {uri}: use a local path, file: or s3a://")


def read_shard(uri: str, rank: int) -> Any:
    """This rank's partition of a staged table (None when it has no rows)."""
    import pyarrow.parquet as pq
    from pyarrow import fs

    filesystem_, path = filesystem(join(uri, f"{SHARD_COL}={rank}"))
    if filesystem_.get_file_info(path).type == fs.FileType.NotFound:
        return None
    return pq.read_table(path, filesystem=filesystem_)


def save_model(model: Any, uri: str) -> None:
    """Keras saves to local files only: write a temp file, then copy it to `uri` so that a reader sees the
    whole model or none (as `molescope.storage.write_bytes`): on S3 the object appears when its upload
    completes; on a local disk the copy goes to a hidden name beside `uri`, renamed over it at the end."""
    from pyarrow import fs

    filesystem_, path = filesystem(uri)
    local_disk = isinstance(filesystem_, fs.LocalFileSystem)
    folder, name = path.rsplit("/", 1) if "/" in path else (".", path)
    written = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp" if local_disk else path
    with tempfile.TemporaryDirectory(prefix="molescope-hvd-") as tmp:
        local = os.path.join(tmp, MODEL_FILE)
        model.save(local)
        if local_disk:
            filesystem_.create_dir(folder)
        with open(local, "rb") as source, filesystem_.open_output_stream(written) as target:
            target.write(source.read())
    if local_disk:
        filesystem_.move(written, path)


# ---------------------------------------------------------------- rank side


def rank_main(job: RankJob) -> dict[str, Any]:
    """Entry point of every rank; a failure prints RANK_ERROR (for the driver) and exits non-zero."""
    try:
        import horovod.tensorflow as hvd

        hvd.init()
        return train_rank(hvd, job)
    except BaseException as error:
        message = " ".join(f"{type(error).__name__}: {error}".split())[:ERROR_CHARS]
        rank = os.environ.get("HOROVOD_RANK", "?")
        print(f"{RANK_ERROR} rank={rank} {message}", file=sys.stderr, flush=True)
        raise


def load_datasets(job: RankJob, rank: int) -> tuple[Any, Any]:
    """This rank's training batches and validation batches ([] when its validation shard is empty, None
    when the run has no validation: every rank must still join the validation allreduce)."""
    train = job.make_dataset(read_shard(join(job.config.staging_uri, "train"), rank), True)
    if not job.has_validation:
        return train, None
    table = read_shard(join(job.config.staging_uri, "validation"), rank)
    return train, ([] if table is None else job.make_dataset(table, False))


def train_rank(hvd: Any, job: RankJob) -> dict[str, Any]:
    """Load this rank's shard, train with averaged gradients, stop together; rank 0 saves the model."""
    cfg = job.config
    train, validation = load_datasets(job, hvd.rank())
    model = job.build_model()
    base_lr = float(model.optimizer.learning_rate)
    if cfg.scale_lr:
        model.optimizer.learning_rate = base_lr * hvd.size()
    model.optimizer.build(model.trainable_variables)
    hvd.broadcast_variables([v.value for v in model.variables + model.optimizer.variables], root_rank=0)
    steps = int(hvd.allreduce(np.int64(len(train)), op=hvd.Min, name="steps"))
    history, stopper = fit_epochs(hvd, model, train, validation, steps, cfg)
    stopper.restore(model)
    history.update(stopper.summary())
    if hvd.rank() == 0:
        model.optimizer.learning_rate = base_lr  # the saved model is the caller's model, trained
        save_model(model, join(cfg.staging_uri, MODEL_FILE))
    history = history if hvd.rank() == 0 else None  # metrics come from rank 0 only
    return {"rank": hvd.rank(), "digest": weights_digest(model), "history": history}


def fit_epochs(
    hvd: Any, model: Any, train: Any, validation: Any, steps: int, cfg: DistributedConfig
) -> tuple[dict[str, Any], EarlyStopping]:
    """Epochs of `steps` averaged-gradient steps, each followed by the allreduced validation, until the
    epoch limit or early stopping; epoch_seconds include the validation (as in Keras' `fit`)."""
    step = train_step_fn(hvd, model)
    stopper = EarlyStopping(cfg.monitor, cfg.patience)
    history: dict[str, Any] = {key: [] for key in HISTORY_KEYS}
    for epoch in range(cfg.epochs):
        started, rows, loss_sum = time.monotonic(), 0, 0.0
        for index in range(steps):
            batch = train[index]
            loss_sum += float(step(*batch))
            rows += len(batch[1])
        if hasattr(train, "on_epoch_end"):
            train.on_epoch_end()
        average_state(hvd, model)
        totals = hvd.allreduce(np.array([loss_sum / steps, rows], dtype=np.float64), op=hvd.Sum, name="epoch")
        history["loss"].append(float(totals[0]) / hvd.size())
        history["epoch_rows"].append(int(totals[1]))
        if validation is not None:
            val_loss, val_bacc = evaluate(hvd, model, validation)
            history["val_loss"].append(val_loss)
            history["val_balanced_accuracy"].append(val_bacc)
        history["epoch_seconds"].append(round(time.monotonic() - started, 3))
        if hvd.rank() == 0:
            log_epoch(hvd.size(), epoch, cfg.epochs, history)
        if stopper.update(epoch, history, model):
            break
    history["epochs_run"] = len(history["loss"])
    return history, stopper


def average_state(hvd: Any, model: Any) -> None:
    """Average the floating non-trainable variables over the ranks. BatchNorm moving statistics are updated
    from each rank's own batches (under Keras 3 also in a backbone called with training=False, once its
    layers are unfrozen), so without this the ranks' models drift apart. Integer state (seed generators)
    advances identically on every rank and is left alone."""
    state = [v for v in model.non_trainable_variables if "float" in str(v.dtype)]
    if state:
        for variable, value in zip(
            state, hvd.grouped_allreduce([v.value for v in state], op=hvd.Average), strict=True
        ):
            variable.assign(value)


def train_step_fn(hvd: Any, model: Any) -> Callable[..., Any]:
    """One optimizer step on allreduce-averaged gradients (the backing tf.Variables go to Horovod)."""
    import tensorflow as tf

    variables = model.trainable_variables

    @tf.function(reduce_retracing=True)
    def step(x: Any, y: Any, sample_weight: Any = None) -> Any:
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight)
        tape = hvd.DistributedGradientTape(tape)
        grads = tape.gradient(loss, [v.value for v in variables])
        model.optimizer.apply(grads, variables)
        return loss

    return step


def evaluate(hvd: Any, model: Any, validation: Any) -> tuple[float, float]:
    """Validation loss and balanced accuracy over all ranks' shards (sums allreduced)."""
    classes = int(model.outputs[0].shape[-1])
    sums = np.zeros(2 + classes * classes)  # loss sum, rows, confusion counts
    for index in range(len(validation)):
        x, y = validation[index][:2]
        y_pred = model(x, training=False)
        loss = float(model.compute_loss(x=x, y=y, y_pred=y_pred, training=False))
        predicted = np.argmax(np.asarray(y_pred), axis=1)
        sums[0] += loss * len(y)
        sums[1] += len(y)
        sums[2:] += np.bincount(np.asarray(y) * classes + predicted, minlength=classes * classes)
    total = np.asarray(hvd.allreduce(sums, op=hvd.Sum, name="validation"))
    if total[1] == 0:
        raise DistributedTrainingError("no validation rows on any rank")
    confusion = total[2:].reshape(classes, classes)
    support = confusion.sum(axis=1)
    recall = np.diag(confusion)[support > 0] / support[support > 0]
    return float(total[0] / total[1]), float(recall.mean())


@dataclass
class EarlyStopping:
    """Keras-like early stopping on an allreduced metric, so every rank decides the same."""

    monitor: str
    patience: int
    best: float | None = None
    best_epoch: int = -1
    best_weights: list[Any] | None = None

    def update(self, epoch: int, history: dict[str, Any], model: Any) -> bool:
        """Record the epoch; True when training should stop (patience exhausted)."""
        if not history[self.monitor]:
            return False
        sign = 1.0 if MONITORS[self.monitor] == "min" else -1.0
        value = history[self.monitor][-1]
        better = self.best is None or sign * value < sign * self.best
        if better:
            self.best, self.best_epoch, self.best_weights = value, epoch, model.get_weights()
        return epoch - self.best_epoch >= self.patience

    def restore(self, model: Any) -> None:
        if self.best_weights is not None:
            model.set_weights(self.best_weights)

    def summary(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "best": self.best, "best_epoch": self.best_epoch}


def weights_digest(model: Any) -> str:
    digest = hashlib.sha256()
    for array in model.get_weights():
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def log_epoch(size: int, epoch: int, epochs: int, history: dict[str, Any]) -> None:
    """A progress line (rank 0 only; Horovod forwards it to the driver's stdout)."""
    rows, seconds = history["epoch_rows"][-1], history["epoch_seconds"][-1]
    val = (
        f" val_loss {history['val_loss'][-1]:.4f} val_bacc {history['val_balanced_accuracy'][-1]:.4f}"
        if history["val_loss"]
        else ""
    )
    print(
        f"distributed: epoch {epoch + 1}/{epochs} loss {history['loss'][-1]:.4f}{val} "
        f"({size} ranks, {rows} rows in {seconds:.1f}s, {rows / max(seconds, 1e-9):.0f} rows/s)",
        flush=True,
    )


# ---------------------------------------------------------------- ready-made make_dataset factories


@dataclass(frozen=True)
class FeatureBatches:
    """`make_dataset` for feature-vector rows: columns x (array<float>), y (int), optional weight."""

    batch_size: int
    x_col: str = "x"
    y_col: str = "label"
    weight_col: str | None = "weight"
    shuffle: bool = True
    seed: int = 42

    def __call__(self, table: Any, training: bool) -> Any:
        x = np.stack(table.column(self.x_col).to_numpy(zero_copy_only=False)).astype(np.float32)
        y = table.column(self.y_col).to_numpy().astype(np.int64)
        w = table.column(self.weight_col).to_numpy().astype(np.float32) if self.weight_col else None
        return ArrayBatches(x, y, w, self.batch_size, self.seed if training and self.shuffle else None)


@dataclass(frozen=True)
class ImageBatches:
    """`make_dataset` for `finetune` rows: columns image (JPEG bytes), label, optional weight; decoded one
    batch at a time by finetune.image_batch (shuffled and augmented per epoch when training)."""

    spec: BackboneSpec
    batch_size: int
    image_col: str = "image"
    y_col: str = "label"
    weight_col: str | None = "weight"
    seed: int = 42

    def __call__(self, table: Any, training: bool) -> Any:
        labels = table.column(self.y_col).to_numpy().astype(np.int64)
        weighted = training and self.weight_col is not None
        weights = table.column(self.weight_col).to_numpy().astype(np.float32) if weighted else None
        blobs = np.array(table.column(self.image_col).to_pylist(), dtype=object)
        return JpegBatches(
            blobs, labels, weights, self.batch_size, self.seed if training else None, self.spec
        )


class ArrayBatches:
    """Batches of in-memory arrays; reshuffled every epoch when `seed` is given."""

    def __init__(self, x: np.ndarray, y: np.ndarray, w: np.ndarray | None, batch_size: int, seed: int | None):
        self.x, self.y, self.w, self.batch_size, self.seed = x, y, w, batch_size, seed
        self.epoch = 0
        self.order = self._order()

    def _order(self) -> np.ndarray:
        if self.seed is None:
            return np.arange(len(self.y))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.y))

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        batch = (self.x[rows], self.y[rows])
        return batch if self.w is None else (*batch, self.w[rows])

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order()


class JpegBatches(ArrayBatches):
    """ArrayBatches over JPEG bytes, decoded (and augmented when training) one batch at a time."""

    def __init__(self, x: np.ndarray, y: np.ndarray, w: np.ndarray | None, batch_size: int, seed: int | None,
                 spec: BackboneSpec):  # fmt: skip
        super().__init__(x, y, w, batch_size, seed)
        self.spec = spec

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        from molescope.finetune import image_batch

        blobs, *rest = super().__getitem__(index)
        draws = None if self.seed is None else (self.seed, self.epoch, index)
        return (image_batch(self.spec, list(blobs), draws), *rest)
