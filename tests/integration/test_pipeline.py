"""End to end: a synthetic batch lands in a real S3 server and `airflow dags test` runs every stage
through real spark-submit; the assertions read what the stages wrote to S3."""

from __future__ import annotations

import csv
import io
import json
import subprocess

import pyarrow.parquet as pq
import pytest

from tests.conftest import MOBILENET_025_WEIGHTS, require

pytestmark = pytest.mark.integration

DAG_ID = "skin_lesion_pipeline"
BATCH = "synthetic-001"
IMAGES = 120
MODELS = ["lr", "rf", "gbt"]
DAG_TIMEOUT_S = 1800


def run(cmd: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd[:4])} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
        )
    return done


def parquet_rows(s3, prefix: str) -> int:
    keys = [k for k in s3.keys(prefix) if k.endswith(".parquet")]
    return sum(pq.read_metadata(io.BytesIO(s3.get(k))).num_rows for k in keys)


@pytest.fixture(scope="module")
def pipeline_run(s3_server, pipeline_env, tmp_path_factory):
    """Land a synthetic batch plus the MobileNet weights in S3, run the DAG once, return its run prefix."""
    weights = require(MOBILENET_025_WEIGHTS)
    batch = tmp_path_factory.mktemp("batch")
    run(
        [
            "molescope",
            "synth",
            "--out",
            str(batch),
            "--images",
            str(IMAGES),
            "--seed",
            "11",
            "--width",
            "300",
            "--height",
            "225",
            "--with-defects",
        ],
        pipeline_env,
    )
    warehouse = f"s3a://{s3_server.bucket}"
    run(["molescope", "land", "--source", str(batch), "--dest", f"{warehouse}/landing/{BATCH}"], pipeline_env)
    # Air-gapped clusters read backbone weights from S3: exercise that path.
    s3_server.client().upload_file(str(weights), s3_server.bucket, "models/mobilenet_0.25.h5")
    conf = {
        "batch_id": BATCH,
        "backbone": "mobilenet_0.25",
        "weights": f"{warehouse}/models/mobilenet_0.25.h5",
        "models": MODELS,
        "upsample": "oversample",
    }
    done = run(["airflow", "dags", "test", DAG_ID, "--conf", json.dumps(conf)], pipeline_env, DAG_TIMEOUT_S)
    runs = {k.split("/")[1] for k in s3_server.keys("runs/") if not k.split("/")[1].startswith("_")}
    assert len(runs) == 1, f"expected one run prefix, found {runs}\n{done.stdout[-3000:]}"
    metadata = next(p for p in batch.rglob("*.csv"))
    with metadata.open(newline="") as handle:
        rows_in = sum(1 for _ in csv.DictReader(handle))
    return {"run": f"runs/{runs.pop()}", "rows_in": rows_in, "log": done.stdout + done.stderr}


def test_every_input_row_is_curated_or_quarantined(s3_server, pipeline_run):
    curated = parquet_rows(s3_server, f"curated/images/batch_id={BATCH}/")
    quarantined = parquet_rows(s3_server, f"curated/quarantine/batch_id={BATCH}/")
    summary = json.loads(s3_server.get(f"curated/summaries/{BATCH}.json"))
    assert curated > 0 and quarantined > 0  # the synthetic batch carries defects and rule violations
    assert summary["rows_in"] >= pipeline_run["rows_in"]
    assert summary["rows_in"] == curated + quarantined


def test_features_cover_every_curated_image(s3_server, pipeline_run):
    curated = parquet_rows(s3_server, f"curated/images/batch_id={BATCH}/")
    feature_keys = [k for k in s3_server.keys("features/") if f"batch_id={BATCH}/" in k]
    assert feature_keys, "no feature files written"
    prefix = feature_keys[0].split(f"batch_id={BATCH}/")[0]
    assert prefix.startswith("features/mobilenet_0.25/")
    assert parquet_rows(s3_server, f"{prefix}batch_id={BATCH}/") == curated


def test_training_set_contains_only_train_rows_and_is_balanced(s3_server, pipeline_run):
    summary = json.loads(s3_server.get(f"{pipeline_run['run']}/upsample_summary.json"))
    after = summary["after"]
    assert len(set(after.values())) == 1, f"oversample should equalise class counts: {after}"
    assert parquet_rows(s3_server, f"{pipeline_run['run']}/train_set/") == sum(after.values())


def test_models_saved_and_metrics_in_range(s3_server, pipeline_run):
    run_prefix = pipeline_run["run"]
    metrics = json.loads(s3_server.get(f"{run_prefix}/metrics.json"))
    models = metrics["models"]
    assert sorted(models) == sorted(MODELS)
    # Chosen on validation, reported on test: every figure names its split.
    assert metrics["champion_selection"]["split"] == "validation"
    assert metrics["champion"] in MODELS
    for name, figures in models.items():
        assert figures["split"] == "test", name
        assert figures["operating_point"]["threshold_source"] == "validation", name
        for key in ("accuracy", "balanced_accuracy", "melanoma_recall"):
            assert 0.0 <= figures[key] <= 1.0, (name, key, figures[key])
        assert s3_server.keys(f"{run_prefix}/models/{name}/"), f"model {name} not saved"
        rows = list(csv.reader(io.StringIO(s3_server.get(f"{run_prefix}/predictions/{name}.csv").decode())))
        assert rows[0] == ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
        assert len(rows) > 1


def test_effective_params_recorded(s3_server, pipeline_run):
    recorded = json.loads(s3_server.get(f"{pipeline_run['run']}/params.json"))
    assert recorded["params"]["batch_id"] == BATCH
    assert recorded["params"]["backbone"] == "mobilenet_0.25"


def test_report_written_and_linked(s3_server, pipeline_run):
    html = s3_server.get(f"{pipeline_run['run']}/report.html").decode()
    assert "<html" in html.lower() and "data:image/png;base64" in html
    assert "report link" in pipeline_run["log"]
