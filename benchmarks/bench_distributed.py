"""Benchmark data-parallel training (molescope.distributed.launch, Horovod on Spark) against one process.

Workloads (`--workload`), both on the real HAM10000 images of `--images-dir`:
- `mlp`: the Keras head on MobileNet (alpha 0.25, ImageNet; 256-d) features, computed once with Keras from
  `--weights` and cached as Parquet under `--cache` (or given with `--features`: a Parquet of image_id,
  lesion_id, dx, features); standardized on the training rows.
- `finetune`: the backbone fine-tuned on `--images` images drawn at random (MobileNet-0.25, top layers).
Validation = 1 lesion bucket in 10 (the train stage's rule); class-balanced sample weights over the whole
training part.

Runs, one after the other in this process: `single` (the train stage's path today, on the driver) and
`horovod-N` for each N of `--ranks` (horovod.spark.run, Gloo, on `--master`), with the same model, batch
size per rank, early stopping (val_loss, `--patience`) and `--epochs`. Reported: wall_s (everything,
including staging the shards and starting the ranks), fit_s (the training loop), rows_per_s (rows trained
per second of fit_s), epochs run, and the validation balanced accuracy of the returned model recomputed here
on the driver. The 1-minute load average before and after each run is printed: the machine is shared, so
compare the ratios within one run.

    python benchmarks/bench_distributed.py --images-dir ../shared/data/ham10000 \
        --weights ../shared/models/mobilenet_2_5_224_tf_no_top.h5 --ranks 1,2
    python benchmarks/bench_distributed.py --workload finetune --images 2000 --epochs 2 ...
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from molescope.core.constants import CLASS_INDEX
from molescope.distributed import common, datasets, launch, trainers
from molescope.evaluation import scores
from molescope.features.backbones import build_model, resolve_backbone
from molescope.intake.split import lesion_bucket
from molescope.io.session import get_spark
from molescope.models import finetune, finetune_data, finetune_predict, keras_head
from molescope.rebalance.balance import balanced_sample_weights

# Run as a script: the sibling bench_train.py is importable (sys.path[0] is benchmarks/).
from bench_train import RealImages, real_images  # isort: skip

FEATURE_BATCH = 128


@dataclass
class Workload:
    """Training and validation rows (image_id, label, weight + the model's input column) and the model."""

    fit_part: pd.DataFrame
    val_part: pd.DataFrame
    input_col: str
    build: Callable[[], Any]
    make_dataset: Callable[..., Any]
    #: (model, epochs run, seconds of each epoch when known)
    fit_single: Callable[[], tuple[Any, int, list[float]]]
    predict: Callable[[Any, pd.DataFrame], np.ndarray]


def frame_of(rows: RealImages) -> pd.DataFrame:
    return pd.DataFrame({"image_id": rows.image_id, "lesion_id": rows.lesion_id, "dx": rows.dx})


def compute_features(ns: argparse.Namespace) -> pd.DataFrame:
    """MobileNet features of every image under --images-dir, cached as Parquet (keyed by weights id)."""
    spec = resolve_backbone(ns.backbone, ns.weights)
    cache = Path(ns.cache) / f"{spec.name}-{spec.weights_id.replace(':', '_')}.parquet"
    if cache.exists():
        return pd.read_parquet(cache)
    rows = real_images(Path(ns.images_dir), 10**9)
    model, started, chunks = build_model(spec), time.monotonic(), []
    for start in range(0, len(rows), FEATURE_BATCH):
        batch = finetune_data.image_batch(spec, rows.images[start : start + FEATURE_BATCH])
        chunks.append(np.asarray(model.predict_on_batch(batch), dtype=np.float32))
    print(f"features: {len(rows)} images in {time.monotonic() - started:.0f}s", flush=True)
    frame = frame_of(rows).assign(features=list(np.concatenate(chunks)))
    cache.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(cache)
    return frame


def split_rows(spark, frame: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Lesion-grouped validation part (the train stage's bucket rule); class-balanced training weights."""
    ids = spark.createDataFrame(frame[["image_id", "lesion_id"]])
    held_out = lesion_bucket(seed + keras_head.VAL_SALT, keras_head.VAL_BUCKETS) == 0
    val_ids = {r["image_id"] for r in ids.where(held_out).select("image_id").collect()}
    frame = frame.assign(label=frame["dx"].map(CLASS_INDEX).astype(int))
    is_val = frame["image_id"].isin(val_ids).to_numpy()
    fit_part, val_part = frame[~is_val].copy(), frame[is_val].assign(weight=1.0)
    labels = fit_part["label"].to_numpy()
    return fit_part.assign(weight=balanced_sample_weights(labels, np.ones(len(labels)))), val_part


def epoch_clock(seconds: list[float]) -> Any:
    """A Keras callback appending the wall seconds of each epoch (training + validation) to `seconds`."""
    import keras

    starts: list[float] = []
    return keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: starts.append(time.monotonic()),
        on_epoch_end=lambda epoch, logs: seconds.append(time.monotonic() - starts[-1]),
    )


def matrix(part: pd.DataFrame) -> np.ndarray:
    return np.stack(part["x"].to_numpy()).astype(np.float32)


def mlp_workload(spark, ns: argparse.Namespace) -> Workload:
    import keras

    frame = pd.read_parquet(ns.features) if ns.features else compute_features(ns)
    fit_part, val_part = split_rows(spark, frame, ns.seed)
    fit_x = np.stack(fit_part["features"].to_numpy())
    mean, std = fit_x.mean(axis=0), fit_x.std(axis=0) + 1e-6
    for part in (fit_part, val_part):
        part["x"] = ((np.stack(part["features"].to_numpy()) - mean) / std).tolist()
    head = keras_head.build_keras_head
    build = functools.partial(head, fit_x.shape[1], ns.dropout, ns.learning_rate, ns.seed)

    def fit_single() -> tuple[Any, int, list[float]]:
        model, seconds = build(), []
        stop = keras.callbacks.EarlyStopping(patience=ns.patience, restore_best_weights=True)
        history = model.fit(
            matrix(fit_part), fit_part["label"].to_numpy(), sample_weight=fit_part["weight"].to_numpy(),
            validation_data=(matrix(val_part), val_part["label"].to_numpy()), epochs=ns.epochs,
            batch_size=ns.batch_size, callbacks=[stop, epoch_clock(seconds)], shuffle=True, verbose=0,
        )  # fmt: skip
        return model, len(history.history["loss"]), seconds

    def predict(model: Any, part: pd.DataFrame) -> np.ndarray:
        return model.predict(matrix(part), verbose=0)

    batches = datasets.FeatureBatches(ns.batch_size, seed=ns.seed)
    return Workload(fit_part, val_part, "x", build, batches, fit_single, predict)


def finetune_workload(spark, ns: argparse.Namespace) -> Workload:
    rows = real_images(Path(ns.images_dir), 10**9)  # the CSV is sorted by dx: sample across it
    frame = frame_of(rows).assign(image=rows.images).sample(n=min(ns.images, len(rows)), random_state=ns.seed)
    spec = resolve_backbone(ns.backbone, ns.weights)
    config = finetune.FinetuneConfig(
        epochs=ns.epochs, batch_size=ns.batch_size, patience=ns.patience, seed=ns.seed
    )
    fit_part, val_part = split_rows(spark, frame, ns.seed)

    def image_set(part: pd.DataFrame) -> finetune_data.ImageSet:
        rows = RealImages(
            list(part["image_id"]), list(part["lesion_id"]), list(part["dx"]), list(part["image"])
        )
        return rows.decoded(spec.input_size)

    def fit_single() -> tuple[Any, int, list[float]]:
        # The train stage's path: class balance by the recipe's sampler (the ranks use the sample weights).
        model, info = finetune.fit(spec, config, image_set(fit_part), image_set(val_part))
        return model, info["epochs_run"], [e["train_s"] for e in info["epochs"]]

    def predict(model: Any, part: pd.DataFrame) -> np.ndarray:
        return finetune_predict.predict_probabilities(model, spec, image_set(part), "none")

    build = functools.partial(trainers.build_finetune, spec, config)
    batches = datasets.ImageBatches(spec, ns.batch_size, seed=ns.seed)
    return Workload(fit_part, val_part, "image", build, batches, fit_single, predict)


def val_bacc(work: Workload, model: Any) -> float:
    proba = work.predict(model, work.val_part)
    return scores.balanced_accuracy(work.val_part["label"].to_numpy(), proba.argmax(axis=1))


def epoch_figures(rows_per_epoch: list[int], seconds: list[float]) -> dict[str, Any]:
    """First epoch (graph tracing, first collectives) apart from the median of the others."""
    if not seconds:
        return {}
    steady = [rows / s for rows, s in zip(rows_per_epoch[1:], seconds[1:], strict=True)]
    return {"first_epoch_s": seconds[0], "steady_rows_per_s": float(np.median(steady)) if steady else None}


def bench_single(work: Workload) -> dict[str, Any]:
    started = time.monotonic()
    model, epochs, seconds = work.fit_single()
    fit_s = time.monotonic() - started
    rows = len(work.fit_part)
    return {
        "run": "single",
        "wall_s": fit_s,
        "fit_s": fit_s,
        "epochs": epochs,
        "rows_per_s": epochs * rows / fit_s,
        **epoch_figures([rows] * len(seconds), seconds),
        "val_bacc": val_bacc(work, model),
    }


def bench_horovod(spark, ns: argparse.Namespace, work: Workload, ranks: int) -> dict[str, Any]:
    import keras

    columns = ["image_id", work.input_col, "label", "weight"]
    train_df, val_df = (spark.createDataFrame(part[columns]) for part in (work.fit_part, work.val_part))
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as staging:
        config = common.DistributedConfig(
            staging_uri=staging, num_proc=ranks, epochs=ns.epochs, patience=ns.patience, seed=ns.seed
        )
        started = time.monotonic()
        result = launch.fit_distributed(spark, train_df, work.build, work.make_dataset, config, val_df)
        wall_s = time.monotonic() - started
        model = keras.models.load_model(result.model_uri)
    history = result.history
    fit_s = sum(history["epoch_seconds"])
    return {
        "run": f"horovod-{ranks}",
        "wall_s": wall_s,
        "fit_s": fit_s,
        "epochs": history["epochs_run"],
        "rows_per_s": sum(history["epoch_rows"]) / fit_s,
        **epoch_figures(history["epoch_rows"], history["epoch_seconds"]),
        "val_bacc": val_bacc(work, model),
        "val_bacc_allreduced": history["val_balanced_accuracy"][history["best_epoch"]],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=("mlp", "finetune"), default="mlp")
    parser.add_argument("--images-dir", default=None, help="HAM10000 root: metadata CSV + images/")
    parser.add_argument("--weights", default="imagenet", help="MobileNet-0.25 weights file")
    parser.add_argument("--backbone", default="mobilenet_0.25")
    parser.add_argument("--features", default=None, help="mlp: Parquet of image_id, lesion_id, dx, features")
    parser.add_argument("--cache", default="bench-results/features", help="mlp: where computed features go")
    parser.add_argument("--images", type=int, default=2000, help="finetune: how many images")
    parser.add_argument("--ranks", default="1,2", help="comma list of Horovod rank counts")
    parser.add_argument("--no-single", action="store_true", help="skip the one-process baseline")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--patience", type=int, default=keras_head.PATIENCE)
    parser.add_argument("--batch-size", type=int, default=None, help="per rank (mlp 64, finetune 16)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="mlp")
    parser.add_argument("--dropout", type=float, default=0.5, help="mlp")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    ns = parser.parse_args(argv)
    if ns.batch_size is None:
        ns.batch_size = keras_head.BATCH if ns.workload == "mlp" else finetune.FinetuneConfig().batch_size
    if not ns.images_dir and not (ns.workload == "mlp" and ns.features):
        parser.error("give --images-dir (with --weights), or --features for mlp")
    return ns


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    spark = get_spark("bench-distributed", master=ns.master, extra_conf={"spark.ui.enabled": "false"})
    work = (mlp_workload if ns.workload == "mlp" else finetune_workload)(spark, ns)
    print(
        f"{ns.workload}: {len(work.fit_part)} training rows, {len(work.val_part)} validation rows", flush=True
    )
    runs = [] if ns.no_single else [functools.partial(bench_single, work)]
    runs += [functools.partial(bench_horovod, spark, ns, work, int(r)) for r in ns.ranks.split(",")]
    results = []
    for run in runs:
        load_before = os.getloadavg()[0]
        row = {"workload": ns.workload, **run(), "load_before": load_before, "load_after": os.getloadavg()[0]}
        results.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
        print(json.dumps(results[-1]), flush=True)
    if ns.json:
        Path(ns.json).write_text(json.dumps(results, indent=2))
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
