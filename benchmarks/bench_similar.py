"""Cost of the exact "similar confirmed cases" search (`molescope.scoring.similar`) at 10k and 1M candidates.

Two features tables, each queried with --queries vectors for their --k nearest training rows:

- real: the HAM10000 MobileNet-0.25 features table (--features, default the one `make bench-quality` left
  under .state/bench-quality/features/mobilenet_0.25/), with its curated table for dx_type; the queries are
  its first test-split rows by image_id (never candidates: only train rows are);
- synthetic: --synthetic-rows random 256-d float32 vectors, all train, written as a published features table
  (and a curated table of image_id + dx_type for the join) in a temporary folder under /tmp, deleted
  afterwards; random queries.

Per table: `similar_cases` end to end (read, per-partition top-k in mapInPandas, window, dx_type join,
collect), a scan-only job (the same read and Arrow -> NumPy conversion of the vectors, no search) to show
what the search itself adds, and the pure NumPy `nearest` on the training vectors held in memory. Wall
seconds, the driver's CPU seconds and the CPU seconds of the whole process tree (driver, JVM, Python
workers: psutil, reaped children included). One untimed `similar_cases` on the real table first starts the
JVM and the Python workers.

    python benchmarks/bench_similar.py [--synthetic-rows 1000000] [--rounds 3] [--master 'local[2]']
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
from pyspark.sql import functions as F

from molescope.core.constants import SPLIT_TEST, SPLIT_TRAIN
from molescope.io import tables
from molescope.scoring import similar

REPO = Path(__file__).resolve().parents[1]
REAL_FEATURES_ROOT = REPO / ".state" / "bench-quality" / "features" / "mobilenet_0.25"
REAL_CURATED = REPO / ".state" / "bench-quality" / "curated"
FEATURE_DIM = 256
BATCH_ID = "synthetic"
DX_TYPES = ("histo", "follow_up", "consensus", "confocal")
#: Rows per task of the generating job: 250 MiB of float32 vectors per 250,000 rows.
ROWS_PER_SLICE = 250_000


@dataclass
class Timing:
    table: str
    candidates: int
    what: str
    wall: list[float]
    driver_cpu: list[float]
    tree_cpu: list[float]
    load: tuple[float, float]

    def row(self) -> str:
        runs = ", ".join(f"{w:.1f}" for w in self.wall)
        wall = statistics.median(self.wall)
        return (
            f"| {self.table} | {self.candidates:,} | {self.what} | {wall:.2f} ({runs}) "
            f"| {statistics.median(self.driver_cpu):.1f} | {statistics.median(self.tree_cpu):.1f} "
            f"| {self.load[0]:.1f} -> {self.load[1]:.1f} |"
        )


def tree_cpu() -> float:
    """CPU seconds of this process and its descendants, reaped children included."""
    total = 0.0
    root = psutil.Process()
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def measure(table: str, candidates: int, what: str, rounds: int, work: Callable[[], object]) -> Timing:
    timing = Timing(table, candidates, what, [], [], [], (os.getloadavg()[0], 0.0))
    for _ in range(rounds):
        wall, driver, tree = time.perf_counter(), time.process_time(), tree_cpu()
        work()
        timing.wall.append(time.perf_counter() - wall)
        timing.driver_cpu.append(time.process_time() - driver)
        timing.tree_cpu.append(tree_cpu() - tree)
    timing.load = (timing.load[0], os.getloadavg()[0])
    print(timing.row(), flush=True)
    return timing


# ------------------------------------------------------------------------------------------------ inputs


def real_table(features: str | None) -> str:
    if features:
        return features
    found = sorted(p.parent.parent for p in REAL_FEATURES_ROOT.glob("*/_manifests/*.json"))
    if not found:
        sys.exit(f"no features table under {REAL_FEATURES_ROOT}: run `make bench-quality` or pass --features")
    return str(found[0])


def synthetic_vectors(start: int, stop: int) -> np.ndarray:
    """Rows start..stop of the synthetic table, the same whichever task or process draws them."""
    return np.random.default_rng([7, start]).normal(size=(stop - start, FEATURE_DIM)).astype(np.float32)


def _synthetic_slices(starts: Iterator[pd.DataFrame], rows: int) -> Iterator[pd.DataFrame]:
    for frame in starts:
        for start in frame["id"]:
            index = np.arange(start, min(start + ROWS_PER_SLICE, rows))
            yield pd.DataFrame(
                {
                    "image_id": [f"SYN_{i:07d}" for i in index],
                    "lesion_id": [f"L{i // 2:07d}" for i in index],
                    "dx": "nv",
                    "split": SPLIT_TRAIN,
                    "backbone": "synthetic",
                    "weights_id": "synthetic",
                    "feature_dim": np.int32(FEATURE_DIM),
                    "features": list(synthetic_vectors(index[0], index[-1] + 1)),
                    "batch_id": BATCH_ID,
                }
            )


def write_synthetic(spark, root: Path, rows: int) -> tuple[str, str]:
    """A published features table of `rows` training vectors and a curated table (image_id, dx_type)."""
    starts = spark.range(0, rows, ROWS_PER_SLICE, numPartitions=-(-rows // ROWS_PER_SLICE))
    frame = starts.mapInPandas(partial(_synthetic_slices, rows=rows), tables.FEATURES_SCHEMA)
    features, curated = str(root / "features"), str(root / "curated")
    tables.replace(spark, tables.features_table(features), frame, BATCH_ID)
    dx_type = F.element_at(F.array(*map(F.lit, DX_TYPES)), (F.col("id") % len(DX_TYPES) + 1).cast("int"))
    labels = spark.range(rows).select(
        F.format_string("SYN_%07d", "id").alias("image_id"),
        dx_type.alias("dx_type"),
        F.lit(BATCH_ID).alias("batch_id"),
    )
    tables.replace(
        spark, tables.curated_images(curated), tables.conform(labels, tables.CURATED_SCHEMA), BATCH_ID
    )
    return features, curated


def synthetic_matrix(rows: int) -> np.ndarray:
    return np.concatenate(
        [synthetic_vectors(s, min(s + ROWS_PER_SLICE, rows)) for s in range(0, rows, ROWS_PER_SLICE)]
    )


def real_queries(spark, features: str, count: int) -> dict[str, list[float]]:
    rows = (
        tables.read_features(spark, features)
        .where(F.col("split") == SPLIT_TEST)
        .orderBy("image_id")
        .limit(count)
        .select("image_id", "features")
        .collect()
    )
    return {row.image_id: list(row.features) for row in rows}


def train_matrix(spark, features: str) -> np.ndarray:
    rows = tables.read_features(spark, features).where(F.col("split") == SPLIT_TRAIN).select("features")
    return np.stack(rows.toPandas()["features"].to_numpy()).astype(np.float32)


def _scan_only(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """What `similar_cases` does to each Arrow batch before the search: the vectors as one NumPy matrix."""
    rows = 0
    for batch in batches:
        rows += len(similar.normalise(np.stack(batch["features"].to_numpy())))
    yield pd.DataFrame({"rows": [rows]})


def scan(spark, features: str) -> int:
    train = tables.read_features(spark, features).where(F.col("split") == SPLIT_TRAIN).select("features")
    return int(train.mapInPandas(_scan_only, "rows long").groupBy().sum("rows").first()[0])


# ------------------------------------------------------------------------------------------------- runs


def bench_table(spark, name, features, curated, queries, k, rounds, candidates, matrix) -> list[Timing]:
    vectors = np.array(list(queries.values()), dtype=np.float32)
    return [
        measure(
            name,
            candidates,
            "similar_cases",
            rounds,
            lambda: similar.similar_cases(spark, features, curated, queries, k),
        ),
        measure(name, candidates, "scan only (read + Arrow -> NumPy)", rounds, lambda: scan(spark, features)),
        measure(
            name,
            candidates,
            "nearest (NumPy, in memory)",
            rounds,
            lambda: similar.nearest(matrix, vectors, k),
        ),
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", default=None, help="the real features table (default: bench-quality's)")
    parser.add_argument("--curated", default=str(REAL_CURATED), help="its curated root (dx_type)")
    parser.add_argument("--synthetic-rows", type=int, default=1_000_000, help="0: skip the synthetic table")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="timed runs on the real table")
    parser.add_argument("--synthetic-rounds", type=int, default=1)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="4g")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Python workers must import molescope: run them with this interpreter (the project's venv).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from molescope.io.session import get_spark

    spark = get_spark(
        "bench-similar",
        master=args.master,
        extra_conf={"spark.driver.memory": args.driver_memory, "spark.ui.enabled": "false"},
    )
    print(f"{os.cpu_count()} CPUs, master {args.master}, {args.queries} queries, k = {args.k}")
    print("| table | candidates | what | wall s median (runs) | driver CPU s | tree CPU s | load 1 min |")
    print("|---|---:|---|---|---:|---:|---|")
    features = real_table(args.features)
    queries = real_queries(spark, features, args.queries)
    similar.similar_cases(spark, features, args.curated, queries, args.k)  # warm-up: JVM, Python workers
    matrix = train_matrix(spark, features)
    bench_table(
        spark,
        "HAM10000 MobileNet-0.25",
        features,
        args.curated,
        queries,
        args.k,
        args.rounds,
        len(matrix),
        matrix,
    )
    if args.synthetic_rows:
        work = Path(tempfile.mkdtemp(prefix="bench-similar-", dir="/tmp"))
        try:
            started = time.perf_counter()
            synthetic, curated = write_synthetic(spark, work, args.synthetic_rows)
            print(f"(synthetic table written in {time.perf_counter() - started:.0f} s)", flush=True)
            rng = np.random.default_rng(8)
            fake = {f"Q_{i:03d}": rng.normal(size=FEATURE_DIM).tolist() for i in range(args.queries)}
            matrix = synthetic_matrix(args.synthetic_rows)
            bench_table(
                spark,
                "synthetic",
                synthetic,
                curated,
                fake,
                args.k,
                args.synthetic_rounds,
                len(matrix),
                matrix,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
