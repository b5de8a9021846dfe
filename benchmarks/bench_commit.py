"""What the crash-safe commit costs: the featurize stage on the full HAM10000 batch, published by manifest (A)
against the same features written straight into the table's batch partition, as before manifests (B).

Both recompute every image with the same engine (LiteRT, converted once before the timing), the same
partitions and the same SparkSession; only the write differs. A is `featurize.run(--recompute)`: the
manifests read by the plan, the job writing a new version folder, its listing, the row check (a count of the
written files), the manifest PUT and the deletion of the previous version. B is what featurize did before
(drop the batch partition, append into it). The machine is shared and noisy, so A and B alternate
(A B A B ...) and the result is the ratio of their medians in one session.

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


def direct_write(spark, settings, spec, engine, partitions: int) -> None:
    """B: the pre-manifest write of a recompute: delete the batch partition, append the new rows into it."""
    from molescope import features, storage, tables

    out = features.features_uri(settings.features, spec)
    images = tables.read_curated(spark, settings.curated, BATCH_ID)
    computed = features.compute_features(
        images, spec, settings.batch_size, partitions=partitions, engine=engine
    )
    storage.delete(spark, storage.partition_uri(out, "batch_id", BATCH_ID))
    computed.write.mode("append").partitionBy("batch_id").parquet(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="A/B pairs")
    parser.add_argument("--backbone", default="mobilenet_0.25", choices=sorted(WEIGHTS))
    parser.add_argument("--limit", type=int, default=None, help="at most this many images")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    from molescope import features
    from molescope.backbones import resolve_backbone
    from molescope.session import get_spark
    from molescope.stages import featurize as fz

    files = image_files(DEFAULT_DATASETS["ham10000"], args.limit)
    spark = get_spark("bench-commit", master=args.master, extra_conf={"spark.ui.enabled": "false"})
    times: dict[str, list[float]] = {"A_published": [], "B_direct": []}
    with tempfile.TemporaryDirectory(prefix="bench-commit-") as tmp:
        curated = Path(tmp) / "curated"
        write_curated(files, curated)
        settings = {
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
            for name in times
        }
        spec = resolve_backbone(args.backbone, WEIGHTS[args.backbone])
        partitions = features.partition_count(len(files), features.task_slots(spark))
        # Untimed: the conversion, cached where A's runs find it; B uses the same engine.
        table_a = features.features_uri(settings["A_published"].features, spec)
        engine = features.engine_for_table(spark, spec, "litert", args.batch_size, table_a)
        for _ in range(args.rounds):
            for name, setting in settings.items():
                started = time.monotonic()
                if name == "A_published":
                    fz.run(spark, setting)
                else:
                    direct_write(spark, setting, spec, engine, partitions)
                times[name].append(round(time.monotonic() - started, 2))
                print(f"{name}: {times[name][-1]:.1f}s (load {os.getloadavg()[0]:.1f})", flush=True)
    spark.stop()
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "images": len(files),
        "backbone": args.backbone,
        "rounds": args.rounds,
        "seconds": times,
        "median_s": medians,
        "overhead": round(medians["A_published"] / medians["B_direct"] - 1, 4),
        "load_avg_1m": round(os.getloadavg()[0], 1),
    }
    print("result:", json.dumps(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
