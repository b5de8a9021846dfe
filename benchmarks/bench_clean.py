"""Benchmark the clean stage on the full HAM10000 batch (10,015 images): rows/s, images/s, wall, peak RSS.

Runs `molescope.stages.clean.run` in-process with a local[2] SparkSession into a temporary curated root.
Usage: `.venv/bin/python benchmarks/bench_clean.py [--batch-dir DIR] [--master local[2]] [--figures]`.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BATCH = REPO.parent / "shared" / "data" / "ham10000"
DEFAULT_MASTER = "local[2]"
#: ru_maxrss is in KiB on Linux.
KIB_PER_MIB = 1024


def peak_rss_mib() -> tuple[float, float]:
    """Peak resident set size of this process and of its waited-for children (getrusage)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MIB
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / KIB_PER_MIB
    return own, children


def _hwm_mib(pid: int) -> float:
    """VmHWM (peak RSS) of a live process from /proc, 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / KIB_PER_MIB
    except OSError:
        pass
    return 0.0


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found.extend(children)
        frontier.extend(children)
    return found


def jvm_peak_rss_mib(spark) -> tuple[float, float]:
    """Peak RSS of the Spark JVM and the sum over its live Python workers (read before the JVM exits).

    The JVM is not waited for before getrusage runs, so RUSAGE_CHILDREN misses it; /proc does not.
    """
    process = getattr(spark.sparkContext._gateway, "proc", None)
    if process is None:
        return 0.0, 0.0
    workers = sum(_hwm_mib(pid) for pid in _descendants(process.pid))
    return _hwm_mib(process.pid), workers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-dir", default=str(DEFAULT_BATCH))
    parser.add_argument("--master", default=DEFAULT_MASTER)
    parser.add_argument("--figures", action="store_true", help="also draw the EDA figures")
    args = parser.parse_args()
    if not Path(args.batch_dir).exists():
        print(f"batch not found: {args.batch_dir}", file=sys.stderr)
        return 2
    # Spark's Python workers must be this interpreter (it has molescope, pandas and Pillow).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)

    from molescope.io.session import get_spark
    from molescope.stages import clean

    spark = get_spark("molescope-bench-clean", master=args.master, extra_conf={"spark.ui.enabled": "false"})
    try:
        with tempfile.TemporaryDirectory(prefix="bench-clean-") as curated:
            settings = clean.Settings(
                batch_dir=args.batch_dir, batch_id="bench", curated=curated, figures=args.figures
            )
            started = time.monotonic()
            summary = clean.run(spark, settings)
            wall = time.monotonic() - started
        jvm, workers = jvm_peak_rss_mib(spark)
    finally:
        spark.stop()
    own, children = peak_rss_mib()
    print(f"batch            {args.batch_dir} (master {args.master})")
    print(f"rows in          {summary['rows_in']} (invariant: {summary['invariant']['check']})")
    print(f"image files      {summary['image_files']}")
    print(f"wall time        {wall:.1f} s")
    print(f"rows/s           {summary['rows_in'] / wall:.1f}")
    print(f"images/s         {summary['image_files'] / wall:.1f}")
    print(
        f"peak RSS         python driver {own:.0f} MiB, Spark JVM {jvm:.0f} MiB, "
        f"Python workers (sum) {workers:.0f} MiB, reaped children {children:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
