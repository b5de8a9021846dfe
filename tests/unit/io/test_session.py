"""session: a job started by real `spark-submit` without the S3A jars on its classpath, while the settings
name the S3A committer, stops at once with one line naming the class and the setting (it used to hang in
pyspark's exception conversion at its first read). The session of the unit tests themselves starts with the
jars (`MOLESCOPE_JARS_DIR`), so every other unit test passes through the same check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from molescope.core.paths import SPARK_APPLICATION
from molescope.core.sparkconf import COMMITTER_CLASSES, ENV_JARS_DIR
from molescope.io.session import SHUFFLE_PARTITIONS, size_shuffles

REPO = Path(__file__).resolve().parents[3]
ENTRY = SPARK_APPLICATION
#: Spark's JVM start and the error; far longer than it needs, far shorter than the old hang.
TIMEOUT_S = 300


@pytest.fixture
def jars_dir() -> str:
    """The S3A jars folder of the test environment (scripts/env.sh sets it)."""
    jars = os.environ.get(ENV_JARS_DIR)
    if not jars:
        pytest.fail(f"{ENV_JARS_DIR} is not set: run the tests through make (scripts/env.sh)")
    return jars


def test_the_committer_classes_load_in_the_test_session(spark, jars_dir):
    jvm = spark.sparkContext._jvm
    loader = jvm.org.apache.spark.util.Utils.getContextOrSparkClassLoader()
    for name in COMMITTER_CLASSES:
        assert jvm.java.lang.Class.forName(name, False, loader).getName() == name
        assert loader.getResource(name.replace(".", "/") + ".class") is not None


def test_spark_submit_without_the_jars_fails_at_once_in_one_line(tmp_path, jars_dir):
    # The command a user types by hand: no --conf with the jars, unlike the DAG's operator.
    command = [
        str(Path(sys.executable).with_name("spark-submit")),  # the venv's, from pyspark
        "--master",
        "local[1]",
        str(ENTRY),
        "report",
        "--run",
        str(tmp_path / "run"),
    ]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    output = done.stdout + done.stderr  # spark-submit's PythonRunner passes the driver's stderr to stdout
    assert done.returncode == 1, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("molescope report: error:")]
    assert len(errors) == 1, output[-3000:]
    assert f"cannot load {COMMITTER_CLASSES[0]}" in errors[0]
    assert f"{ENV_JARS_DIR}={jars_dir}" in errors[0] and "spark.driver.extraClassPath" in errors[0]


def test_a_session_keeps_the_shuffle_partitions_it_was_given(spark):
    assert spark.sparkContext.getConf().get(SHUFFLE_PARTITIONS) == "4"  # tests/conftest.py's extra_conf
    assert size_shuffles(spark) == 4 and spark.conf.get(SHUFFLE_PARTITIONS) == "4"


@pytest.mark.parametrize(("conf", "expected"), [([], "6"), (["--conf", f"{SHUFFLE_PARTITIONS}=5"], "5")])
def test_shuffle_partitions_follow_the_task_slots_unless_the_job_sets_them(tmp_path, conf, expected):
    """Real spark-submit on local[3]: 2 per slot by default; a `--conf` (or spark-defaults.conf) wins."""
    script = tmp_path / "job.py"
    script.write_text(
        "from molescope.io.session import get_spark\n"
        f"print('partitions=' + get_spark('t').conf.get({SHUFFLE_PARTITIONS!r}))\n"
    )
    command = [
        str(Path(sys.executable).with_name("spark-submit")),
        "--master",
        "local[3]",
        *conf,
        str(script),
    ]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    env.pop(ENV_JARS_DIR)  # local paths only: no S3A jars on this submit's classpath
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"partitions={expected}" in done.stdout.splitlines(), done.stdout[-2000:]
