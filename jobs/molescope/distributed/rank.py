"""The rank side of `molescope.distributed.launch`: what every Horovod rank runs (`rank_main`, pickled to the
Spark tasks by `horovod.spark.run`): read its shard, train on allreduce-averaged gradients, average the
BatchNorm statistics, validate on allreduced sums, stop together; rank 0 saves the model.
TensorFlow/Horovod are imported lazily (Horovod passes them in as `hvd`)."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from molescope.distributed.common import (
    ERROR_CHARS,
    HISTORY_KEYS,
    MODEL_FILE,
    MONITORS,
    RANK_ERROR,
    DistributedConfig,
    DistributedTrainingError,
    RankJob,
    join,
    read_shard,
    save_model,
)


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
