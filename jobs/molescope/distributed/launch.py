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
functions or `functools.partial`; ready-made ones in `molescope.distributed.datasets`) that run on the
executors. This module is the driver side and what both sides share; the ranks run
`molescope.distributed.rank`. TensorFlow/Horovod are imported lazily.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from molescope.core.registry import DISTRIBUTED_HOROVOD
from molescope.distributed.common import (
    MODEL_FILE,
    RANK_ERROR,
    SHARD_COL,
    DistributedConfig,
    DistributedTrainingError,
    RankJob,
    join,
)
from molescope.distributed.rank import rank_main
from molescope.io import storage

log = logging.getLogger(__name__)

_FORWARDED = re.compile(rf"{RANK_ERROR} rank=(\d+) (.*)")
#: How horovod.runner.gloo_run names the first process that exited non-zero.
_FIRST_FAILED = re.compile(r"Process name: (\S+) Exit code: (-?\d+)")
#: What a rank reports when a peer is gone: a Horovod collective failing, or Horovod shutting down.
_PEER_LOST = re.compile(r"Horovod(Broadcast|Allreduce|Allgather|Alltoall|Reducescatter)|HorovodInternalError")


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
        errors = out.errors + err.errors
        raise DistributedTrainingError(failure_message(error, errors, job.config.num_proc)) from error


def failure_message(error: Exception, rank_errors: list[tuple[str, str]], num_proc: int | None = None) -> str:
    """One line naming the cause: the first error a rank printed that is not a collective failing because a
    peer is gone (those follow from the cause; under load the ranks' forwarded output may arrive in either
    order), else the first error printed; or, when the rank Horovod saw exit first printed nothing, that it
    died (killed, out of memory). Horovod's exit order alone is not the cause either: under load a rank
    failing in a collective may be reaped before the rank that broke it, so when every error printed is a
    lost peer's, the cause is a rank that printed none (of `num_proc`)."""
    text = " ".join(str(error).split())
    first = _FIRST_FAILED.search(text)
    reported = dict(rank_errors)
    if first is not None and first.group(1) not in reported:
        return _died(*first.groups())
    silent = [str(r) for r in range(num_proc or 0) if str(r) not in reported]
    if silent and rank_errors and all(_PEER_LOST.search(message) for _, message in rank_errors):
        return _died(silent[0], None)
    if rank_errors:
        rank, message = min(rank_errors, key=lambda e: _PEER_LOST.search(e[1]) is not None)
        return f"rank {rank} failed: {message}"
    return f"Horovod run failed: {text}"


def _died(rank: str, code: str | None) -> str:
    exit_code = f" with exit code {code}" if code is not None else ""
    return f"rank {rank} died{exit_code} before reporting an error (killed, or out of memory?)"
