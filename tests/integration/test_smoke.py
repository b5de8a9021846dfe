"""One live smoke run of the whole pipeline DAG on a tiny batch, for `make test-quick`'s inner loop:
`airflow dags test` on a fresh Airflow home runs every task of the DAG in one process, each Spark stage
through the real spark-submit, against the session's S3 server. It needs no scheduler and no scenario, so
it answers "does the DAG still run from end to end" in minutes.

`make test` (and so CI) leaves it out (marker `quick_only`): the scenario of tests/integration runs the same
DAG through the real scheduler and asserts everything this does and more (test_pipeline: every task, the
models, metrics.json, the champion, the report), so running both paid ~6 min of CI for nothing new.
"""

from __future__ import annotations

import json

import pytest

from tests.airflow_live import Airflow
from tests.helpers import run_command
from tests.integration.scenario import PIPELINE_DAG, land, run_prefix_of, synth_batch

pytestmark = pytest.mark.quick_only

BATCH = "smoke-001"
IMAGES = 40  # the daily batches of the scenario: the fewest that split into every class
#: The smoke's image ids lie apart from the scenario's batches (which start at 0 and go up in 100,000s).
ID_OFFSET = 900_000


@pytest.fixture(scope="module")
def smoke_run(s3_server, pipeline_env, weights_uri, tmp_path_factory) -> dict:
    """The pipeline DAG run once by `airflow dags test` on a landed batch of IMAGES synthetic images."""
    root = tmp_path_factory.mktemp("smoke")
    airflow = Airflow(root / "airflow", pipeline_env)
    airflow.home.mkdir()
    airflow.init(pools=[("spark", 1)])
    batch = synth_batch(root, pipeline_env, 31, IMAGES, ID_OFFSET)
    land(batch, s3_server, f"landing/{BATCH}", pipeline_env)
    conf = {
        "batch_id": BATCH,
        "backbone": "mobilenet_0.25",
        "weights": weights_uri,
        "models": ["lr"],
        "upsample": "oversample",
        "training_batches": "this_batch",
    }
    tested = run_command(["airflow", "dags", "test", PIPELINE_DAG, "-c", json.dumps(conf)], airflow.env)
    listed = run_command(["airflow", "dags", "list-runs", PIPELINE_DAG, "-o", "json"], airflow.env)
    # Airflow prints its warnings on stdout too: the runs are the line that holds the JSON list.
    (run,) = json.loads(next(line for line in listed.stdout.splitlines() if line.startswith("[")))
    return {"run": run, "output": tested.stdout[-6000:] + tested.stderr[-6000:]}


def test_the_dag_ran_every_task_to_success(smoke_run):
    assert smoke_run["run"]["state"] == "success", f"{smoke_run['run']}\n{smoke_run['output']}"


def test_the_run_trained_a_champion_and_wrote_its_report(s3_server, smoke_run):
    prefix = run_prefix_of(s3_server, smoke_run["run"]["run_id"])
    metrics = s3_server.json(f"{prefix}/metrics.json")
    assert metrics["champion"] == "lr" and metrics["models"]["lr"]["split"] == "test"
    assert s3_server.json(f"{prefix}/models/champion.json")["champion"] == "lr"
    assert "<html" in s3_server.get(f"{prefix}/report.html").decode().lower()
