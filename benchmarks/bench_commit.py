"""What the crash-safe commit costs: featurize's write of the full HAM10000 batch published by manifest (A)
against the same features written straight into the table's batch partition, as before manifests (B).

Both compute every image with the same engine (LiteRT, converted once before the timing), the same
partitions and the same SparkSession; only the commit differs. A is the path `featurize` takes for a batch
(`tables.replace`): the job writing a new version folder, its listing, the row check (a count from the
written files' footers), the manifest PUT and the deletion of the previous version. B is what featurize did
before (drop the batch partition, append into it). An untimed B run first starts the Python workers. The
machine is shared and noisy, so A and B alternate (A B A B ...) and the result is the ratio of their medians
in one session; the steps A adds are also replayed on A's last version and timed apart
(`publish_steps_s`, and their share of B's median), which the noise of a loaded machine does not hide.

    .venv/bin/python benchmarks/bench_commit.py --rounds 3 --master 'local[2]'
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "jobs"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_featurize import BATCH_ID, DEFAULT_DATASETS, WEIGHTS, image_files, write_curated  # noqa: E402


def computed(spark, settings, spec, engine, partitions: int):
    """The batch's features, computed when a write runs (what both A and B write)."""
    from molescope.features import extract
    from molescope.io import tables

    images = tables.read_curated(spark, settings.curated, BATCH_ID)
    return extract.compute_features(images, spec, settings.batch_size, partitions=partitions, engine=engine)


def direct_write(spark, settings, spec, engine, partitions: int) -> None:
    """B: the pre-manifest write of a recompute: delete the batch partition, append the new rows into it."""
    from molescope.features import extract
    from molescope.io import storage

    out = extract.features_uri(settings.features, spec)
    rows = computed(spark, settings, spec, engine, partitions)
    storage.delete(spark, storage.partition_uri(out, "batch_id", BATCH_ID))
    rows.write.mode("append").partitionBy("batch_id").parquet(out)


def published_write(spark, settings, spec, engine, partitions: int, images: int) -> None:
    """A: featurize's commit of a recomputed batch: a new version, checked, published, older ones deleted."""
    from molescope.features import extract
    from molescope.io import tables

    table = tables.features_table(extract.features_uri(settings.features, spec))
    rows = computed(spark, settings, spec, engine, partitions)
    tables.replace(spark, table, rows, BATCH_ID, expected_rows=images)


def publish_steps(spark, table_uri: str) -> float:
    """Seconds of what A adds to B's write, replayed on A's published version: the listing of its folder,
    the row count from the footers, reading the batch's manifest, the manifest PUT and the garbage
    collection (which finds nothing to delete here). Timed apart, it does not drown in the runs' noise."""
    from molescope.io import storage, tables

    table = tables.features_table(table_uri)
    started = time.monotonic()
    document = tables.read_manifest(spark, table.manifest_uri(BATCH_ID))
    version = tables.version_in(document, table, table.manifest_uri(BATCH_ID))
    folder = storage.join(table.root, next(iter(version.folders)))
    root = storage.qualified(spark, table.root)
    files = [
        storage.relative(f.uri, root) for f in storage.list_tree(spark, folder) if f.name.endswith(".parquet")
    ]
    assert tables.count_rows(spark, table, files) == version.rows
    tables.publish(spark, table.manifest_uri(BATCH_ID), document)
    tables.collect_garbage(spark, table, BATCH_ID)
    return time.monotonic() - started


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="A/B pairs")
    parser.add_argument("--backbone", default="mobilenet_0.25", choices=sorted(WEIGHTS))
    parser.add_argument("--limit", type=int, default=None, help="at most this many images")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


def run_settings(args: argparse.Namespace, tmp: str, curated: Path, names) -> dict:
    """{run name: featurize settings}: the same curated batch, each run into its own features folder."""
    from molescope.stages import featurize as fz

    return {
        name: fz.Settings(
            curated=str(curated),
            features=str(Path(tmp) / name),
            batch_id=BATCH_ID,
            backbone=args.backbone,
            weights=WEIGHTS[args.backbone],
            batch_size=args.batch_size,
            recompute=True,
            engine="litert",
        )
        for name in names
    }


def alternate(spark, settings, spec, engine, partitions: int, images: int, rounds: int, times) -> None:
    """`rounds` timed A B pairs, appending each run's seconds to `times[name]`."""
    for _ in range(rounds):
        for name, setting in settings.items():
            started = time.monotonic()
            if name == "A_published":
                published_write(spark, setting, spec, engine, partitions, images)
            else:
                direct_write(spark, setting, spec, engine, partitions)
            times[name].append(round(time.monotonic() - started, 2))
            print(f"{name}: {times[name][-1]:.1f}s (load {os.getloadavg()[0]:.1f})", flush=True)


def measure(spark, args: argparse.Namespace, files, times: dict[str, list[float]]) -> list[float]:
    """Runs the A/B rounds into `times` on a temporary curated batch; the timed publish steps (seconds)."""
    from molescope.features import extract
    from molescope.features.backbones import resolve_backbone

    with tempfile.TemporaryDirectory(prefix="bench-commit-") as tmp:
        curated = Path(tmp) / "curated"
        write_curated(files, curated)
        settings = run_settings(args, tmp, curated, times)
        spec = resolve_backbone(args.backbone, WEIGHTS[args.backbone])
        partitions = extract.partition_count(len(files), extract.task_slots(spark))
        # Untimed: the conversion, cached where A's runs find it; B uses the same engine.
        table_a = extract.features_uri(settings["A_published"].features, spec)
        engine = extract.engine_for_table(spark, spec, "litert", args.batch_size, table_a)
        # Untimed: the first job of a session starts the Python workers and loads the engine in them.
        direct_write(spark, settings["B_direct"], spec, engine, partitions)
        alternate(spark, settings, spec, engine, partitions, len(files), args.rounds, times)
        steps = [round(publish_steps(spark, table_a), 2) for _ in range(args.rounds)]
        print(f"publish steps: {steps} s", flush=True)
    return steps


def summary(args: argparse.Namespace, images: int, times: dict[str, list[float]], steps: list[float]) -> dict:
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "images": images,
        "backbone": args.backbone,
        "rounds": args.rounds,
        "seconds": times,
        "median_s": medians,
        "overhead": round(medians["A_published"] / medians["B_direct"] - 1, 4),
        "publish_steps_s": steps,
        "publish_steps_share_of_B": round(statistics.median(steps) / medians["B_direct"], 4),
        "load_avg_1m": round(os.getloadavg()[0], 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    from molescope.io.session import get_spark

    files = image_files(DEFAULT_DATASETS["ham10000"], args.limit)
    spark = get_spark("bench-commit", master=args.master, extra_conf={"spark.ui.enabled": "false"})
    times: dict[str, list[float]] = {"A_published": [], "B_direct": []}
    steps = measure(spark, args, files, times)
    spark.stop()
    result = summary(args, len(files), times, steps)
    print("result:", json.dumps(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
