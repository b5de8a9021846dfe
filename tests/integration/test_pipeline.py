"""End to end: a synthetic batch with defects lands in a real S3 server and a live Airflow runs every stage
through real spark-submit (the late run of the live scenario, tests/integration/scenario.py); the
assertions read what the stages wrote to S3."""

from __future__ import annotations

import csv
import io

import pytest

from tests.integration.scenario import (
    ISIC_HEADER,
    LATE_RUN,
    PIPELINE_BATCH,
    PIPELINE_MODELS,
    metadata_rows,
    run_prefix_of,
)

pytestmark = pytest.mark.integration

BATCH = PIPELINE_BATCH


@pytest.fixture(scope="module")
def pipeline_run(s3_server, scenario, daily_runs) -> dict:
    """The run's prefix, the rows of the landed metadata CSV and the report task's log."""
    state, tasks = daily_runs["late"]
    assert state == "success", tasks
    return {
        "run": run_prefix_of(s3_server, LATE_RUN),
        "rows_in": metadata_rows(scenario.batches["pipeline"]),
        "log": daily_runs["late_report_log"],
    }


def test_every_input_row_is_curated_or_quarantined(s3_server, pipeline_run):
    curated = s3_server.parquet_rows(f"curated/images/batch_id={BATCH}/")
    quarantined = s3_server.parquet_rows(f"curated/quarantine/batch_id={BATCH}/")
    summary = s3_server.json(f"curated/summaries/{BATCH}.json")
    assert curated > 0 and quarantined > 0  # the synthetic batch carries defects and rule violations
    assert summary["rows_in"] >= pipeline_run["rows_in"]
    assert summary["rows_in"] == curated + quarantined


def test_features_cover_every_curated_image(s3_server, pipeline_run):
    curated = s3_server.parquet_rows(f"curated/images/batch_id={BATCH}/")
    feature_keys = [k for k in s3_server.keys("features/") if f"batch_id={BATCH}/" in k]
    assert feature_keys, "no feature files written"
    prefix = feature_keys[0].split(f"batch_id={BATCH}/")[0]
    assert prefix.startswith("features/mobilenet_0.25/")
    assert s3_server.parquet_rows(f"{prefix}batch_id={BATCH}/") == curated


def test_training_set_contains_only_train_rows_and_is_balanced(s3_server, pipeline_run):
    summary = s3_server.json(f"{pipeline_run['run']}/upsample_summary.json")
    after = summary["after"]
    assert len(set(after.values())) == 1, f"oversample should equalise class counts: {after}"
    assert s3_server.parquet_rows(f"{pipeline_run['run']}/train_set/") == sum(after.values())


def test_models_saved_and_metrics_in_range(s3_server, pipeline_run):
    run_prefix = pipeline_run["run"]
    metrics = s3_server.json(f"{run_prefix}/metrics.json")
    models = metrics["models"]
    assert sorted(models) == sorted(PIPELINE_MODELS)
    # Chosen on validation, reported on test: every figure names its split.
    assert metrics["champion_selection"]["split"] == "validation"
    assert metrics["champion"] in PIPELINE_MODELS
    for name, figures in models.items():
        assert figures["split"] == "test", name
        assert figures["operating_point"]["threshold_source"] == "validation", name
        for key in ("accuracy", "balanced_accuracy", "melanoma_recall"):
            assert 0.0 <= figures[key] <= 1.0, (name, key, figures[key])
        assert s3_server.keys(f"{run_prefix}/models/{name}/"), f"model {name} not saved"
        rows = list(csv.reader(io.StringIO(s3_server.get(f"{run_prefix}/predictions/{name}.csv").decode())))
        assert rows[0] == ISIC_HEADER
        assert len(rows) > 1


def test_effective_params_recorded(s3_server, pipeline_run):
    recorded = s3_server.json(f"{pipeline_run['run']}/params.json")
    assert recorded["params"]["batch_id"] == BATCH
    assert recorded["params"]["backbone"] == "mobilenet_0.25"


def test_report_written_and_linked(s3_server, pipeline_run):
    html = s3_server.get(f"{pipeline_run['run']}/report.html").decode()
    assert "<html" in html.lower() and "data:image/png;base64" in html
    assert "report link" in pipeline_run["log"]
