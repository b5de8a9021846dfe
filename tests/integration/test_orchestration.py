"""Orchestration end to end, read from the live scenario (tests/integration/scenario.py): daily batches
through a real scheduler, a run that waits deferred on the triggerer for its batch, a backfill with a
missing day and an idempotent re-run, and scoring triggered by each new champion.

- `manual__<DAY1>` and `manual__<DAY2>` (logical dates) each ingest landing/<logical date>/; the second
  run's training sees both batches.
- The late run for PIPELINE_BATCH defers on the triggerer (its batch is not there) and resumes when it lands.
- One backfill DAY0..DAY1 with `reprocess_behavior=completed`: DAY0 has no batch (its run is skipped, not
  failed); DAY1's run is cleared and re-run: it rewrites DAY1's partitions and its own run prefix only.
- Each `train` announces its champion (asset event); the scoring DAG runs on it and scores the batch waiting
  in scoring/ with exactly that model and the run's weights file.
"""

from __future__ import annotations

import re

import pytest

from tests.integration.scenario import (
    DAY0,
    DAY1,
    DAY2,
    LATE_WAIT_HOURS,
    PIPELINE_BATCH,
    WEIGHTS_KEY,
    run_prefix_for,
)

pytestmark = pytest.mark.integration


def test_each_run_ingests_its_logical_dates_batch(s3_server, daily_runs):
    for day in (DAY1, DAY2):
        assert s3_server.parquet_rows(f"curated/images/batch_id={day}/") > 0, day
        recorded = s3_server.json(f"{daily_runs['prefixes'][day]}/params.json")
        assert recorded["params"]["batch"] == day
        assert recorded["params"]["batch_id"] is None  # the logical date named the batch


def test_second_run_trains_on_both_batches(s3_server, daily_runs):
    prefixes = daily_runs["prefixes"]
    first = s3_server.json(f"{prefixes[DAY1]}/upsample_summary.json")
    second = s3_server.json(f"{prefixes[DAY2]}/upsample_summary.json")
    assert first["batches"] == [DAY1]
    assert second["batches"] == [DAY1, DAY2]
    assert set(s3_server.parquet_column(f"{prefixes[DAY2]}/train_set/", "batch_id")) == {DAY1, DAY2}
    sidecar_1 = s3_server.json(f"{prefixes[DAY1]}/models/lr/molescope_model.json")
    sidecar_2 = s3_server.json(f"{prefixes[DAY2]}/models/lr/molescope_model.json")
    assert sidecar_2["training_set"]["rows"] > sidecar_1["training_set"]["rows"]
    # Both days and nothing else (the session's other batch, PIPELINE_BATCH, is not a date: not "up to").
    chosen = re.search(r"training on 2 of \d+ curated batches: (\[.*\])", daily_runs["training_log"][DAY2])
    assert chosen and chosen.group(1) == str([DAY1, DAY2]), daily_runs["training_log"][DAY2][-2000:]


def test_backfill_skips_the_missing_day(backfill_runs):
    _run_id, state = backfill_runs["runs"][DAY0]
    tasks = backfill_runs["tasks"][DAY0]
    assert state == "success", tasks
    assert tasks["wait_for_batch"] == "skipped"
    assert {tasks[t] for t in ("clean", "featurize", "upsample", "train", "report")} == {"skipped"}


def test_backfill_reruns_a_date_idempotently(s3_server, backfill_runs, daily_runs):
    assert backfill_runs["runs"][DAY1][1] == "success", backfill_runs["tasks"][DAY1]
    before, after = backfill_runs["before"], backfill_runs["after"]
    # DAY1's partitions were rewritten, DAY2's are exactly as they were.
    assert after[DAY1]["curated"] and after[DAY1]["curated"] != before[DAY1]["curated"]
    assert after[DAY1]["features"] and after[DAY1]["features"] != before[DAY1]["features"]
    assert after[DAY2]["curated"] == before[DAY2]["curated"]
    assert after[DAY2]["features"] == before[DAY2]["features"]
    # The re-run is the same Airflow run (same run id), so it rewrote its own run prefix and no other.
    assert after[DAY1]["run"] != before[DAY1]["run"]
    assert after[DAY2]["run"] == before[DAY2]["run"]
    day1_prefix = daily_runs["prefixes"][DAY1]
    assert run_prefix_for(s3_server, DAY1) == day1_prefix
    assert s3_server.json(f"{day1_prefix}/upsample_summary.json")["batches"] == [DAY1]
    assert s3_server.parquet_rows(f"curated/images/batch_id={DAY1}/") > 0


def test_deferred_wait_resumes_when_the_batch_lands(s3_server, daily_runs):
    assert daily_runs["late_waiting"] == "deferred"  # waiting on the triggerer, no worker slot held
    # It resumed because the batch landed, not because its wait window ended (that would skip it).
    assert daily_runs["resumed_after_s"] < LATE_WAIT_HOURS * 3600
    state, tasks = daily_runs["late"]
    assert state == "success", tasks
    assert set(tasks.values()) == {"success"}
    assert s3_server.parquet_rows(f"curated/images/batch_id={PIPELINE_BATCH}/") > 0


def test_new_champion_triggers_scoring_with_its_model(s3_server, backfill_runs):
    runs = backfill_runs["scoring_runs"]
    assert set(runs.values()) == {"success"}, runs
    assert any(run_id.startswith("asset_triggered__") for run_id in runs), sorted(runs)
    summary = s3_server.json(backfill_runs["scores"])
    assert summary["model_uri"] == f"s3a://{s3_server.bucket}/{backfill_runs['champion']}"
    # The model came from the asset event, not from a champion.json lookup, with the run's weights file.
    assert summary["champion_file"] is None
    assert summary["weights"] == f"s3a://{s3_server.bucket}/{WEIGHTS_KEY}"
    assert summary["scored"] + summary["quarantined"] == summary["rows_in"] > 0
