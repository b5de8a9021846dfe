"""One factory for every Spark stage task, so shared settings are written once.

Shared settings: the `spark` pool (one slot: a 2-core machine runs one Spark job at a time), retries with
exponential back-off (a retry helps with transient S3 / JVM start-up failures; the stages are idempotent:
each rewrites only its own batch's partitions or its run's prefix), execution timeouts sized from the
benchmarks (`molescope.core.registry.STAGE_TIMEOUTS`), OpenLineage parent-job/transport injection when the
OpenLineage provider is installed, and the stage's `doc_md`.
"""

from __future__ import annotations

import importlib.util
from datetime import timedelta
from typing import Any

from molescope.core.paths import DRIVER_JAVA_OPTIONS, LOG4J_JAVA_OPTION, SPARK_APPLICATION
from molescope.core.registry import DEFAULT_STAGE_TIMEOUT, SPARK_CONN_ID, STAGE_TIMEOUTS
from molescope_airflow.operators import MolescopeSparkSubmitOperator

#: The spark-submit application, inside the installed package (so it resolves the same way on a laptop,
#: in the Docker images and on a cluster): the same entry as the `molescope` console command.
APPLICATION = str(SPARK_APPLICATION)
#: One pool slot per Spark job: a 2-core machine runs one Spark job at a time.
SPARK_POOL = "spark"

#: Driver/executor sizes for local mode; the cluster stack overrides them through the connection/env.
DEFAULT_CONF: dict[str, str] = {
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.ui.showConsoleProgress": "false",
    DRIVER_JAVA_OPTIONS: LOG4J_JAVA_OPTION,
}

#: Retries of a Spark stage: 30 s, then ~60 s (exponential back-off), at most 5 min apart.
RETRIES = 2
RETRY_DELAY = timedelta(seconds=30)
MAX_RETRY_DELAY = timedelta(minutes=5)


def openlineage_available() -> bool:
    """Whether the OpenLineage provider is installed (without importing it: DAG parsing stays light)."""
    try:
        return importlib.util.find_spec("airflow.providers.openlineage") is not None
    except (ImportError, ValueError):
        return False


def spark_stage(
    stage: str,
    application_args: list[str],
    *,
    batch_id: str,
    doc_md: str,
    execution_timeout: timedelta | None = None,
    conf: dict[str, str] | None = None,
    driver_memory: str = "4g",
    retries: int = RETRIES,
    **kwargs: Any,
) -> MolescopeSparkSubmitOperator:
    """A task running `molescope <stage> <application_args>` through spark-submit.

    `application_args` are templated (run-specific S3 URIs); credentials never go into them.
    """
    lineage = openlineage_available()
    return MolescopeSparkSubmitOperator(
        task_id=stage,
        stage=stage,
        batch_id=batch_id,
        application=APPLICATION,
        application_args=[stage, *application_args],
        name=f"molescope-{stage}",
        conn_id=SPARK_CONN_ID,
        conf={**DEFAULT_CONF, **(conf or {})},
        driver_memory=driver_memory,
        pool=SPARK_POOL,
        retries=retries,
        retry_delay=RETRY_DELAY,
        retry_exponential_backoff=True,
        max_retry_delay=MAX_RETRY_DELAY,
        execution_timeout=execution_timeout or STAGE_TIMEOUTS.get(stage, DEFAULT_STAGE_TIMEOUT),
        doc_md=doc_md,
        verbose=False,
        # The Spark job's OpenLineage events get this task as parent (and the same transport) when the
        # openlineage provider is installed; without it the flags stay off (no warning per task).
        openlineage_inject_parent_job_info=kwargs.pop("openlineage_inject_parent_job_info", lineage),
        openlineage_inject_transport_info=kwargs.pop("openlineage_inject_transport_info", lineage),
        **kwargs,
    )
