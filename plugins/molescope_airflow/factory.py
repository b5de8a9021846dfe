"""One factory for every Spark stage task, so shared settings are written once."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import molescope
from molescope_airflow.operators import MolescopeSparkSubmitOperator

#: The spark-submit application, inside the installed package (so it resolves the same way on a laptop,
#: in the Docker images and on a cluster): the same entry as the `molescope` console command.
APPLICATION = str(Path(molescope.__file__).resolve().parent / "spark_entry.py")
#: One pool slot per Spark job: a 2-core machine runs one Spark job at a time.
SPARK_POOL = "spark"

#: Driver/executor sizes for local mode; the cluster stack overrides them through the connection/env.
DEFAULT_CONF: dict[str, str] = {
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.ui.showConsoleProgress": "false",
}


def spark_stage(
    stage: str,
    application_args: list[str],
    *,
    batch_id: str,
    doc_md: str,
    execution_timeout: timedelta,
    conf: dict[str, str] | None = None,
    driver_memory: str = "4g",
    retries: int = 1,
    **kwargs: Any,
) -> MolescopeSparkSubmitOperator:
    """A task running `molescope <stage> <application_args>` through spark-submit.

    `application_args` are templated (run-specific S3 URIs); credentials never go into them.
    """
    return MolescopeSparkSubmitOperator(
        task_id=stage,
        stage=stage,
        batch_id=batch_id,
        application=APPLICATION,
        application_args=[stage, *application_args],
        name=f"molescope-{stage}",
        conn_id="spark_default",
        conf={**DEFAULT_CONF, **(conf or {})},
        driver_memory=driver_memory,
        pool=SPARK_POOL,
        retries=retries,
        retry_delay=timedelta(seconds=30),
        retry_exponential_backoff=True,
        execution_timeout=execution_timeout,
        doc_md=doc_md,
        verbose=False,
        **kwargs,
    )
