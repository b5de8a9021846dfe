"""Stages killed with SIGKILL at known points (driver, JVM, Python worker), then run again: the published rows
equal those of the uninterrupted reference run, with nothing doubled, nothing missing, and a killed run never
changing what was published before it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from tests.faults import published
from tests.faults.conftest import (
    BATCH,
    MODEL,
    RUN,
    clean_args,
    featurize_args,
    score_args,
    train_args,
    upsample_args,
)
from tests.faults.processes import LOCAL_CLUSTER
from tests.faults.published import Warehouse

pytestmark = pytest.mark.faults

KILLED = -9
#: How long a test waits for Spark tasks to commit once the later ones are paused.
COMMIT_WAIT_S = 120


def assert_same_curated(got: Warehouse, want: Warehouse) -> None:
    images, quarantine, summary = published.curated(got, BATCH)
    ref_images, ref_quarantine, ref_summary = published.curated(want, BATCH)
    assert images == ref_images
    assert quarantine == ref_quarantine
    for key in ("rows_in", "curated", "quarantined", "quarantined_by_reason", "invariant"):
        assert summary[key] == ref_summary[key], key


def test_clean_killed_after_writing_and_in_a_worker_keeps_the_batch_then_reruns_exactly(
    stages, reference, batches, tmp_path
):
    """Re-cleaning a published batch: SIGKILL of the driver once every file is written but before the
    summary (the publish), then SIGKILL of a Python worker while images are decoded; a third run completes."""
    root = reference.copy(tmp_path / "wh", "curated")
    warehouse, want = Warehouse.local(root), reference.warehouse
    summary_before = (root / "curated" / "summaries" / f"{BATCH}.json").read_bytes()

    killed = stages.start("clean", *clean_args(batches[BATCH], root), pause_at="publish:images")
    killed.wait_paused()
    killed.kill("driver")
    assert killed.wait() == KILLED
    # Both tables' new versions were written: a second version folder each, which nobody reads.
    assert len(warehouse.version_folders("curated/images")) == 2
    assert (root / "curated" / "summaries" / f"{BATCH}.json").read_bytes() == summary_before
    assert_same_curated(warehouse, want)

    crashed = stages.start("clean", *clean_args(batches[BATCH], root), pause_at="task:inspect")
    crashed.wait_paused()
    crashed.kill("worker")
    assert crashed.wait() not in (0, KILLED)  # the job failed: a clean error exit, not a hang
    assert (root / "curated" / "summaries" / f"{BATCH}.json").read_bytes() == summary_before

    stages.run("clean", *clean_args(batches[BATCH], root))
    assert_same_curated(warehouse, want)
    # The killed attempt's files are gone: one version per table.
    assert len(warehouse.version_folders("curated/images")) == 1
    assert len(warehouse.version_folders("curated/quarantine")) == 1


def committed_tasks(root: Path) -> list[Path]:
    """Task outputs the local committer moved to the job's committed area (before the job commit)."""
    return list(root.glob("features/*/*/batch_id=*/v*/_temporary/0/task_*"))


def wait_committed(root: Path, tasks: int) -> None:
    """Wait until `tasks` featurize tasks have committed (the later ones are paused)."""
    deadline = time.monotonic() + COMMIT_WAIT_S
    while len(committed_tasks(root)) < tasks and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(committed_tasks(root)) == tasks, f"tasks 0 to {tasks - 1} should have committed"


def test_featurize_killed_mid_job_and_before_publishing_then_reruns_without_duplicates(
    stages, reference, tmp_path
):
    """The bug this guards against: a killed featurize whose re-run doubled rows. SIGKILL of the JVM while
    every task waits at its start (none committed), of the driver while 2 of 4 tasks have committed and 2
    are running, then of the JVM after every file is written (the job committed) but before the manifest;
    a fourth run publishes exactly the reference's rows."""
    root = reference.copy(tmp_path / "wh", "curated", "features/_engines")
    warehouse, table = Warehouse.local(root), reference.features_table()
    ref_file = root / RUN / "features.json"

    no_task_done = stages.start("featurize", *featurize_args(root), pause_at="task:featurize")
    no_task_done.wait_paused()
    assert committed_tasks(root) == []
    no_task_done.kill("jvm")
    assert no_task_done.wait() != 0
    assert not (root / table / "_manifests").exists() and not ref_file.exists()

    mid_job = stages.start("featurize", *featurize_args(root), pause_at="task:featurize@2")
    mid_job.wait_paused()
    wait_committed(root, 2)
    mid_job.kill("driver")
    assert mid_job.wait() == KILLED
    assert not (root / table / "_manifests").exists() and not ref_file.exists()

    before_publish = stages.start("featurize", *featurize_args(root), pause_at="publish:features")
    before_publish.wait_paused()
    before_publish.kill("jvm")
    assert before_publish.wait() != 0
    assert not (root / table / "_manifests").exists() and not ref_file.exists()
    assert len(warehouse.data_files(table)) >= 4  # the committed job's files, unpublished

    stages.run("featurize", *featurize_args(root))
    got = published.features(warehouse, table, BATCH)
    want = published.features(reference.warehouse, table, BATCH)
    assert got.keys() == want.keys()
    for image_id, row in want.items():
        np.testing.assert_allclose(got[image_id]["features"], row["features"], atol=1e-6)
        assert {k: v for k, v in got[image_id].items() if k != "features"} == {
            k: v for k, v in row.items() if k != "features"
        }
    assert len(warehouse.version_folders(table)) == 1
    assert json.loads(ref_file.read_text())["uri"].endswith(table)


def test_train_killed_before_publishing_keeps_the_model_then_reruns_exactly(stages, reference, tmp_path):
    """SIGKILL of the driver after the model's artefacts and predictions are written, before the manifest
    and sidecar naming them: the previous model and predictions stay published; a re-run matches them."""
    root = reference.copy(tmp_path / "wh", "curated", "features", RUN)
    warehouse = Warehouse.local(root)
    sidecar = root / RUN / "models" / MODEL / "molescope_model.json"
    before = sidecar.read_bytes()

    killed = stages.start("train", *train_args(root), pause_at="publish:predictions")
    killed.wait_paused()
    killed.kill("driver")
    assert killed.wait() == KILLED
    assert sidecar.read_bytes() == before
    assert published.predictions(warehouse, RUN, MODEL) == published.predictions(
        reference.warehouse, RUN, MODEL
    )
    assert len(warehouse.version_folders(f"{RUN}/predictions/{MODEL}")) == 2

    stages.run("train", *train_args(root))
    got = published.predictions(warehouse, RUN, MODEL)
    want = published.predictions(reference.warehouse, RUN, MODEL)
    assert got.keys() == want.keys()
    for image_id, row in want.items():
        np.testing.assert_allclose(got[image_id]["probability"], row["probability"], atol=1e-9)
        assert got[image_id]["prediction"] == row["prediction"]
    artifacts = json.loads(sidecar.read_text())["artifacts"]
    assert all((root / RUN / "models" / MODEL / path).exists() for path in artifacts.values())
    versions = [p for p in (root / RUN / "models" / MODEL).iterdir() if p.is_dir()]
    assert len(versions) == 1  # the killed attempt's model version was collected
    assert len(warehouse.version_folders(f"{RUN}/predictions/{MODEL}")) == 1


def test_upsample_killed_before_and_after_its_publish_then_reruns_exactly(stages, reference, tmp_path):
    """SIGKILL of the driver before the train set's manifest (the previous train set stays published), then
    of the JVM after the manifest but before old versions are deleted (the new one, equal, is published);
    a third run leaves exactly one version, equal to the reference's."""
    root = reference.copy(tmp_path / "wh", "curated", "features", RUN)
    warehouse, table = Warehouse.local(root), f"{RUN}/train_set"
    manifest = root / table / "_manifest.json"
    before, want = manifest.read_bytes(), published.train_set(reference.warehouse, RUN)

    killed = stages.start("upsample", *upsample_args(root), pause_at="publish:train_set")
    killed.wait_paused()
    killed.kill("driver")
    assert killed.wait() == KILLED
    assert manifest.read_bytes() == before
    assert len(warehouse.version_folders(table)) == 2

    after_publish = stages.start("upsample", *upsample_args(root), pause_at="collect:train_set")
    after_publish.wait_paused()
    after_publish.kill("jvm")
    assert after_publish.wait() != 0
    assert manifest.read_bytes() != before  # the killed run had published its version
    assert published.train_set(warehouse, RUN) == want
    assert len(warehouse.version_folders(table)) == 3

    stages.run("upsample", *upsample_args(root))
    assert published.train_set(warehouse, RUN) == want
    assert len(warehouse.version_folders(table)) == 1


def test_score_killed_before_its_publish_keeps_the_scores_then_reruns_exactly(
    stages, reference, batches, tmp_path
):
    """Score b1 with the reference's model, then re-score it: SIGKILL of the driver after both tables are
    written, before summary.json (their manifest); the first scores stay published, and a re-run publishes
    the same predictions and quarantine, with scored + quarantined = rows_in."""
    root = reference.copy(tmp_path / "wh", "curated", "features", RUN)
    warehouse = Warehouse.local(root)
    stages.run("score", *score_args(root, batches[BATCH]))
    (summary_file,) = root.glob("scores/*/*/*/summary.json")
    out = str(summary_file.parent.relative_to(root))
    want, want_quarantine, want_summary = published.scores(warehouse, out)
    assert want_summary["rows_in"] == len(want) + len(want_quarantine) > 0
    before = summary_file.read_bytes()

    killed = stages.start("score", *score_args(root, batches[BATCH]), pause_at="publish:predictions")
    killed.wait_paused()
    killed.kill("driver")
    assert killed.wait() == KILLED
    assert summary_file.read_bytes() == before
    assert len(warehouse.version_folders(f"{out}/predictions")) == 2

    stages.run("score", *score_args(root, batches[BATCH]))
    got, quarantine, summary = published.scores(warehouse, out)
    assert got.keys() == want.keys()
    for image_id, row in want.items():
        np.testing.assert_allclose(got[image_id]["probability"], row["probability"], atol=1e-9)
        assert got[image_id]["prediction"] == row["prediction"]
    assert sorted(q["image_id"] or "" for q in quarantine) == sorted(
        q["image_id"] or "" for q in want_quarantine
    )
    assert (summary["rows_in"], summary["scored"], summary["quarantined"]) == (
        want_summary["rows_in"],
        len(got),
        len(quarantine),
    )
    assert len(warehouse.version_folders(f"{out}/predictions")) == 1


def test_featurize_on_a_cluster_survives_a_killed_executor_and_publishes_exactly(stages, reference, tmp_path):
    """A Spark worker process dies: on a local cluster (2 executor JVMs started by a worker), SIGKILL of the
    executor running a paused task while 2 of 4 tasks have committed. Spark runs the lost task again on an
    executor the worker starts anew; the one run publishes exactly the reference's rows, once each."""
    root = reference.copy(tmp_path / "wh", "curated", "features/_engines")
    warehouse, table = Warehouse.local(root), reference.features_table()
    stage = stages.start(
        "featurize", *featurize_args(root), pause_at="task:featurize@2", master=LOCAL_CLUSTER
    )
    stage.wait_paused()
    wait_committed(root, 2)
    stage.kill("executor")
    while stage.proc.poll() is None:  # the retried task pauses again on its new executor: let every one go
        stage.resume()
        time.sleep(0.2)
    stages.succeeded(stage)
    assert "ExecutorLost" in stage.output() or "Lost executor" in stage.output(), stage.tail()
    got = published.features(warehouse, table, BATCH)
    want = published.features(reference.warehouse, table, BATCH)
    assert got.keys() == want.keys()
    for image_id, row in want.items():
        np.testing.assert_allclose(got[image_id]["features"], row["features"], atol=1e-6)
    assert len(warehouse.version_folders(table)) == 1
