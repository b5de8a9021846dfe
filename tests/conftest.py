"""Shared fixtures: a small local SparkSession and paths to the real data in ../shared (tests only)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Spark's Python workers must run this interpreter (it has molescope and the pinned libraries installed).
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

REPO = Path(__file__).resolve().parents[1]
#: Real HAM10000 data for tests and benchmarks; the product never depends on it.
SHARED = Path(os.environ.get("MOLESCOPE_SHARED", REPO.parent / "shared"))
HAM10000 = SHARED / "data" / "ham10000"
HAM10000_FULLSIZE = SHARED / "data" / "ham10000_600x450_sample"
MOBILENET_025_WEIGHTS = SHARED / "models" / "mobilenet_2_5_224_tf_no_top.h5"


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not available at {path}")
    return path


@pytest.fixture(scope="session")
def spark():
    """One local SparkSession for the unit tests: 2 threads, small shuffles, UTC."""
    from molescope.session import get_spark

    session = get_spark(
        "molescope-tests",
        master="local[2]",
        extra_conf={
            "spark.sql.shuffle.partitions": "4",
            "spark.default.parallelism": "2",
            "spark.driver.memory": "2g",
            "spark.ui.enabled": "false",
        },
    )
    yield session
    session.stop()
