"""The cost table each test session prints (tests/costs.py): what counts as a start, whose CPU is charged."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests import costs

SPARK_SUBMIT_JVM = [
    "/usr/lib/jvm/java-17-openjdk-amd64/bin/java",
    "-cp",
    "/work/.jars/hadoop-aws-3.4.2.jar:/venv/lib/python3.11/site-packages/pyspark/jars/*",
    "-Xmx2g",
    "org.apache.spark.deploy.SparkSubmit",
    "--master",
    "local[2]",
    "jobs/molescope/cli/spark_entry.py",
]
SPARK_WORKER_JVM = [*SPARK_SUBMIT_JVM[:4], "org.apache.spark.deploy.worker.Worker", "spark://127.0.0.1:7077"]
BUSY_S = 1.5
BUSY_LOOP = f"import time\nend = time.process_time() + {BUSY_S}\nwhile time.process_time() < end: pass"


@pytest.mark.parametrize(
    ("cmdline", "kinds"),
    [
        (SPARK_SUBMIT_JVM, ["jvm", "spark-submit"]),
        (SPARK_WORKER_JVM, ["jvm"]),
        (["/venv/bin/python", "/venv/bin/airflow", "scheduler"], ["airflow"]),
        (["/venv/bin/python", "/venv/bin/airflow", "celery", "worker", "-c", "2"], ["airflow"]),
        (["/venv/bin/airflow", "api-server", "--port", "28080"], ["airflow"]),
        (["/venv/bin/python", "/venv/bin/airflow", "db", "migrate"], []),
        (["/venv/bin/python", "-m", "molescope", "clean", "--input", "s3a://b/x"], []),
        ([], []),
    ],
)
def test_a_start_is_a_jvm_a_spark_submit_or_an_airflow_component(cmdline, kinds):
    assert costs.kinds_of(cmdline) == kinds


def _busy_child(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", BUSY_LOOP], env=env)


def test_the_cpu_of_the_sessions_processes_is_charged_and_no_one_elses():
    tag = f"test-{os.getpid()}-{time.monotonic_ns()}"
    sampler = costs.Sampler(tag, enabled=False)  # sampled by hand below
    charged = costs.Cost()
    sampler.charge([charged])
    ours = _busy_child({**os.environ, costs.TAG_VARIABLE: tag})
    theirs = _busy_child({**os.environ, costs.TAG_VARIABLE: "another session"})
    # Seen alive first (a process is known by what it inherited), then its CPU after it worked.
    sampler.sample()
    for proc in (ours, theirs):
        while proc.poll() is None:
            sampler.sample()
            time.sleep(0.05)
    # Charged up to the last sample before it exited, and only the tagged child (pytest's own CPU aside).
    assert BUSY_S * 0.5 < charged.cpu_s < BUSY_S * 1.5
    assert charged.starts == {}  # a python process is no JVM and no Airflow component
