"""Session fixtures of the end-to-end tests: a real SeaweedFS S3 server, one live Airflow, and the phases
of the live scenario (tests/integration/scenario.py) that the test modules read.

Everything is private to the test session (own data folder, free ports, fresh credentials, an Airflow
home in a temp folder), so the tests never touch a demo that may be running from the same checkout.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator

import pytest
from botocore.exceptions import ClientError

from scripts.seaweedfs_ports import weed_port_flags
from tests.airflow_live import Airflow
from tests.conftest import HAM10000, MOBILENET_025_WEIGHTS, require
from tests.helpers import S3Bucket, Service, free_port, wait_until, weed_mini
from tests.integration import scenario as live

#: SeaweedFS start-up on a loaded machine.
S3_READY_TIMEOUT_S = 300


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Bucket]:
    data = tmp_path_factory.mktemp("seaweedfs")
    port = free_port()
    bucket = S3Bucket(
        endpoint=f"http://127.0.0.1:{port}",
        bucket="molescope-test",
        access_key=f"test{secrets.token_hex(4)}",
        secret_key=secrets.token_hex(16),
    )
    env = {**os.environ, "AWS_ACCESS_KEY_ID": bucket.access_key, "AWS_SECRET_ACCESS_KEY": bucket.secret_key}
    cmd = weed_mini(data, port, bucket.bucket, weed_port_flags())
    server = Service("seaweedfs", cmd, env, data / "weed.log")
    server.start()

    def ready():
        if server.exited() is not None:
            pytest.fail(f"SeaweedFS exited ({server.exited()})\n{server.log_tail()}")
        try:
            return bucket.client().head_bucket(Bucket=bucket.bucket)
        except ClientError as exc:
            # `weed mini` answers S3 before it has created the -bucket (seconds later on a loaded machine):
            # 404 and 5xx mean "not yet"; any other answer (403: wrong credentials) fails at once.
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status == 404 or status >= 500:
                return None
            raise

    try:
        wait_until(
            "SeaweedFS serves the bucket", ready, S3_READY_TIMEOUT_S, every_s=1, report=server.log_tail
        )
        yield bucket
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pipeline_env(s3_server) -> dict[str, str]:
    """Environment of `airflow` / `molescope` subprocesses: the test S3 server, its bucket as warehouse."""
    conn = {
        "conn_type": "aws",
        "login": s3_server.access_key,
        "password": s3_server.secret_key,
        "extra": {"endpoint_url": s3_server.endpoint},
    }
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "MOLESCOPE_S3_ENDPOINT": s3_server.endpoint,
        "MOLESCOPE_BUCKET": s3_server.bucket,
        "MOLESCOPE_WAREHOUSE": f"s3a://{s3_server.bucket}",
        "AIRFLOW_VAR_MOLESCOPE_WAREHOUSE": f"s3a://{s3_server.bucket}",
        "AIRFLOW_CONN_MOLESCOPE_S3": json.dumps(conn),
        # Past days without a batch are skipped at once (the scheduler's own latest run too).
        "MOLESCOPE_BATCH_WAIT_HOURS": "0",
        "MOLESCOPE_BATCH_POKE_S": str(live.POKE_S),
    }
    for required in ("MOLESCOPE_JARS_DIR", "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW_CONN_SPARK_DEFAULT"):
        if not env.get(required):
            pytest.fail(
                f"{required} is not set: run the tests through `make test` (it sources scripts/env.sh)"
            )
    try:  # not JSON, Airflow reads it as a URI and spark-submit runs on YARN: fail here, not in every task
        json.loads(env["AIRFLOW_CONN_SPARK_DEFAULT"])
    except ValueError as exc:
        pytest.fail(
            f"AIRFLOW_CONN_SPARK_DEFAULT is not valid JSON ({exc}): {env['AIRFLOW_CONN_SPARK_DEFAULT']!r}. "
            "Was scripts/env.sh sourced twice (once in this shell, once by make)? Use a fresh shell."
        )
    return env


@pytest.fixture(scope="session")
def live_airflow(pipeline_env, tmp_path_factory) -> Iterator[Airflow]:
    """api-server + scheduler + dag-processor + triggerer over the test S3 server; both DAGs unpaused."""
    airflow = Airflow(
        tmp_path_factory.mktemp("airflow"), pipeline_env, AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="2"
    )
    airflow.init(pools=[("spark", 1)])
    try:
        airflow.start("scheduler", "dag-processor", "triggerer")
        for dag_id in (live.PIPELINE_DAG, live.SCORING_DAG):
            airflow.api.unpause(dag_id)
        yield airflow
    finally:
        airflow.stop()


@pytest.fixture(scope="session")
def weights_uri(s3_server) -> str:
    """The MobileNet-0.25 weights in the bucket: air-gapped clusters read backbone weights from S3."""
    s3_server.upload(require(MOBILENET_025_WEIGHTS), live.WEIGHTS_KEY)
    return f"s3a://{s3_server.bucket}/{live.WEIGHTS_KEY}"


@pytest.fixture(scope="session")
def scenario(live_airflow, s3_server, pipeline_env, weights_uri, tmp_path_factory) -> live.Scenario:
    """The synthetic batches (DAY1 and DAY2 landed), the runs' conf, and the live Airflow."""
    root = tmp_path_factory.mktemp("batches")
    env = pipeline_env
    batches = {
        "day1": live.synth_batch(root, env, 21, live.DAILY_IMAGES, 0),
        "day2": live.synth_batch(root, env, 22, live.DAILY_IMAGES, 100_000),
        "pipeline": live.synth_batch(root, env, 11, live.PIPELINE_IMAGES, 200_000, (300, 225), defects=True),
        "scoring": live.synth_batch(root, env, 24, live.DAILY_IMAGES, 300_000),
    }
    for day, batch in ((live.DAY1, batches["day1"]), (live.DAY2, batches["day2"])):
        live.land(batch, s3_server, f"landing/{day}", env)
    conf = {"backbone": "mobilenet_0.25", "weights": weights_uri, "models": ["lr"], "upsample": "oversample"}
    return live.Scenario(live_airflow, s3_server, batches, conf)


@pytest.fixture(scope="session")
def daily_runs(scenario) -> dict:
    """Phase A: DAY1 then DAY2 (logical dates), and the late run that waited deferred for its batch."""
    return scenario.daily_and_late()


@pytest.fixture(scope="session")
def backfill_runs(scenario, daily_runs) -> dict:
    """Phase B: the backfill DAY0..DAY1 and the scoring its new champion triggered."""
    return scenario.backfill(daily_runs["prefixes"])


@pytest.fixture(scope="session")
def labelled_scoring(scenario, backfill_runs, weights_uri, tmp_path_factory) -> dict:
    """Phase C: a real labelled batch scored by a manual run with the newest champion."""
    batch = tmp_path_factory.mktemp("labelled") / live.LABELLED_BATCH
    labelled = live.labelled_batch(require(HAM10000), batch)
    return {**scenario.labelled_scoring(batch, weights_uri), "labelled": labelled}
