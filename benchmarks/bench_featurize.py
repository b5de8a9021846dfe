"""Benchmark of the featurize stage (issue 4): Spark stage vs bare Keras, images/s and peak RSS.

For each dataset (HAM10000 200x150, and the 45 full-size 600x450 images) and each backbone:

(a) the full Spark stage, `featurize.run` from a curated Parquet to written features, in a fresh SparkSession
    (Python workers start and load the engine inside the timing, as in production; `--engine-cache cold`, the
    default, also times the LiteRT conversion a first run of a backbone + weights pays);
(b) bare Keras in one separate process: the same JPEGs decoded and resized beforehand (not timed), then
    preprocess + `model.predict_on_batch` per batch, TensorFlow with its default threads (all cores);

and prints images/s of both, the ratio a/b, and the peak RSS of each (a: the sum over the driver, its JVM
and the Python workers, sampled every 0.2 s; b: the process's maxrss). The curated input is built here
directly from the image files (dummy metadata), so the benchmark does not depend on the clean stage.

    .venv/bin/python benchmarks/bench_featurize.py --backbones mobilenet_0.25 resnet50 --limit 2000
    .venv/bin/python benchmarks/bench_featurize.py --device-report --master 'local[16]' --task-cpus 4 \\
        --backbones resnet50 --batch-size 128 --mixed-precision         # on a GPU machine

ResNet50 uses random weights (speed only); MobileNet-0.25 the real ImageNet weights from ../shared/models.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOLESCOPE_SHARED", REPO.parent / "shared"))
DEFAULT_DATASETS = {
    "ham10000": SHARED / "data" / "ham10000" / "images",
    "fullsize": SHARED / "data" / "ham10000_600x450_sample" / "images",
}
MOBILENET_025_WEIGHTS = SHARED / "models" / "mobilenet_2_5_224_tf_no_top.h5"
RSS_SAMPLE_S = 0.2
BATCH_ID = "bench"
#: Each backbone with the weights the benchmark uses: real ones where they exist offline.
WEIGHTS = {"mobilenet_0.25": str(MOBILENET_025_WEIGHTS), "resnet50": "random"}

sys.path.insert(0, str(REPO / "jobs"))


def image_files(folder: Path, limit: int | None) -> list[Path]:
    files = sorted(folder.glob("*.jpg"))
    return files[:limit] if limit else files


def write_curated(files: list[Path], root: Path) -> None:
    """One Parquet file in the curated layout, dummy metadata, published by its batch summary as clean
    publishes it (pyarrow and a JSON file only: no Spark job to time)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from molescope.io import tables

    table = pa.table(
        {
            "image_id": [p.stem for p in files],
            "lesion_id": [f"HAM_{i:07d}" for i in range(len(files))],
            "dx": ["nv"] * len(files),
            "split": ["train"] * len(files),
            "image": [p.read_bytes() for p in files],
            "batch_id": [BATCH_ID] * len(files),
        }
    )
    images = tables.curated_images(str(root))
    version = f"batch_id={BATCH_ID}/{tables.version_name()}"
    (Path(images.root) / version).mkdir(parents=True)
    pq.write_table(table, Path(images.root) / version / "part-0.parquet")
    manifest = tables.manifest({images.name: tables.Version((f"{version}/part-0.parquet",), len(files))})
    summary = Path(images.manifest_uri(BATCH_ID))
    summary.parent.mkdir(parents=True)
    summary.write_text(json.dumps(manifest))


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


class PeakRss:
    """Samples the RSS of this process tree in a thread; `peak` is the largest sum seen."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_S):
            self.peak = max(self.peak, tree_rss(os.getpid()))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def spark_stage(args: argparse.Namespace, curated: Path, features: Path, backbone: str) -> dict:
    """(a): a fresh session, then featurize.run on everything, timed from the call to the written table."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from molescope.features import extract as featurization
    from molescope.io.session import get_spark
    from molescope.stages import featurize as fz

    conf = {"spark.ui.enabled": "false", "spark.task.cpus": str(args.task_cpus), "spark.driver.memory": "4g"}
    spark = get_spark("bench-featurize", master=args.master, extra_conf=conf)
    settings = fz.Settings(
        curated=str(curated),
        features=str(features),
        backbone=backbone,
        weights=WEIGHTS[backbone],
        batch_size=args.batch_size,
        recompute=True,
        mixed_precision=args.mixed_precision,
        partitions=args.partitions,
        engine=args.engine,
    )
    try:
        if args.engine_cache == "warm":
            # Untimed: the LiteRT conversion only a first run of a backbone + weights pays (then cached).
            from molescope.features.backbones import resolve_backbone

            spec = resolve_backbone(backbone, WEIGHTS[backbone])
            table = featurization.features_uri(str(features), spec)
            featurization.engine_for_table(spark, spec, args.engine, args.batch_size, table)
        with PeakRss() as rss:
            started = time.monotonic()
            summary = fz.run(spark, settings)
            seconds = time.monotonic() - started
    finally:
        spark.stop()
    return {**summary, "stage_seconds": round(seconds, 2), "peak_rss_mib": rss.peak >> 20}


def bare_keras(args: argparse.Namespace, files: list[Path], backbone: str) -> dict:
    """(b), run in a child process so that its TensorFlow threads and memory are its own."""
    command = [
        sys.executable,
        __file__,
        "--bare",
        "--backbones",
        backbone,
        "--batch-size",
        str(args.batch_size),
        "--files-from",
        "-",
    ]
    if args.mixed_precision:
        command.append("--mixed-precision")
    listing = "\n".join(str(p) for p in files)
    done = subprocess.run(command, input=listing, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bare_main(args: argparse.Namespace) -> None:
    """Child of `bare_keras`: decode + resize (untimed), then preprocess + predict (timed)."""
    import numpy as np

    from molescope.features.backbones import load_model, preprocess, resize_rgb, resolve_backbone
    from molescope.io.imaging import decode_rgb

    files = [Path(line) for line in sys.stdin.read().splitlines() if line]
    backbone = args.backbones[0]
    spec = resolve_backbone(backbone, WEIGHTS[backbone])
    model = load_model(spec, args.mixed_precision)
    # uint8 tensors (150 KB an image at 224x224): 10k images fit; float32 copies of all would not, here.
    decoded = [resize_rgb(decode_rgb(p.read_bytes()), spec.input_size) for p in files]
    model.predict_on_batch(preprocess(spec, decoded[: args.batch_size]))  # warm-up: graph tracing
    started = time.monotonic()
    features = np.concatenate(
        [
            model.predict_on_batch(preprocess(spec, decoded[start : start + args.batch_size]))
            for start in range(0, len(decoded), args.batch_size)
        ]
    )
    seconds = time.monotonic() - started
    assert features.shape == (len(files), spec.feature_dim)
    assert np.isfinite(features).all()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
    print(json.dumps({"images": len(files), "seconds": round(seconds, 2), "peak_rss_mib": peak >> 20}))


def device_report() -> dict:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return {
        "tensorflow": tf.__version__,
        "built_with_cuda": tf.test.is_built_with_cuda(),
        "gpus": [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus],
        "cpu_count": os.cpu_count(),
    }


def bench_one(args: argparse.Namespace, name: str, files: list[Path], backbone: str, work: Path) -> dict:
    curated, features = work / f"{name}-curated", work / f"{name}-{backbone}-features"
    if not curated.exists():
        write_curated(files, curated)
    # (b) runs before and after (a): on a shared machine the load drifts, the mean brackets (a)'s conditions.
    bare_before = bare_keras(args, files, backbone)
    stage = spark_stage(args, curated, features, backbone)
    bare_after = bare_keras(args, files, backbone)
    stage_rate = len(files) / stage["stage_seconds"]
    bare_rates = [b["images"] / b["seconds"] for b in (bare_before, bare_after)]
    bare_rate = sum(bare_rates) / len(bare_rates)
    return {
        "dataset": name,
        "backbone": backbone,
        "images": len(files),
        "device": stage["device"],
        "engine": stage["engine"],
        "engine_cache": args.engine_cache,
        "a_stage_img_s": round(stage_rate, 1),
        "a_write_job_img_s": stage["images_per_s"],
        "b_bare_keras_img_s": round(bare_rate, 1),
        "b_before_after_img_s": [round(r, 1) for r in bare_rates],
        "ratio_a_b": round(stage_rate / bare_rate, 3),
        "a_peak_rss_mib": stage["peak_rss_mib"],
        "b_peak_rss_mib": max(bare_before["peak_rss_mib"], bare_after["peak_rss_mib"]),
        "partitions": stage["partitions"],
        "a_worker_startup_s": stage["worker_startup_s"],
        "load_avg_1m": round(os.getloadavg()[0], 1),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backbones", nargs="+", default=["mobilenet_0.25", "resnet50"], choices=sorted(WEIGHTS)
    )
    parser.add_argument(
        "--datasets", nargs="+", default=sorted(DEFAULT_DATASETS), choices=sorted(DEFAULT_DATASETS)
    )
    parser.add_argument("--limit", type=int, default=None, help="at most this many images per dataset")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--master", default="local[*]")
    parser.add_argument(
        "--task-cpus", type=int, default=1, help="spark.task.cpus (GPU: decode threads per task)"
    )
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument("--engine", default="auto", choices=["auto", "keras", "litert"], help="(a)'s engine")
    parser.add_argument(
        "--engine-cache",
        default="cold",
        choices=["cold", "warm"],
        help="cold: (a) includes the LiteRT conversion (a first run); warm: converted before (later runs)",
    )
    parser.add_argument("--partitions", type=int, default=0, help="featurize --partitions (0: its default)")
    parser.add_argument("--device-report", action="store_true", help="print what TensorFlow sees first")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--files-from", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.bare:
        bare_main(args)
        return 0
    if args.device_report:
        print("device report:", json.dumps(device_report()), flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-featurize-") as tmp:
        for name in args.datasets:
            files = image_files(DEFAULT_DATASETS[name], args.limit)
            for backbone in args.backbones:
                result = bench_one(args, name, files, backbone, Path(tmp))
                print("result:", json.dumps(result), flush=True)
                results.append(result)
    header = f"{'dataset':10} {'backbone':15} {'images':>6} {'a img/s':>8} {'b img/s':>8} {'a/b':>6} "
    print(header + f"{'a RSS MiB':>9} {'b RSS MiB':>9} engine device")
    for r in results:
        print(
            f"{r['dataset']:10} {r['backbone']:15} {r['images']:6d} {r['a_stage_img_s']:8.1f} "
            f"{r['b_bare_keras_img_s']:8.1f} {r['ratio_a_b']:6.3f} {r['a_peak_rss_mib']:9d} "
            f"{r['b_peak_rss_mib']:9d} {r['engine']}/{r['engine_cache']} {r['device']}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
