"""Fixtures of the fault tests: tiny synthetic batches, a stage-process runner, and the uninterrupted run
every interrupted one is compared with."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults.processes import Stages
from tests.faults.published import Warehouse

pytestmark = pytest.mark.faults

#: Small enough that a stage is mostly JVM start-up; large enough for 4 featurize partitions of 2 tasks each.
IMAGES = 32
IMAGE_SIZE = ("64", "48")
BATCH = "b1"
RUN = "runs/r1"
MODEL = "lr"
#: Random weights (plumbing only) through LiteRT: the converted model is cached in features/_engines and
#: copied into every test warehouse, so only the reference run converts. 4 partitions: 2 waves of 2 tasks.
FEATURIZE = ("--backbone", "mobilenet_0.25", "--weights", "random", "--engine", "litert", "--partitions", "4")
TRAIN = ("--models", MODEL, "--lr-max-iter", "5", "--validation-fraction", "0")


def synth(folder: Path, seed: int) -> Path:
    command = [sys.executable, "-m", "molescope.cli", "synth", "--out", str(folder), "--images", str(IMAGES)]
    command += ["--width", IMAGE_SIZE[0], "--height", IMAGE_SIZE[1], "--seed", str(seed)]
    subprocess.run(command, check=True, capture_output=True)
    return folder


def renumber(folder: Path, old: str, new: str) -> Path:
    """Give a synthetic batch other image ids (synth always starts at ISIC_0024306): `old` → `new` prefix."""
    for path in sorted(folder.rglob(f"{old}*.jpg")):
        path.rename(path.with_name(path.name.replace(old, new, 1)))
    csv = next(folder.glob("*.csv"))
    csv.write_text(csv.read_text().replace(old, new))
    return folder


@pytest.fixture(scope="session")
def fault_env() -> dict[str, str]:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "MOLESCOPE_SPARK_LOG_LEVEL": "ERROR"}
    env.pop("MOLESCOPE_PAUSE_AT", None)
    return env


@pytest.fixture(scope="session")
def batches(tmp_path_factory) -> dict[str, Path]:
    """b1 and b2: two synthetic batches with disjoint image ids and different images."""
    root = tmp_path_factory.mktemp("batches")
    return {
        "b1": synth(root / "b1", seed=0),
        "b2": renumber(synth(root / "b2", seed=1), "ISIC_002", "ISIC_009"),
    }


@pytest.fixture
def stages(tmp_path, fault_env) -> Iterator[Stages]:
    runner = Stages(fault_env, tmp_path / "stages")
    runner.folder.mkdir()
    yield runner
    runner.stop_all()


def clean_args(batch: Path, warehouse: Path, batch_id: str = BATCH) -> tuple[str, ...]:
    return (
        "--batch-dir",
        str(batch),
        "--batch-id",
        batch_id,
        "--curated",
        f"{warehouse}/curated",
        "--no-figures",
    )


def featurize_args(warehouse: Path, batch_id: str = BATCH) -> tuple[str, ...]:
    curated, features = f"{warehouse}/curated", f"{warehouse}/features"
    ref = f"{warehouse}/{RUN}/features.json"
    return (
        "--curated",
        curated,
        "--features",
        features,
        "--batch-id",
        batch_id,
        "--ref-out",
        ref,
        *FEATURIZE,
    )


def upsample_args(warehouse: Path) -> tuple[str, ...]:
    return (
        "--features",
        f"{warehouse}/{RUN}/features.json",
        "--out",
        f"{warehouse}/{RUN}",
        "--strategy",
        "none",
    )


def score_args(warehouse: Path, batch: Path, batch_id: str = BATCH) -> tuple[str, ...]:
    """Score a batch folder with the run's model (its backbone and weights come from the model)."""
    model = f"{warehouse}/{RUN}/models/{MODEL}"
    scores = f"{warehouse}/scores"
    return (
        "--batch-dir",
        str(batch),
        "--batch-id",
        batch_id,
        "--model",
        model,
        "--out",
        scores,
        "--engine",
        "litert",
    )


def train_args(warehouse: Path) -> tuple[str, ...]:
    run = f"{warehouse}/{RUN}"
    return ("--train-set", f"{run}/train_set", "--features", f"{run}/features.json", "--out", run, *TRAIN)


@dataclass(frozen=True)
class Reference:
    """The uninterrupted run of clean → featurize → upsample → train on b1, and what it published."""

    root: Path

    @property
    def warehouse(self) -> Warehouse:
        return Warehouse.local(self.root)

    def features_table(self) -> str:
        """The features table's path relative to the warehouse (features/<backbone>/<weights dir>)."""
        (manifest,) = self.root.glob("features/*/*/_manifests")
        return str(manifest.parent.relative_to(self.root))

    def copy(self, target: Path, *parts: str) -> Path:
        """A warehouse holding these parts of the reference (e.g. "curated", "features/_engines")."""
        for part in parts:
            for source in self.root.glob(part):
                shutil.copytree(source, target / source.relative_to(self.root))
        return target


@pytest.fixture(scope="session")
def reference(batches, fault_env, tmp_path_factory) -> Reference:
    root = tmp_path_factory.mktemp("reference")
    runner = Stages(fault_env, root / "_stages")
    runner.folder.mkdir()
    try:
        runner.run("clean", *clean_args(batches[BATCH], root))
        runner.run("featurize", *featurize_args(root))
        runner.run("upsample", *upsample_args(root))
        runner.run("train", *train_args(root))
    finally:
        runner.stop_all()
    return Reference(root)
