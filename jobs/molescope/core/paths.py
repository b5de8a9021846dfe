"""Where the package's own files are: the spark-submit application file and the driver's log4j2 settings.

One place for the DAG factory, the tests and the benchmarks, so the application file can move without a
second copy of its path.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
#: What Airflow's SparkSubmitOperator (and a hand-run spark-submit) submits; calls `molescope.cli.app.main`.
SPARK_APPLICATION = PACKAGE_DIR / "cli" / "spark_entry.py"
#: The driver's log4j2 configuration (warnings only, a Java exception on one line; see the file).
LOG4J_CONFIG = PACKAGE_DIR / "log4j2.properties"
#: `spark.driver.extraJavaOptions` that makes the driver JVM use it (the DAG's tasks and `molescope <stage>`).
LOG4J_JAVA_OPTION = f"-Dlog4j.configurationFile=file:{LOG4J_CONFIG}"
#: The driver option it goes in.
DRIVER_JAVA_OPTIONS = "spark.driver.extraJavaOptions"
