"""`molescope train --distributed horovod`: real Horovod ranks (horovod.spark.run, Gloo) on the local[2] test
session fit `mlp` into the same saved model + sidecar as one process, and `finetune` (real MobileNet-0.25
weights and images) into its single-process format; score (load_model + predict) and report read both
unchanged. Bad settings and a cluster too small fail at once with one line.

Horovod is built by `make setup`; without it the Horovod runs skip, except under CI=true (an error).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from molescope.cli import app
from molescope.core import registry
from molescope.core.registry import SIDECAR_FILE
from molescope.distributed import common, trainers
from molescope.features.backbones import resolve_backbone
from molescope.io import tables
from molescope.models import finetune, keras_head, trained
from molescope.rebalance.balance import balanced_sample_weights
from molescope.stages import report, train
from tests.conftest import MOBILENET_025_WEIGHTS, require
from tests.unit import image_rows as ft
from tests.unit.feature_rows import FAST_ARGS, TEST_ROWS, TRAIN_ROWS, write_inputs
from tests.unit.published_tables import read_predictions

RANKS = 2


def horovod_or_skip() -> None:
    try:
        import horovod.spark
        import horovod.tensorflow  # noqa: F401
    except ImportError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but Horovod is not installed ({error}); `make setup` builds it")
        pytest.skip(f"Horovod is not installed ({error}); `make setup` builds it")


def train_argv(train_set: str, features: str, out: str, *extra: str) -> list[str]:
    return ["train", "--train-set", train_set, "--features", features, "--out", out, *FAST_ARGS, *extra]


def run_train(spark, argv: list[str]) -> dict:
    """The real CLI's parse of `argv`, run on the test session (cli.main would stop the shared session)."""
    _, _, settings = app.parse_settings(argv)
    return train.run(spark, settings)


@pytest.fixture(scope="module")
def runs(spark, tmp_path_factory):
    """mlp trained once in one process and once on 2 Horovod ranks, from the same inputs."""
    horovod_or_skip()
    root = tmp_path_factory.mktemp("distributed_fit")
    train_set, features = write_inputs(spark, root)
    single_out, hvd_out = str(root / "single"), str(root / "horovod")
    single = run_train(spark, train_argv(train_set, features, single_out, "--models", "mlp"))
    hvd = run_train(
        spark,
        train_argv(
            train_set,
            features,
            hvd_out,
            "--models",
            "mlp",
            "--distributed",
            "horovod",
            "--num-proc",
            str(RANKS),
        ),
    )
    return {"single": (single, single_out), "horovod": (hvd, hvd_out), "features": features}


def sidecar(out: str) -> dict:
    return json.loads(Path(out, "models", "mlp", SIDECAR_FILE).read_text())


def test_horovod_mlp_has_the_single_process_model_format(runs):
    one, many = sidecar(runs["single"][1]), sidecar(runs["horovod"][1])
    assert many.keys() == one.keys()
    for key in ("model", "format", "classes", "params", "feature_spec", "seed"):
        assert many[key] == one[key], key
    # The same artefacts, each in its run's own version folder.
    assert {kind: path.split("/", 1)[1] for kind, path in many["artifacts"].items()} == {
        kind: path.split("/", 1)[1] for kind, path in one["artifacts"].items()
    }
    assert many["format"] == keras_head.FORMAT_KERAS
    ran = many["keras_history"]["distributed"]
    assert ran["backend"] == "horovod" and ran["num_proc"] == RANKS
    assert len(ran["shard_rows"]) == RANKS and min(ran["shard_rows"]) > 0
    # Every training row went to exactly one rank; the held-out rows are the single-process ones.
    assert sum(ran["shard_rows"]) == many["keras_history"]["train_rows"] == one["keras_history"]["train_rows"]
    assert many["keras_history"]["val_rows"] == one["keras_history"]["val_rows"] > 0
    assert 1 <= many["keras_history"]["epochs_run"] <= int(FAST_ARGS[FAST_ARGS.index("--mlp-epochs") + 1])


def test_horovod_mlp_learns_and_leaves_no_staging(runs):
    summary, out = runs["horovod"]
    metrics = summary["models"]["mlp"]
    # Validation figures (the split train chooses on); the validation rows have the training proportions.
    assert metrics["argmax"]["accuracy"] > max(TRAIN_ROWS.values()) / sum(TRAIN_ROWS.values()) + 0.2
    assert metrics["balanced_accuracy"] > 1 / 7 + 0.4
    assert not Path(out, trainers.STAGING_DIR, "mlp").exists()


def test_score_reloads_the_horovod_model_with_identical_predictions(spark, runs):
    _, out = runs["horovod"]
    written = read_predictions(spark, out, "mlp").where(F.col("split") == "test")
    loaded = trained.load_model(spark, f"{out}/models/mlp")
    again = loaded.predict(train.test_split(tables.read_features(spark, runs["features"])))
    left = {r["image_id"]: r["probability"] for r in written.collect()}
    right = {r["image_id"]: r["probability"] for r in again.collect()}
    assert left.keys() == right.keys() and len(left) == sum(TEST_ROWS.values())
    for image_id, probability in left.items():
        np.testing.assert_allclose(right[image_id], probability, rtol=1e-6, atol=1e-9)


def test_report_reads_the_horovod_run(spark, runs):
    _, out = runs["horovod"]
    result = report.run(spark, report.Settings(run=out, history=str(Path(out) / "history.jsonl")))
    assert result["models"]["mlp"]["n"] == sum(TEST_ROWS.values())
    assert result["models"]["mlp"]["threshold_source"] == "validation"


def test_more_ranks_than_slots_fail_before_reading_anything(spark, tmp_path):
    horovod_or_skip()
    argv = train_argv("missing/train_set", "missing/features", str(tmp_path), "--models", "mlp")
    with pytest.raises(common.DistributedTrainingError, match="3 Horovod ranks need 3 concurrent"):
        run_train(spark, [*argv, "--distributed", "horovod", "--num-proc", "3"])


def test_missing_horovod_fails_the_stage_before_reading_anything(spark, tmp_path, monkeypatch):
    for name in ("horovod", "horovod.spark", "horovod.tensorflow"):
        monkeypatch.setitem(sys.modules, name, None)
    argv = train_argv("missing/train_set", "missing/features", str(tmp_path), "--models", "mlp")
    with pytest.raises(common.DistributedTrainingError, match="needs Horovod"):
        run_train(spark, [*argv, "--distributed", "horovod"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--models", "lr,gbt", "--distributed", "horovod"], "fits only mlp, finetune"),
        (["--models", "mlp", "--distributed", "horovod", "--num-proc", "0"], "--num-proc must be at least 1"),
        (["--models", "mlp", "--distributed", "mpi"], "invalid choice"),
        (["--models", "mlp", "--distributed", "horovod", "--metadata", "--curated", "c"], "--metadata"),
    ],
)
def test_bad_distributed_settings_are_one_line_usage_errors(capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        app.parse_settings(train_argv("t", "f", "o", *extra))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: " in error and message in error  # argparse's usage line, then this one


def test_the_cli_reports_a_cluster_too_small_in_one_line(tmp_path):
    """The real entry point in its own process: exit status 1 and one error line, no traceback."""
    horovod_or_skip()
    argv = train_argv(str(tmp_path / "t"), str(tmp_path / "f"), str(tmp_path / "o"), "--models", "mlp")
    done = subprocess.run(
        [sys.executable, "-m", "molescope.cli", "--master", "local[1]", *argv, "--distributed", "horovod"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("molescope train: error: ") and last.endswith("(DistributedTrainingError)"), last
    assert "2 Horovod ranks need 2 concurrent Spark tasks" in last


def test_every_horovod_model_has_a_trainer():
    assert set(trainers.TRAINERS) == set(registry.HOROVOD_MODELS)
    assert set(registry.HOROVOD_MODELS) <= set(registry.MODEL_TYPES)


def test_balanced_weight_is_balance_on_the_collected_rows(spark):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 7, 200)
    weights = rng.choice([0.5, 1.0, 2.0], 200)
    df = spark.createDataFrame(
        [(int(i), int(y), float(w)) for i, (y, w) in enumerate(zip(labels, weights, strict=True))],
        "id long, label int, w double",
    )
    got = df.select("id", trainers.balanced_weight(df, "w").alias("bw")).orderBy("id").toPandas()
    np.testing.assert_allclose(got["bw"], balanced_sample_weights(labels, weights), rtol=1e-6)


@pytest.fixture(scope="module")
def finetune_run(spark, tmp_path_factory):
    """finetune (real MobileNet-0.25 ImageNet weights, real images) on 2 Horovod ranks, one epoch."""
    horovod_or_skip()
    weights = str(require(MOBILENET_025_WEIGHTS))
    spec = resolve_backbone("mobilenet", weights, alpha=0.25)
    root = tmp_path_factory.mktemp("distributed_finetune")
    curated, features, train_set = ft.write_inputs(spark, root, spec.weights_id)
    out = str(root / "run")
    argv = [
        *("train", "--train-set", train_set, "--features", features, "--out", out, "--models", "finetune"),
        *("--curated", curated, "--weights", weights, "--validation-fraction", "0.3"),
        *("--finetune-epochs", "1", "--finetune-batch-size", "4", "--finetune-layers", "6"),
        *("--finetune-max-images", str(ft.MAX_IMAGES), "--distributed", "horovod", "--num-proc", str(RANKS)),
    ]
    return run_train(spark, argv), out, curated, ft.MAX_IMAGES


def test_horovod_finetune_saves_the_single_process_format(finetune_run):
    summary, out, _, max_images = finetune_run
    saved = json.loads(Path(out, "models", "finetune", SIDECAR_FILE).read_text())
    assert set(trained.SIDECAR_KEYS) <= saved.keys()
    assert saved["format"] == finetune.FORMAT_FINETUNE
    recipe = finetune.FinetuneConfig.__dataclass_fields__
    assert saved["params"].keys() == {*recipe, "max_images", "backbone_spec", "weighted"}
    history = saved["keras_history"]
    assert history["epochs_run"] == 1
    assert history["train_images"] == sum(history["distributed"]["shard_rows"]) == max_images
    assert history["val_images"] > 0
    assert history["trainable_layers"] > 0
    assert summary["models"]["finetune"]["split"] == "validation"
    assert summary["models"]["finetune"]["validation_rows"] > 0


def test_horovod_finetune_reloads_and_reports(spark, finetune_run):
    _, out, curated, _ = finetune_run
    written = read_predictions(spark, out, "finetune")
    loaded = trained.load_model(spark, f"{out}/models/finetune")
    images = tables.read_curated(spark, curated).select("image_id", "image")
    scoring = written.select("image_id", "lesion_id", "dx", "split").join(images, on="image_id", how="inner")
    again = {r["image_id"]: r["probability"] for r in loaded.predict_images(scoring).collect()}
    before = {r["image_id"]: r["probability"] for r in written.collect()}
    assert again.keys() == before.keys()
    for image_id, probability in before.items():
        np.testing.assert_allclose(again[image_id], probability, rtol=1e-6, atol=1e-9)
    result = report.run(spark, report.Settings(run=out, history=str(Path(out) / "history.jsonl")))
    assert result["models"]["finetune"]["threshold_source"] == "validation"
