"""DagBag integrity: the DAG files import cleanly, fast, without heavy modules, with the expected shape."""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
from pathlib import Path

from tests.dags.conftest import DAGS, PIPELINE, REPO

HEAVY_MODULES = ("tensorflow", "keras", "pyspark", "pandas", "numpy", "boto3")
#: A DAG file that takes longer than this to parse slows every scheduler loop.
MAX_PARSE_S = 5.0


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_pipeline_dag_present_with_hygiene(dagbag):
    dag = dagbag.dags[PIPELINE]
    assert dag.doc_md and "clean" in dag.doc_md and "backfill" in dag.doc_md
    assert set(dag.tags) >= {"molescope", "spark"}
    assert dag.catchup is False
    assert dag.max_active_runs <= 2


def test_pipeline_is_scheduled_daily(dagbag):
    dag = dagbag.dags[PIPELINE]
    from airflow.timetables.interval import CronDataIntervalTimetable

    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    assert dag.timetable._expression in ("@daily", "0 0 * * *"), dag.timetable._expression
    assert dag.start_date is not None


STAGES = ["clean", "featurize", "upsample", "train", "report"]


def test_pipeline_stage_order(dagbag):
    dag = dagbag.dags[PIPELINE]
    assert sorted(dag.task_ids) == sorted([*STAGES, "wait_for_batch", "record_params", "training_batches"])
    chain = ["wait_for_batch", "clean", "training_batches", "featurize", "upsample", "train", "report"]
    for upstream, downstream in itertools.pairwise(chain):
        assert upstream in dag.get_task(downstream).upstream_task_ids, (upstream, downstream)
    assert dag.get_task("upsample").upstream_task_ids == {"featurize", "record_params"}
    assert dag.get_task("record_params").upstream_task_ids == {"wait_for_batch"}


def test_batch_sensor_is_deferrable_and_skips(dagbag):
    sensor = dagbag.dags[PIPELINE].get_task("wait_for_batch")
    assert sensor.deferrable is True
    assert sensor.soft_fail is True
    assert sensor.aws_conn_id == "molescope_s3"
    assert sensor.bucket_key.endswith("/*.csv") and "landing/" in sensor.bucket_key
    assert "batch_of(params.batch_id, ds" in sensor.bucket_key


def test_stage_outputs_are_assets(dagbag):
    dag = dagbag.dags[PIPELINE]
    names = {t.task_id: {a.name for a in t.outlets} for t in dag.tasks}
    assert names["clean"] == {"molescope_curated"}
    assert names["featurize"] == {"molescope_features"}
    assert names["train"] == {"molescope_models", "molescope_champion"}


def test_failure_messages_name_stage_and_batch(dagbag):
    for task in spark_tasks(dagbag):
        assert task.stage == task.task_id
        assert "batch_of(" in task.batch_id


def test_training_sees_the_selected_batches(dagbag):
    dag = dagbag.dags[PIPELINE]
    for stage in ("upsample", "train"):
        args = dag.get_task(stage).application_args
        assert args[args.index("--batches") + 1] == "{{ ti.xcom_pull(task_ids='training_batches') }}"
    featurize = dag.get_task("featurize").application_args
    assert "--recompute" in featurize  # a re-run of a date rewrites that date's partition


def test_timeouts_sized_and_backoff(dagbag):
    from datetime import timedelta

    for task in spark_tasks(dagbag):
        assert task.retry_exponential_backoff
        assert timedelta(minutes=10) <= task.execution_timeout <= timedelta(hours=3), task.task_id
        assert task.max_retry_delay is not None


def spark_tasks(dagbag):
    return [dagbag.dags[PIPELINE].get_task(stage) for stage in STAGES]


def test_every_task_has_retries_and_doc(dagbag):
    for task in dagbag.dags[PIPELINE].tasks:
        assert task.retries >= 1, task.task_id
        assert task.doc_md, task.task_id


def test_spark_jobs_never_run_side_by_side(dagbag):
    """Every Spark stage takes a slot of the `spark` pool, which the set-up creates with one slot."""
    assert {task.pool for task in spark_tasks(dagbag)} == {"spark"}
    assert all(task.pool_slots == 1 for task in spark_tasks(dagbag))
    init = (REPO / "scripts" / "airflow_init.sh").read_text()
    assert "pools set spark 1" in init


def test_spark_tasks_have_timeout_and_pool(dagbag):
    for task in spark_tasks(dagbag):
        assert task.retries >= 1, task.task_id
        assert task.execution_timeout is not None, task.task_id
        assert task.pool == "spark", task.task_id
        assert task.doc_md, task.task_id


def test_stage_tasks_submit_the_package_entry_point(dagbag):
    for task in spark_tasks(dagbag):
        assert task.application.endswith("molescope/cli/spark_entry.py")
        assert Path(task.application).exists()
        assert task.application_args[0] == task.task_id
        rendered = " ".join(task.application_args)
        assert "secret" not in rendered.lower() and "AWS_" not in rendered


def test_dag_files_import_no_heavy_modules():
    """Parse the DAG folder in a fresh interpreter and list which heavy modules got imported.

    The parse is timed in CPU seconds after Airflow's own SDK is imported: what the DAG files add to a
    scheduler loop, independent of how busy the machine is (wall time under load says nothing about it)."""
    code = (
        "import sys, runpy, glob, time; sys.path.insert(0, {!r}); import airflow.sdk; "
        "t = time.process_time(); [runpy.run_path(p) for p in glob.glob({!r})]; "
        "print(time.process_time() - t); "
        "print(','.join(m for m in {!r} if m in sys.modules))"
    ).format(str(REPO / "plugins"), str(DAGS / "*.py"), HEAVY_MODULES)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    cpu_s, heavy = out.stdout.splitlines()
    assert heavy == "", f"DAG parse imported heavy modules: {heavy}"
    assert float(cpu_s) < MAX_PARSE_S, f"the DAG files took {float(cpu_s):.1f} CPU s to parse"


def test_dag_files_import_only_the_core_layer_and_the_plugins():
    """The DAG files are no package, so import-linter's contracts do not see them: their molescope imports
    must come from molescope.core (stdlib only) or the plugins, like the plugins' own (make lint)."""
    allowed = ("molescope.core", "molescope_airflow")
    found = {}
    for path in sorted(DAGS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
                if node.module == "molescope":
                    names = [f"molescope.{a.name}" for a in node.names]
            for name in names:
                if name.split(".")[0] in ("molescope", "molescope_airflow"):
                    found.setdefault(path.name, set()).add(name)
    assert found, "no DAG file imports molescope: the check would pass vacuously"
    outside = {f: sorted(n for n in names if not n.startswith(allowed)) for f, names in found.items()}
    assert not any(outside.values()), f"DAG files import below the core layer: {outside}"
