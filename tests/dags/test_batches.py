"""Batch naming/selection and the batch sensor's skip-or-defer decision (no S3, no Airflow DB)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest


@pytest.fixture(scope="module")
def batches(dagbag):
    from molescope_airflow import batches

    return batches


AVAILABLE = ["2026-11-19", "2026-11-21", "2026-11-20", "ham10000", "2026-12-01"]


def test_batch_of(batches):
    assert batches.batch_of(None, "2026-11-25") == "2026-11-25"
    assert batches.batch_of("", "2026-11-25") == "2026-11-25"
    assert batches.batch_of("ham10000", None) == "ham10000"
    with pytest.raises(batches.BatchSelectionError, match="no batch to ingest"):
        batches.batch_of(None, None)
    with pytest.raises(batches.BatchSelectionError, match="invalid batch id"):
        batches.batch_of("../x", None)


def test_up_to_batch_is_chronological_and_inclusive(batches):
    assert batches.select_batches(AVAILABLE, "2026-11-20") == ["2026-11-19", "2026-11-20"]
    # The run's own batch is always in, even before its summary is listed.
    assert batches.select_batches([], "2026-11-22") == ["2026-11-22"]


def test_other_modes(batches):
    assert batches.select_batches(AVAILABLE, "2026-11-20", "this_batch") == ["2026-11-20"]
    assert batches.select_batches(AVAILABLE, "2026-11-20", "all") == [
        "2026-11-19",
        "2026-11-20",
        "2026-11-21",
        "2026-12-01",
        "ham10000",
    ]
    chosen = batches.select_batches(AVAILABLE, "2026-11-21", "range", "2026-11-20", "2026-12-31")
    assert chosen == ["2026-11-20", "2026-11-21", "2026-12-01"]
    with pytest.raises(batches.BatchSelectionError, match="after"):
        batches.select_batches(AVAILABLE, "2026-11-21", "range", "2026-12-31", "2026-11-01")
    with pytest.raises(batches.BatchSelectionError, match="unknown"):
        batches.select_batches(AVAILABLE, "2026-11-21", "some")


@pytest.fixture
def sensor(dagbag):
    from molescope_airflow.sensors import BatchSensor

    return BatchSensor(
        task_id="wait",
        batch_id="2026-11-20",
        bucket_key="s3://molescope/landing/2026-11-20/*.csv",
        wait_hours=2,
        poke_interval=60,
    )


def context_for(day: datetime) -> dict:
    return {"data_interval_end": day + timedelta(days=1), "dag_run": None}


def test_sensor_succeeds_when_landed(sensor, monkeypatch):
    monkeypatch.setattr(type(sensor), "poke", lambda self, context: True)
    assert sensor.execute(context_for(datetime(2026, 11, 20, tzinfo=UTC))) is None


def test_sensor_skips_a_past_day_without_batch(sensor, monkeypatch):
    from airflow.sdk.exceptions import AirflowSkipException

    monkeypatch.setattr(type(sensor), "poke", lambda self, context: False)
    with pytest.raises(AirflowSkipException, match="2026-11-20"):
        sensor.execute(context_for(datetime(2026, 11, 20, tzinfo=UTC)))


def test_sensor_defers_while_the_window_is_open(sensor, monkeypatch):
    from airflow.sdk.exceptions import TaskDeferred

    monkeypatch.setattr(type(sensor), "poke", lambda self, context: False)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context_for(today))
    assert timedelta(hours=1) < deferred.value.timeout <= timedelta(hours=26)
    assert deferred.value.trigger.bucket_key == "landing/2026-11-20/*.csv"
    assert deferred.value.trigger.wildcard_match is True


def test_manual_run_waits_from_its_trigger_time(sensor, monkeypatch):
    """Airflow infers a past data interval for a manual run; the wait still starts when it was triggered."""
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowSkipException, TaskDeferred

    monkeypatch.setattr(type(sensor), "poke", lambda self, context: False)
    now = datetime.now(UTC)
    past_interval = datetime(2026, 11, 20, tzinfo=UTC) + timedelta(days=1)
    manual = {
        "data_interval_end": past_interval,
        "dag_run": SimpleNamespace(run_type="manual", run_after=now),
    }
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(manual)
    assert timedelta(hours=1) < deferred.value.timeout <= timedelta(hours=2)
    backfill = {**manual, "dag_run": SimpleNamespace(run_type="backfill", run_after=past_interval)}
    with pytest.raises(AirflowSkipException):
        sensor.execute(backfill)
