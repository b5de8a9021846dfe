"""SparkSession construction shared by every stage (the CLI and the tests)."""

from __future__ import annotations

import logging
import os
import time

from pyspark import SparkContext
from pyspark.sql import SparkSession

from molescope.core.paths import DRIVER_JAVA_OPTIONS, LOG4J_JAVA_OPTION
from molescope.core.sparkconf import (
    COMMITTER_CLASSES,
    ENV_JARS_DIR,
    S3Endpoint,
    executor_env_conf,
    s3a_conf,
    spark_conf,
)

log = logging.getLogger(__name__)

#: Arrow batches of images are large; keep them bounded so a Python worker's memory stays predictable.
ARROW_MAX_RECORDS = "256"
#: How long a job on a cluster waits for its first executor before it fails (instead of hanging).
EXECUTOR_WAIT_S = 180.0
SHUFFLE_PARTITIONS = "spark.sql.shuffle.partitions"
#: Shuffle partitions per task slot when the job does not set SHUFFLE_PARTITIONS (Spark's tuning guide: 2-3
#: tasks per core). Spark's default, 200, is sized for big tables on big clusters, and a *cached* plan keeps
#: it: adaptive execution cannot coalesce a cached plan's partitions (canChangeCachedPlanOutputPartitioning
#: is off in Spark 4.1), so every action on the stages' persisted tables ran 200 tasks. Measured: clean of 40
#: images on local[2], 124 CPU s -> 69 CPU s (docs/testing.md, "What the tests cost").
SHUFFLE_PARTITIONS_PER_SLOT = 2


class ClusterError(RuntimeError):
    """The Spark cluster cannot run this job; the message names the master and the settings to check."""


def get_spark(
    app_name: str, master: str | None = None, extra_conf: dict[str, str] | None = None
) -> SparkSession:
    """Return the active session or build one with the S3A settings from `sparkconf`.

    Under spark-submit the master, jars and committer come from the submit command (the same values);
    outside it, `MOLESCOPE_JARS_DIR` puts the S3A jars on the classpath. Without jars only local paths work,
    and the committer classes (in spark-hadoop-cloud) are left out because Spark refuses unloadable ones.
    Credentials are not passed here: S3A reads them from the process environment, and the executors get
    the driver's (`sparkconf.executor_env_conf`). On a cluster master the job waits for an executor first.
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
        **executor_env_conf(os.environ),
        **driver_logging_conf(),
        **(extra_conf or {}),
    }
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("MOLESCOPE_SPARK_LOG_LEVEL", "WARN"))
    if jars_dir:
        check_committer_classes(spark, jars_dir)
    if not spark.sparkContext.master.startswith("local"):
        await_executors(spark)
    size_shuffles(spark)
    return spark


def size_shuffles(spark: SparkSession) -> int:
    """Shuffle partitions = SHUFFLE_PARTITIONS_PER_SLOT x the job's task slots, unless the job sets them
    (spark-submit --conf, spark-defaults.conf, `extra_conf`); returns the number in force."""
    context = spark.sparkContext
    if context.getConf().contains(SHUFFLE_PARTITIONS):
        return int(spark.conf.get(SHUFFLE_PARTITIONS))
    partitions = SHUFFLE_PARTITIONS_PER_SLOT * context.defaultParallelism
    spark.conf.set(SHUFFLE_PARTITIONS, str(partitions))
    log.info(
        "%s=%d (%d per task slot; set it to override)",
        SHUFFLE_PARTITIONS,
        partitions,
        SHUFFLE_PARTITIONS_PER_SLOT,
    )
    return partitions


def driver_logging_conf() -> dict[str, str]:
    """The project's log4j2 settings for a driver JVM this process starts (`molescope <stage>` by hand, the
    tests): the same one-line Java errors as the DAG's tasks. Nothing when the JVM runs already: under
    spark-submit (which sets PYSPARK_GATEWAY_PORT) its options came from the submit command."""
    if SparkContext._active_spark_context is not None or os.environ.get("PYSPARK_GATEWAY_PORT"):
        return {}
    return {DRIVER_JAVA_OPTIONS: LOG4J_JAVA_OPTION}


def check_committer_classes(spark: SparkSession, jars_dir: str) -> None:
    """Fail at once when the driver JVM cannot load the committer classes the session names: a job started
    by hand with `spark-submit` but without the S3A jars on its classpath would otherwise fail inside its
    first read or write, where pyspark's conversion of the Java error loops instead of raising. The
    classes are looked up as resources, so the check itself never makes the JVM throw."""
    jvm = spark.sparkContext._jvm
    loader = jvm.org.apache.spark.util.Utils.getContextOrSparkClassLoader()
    for name in COMMITTER_CLASSES:
        if loader.getResource(name.replace(".", "/") + ".class") is None:
            raise ClusterError(
                f"the Spark driver cannot load {name}: start the job with the S3A jars of "
                f"{ENV_JARS_DIR}={jars_dir} on spark.driver.extraClassPath (as the DAG's operator does, "
                "from molescope.core.sparkconf.spark_conf), or unset it for local paths only"
            )


def await_executors(spark: SparkSession, timeout_s: float = EXECUTOR_WAIT_S) -> int:
    """Number of executors once at least one registered; ClusterError after `timeout_s`.

    Without this a cluster whose workers are gone, or too small for `spark.executor.memory` /
    `spark.executor.cores`, leaves the job waiting forever for resources.
    """
    context = spark.sparkContext
    tracker = context._jsc.sc().statusTracker()
    deadline = time.monotonic() + timeout_s
    while (executors := len(tracker.getExecutorInfos()) - 1) < 1:  # the driver is listed too
        if time.monotonic() > deadline:
            conf = context.getConf()
            raise ClusterError(
                f"no Spark executor started within {timeout_s:.0f}s on {context.master}: no live worker "
                f"offers spark.executor.memory={conf.get('spark.executor.memory', '1g')} and "
                f"spark.executor.cores={conf.get('spark.executor.cores', '1')} (see the master UI's workers)"
            )
        time.sleep(1)
    log.info("%d executor(s) on %s", executors, context.master)
    return executors
