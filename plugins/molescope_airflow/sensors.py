"""Deferrable wait for a landed batch that skips, not fails, when the batch's day is over without it.

Built on `BaseSensorOperator` + the Amazon provider's `S3KeyTrigger` rather than subclassing `S3KeySensor`:
the provider's sensor module imports boto3 when the DAG file is parsed, this one only when the task runs.
"""

from __future__ import annotations

import fnmatch
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlparse

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowException, AirflowSkipException

from molescope.core.registry import S3_CONN_ID

#: `DagRunType.MANUAL` (a str enum), without importing airflow.utils at DAG parse.
MANUAL_RUN_TYPE = "manual"


class BatchSensor(BaseSensorOperator):
    """Wait for `bucket_key` (an `s3://bucket/landing/<batch>/*.csv` pattern) without holding a worker slot.

    The wait ends at the run's *deadline*: the end of its data interval (for a manual run: when it was
    triggered) plus `wait_hours` (templated, from the `batch_wait_hours` param). The
    sensor checks once on the worker; when the batch is there it succeeds at once, when the deadline has
    already passed (a backfill or catch-up of a day that got no batch) it skips at once, otherwise it defers
    to the triggerer (`S3KeyTrigger`) until the deadline and, with `soft_fail`, skips on timeout. Skipped:
    every downstream stage is skipped and the run succeeds — a day without a batch is not an error.
    """

    template_fields = ("bucket_key", "batch_id", "wait_hours")
    ui_color = "#d6e8c4"

    def __init__(
        self,
        *,
        bucket_key: str,
        batch_id: str,
        aws_conn_id: str = S3_CONN_ID,
        wait_hours: Any = 12,
        deferrable: bool = True,
        **kwargs: Any,
    ):
        kwargs.setdefault("soft_fail", True)
        super().__init__(**kwargs)
        self.deferrable = deferrable
        self.bucket_key = bucket_key
        self.batch_id = batch_id
        self.aws_conn_id = aws_conn_id
        self.wait_hours = wait_hours

    def _bucket_and_pattern(self) -> tuple[str, str]:
        parsed = urlparse(self.bucket_key)
        return parsed.netloc, parsed.path.lstrip("/")

    def poke(self, context: Any) -> bool:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        bucket, pattern = self._bucket_and_pattern()
        prefix = re.split(r"[\[*?]", pattern, maxsplit=1)[0]
        self.log.info("batch %r: looking for s3://%s/%s", self.batch_id, bucket, pattern)
        keys = S3Hook(aws_conn_id=self.aws_conn_id).list_keys(bucket_name=bucket, prefix=prefix) or []
        return any(fnmatch.fnmatch(key, pattern) for key in keys)

    def deadline(self, context: Any) -> datetime:
        """`wait_hours` after the end of the run's data interval, or after a manual run was triggered.

        A manual run is anchored on its trigger time (`run_after`): Airflow still gives it an inferred data
        interval (the last complete day), which would make a batch that is about to land look overdue.
        Scheduled and backfill runs have `run_after` = end of their interval, so either anchor agrees there.
        """
        dag_run = context.get("dag_run")
        run_after = getattr(dag_run, "run_after", None)
        manual = getattr(dag_run, "run_type", None) == MANUAL_RUN_TYPE
        anchor = run_after if manual and run_after else context.get("data_interval_end") or run_after
        return (anchor or datetime.now(UTC)) + timedelta(hours=float(self.wait_hours or 0))

    def execute(self, context: Any) -> None:
        if self.poke(context):
            self.log.info("batch %r: landed (%s)", self.batch_id, self.bucket_key)
            return
        remaining = (self.deadline(context) - datetime.now(UTC)).total_seconds()
        if remaining <= 0:
            raise AirflowSkipException(
                f"batch {self.batch_id!r}: nothing landed at {self.bucket_key} and its wait window is over; "
                "skipping this run's stages"
            )
        self.log.info(
            "batch %r: not landed yet; waiting up to %.0f min (every %ss)",
            self.batch_id,
            remaining / 60,
            self.poke_interval,
        )
        if not self.deferrable:
            self.timeout = remaining
            super().execute(context)
            return
        from airflow.providers.amazon.aws.triggers.s3 import S3KeyTrigger

        bucket, pattern = self._bucket_and_pattern()
        self.defer(
            timeout=timedelta(seconds=remaining),
            trigger=S3KeyTrigger(
                bucket_name=bucket,
                bucket_key=pattern,
                wildcard_match=True,
                aws_conn_id=self.aws_conn_id,
                poke_interval=float(self.poke_interval),
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> None:
        if event and event.get("status") == "error":
            raise AirflowException(f"batch {self.batch_id!r}: waiting for {self.bucket_key} failed: {event}")
        self.log.info("batch %r: landed (%s)", self.batch_id, self.bucket_key)
