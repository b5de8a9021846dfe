"""DagBag integrity: the DAG files import cleanly, fast, without heavy modules, with the expected shape."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path

from tests.dags.conftest import DAGS, PIPELINE, REPO

HEAVY_MODULES = ("tensorflow", "keras", "pyspark", "pandas", "numpy", "boto3")
#: A DAG file that takes longer than this to parse slows every scheduler loop.
MAX_PARSE_S = 5.0


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_pipeline_dag_present_with_hygiene(dagbag):
    dag = dagbag.dags[PIPELINE]
    assert dag.doc_md and "clean" in dag.doc_md
    assert set(dag.tags) >= {"molescope", "spark"}
    assert dag.catchup is False
    assert dag.max_active_runs == 1


STAGES = ["clean", "featurize", "upsample", "train", "report"]


def test_pipeline_stage_order(dagbag):
    dag = dagbag.dags[PIPELINE]
    assert sorted(dag.task_ids) == sorted([*STAGES, "record_params"])
    for upstream, downstream in itertools.pairwise(STAGES):
        assert upstream in dag.get_task(downstream).upstream_task_ids
    assert dag.get_task("upsample").upstream_task_ids == {"featurize", "record_params"}


def spark_tasks(dagbag):
    return [dagbag.dags[PIPELINE].get_task(stage) for stage in STAGES]


def test_every_task_has_retries_and_doc(dagbag):
    for task in dagbag.dags[PIPELINE].tasks:
        assert task.retries >= 1, task.task_id
        assert task.doc_md, task.task_id


def test_spark_tasks_have_timeout_and_pool(dagbag):
    for task in spark_tasks(dagbag):
        assert task.retries >= 1, task.task_id
        assert task.execution_timeout is not None, task.task_id
        assert task.pool == "spark", task.task_id
        assert task.doc_md, task.task_id


def test_stage_tasks_submit_the_package_entry_point(dagbag):
    for task in spark_tasks(dagbag):
        assert task.application.endswith("molescope/spark_entry.py")
        assert Path(task.application).exists()
        assert task.application_args[0] == task.task_id
        rendered = " ".join(task.application_args)
        assert "secret" not in rendered.lower() and "AWS_" not in rendered


def test_dag_files_import_no_heavy_modules():
    """Parse the DAG folder in a fresh interpreter and list which heavy modules got imported."""
    code = (
        "import sys, runpy, glob; sys.path.insert(0, {!r}); "
        "[runpy.run_path(p) for p in glob.glob({!r})]; "
        "print(','.join(m for m in {!r} if m in sys.modules))"
    ).format(str(REPO / "plugins"), str(DAGS / "*.py"), HEAVY_MODULES)
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    assert out.stdout.strip() == "", f"DAG parse imported heavy modules: {out.stdout.strip()}"
    assert elapsed < MAX_PARSE_S * 4, f"DAG files took {elapsed:.1f}s to import in a fresh interpreter"
