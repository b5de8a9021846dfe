"""SparkSession construction shared by every stage (the CLI and the tests)."""

from __future__ import annotations

import logging
import os

from pyspark.sql import SparkSession

from molescope.sparkconf import ENV_JARS_DIR, S3Endpoint, s3a_conf, spark_conf

log = logging.getLogger(__name__)

#: Arrow batches of images are large; keep them bounded so a Python worker's memory stays predictable.
ARROW_MAX_RECORDS = "256"


def get_spark(
    app_name: str, master: str | None = None, extra_conf: dict[str, str] | None = None
) -> SparkSession:
    """Return the active session or build one with the S3A settings from `sparkconf`.

    Under spark-submit the master, jars and committer come from the submit command (the same values);
    outside it, `MOLESCOPE_JARS_DIR` puts the S3A jars on the classpath. Without jars only local paths work,
    and the committer classes (in spark-hadoop-cloud) are left out because Spark refuses unloadable ones.
    Credentials are not passed here: S3A reads them from the process environment.
    """
    endpoint = S3Endpoint.from_env()
    jars_dir = os.environ.get(ENV_JARS_DIR)
    storage_conf = spark_conf(endpoint, jars_dir) if jars_dir else s3a_conf(endpoint)
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    conf = {
        **storage_conf,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": ARROW_MAX_RECORDS,
        "spark.ui.showConsoleProgress": "false",
        **(extra_conf or {}),
    }
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("MOLESCOPE_SPARK_LOG_LEVEL", "WARN"))
    return spark
