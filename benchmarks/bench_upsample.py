"""Time and peak memory of each upsample strategy on a HAM10000-sized features table.

Without --features it generates a synthetic table of HAM10000's shape: 9,948 rows (HAM10000's 10,015 less
the images a pipeline run drops) with its class proportions, 256-d float vectors (MobileNet 0.25's width)
and an 80/20 train/test split, written once as Parquet into the work folder. With --features it uses a
real table.

Each strategy runs through `upsample.run` (read, rebalance, write train_set, summary, chart) in one
SparkSession; a warm-up run of `none` goes first so JVM start-up and code loading are not charged to the
first strategy. Memory is the peak resident set of the whole process tree (this driver, the JVM and the
Python workers), sampled every SAMPLE_EVERY_S, and its rise above the tree's size when the strategy started.
`augment` runs only with --curated (it needs the images, and featurize with TensorFlow).

    python benchmarks/bench_upsample.py [--features URI] [--strategies none,oversample,smote,class_weight]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from molescope.core import registry
from molescope.core.constants import SPLIT_TEST, SPLIT_TRAIN
from molescope.io import tables
from molescope.io.tables import FEATURES_SCHEMA
from molescope.stages import upsample as up

#: Rows per class of the synthetic table (9,948 in all; HAM10000's 10,015 have nv 6705, mel 1113, bkl 1099).
HAM10000_COUNTS: dict[str, int] = {
    "nv": 6650,
    "mel": 1111,
    "bkl": 1089,
    "bcc": 514,
    "akiec": 327,
    "vasc": 142,
    "df": 115,
}
FEATURE_DIM = 256
TRAIN_FRACTION = 0.8
#: HAM10000 has ~1.4 images per lesion.
IMAGES_PER_LESION = 1.4
BATCH_ID = "ham10000"
SAMPLE_EVERY_S = 0.05
MIB = 1024 * 1024
DEFAULT_STRATEGIES = ("none", "oversample", "smote", "class_weight")


@dataclass
class Result:
    strategy: str
    seconds: float
    rows_before: int
    rows_after: int
    synthetic: int
    peak_mib: float
    rise_mib: float


class TreeMemory:
    """Samples the RSS of this process and all its descendants (JVM, Python workers) in a thread."""

    def __init__(self) -> None:
        self._root = psutil.Process()
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def rss(self) -> int:
        total = 0
        for proc in [self._root, *self._root.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue
        return total

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> TreeMemory:
        self.start = self.rss()
        self.peak = self.start
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def synthetic_table(spark, path: str, seed: int) -> str:
    """Write a features table of HAM10000's shape: class-centred Gaussian clouds, 80 % train."""
    rng = np.random.default_rng(seed)
    frames = []
    for dx, n in HAM10000_COUNTS.items():
        centre = rng.normal(size=FEATURE_DIM)
        vectors = (centre + rng.normal(scale=2.0, size=(n, FEATURE_DIM))).astype(np.float32)
        lesions = (np.arange(n) / IMAGES_PER_LESION).astype(int)
        frames.append(
            pd.DataFrame(
                {
                    "image_id": [f"ISIC_{dx}_{i:05d}" for i in range(n)],
                    "lesion_id": [f"HAM_{dx}_{i:05d}" for i in lesions],
                    "dx": dx,
                    "split": np.where(rng.random(n) < TRAIN_FRACTION, SPLIT_TRAIN, SPLIT_TEST),
                    "backbone": "mobilenet_0.25",
                    "weights_id": "synthetic",
                    "feature_dim": np.int32(FEATURE_DIM),
                    "features": list(vectors),
                    "batch_id": BATCH_ID,
                }
            )
        )
    table = spark.createDataFrame(pd.concat(frames, ignore_index=True), schema=FEATURES_SCHEMA)
    tables.replace(spark, tables.features_table(path), table, BATCH_ID)  # published as featurize does
    return path


def run_one(spark, settings: up.Settings) -> Result:
    with TreeMemory() as memory:
        started = time.perf_counter()
        summary = up.run(spark, settings)
        seconds = time.perf_counter() - started
    return Result(
        strategy=settings.strategy,
        seconds=seconds,
        rows_before=summary["rows_before"],
        rows_after=summary["rows_after"],
        synthetic=sum(summary["synthetic"].values()),
        peak_mib=memory.peak / MIB,
        rise_mib=(memory.peak - memory.start) / MIB,
    )


def print_table(results: list[Result], features: str, target: str) -> None:
    print(f"\nupsample benchmark: features {features}, target {target}")
    header = (
        f"{'strategy':<13}{'seconds':>9}{'rows in':>9}{'rows out':>10}{'synthetic':>11}"
        f"{'peak MiB':>10}{'rise MiB':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.strategy:<13}{r.seconds:>9.2f}{r.rows_before:>9}{r.rows_after:>10}{r.synthetic:>11}"
            f"{r.peak_mib:>10.0f}{r.rise_mib:>10.0f}"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", default=None, help="a real features table (default: synthetic)")
    parser.add_argument("--batches", default=None, help="comma-separated batch ids (default all)")
    parser.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES))
    parser.add_argument("--target", default=registry.TARGET_MAJORITY)
    parser.add_argument("--k-neighbors", type=int, default=registry.DEFAULT_K_NEIGHBORS)
    parser.add_argument("--seed", type=int, default=registry.DEFAULT_SEED)
    parser.add_argument("--curated", default=None, help="curated root: enables augment")
    parser.add_argument("--weights", default=None, help="augment: weights source of a sha256: weights_id")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument("--workdir", default=None, help="default: a temporary folder, removed afterwards")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Python workers must import molescope: run them with this interpreter (the project's venv).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from molescope.io.session import get_spark

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if registry.STRATEGY_AUGMENT in strategies and not args.curated:
        print("augment skipped: it needs --curated (images) and featurize", file=sys.stderr)
        strategies.remove(registry.STRATEGY_AUGMENT)
    batches = tuple(b for b in (args.batches or "").split(",") if b) or None
    spark = get_spark(
        "bench-upsample",
        master=args.master,
        extra_conf={"spark.driver.memory": args.driver_memory, "spark.ui.enabled": "false"},
    )
    with tempfile.TemporaryDirectory(prefix="bench-upsample-") as tmp:
        work = Path(args.workdir or tmp)
        features = args.features or synthetic_table(spark, str(work / "features"), args.seed)

        def settings(strategy: str) -> up.Settings:
            return up.Settings(
                features=features,
                out=str(work / "runs" / strategy),
                batches=batches,
                strategy=strategy,
                target=args.target,
                seed=args.seed,
                k_neighbors=args.k_neighbors,
                curated=args.curated,
                weights=args.weights,
            )

        up.run(spark, settings(registry.STRATEGY_NONE))
        results = [run_one(spark, settings(strategy)) for strategy in strategies]
    spark.stop()
    print_table(results, args.features or f"synthetic HAM10000 shape ({FEATURE_DIM}-d)", args.target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
