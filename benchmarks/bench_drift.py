"""How the batch drift check (`molescope.evaluation.drift`) reads on real HAM10000 images: its false alarms
on batches from the training data's own source, its power on batches through "another device", and its cost.

The 10,015 images split by lesion (a hash of lesion_id, 70 / 30): a reference of --reference images from the
70 % part (what train stores), then --rounds random batches of each size from the 30 % part (never the
reference's lesions), scored as they are and through each device change below. Per (size, change): how
often the worst of the four image tests is stable / moderate / shift (the verdict from drift.MIN_IMAGES
images on; below, what it would be), and the median of the largest PSI.
The class mix is not part of this benchmark (it depends on a model); its test is the same PSI on 7 shares.

Device changes (what another dermatoscope or export does to the same lesions):
- `exposure-10`: 10 % less exposure;
- `cool-wb`: a cooler white balance (R × 0.9, B × 1.1);
- `device`: the unit test's change, cooler white balance and 15 % less exposure.
A case-mix change with no device change (`no-nv`: batches without naevi) shows that the image tests also
move when the lesions differ, not only when the device does.

Cost: the pure function per image on one core, and `features.image_stats.image_statistics` (what score adds
for a batch, train for its reference sample) over --spark-images real images in Spark --master, best of 3
after one untimed run (JVM and Python workers started).

    python benchmarks/bench_drift.py [--reference 2000] [--rounds 20] [--sizes 100,300,1000]
        [--spark-images 1000] [--master 'local[2]']
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from molescope.evaluation import drift
from molescope.io.imaging import decode_resized

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.conftest import HAM10000, require  # noqa: E402

Change = Callable[[np.ndarray], np.ndarray]


def scaled(factors: tuple[float, float, float]) -> Change:
    gains = np.asarray(factors, dtype=np.float32)
    return lambda image: (image.astype(np.float32) * gains).clip(0, 255).astype(np.uint8)


CHANGES: dict[str, Change | None] = {
    "none": None,
    "exposure-10": scaled((0.9, 0.9, 0.9)),
    "cool-wb": scaled((0.9, 1.0, 1.1)),
    "device": scaled((0.85 * 0.85, 0.95 * 0.85, 1.1 * 0.85)),
}


def load(image_id: str) -> np.ndarray:
    """The image as the product summarises it (`features.image_stats`): decoded at SUMMARY_PX square."""
    return decode_resized((HAM10000 / "images" / f"{image_id}.jpg").read_bytes(), drift.SUMMARY_PX)


def rows() -> list[dict[str, str]]:
    with require(HAM10000 / "HAM10000_metadata.csv").open() as handle:
        return sorted(csv.DictReader(handle), key=lambda r: r["image_id"])


def in_reference_part(row: dict[str, str]) -> bool:
    return zlib.crc32(row["lesion_id"].encode()) % 10 < 7


def summaries(image_ids: list[str], change: Change | None) -> np.ndarray:
    return np.array([drift.image_summaries(change(load(i)) if change else load(i)) for i in image_ids])


def verdicts(reference: dict, values: np.ndarray, batches: list[np.ndarray]) -> tuple[Counter, float]:
    """Verdict counts and the median largest PSI over `batches` (row indices into `values`)."""
    counts: Counter = Counter()
    largest = []
    for batch in batches:
        report = drift.compare(len(batch), reference, values[batch], None, None)
        worst = max(t["psi"] for t in report["tests"])
        # The level of the worst test: the verdict from MIN_IMAGES on, what it would be below.
        counts[drift.level(worst)] += 1
        largest.append(worst)
    return counts, statistics.median(largest)


def spark_seconds(image_ids: list[str], master: str) -> float:
    from molescope.features.image_stats import image_statistics
    from molescope.io.session import get_spark

    spark = get_spark("bench-drift", master=master)
    rows = [(i, (HAM10000 / "images" / f"{i}.jpg").read_bytes()) for i in image_ids]
    frame = spark.createDataFrame(rows, "image_id string, image binary").localCheckpoint(eager=True)
    image_statistics(frame)
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        assert len(image_statistics(frame)) == len(image_ids)
        timings.append(time.perf_counter() - started)
    spark.stop()
    return min(timings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--sizes", default="100,300,1000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spark-images", type=int, default=1000)
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    metadata = rows()
    pool = [r for r in metadata if in_reference_part(r)]
    fresh = [r for r in metadata if not in_reference_part(r)]
    chosen = rng.choice(len(pool), size=min(args.reference, len(pool)), replace=False)
    started = time.perf_counter()
    reference_values = np.array([drift.image_summaries(load(pool[i]["image_id"])) for i in chosen])
    per_image_ms = 1000 * (time.perf_counter() - started) / len(chosen)
    reference = drift.reference(reference_values)
    print(f"reference: {len(chosen)} images of {len(pool)} (70 % of lesions); batches from {len(fresh)}")
    print(f"cost: decode + resize + summaries {per_image_ms:.2f} ms per 200x150 image, one core")
    if args.spark_images:
        ids = [r["image_id"] for r in fresh[: args.spark_images]]
        seconds = spark_seconds(ids, args.master)
        print(f"cost: image_statistics of {len(ids)} images in Spark {args.master}: {seconds:.2f} s")
    print(f"{'size':>5} {'change':<12} {'stable':>6} {'moderate':>8} {'shift':>6} {'median max PSI':>15}")
    fresh_ids = [r["image_id"] for r in fresh]
    per_change = {name: summaries(fresh_ids, change) for name, change in CHANGES.items()}
    no_nv = np.flatnonzero([r["dx"] != "nv" for r in fresh])
    for size in (int(s) for s in args.sizes.split(",")):
        plans = {name: (np.arange(len(fresh)), values) for name, values in per_change.items()}
        plans["no-nv"] = (no_nv, per_change["none"])
        for name, (source, values) in plans.items():
            batches = [
                rng.choice(source, size=min(size, len(source)), replace=False) for _ in range(args.rounds)
            ]
            counts, median = verdicts(reference, values, batches)
            print(
                f"{size:>5} {name:<12} {counts['stable']:>6} {counts['moderate']:>8} {counts['shift']:>6}"
                f" {median:>15.3f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
