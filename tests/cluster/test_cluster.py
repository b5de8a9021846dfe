"""The DAGs and jobs on a real multi-process cluster (`make cluster`): a Spark standalone master with two
worker JVMs, Airflow on PostgreSQL with the CeleryExecutor (Redis), SeaweedFS.

One `skin_lesion_pipeline` run through the Celery worker on 200 real HAM10000 images (MobileNet-0.25, LR),
with Spark worker 2 killed while featurize writes (and restarted, as a supervisor would); its champion
triggers `skin_lesion_scoring` on 40 other images. The same batch through `local[2]` (featurize, score) is the
reference the cluster's outputs must equal. Spark's history server (REST) tells which executor ran what.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import time
import urllib.error

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.cluster.conftest import alive, get_json, ham10000_rows, write_batch
from tests.conftest import MOBILENET_025_WEIGHTS, require
from tests.helpers import free_port

pytestmark = pytest.mark.cluster

PIPELINE, SCORING = "skin_lesion_pipeline", "skin_lesion_scoring"
BATCH, SCORE_BATCH = "cluster-200", "clinic-40"
IMAGES, SCORE_IMAGES = 200, 40
RUN_ID = "cluster-test"
WEIGHTS_KEY = "models/mobilenet_0.25.h5"
BACKBONE = "mobilenet_0.25"
#: Generous: the machine is shared; the run takes ~3 min when it is quiet.
RUN_TIMEOUT_S = 2400
POLL_S = 0.5
#: Feature values of the cluster and the local run may differ by float32 rounding only.
FEATURES_ATOL = 1e-5


def parquet_table(cluster, prefix: str):
    keys = sorted(k for k in cluster.keys(prefix) if k.endswith(".parquet"))
    assert keys, f"no Parquet files under {prefix}"
    return pa.concat_tables(pq.read_table(io.BytesIO(cluster.get(k))) for k in keys)


def features_prefix(cluster, root: str) -> str:
    """`<root>/<backbone>/<weights dir>/batch_id=<BATCH>/` as written by featurize."""
    found = {
        k.split(f"batch_id={BATCH}/")[0]
        for k in cluster.keys(f"{root}/{BACKBONE}/")
        if f"batch_id={BATCH}/" in k
    }
    assert len(found) == 1, f"expected one features table for {BATCH} under {root}: {found}"
    return f"{found.pop()}batch_id={BATCH}/"


def features_by_image(cluster, root: str) -> dict[str, np.ndarray]:
    table = parquet_table(cluster, features_prefix(cluster, root)).to_pydict()
    ids = table["image_id"]
    assert len(ids) == len(set(ids)), f"duplicate image ids in {root}"
    return {
        image: np.asarray(vector, dtype=np.float32)
        for image, vector in zip(ids, table["features"], strict=True)
    }


def wait_until(what: str, check, timeout_s: float, every_s: float = 2.0):
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s:.0f}s")
        time.sleep(every_s)
    return found


def run_state(cluster, dag_id: str, run_id: str) -> str | None:
    rows = cluster.sql("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", dag_id, run_id)
    return rows[0][0] if rows else None


def task_states(cluster, dag_id: str, run_id: str) -> dict[str, str | None]:
    rows = cluster.sql(
        "SELECT task_id, state FROM task_instance WHERE dag_id = %s AND run_id = %s", dag_id, run_id
    )
    return dict(rows)


# --- the run ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def landed(cluster, tmp_path_factory) -> dict:
    weights = require(MOBILENET_025_WEIGHTS)
    root = tmp_path_factory.mktemp("cluster-batches")
    rows = ham10000_rows(IMAGES)
    scored = ham10000_rows(SCORE_IMAGES, exclude={row["image_id"] for row in rows})
    warehouse = f"s3a://{cluster.bucket}"
    cluster.run(
        "molescope",
        "land",
        "--source",
        str(write_batch(root / BATCH, rows)),
        "--dest",
        f"{warehouse}/landing/{BATCH}",
    )
    cluster.run(
        "molescope",
        "land",
        "--source",
        str(write_batch(root / SCORE_BATCH, scored)),
        "--dest",
        f"{warehouse}/scoring/{SCORE_BATCH}",
    )
    cluster.s3().upload_file(str(weights), cluster.bucket, WEIGHTS_KEY)
    return {"rows": rows, "scored": scored, "weights": f"{warehouse}/{WEIGHTS_KEY}"}


def driver_json(cluster, path: str):
    """The running driver's REST API (spark.ui.port of the test cluster); None while no driver serves it."""
    try:
        return get_json(f"http://127.0.0.1:{cluster.driver_ui_port}/api/v1{path}", timeout=5)
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return None  # no driver yet, or one still starting ("Spark is starting up", not JSON)


def executors_on_worker(cluster, index: int, app_id: str) -> set[str]:
    """Executor ids the worker runs for `app_id` (the worker's own JSON)."""
    try:
        state = get_json(f"{cluster.worker_ui(index)}/json/", timeout=5)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return set()
    return {str(e["id"]) for e in state.get("executors", []) if e.get("appid") == app_id}


def featurize_write_in_flight(cluster) -> dict | None:
    """App, job and worker-2 executor while featurize's inference (MapInPandas write) runs a task there."""
    for app in driver_json(cluster, "/applications") or []:
        if app["name"] != "molescope-featurize":
            continue
        base = f"/applications/{app['id']}"
        queries = driver_json(cluster, f"{base}/sql?details=false&planDescription=true") or []
        jobs = [
            job
            for query in queries
            if query["status"] == "RUNNING" and "MapInPandas" in query.get("planDescription", "")
            for job in query.get("runningJobIds", [])
        ]
        victims = executors_on_worker(cluster, 2, app["id"])
        executors = driver_json(cluster, f"{base}/executors") or []
        busy = [e["id"] for e in executors if e["id"] in victims and e["activeTasks"] > 0]
        if jobs and busy:
            return {"app": app["id"], "job": jobs[0], "executor": busy[0]}
    return None


def trigger_pipeline(cluster, weights: str) -> float:
    """Unpause both DAGs once parsed and trigger the pipeline run; when it was triggered (monotonic)."""
    for dag_id in (PIPELINE, SCORING):  # once the dag-processor has parsed them
        wait_until(
            f"{dag_id} parsed", lambda d=dag_id: cluster.sql("SELECT 1 FROM dag WHERE dag_id = %s", d), 300
        )
        cluster.api("PATCH", f"/dags/{dag_id}", {"is_paused": False})
    conf = {
        "batch_id": BATCH,
        "backbone": BACKBONE,
        "weights": weights,
        "models": ["lr"],
        "upsample": "oversample",
    }
    started = time.monotonic()
    cluster.api(
        "POST", f"/dags/{PIPELINE}/dagRuns", {"dag_run_id": RUN_ID, "logical_date": None, "conf": conf}
    )
    return started


def kill_worker_in_featurize_write(cluster, started: float, deadline: float) -> dict:
    """Kill worker 2 while it runs a task of featurize's write, then start it again; what was killed, when."""
    killed = None
    while killed is None:
        if (state := task_states(cluster, PIPELINE, RUN_ID).get("featurize")) in (
            "success",
            "failed",
            "up_for_retry",
        ):
            pytest.fail(
                f"featurize ended ({state}) before worker 2 could be killed in the middle of its write"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"featurize's write did not start within {RUN_TIMEOUT_S}s")
        killed = featurize_write_in_flight(cluster)
        if killed is None:
            time.sleep(POLL_S)
    worker = cluster.pid("spark-worker-2")
    cluster.kill("spark-worker-2")
    killed["at_s"], killed["epoch"] = time.monotonic() - started, time.time()
    wait_until("the killed worker gone", lambda: not alive(worker), 60, every_s=0.2)
    print(
        f"\nkilled Spark worker 2 (executor {killed['executor']} of {killed['app']}) at {killed['at_s']:.0f}s"
    )
    cluster.sh("worker", "2")  # back, as a supervisor (compose: restart: unless-stopped) would do
    print(f"worker 2 registered again {time.time() - killed['epoch']:.0f}s after the kill")
    return killed


def wait_for_pipeline(cluster, started: float, deadline: float) -> float:
    """Seconds from the trigger to the pipeline run's end, which must be a success."""
    state = wait_until(
        f"{PIPELINE} run {RUN_ID}",
        lambda: (
            run_state(cluster, PIPELINE, RUN_ID) in ("success", "failed")
            and run_state(cluster, PIPELINE, RUN_ID)
        ),
        deadline - time.monotonic(),
        every_s=5,
    )
    pipeline_s = time.monotonic() - started
    assert state == "success", f"{PIPELINE} ended {state}: {task_states(cluster, PIPELINE, RUN_ID)}"
    return pipeline_s


def wait_for_scoring(cluster, deadline: float) -> str:
    """The run id of the champion-triggered scoring run, once it ended (a success)."""

    def scoring_done():
        rows = cluster.sql(
            "SELECT run_id, state FROM dag_run WHERE dag_id = %s AND state IN ('success', 'failed')", SCORING
        )
        return rows[0] if rows else None

    scoring_run, scoring_state = wait_until(
        "the champion-triggered scoring run", scoring_done, deadline - time.monotonic(), every_s=5
    )
    assert scoring_state == "success", (
        f"{SCORING} ended {scoring_state}: {task_states(cluster, SCORING, scoring_run)}"
    )
    return scoring_run


def print_stage_times(cluster, pipeline_s: float, killed_epoch: float) -> None:
    durations = cluster.sql(
        "SELECT task_id, EXTRACT(EPOCH FROM end_date - start_date) FROM task_instance "
        "WHERE dag_id = %s AND run_id = %s",
        PIPELINE,
        RUN_ID,
    )
    ((featurize_end,),) = cluster.sql(
        "SELECT EXTRACT(EPOCH FROM end_date) FROM task_instance "
        "WHERE dag_id = %s AND run_id = %s AND task_id = 'featurize'",
        PIPELINE,
        RUN_ID,
    )
    print(
        f"\n{PIPELINE} on the cluster: {pipeline_s:.0f}s; stages: "
        + ", ".join(f"{t} {s:.0f}s" for t, s in sorted(durations, key=lambda r: r[0]))
        + f"; featurize ended {float(featurize_end) - killed_epoch:.0f}s after the kill"
    )


@pytest.fixture(scope="module")
def pipeline(cluster, landed) -> dict:
    """Trigger the pipeline, kill worker 2 in the middle of featurize's write, wait for it and for scoring."""
    started = trigger_pipeline(cluster, landed["weights"])
    deadline = time.monotonic() + RUN_TIMEOUT_S
    killed = kill_worker_in_featurize_write(cluster, started, deadline)
    pipeline_s = wait_for_pipeline(cluster, started, deadline)
    scoring_run = wait_for_scoring(cluster, deadline)
    print_stage_times(cluster, pipeline_s, killed["epoch"])
    return {"killed": killed, "scoring_run": scoring_run, "seconds": pipeline_s}


@pytest.fixture(scope="module")
def history(cluster, pipeline) -> dict[str, dict]:
    """name -> application of every completed molescope job, from the history server (latest per name)."""

    def completed():
        apps = cluster.history("/applications")
        if any(not app["attempts"][0]["completed"] for app in apps):
            return None  # an event log still being written or parsed
        return apps

    apps = wait_until("the history server listing every job as completed", completed, 120)
    latest: dict[str, dict] = {}
    for app in sorted(apps, key=lambda a: a["attempts"][0]["startTimeEpoch"]):
        latest[app["name"]] = app
    return latest


# --- tests ------------------------------------------------------------------------------------------------


def test_every_task_ran_through_the_celery_worker(cluster, pipeline):
    states = task_states(cluster, PIPELINE, RUN_ID) | {
        f"scoring.{task}": state
        for task, state in task_states(cluster, SCORING, pipeline["scoring_run"]).items()
    }
    assert states and set(states.values()) <= {"success", "skipped"}, states
    # Celery's result backend is Airflow's PostgreSQL: one row per task the Celery worker executed (written
    # once the task's process has exited, a little after Airflow marks the task done).
    succeeded = sum(state == "success" for state in states.values())
    wait_until(
        f"{succeeded} Celery results",
        lambda: (
            cluster.sql("SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'")[0][0] >= succeeded
        ),
        120,
    )


#: Every job; the image stages among them read and write many partitions, so both executors get tasks.
JOBS = ("clean", "featurize", "upsample", "train", "score")
IMAGE_JOBS = ("clean", "featurize", "score")


def test_spark_stages_ran_on_both_workers(cluster, history):
    for job in JOBS:
        name = f"molescope-{job}"
        assert name in history, f"{name} missing from the history server: {sorted(history)}"
        executors = cluster.history(f"/applications/{history[name]['id']}/allexecutors")
        executors = [e for e in executors if e["id"] != "driver"]
        assert len(executors) >= 2, f"{name}: executors {[e['id'] for e in executors]}"
        working = [e["id"] for e in executors if e["totalTasks"] > 0]
        if job in IMAGE_JOBS:
            assert len(working) >= 2, f"{name}: tasks ran on executors {working} only"


def test_featurize_survived_a_killed_worker(cluster, pipeline, history):
    killed = pipeline["killed"]
    app = history["molescope-featurize"]["id"]
    assert app == killed["app"]
    lost = {e["id"]: e for e in cluster.history(f"/applications/{app}/allexecutors")}[killed["executor"]]
    assert not lost["isActive"] and lost["removeReason"], lost
    job = cluster.history(f"/applications/{app}/jobs/{killed['job']}")
    assert job["status"] == "SUCCEEDED"
    assert job["numFailedTasks"] >= 1, f"no task was lost with the worker: {job}"
    # No gaps, no duplicates: exactly one feature row per curated image.
    curated = parquet_table(cluster, f"curated/images/batch_id={BATCH}/").column("image_id").to_pylist()
    features = features_by_image(cluster, "features")
    assert len(curated) == IMAGES
    assert sorted(features) == sorted(curated)


def local_env(cluster) -> dict[str, str]:
    """The cluster's environment without its spark-defaults.conf: jobs run in `local[2]`."""
    return {key: value for key, value in cluster.env.items() if key != "SPARK_CONF_DIR"}


def test_features_equal_those_of_a_local_run(cluster, pipeline, landed):
    # The local run converts nothing: it gets the cluster run's LiteRT model, so only the execution differs.
    client = cluster.s3()
    for key in cluster.keys("features/_engines/"):
        client.copy_object(
            Bucket=cluster.bucket,
            Key=f"features-local/{key.split('/', 1)[1]}",
            CopySource={"Bucket": cluster.bucket, "Key": key},
        )
    warehouse = f"s3a://{cluster.bucket}"
    started = time.monotonic()
    cluster.run(
        "molescope", "--master", "local[2]", "featurize", "--curated", f"{warehouse}/curated",
        "--batch-id", BATCH, "--features", f"{warehouse}/features-local", "--backbone", BACKBONE,
        "--weights", landed["weights"], "--recompute",
        env=local_env(cluster),
    )  # fmt: skip
    print(f"\nlocal[2] featurize (CLI run): {time.monotonic() - started:.0f}s")
    on_cluster, local = features_by_image(cluster, "features"), features_by_image(cluster, "features-local")
    assert sorted(on_cluster) == sorted(local)
    worst = max(float(np.max(np.abs(on_cluster[i] - local[i]))) for i in local)
    print(f"features of {len(local)} images: cluster vs local[2] differ by at most {worst:.2e}")
    assert worst <= FEATURES_ATOL, f"features differ by up to {worst}"


def test_scores_equal_those_of_a_local_run(cluster, pipeline, landed):
    (summary_key,) = [k for k in cluster.keys(f"scores/{SCORE_BATCH}/") if k.endswith("/summary.json")]
    prefix = summary_key.rsplit("/", 1)[0]  # scores/<batch>/<model run id>/<model>
    summary = json.loads(cluster.get(summary_key))
    assert summary["scored"] == SCORE_IMAGES
    warehouse = f"s3a://{cluster.bucket}"
    started = time.monotonic()
    cluster.run(
        "molescope", "--master", "local[2]", "score", "--scoring-root", f"{warehouse}/scoring",
        "--batch-id", SCORE_BATCH, "--model", summary["model_uri"], "--weights", landed["weights"],
        "--out", f"{warehouse}/scores-local",
        env=local_env(cluster),
    )  # fmt: skip

    print(f"\nlocal[2] score (CLI run): {time.monotonic() - started:.0f}s")

    def predictions(key: str) -> dict[str, np.ndarray]:
        rows = list(csv.reader(io.StringIO(cluster.get(key).decode())))
        return {row[0]: np.asarray(row[1:], dtype=np.float64) for row in rows[1:]}

    on_cluster = predictions(f"{prefix}/predictions.csv")
    local = predictions(f"scores-local/{prefix.split('/', 1)[1]}/predictions.csv")
    assert sorted(on_cluster) == sorted(local) and len(local) == SCORE_IMAGES
    worst = max(float(np.max(np.abs(on_cluster[i] - local[i]))) for i in local)
    print(f"probabilities of {len(local)} images: cluster vs local[2] differ by at most {worst:.2e}")
    for image, probabilities in local.items():
        assert int(np.argmax(on_cluster[image])) == int(np.argmax(probabilities)), image
        assert np.allclose(on_cluster[image], probabilities, atol=FEATURES_ATOL), image


def test_unreachable_master_fails_at_task_start(cluster):
    """A stage whose spark_default points at a master that is not up fails at once, naming both."""
    dead = f"spark://127.0.0.1:{free_port()}"
    env = {**cluster.env, "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": dead})}
    # Paused, the scheduler leaves the test's DAG run alone (it would skip `clean`: no batch for that day).
    cluster.api("PATCH", f"/dags/{PIPELINE}", {"is_paused": True})
    started = time.monotonic()
    done = subprocess.run(
        ["airflow", "tasks", "test", PIPELINE, "clean", "2026-11-20"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    # `airflow tasks test` exits 0 whatever the task did: read what the task logged.
    assert "Task failed with exception" in output, output[-3000:]
    assert f"the Spark master {dead} (connection 'spark_default') is not reachable" in output, output[-3000:]
    assert "Spark-Submit cmd" not in output, "spark-submit ran against a master that is not up"
    print(f"\nunreachable master reported after {time.monotonic() - started:.0f}s")


def test_executors_too_large_for_the_workers_fail_instead_of_hanging(cluster):
    """No worker offers 8g: the job stops with an error naming the settings instead of waiting forever."""
    script = (
        "import sys; from pyspark.sql import SparkSession; from molescope.io.session import await_executors; "
        "builder = SparkSession.builder.master(sys.argv[1]).config('spark.executor.memory', '8g'); "
        "spark = builder.getOrCreate(); "
        "await_executors(spark, timeout_s=20)"
    )
    done = subprocess.run(
        ["python", "-c", script, cluster.env["SPARK_MASTER_URL"]],
        env=local_env(cluster),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    expected = "ClusterError: no Spark executor started within 20s on spark://127.0.0.1:"
    assert expected in done.stderr and "spark.executor.memory=8g" in done.stderr, done.stderr[-3000:]


def test_check_names_a_stopped_postgresql(cluster):
    """`cluster.sh check` names a component that is down and its setting (runs last: stops PostgreSQL)."""
    healthy = cluster.sh("check", check=False)
    assert healthy.returncode == 0, healthy.stdout
    postgres = cluster.pid("postgres")
    os.kill(postgres, signal.SIGINT)  # PostgreSQL's fast shutdown
    wait_until("PostgreSQL stopped", lambda: not alive(postgres), 120, every_s=1)
    broken = cluster.sh("check", check=False)
    assert (
        f"FAILED  PostgreSQL: not reachable (MOLESCOPE_PG_PORT={cluster.env['MOLESCOPE_PG_PORT']})"
        in broken.stdout
    )
    assert "ok      Spark master" in broken.stdout
