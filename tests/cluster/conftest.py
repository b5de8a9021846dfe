"""The one-machine cluster of `make cluster` (scripts/cluster.sh), brought up once for the cluster tests.

It runs in a folder of its own (PostgreSQL data, Airflow home, S3 data, Spark work folders) on free ports
with fresh credentials, so it never touches a cluster or demo started from the same checkout, and it is
torn down at the end: every process it recorded must be gone afterwards.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import HAM10000, require
from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO / "scripts" / "cluster.sh"
#: `cluster.sh up` on a busy 2-core machine: PostgreSQL, Redis, S3, Spark, five Airflow processes.
UP_TIMEOUT_S = 900
DOWN_TIMEOUT_S = 300
#: Ports the test picks (free ones) instead of cluster_env.sh's fixed defaults.
PORT_SETTINGS = (
    "MOLESCOPE_S3_PORT",
    "MOLESCOPE_PG_PORT",
    "MOLESCOPE_REDIS_PORT",
    "SPARK_MASTER_PORT",
    "SPARK_MASTER_WEBUI_PORT",
    "SPARK_WORKER_WEBUI_PORT_BASE",
    "SPARK_HISTORY_PORT",
    "AIRFLOW__API__PORT",
    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT",
)
#: Variables of the test session's own set-up (scripts/env.sh) that would leak into the cluster's.
INHERITED_PREFIXES = ("AIRFLOW", "AWS_", "SPARK_", "PYSPARK_", "MOLESCOPE_")
KEPT = {"MOLESCOPE_SHARED", "MOLESCOPE_JARS_DIR", "MOLESCOPE_VENV"}


def get_json(url: str, timeout: float = 10.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def send_json(method: str, url: str, body: dict | None = None, token: str | None = None):
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


@dataclass
class Cluster:
    """A running cluster: its environment (as scripts/cluster_env.sh sets it) and helpers."""

    env: dict[str, str]
    state: Path
    driver_ui_port: int
    _token: str | None = field(default=None, repr=False)

    def sh(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(
            ["bash", str(CLUSTER_SH), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            pytest.fail(
                f"cluster.sh {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
            )
        return done

    def run(self, *cmd: str, env: dict[str, str] | None = None, timeout: float = 900):
        done = subprocess.run(
            cmd, env=env or self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            output = f"{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
            pytest.fail(f"{' '.join(cmd[:4])} failed ({done.returncode}):\n{output}")
        return done

    def url(self, setting: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.env[setting]}{path}"

    def api(self, method: str, path: str, body: dict | None = None):
        """Airflow's REST API as the admin user (simple auth manager), like the UI uses it."""
        if self._token is None:
            passwords = Path(self.env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
            login = {"username": "admin", "password": json.loads(passwords.read_text())["admin"]}
            self._token = send_json("POST", self.url("AIRFLOW__API__PORT", "/auth/token"), login)[
                "access_token"
            ]
        return send_json(method, self.url("AIRFLOW__API__PORT", f"/api/v2{path}"), body, self._token)

    def master(self) -> dict:
        return get_json(self.url("SPARK_MASTER_WEBUI_PORT", "/json/"))

    def worker_ui(self, index: int) -> str:
        return f"http://127.0.0.1:{int(self.env['SPARK_WORKER_WEBUI_PORT_BASE']) + index - 1}"

    def history(self, path: str):
        return get_json(self.url("SPARK_HISTORY_PORT", f"/api/v1{path}"))

    def pid(self, name: str) -> int:
        return int((self.state / "pids" / f"{name}.pid").read_text())

    def kill(self, name: str) -> None:
        """SIGKILL a recorded process group (the process, its children: a worker with its executor)."""
        os.killpg(self.pid(name), signal.SIGKILL)

    def s3(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.env["MOLESCOPE_S3_ENDPOINT"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}),
        )

    @property
    def bucket(self) -> str:
        return self.env["MOLESCOPE_BUCKET"]

    def keys(self, prefix: str) -> list[str]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def get(self, key: str) -> bytes:
        return self.s3().get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def sql(self, query: str, *params) -> list[tuple]:
        """Rows of a query on Airflow's metadata DB (the cluster's PostgreSQL)."""
        import psycopg2

        with (
            contextlib.closing(
                psycopg2.connect(
                    host="127.0.0.1",
                    port=int(self.env["MOLESCOPE_PG_PORT"]),
                    user="airflow",
                    password=self.env["MOLESCOPE_PG_PASSWORD"],
                    dbname="airflow",
                    connect_timeout=10,
                )
            ) as conn,
            conn.cursor() as cursor,
        ):
            cursor.execute(query, params)
            return cursor.fetchall()


def cluster_environment(state: Path) -> dict[str, str]:
    """What scripts/cluster_env.sh exports for a cluster in `state` on free ports (fresh credentials)."""
    base = {
        key: value
        for key, value in os.environ.items()
        if key in KEPT or not key.startswith(INHERITED_PREFIXES)
    }
    base |= {setting: str(free_port()) for setting in PORT_SETTINGS}
    base |= {
        "MOLESCOPE_STATE": str(state),
        # Manual runs only: no scheduled run competes with the test's for the one Spark slot.
        "MOLESCOPE_SCHEDULE": "",
        "MOLESCOPE_BATCH_WAIT_HOURS": "0",
        # Every driver serves its UI (and REST API) on one known port: the test watches featurize there.
        "MOLESCOPE_SPARK_CONF": f"spark.ui.port={free_port()}",
    }
    script = f". {REPO / 'scripts' / 'cluster_env.sh'} && env -0"
    out = subprocess.run(["bash", "-c", script], env=base, capture_output=True, check=True).stdout
    return dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)


def keep_logs(state: Path, target: Path) -> None:
    """Copy what explains a failure (process logs, task logs, executor logs) out of the state folder."""
    for part in (
        "logs",
        "cluster/airflow/logs",
        *(p.relative_to(state) for p in state.glob("cluster/spark-worker-*")),
    ):
        source = state / part
        if source.is_dir():
            shutil.copytree(source, target / part, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.jar"))


@pytest.fixture(scope="package")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    # PostgreSQL runs as user postgres when the tests run as root: its data folder must be reachable.
    state = Path(tempfile.mkdtemp(prefix="molescope-cluster-"))
    state.chmod(0o755)
    env = cluster_environment(state)
    running = Cluster(env=env, state=state, driver_ui_port=int(env["MOLESCOPE_SPARK_CONF"].rsplit("=", 1)[1]))
    logs = tmp_path_factory.mktemp("cluster-logs")
    started = time.monotonic()
    try:
        up = running.sh("up", timeout=UP_TIMEOUT_S, check=False)
        print(f"\ncluster.sh up: {time.monotonic() - started:.0f}s\n{up.stdout[-1500:]}")
        if up.returncode != 0:
            output = f"{up.stdout[-4000:]}\n{up.stderr[-4000:]}"
            pytest.fail(f"cluster.sh up failed ({up.returncode}), logs kept in {logs}:\n{output}")
        yield running
    finally:
        pids = {}
        for pidfile in (state / "pids").glob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                pids[pidfile.stem] = int(pidfile.read_text())
        started = time.monotonic()
        running.sh("down", timeout=DOWN_TIMEOUT_S, check=False)
        print(f"\ncluster.sh down: {time.monotonic() - started:.0f}s (logs kept in {logs})")
        keep_logs(state, logs)
        left = [name for name, pid in pids.items() if alive(pid)]
        for name in left:  # never leave anything behind, even when the test fails below
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pids[name], signal.SIGKILL)
        shutil.rmtree(state, ignore_errors=True)
        assert not left, f"cluster.sh down left these running: {left}"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as stopped.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    return False


def ham10000_rows(count: int, exclude: set[str] = frozenset()) -> list[dict[str, str]]:
    """`count` real HAM10000 metadata rows covering all 7 classes, none in `exclude`; deterministic."""
    with (require(HAM10000) / "HAM10000_metadata.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["image_id"] not in exclude]
    rows.sort(key=lambda row: row["image_id"])
    by_class: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_class.setdefault(row["dx"], []).append(row)
    picked = [row for members in by_class.values() for row in members[: count // len(by_class)]]
    chosen = {row["image_id"] for row in picked}
    return picked + [row for row in rows if row["image_id"] not in chosen][: count - len(picked)]


def write_batch(folder: Path, rows: list[dict[str, str]]) -> Path:
    """A landed-batch folder: the metadata CSV of `rows` and their images."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        shutil.copy(HAM10000 / "images" / f"{row['image_id']}.jpg", folder / f"{row['image_id']}.jpg")
    return folder
