"""cluster.env is the one source of the cluster's Spark settings: `make cluster` (bash) and the compose stack
(`env_file:`) must read the same values, and the sizes must fit together (no cluster process is started)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.stack_files import load_compose, parse_env_file

REPO = Path(__file__).resolve().parents[2]
CLUSTER_ENV = REPO / "cluster.env"
ENTRYPOINT = REPO / "docker" / "common" / "molescope-entrypoint.sh"


def settings() -> dict[str, str]:
    return {key: value for key, (value, _comments) in parse_env_file(CLUSTER_ENV).items()}


def spark_conf(text: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in text.split())


def memory_mb(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([mg])", size.lower()).groups()
    return int(number) * (1024 if unit == "g" else 1)


def bash_environment(script: str, env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run(
        ["bash", "-c", f"{script} && env -0"], env=env, capture_output=True, check=True
    ).stdout
    return dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)


def test_bash_reads_cluster_env_as_compose_does(tmp_path):
    """Every value scripts/cluster_env.sh exports equals the Compose (dotenv) reading of the file."""
    clean = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "MOLESCOPE_STATE": str(tmp_path / "state")}
    env = bash_environment(f". {REPO / 'scripts' / 'cluster_env.sh'}", clean)
    expected = settings()
    # The one value the images and this machine place differently.
    expected["SPARK_EVENTS_DIR"] = str(tmp_path / "state" / "cluster" / "spark-events")
    assert {key: env.get(key) for key in expected} == expected


def test_the_environment_overrides_cluster_env(tmp_path):
    clean = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "MOLESCOPE_STATE": str(tmp_path / "state")}
    env = bash_environment(f". {REPO / 'scripts' / 'cluster_env.sh'}", {**clean, "SPARK_WORKER_MEMORY": "7g"})
    assert env["SPARK_WORKER_MEMORY"] == "7g"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW_CONN_SPARK_DEFAULT"].startswith('{"conn_type":"spark","host":"spark://127.0.0.1:')


def test_compose_services_read_cluster_env():
    compose = load_compose()
    services = compose["services"]
    for name in ("spark-master", "spark-worker", "spark-worker-gpu", "spark-history", "airflow-worker"):
        assert services[name]["env_file"] == ["cluster.env"], name
    assert services["spark-worker"]["deploy"]["replicas"] == int(settings()["MOLESCOPE_SPARK_WORKERS"])
    master_url = compose["x-spark-worker-env"]["SPARK_MASTER_URL"]
    assert master_url.endswith(f":{settings()['SPARK_MASTER_PORT']}}}"), master_url
    # Sizes come from cluster.env only (an `environment:` entry would silently win over it).
    assert "SPARK_WORKER_CORES" not in services["spark-worker"]["environment"]
    assert "MOLESCOPE_CLUSTER_SPARK_CONF" not in compose["x-airflow-common"]["environment"]


#: The one documented exception: a GPU node offers more than cluster.env's CPU workers.
SHADOWING_ALLOWED = {"spark-worker-gpu": {"SPARK_WORKER_CORES", "SPARK_WORKER_MEMORY"}}


def test_no_compose_environment_shadows_cluster_env():
    """`environment:` wins over `env_file:` in Compose: a cluster.env key there would silently differ."""
    keys = set(settings())
    for name, service in load_compose()["services"].items():
        if "cluster.env" not in service.get("env_file", []):
            continue
        shadowed = (set(service.get("environment") or {}) & keys) - SHADOWING_ALLOWED.get(name, set())
        assert not shadowed, f"{name}: environment sets {sorted(shadowed)} of cluster.env"


def test_compose_mounts_event_logs_where_cluster_env_puts_them():
    events = settings()["SPARK_EVENTS_DIR"]
    services = load_compose()["services"]
    for name in ("spark-history", *(n for n in services if n.startswith("airflow-"))):
        mounts = {v.split(":")[1] for v in services[name].get("volumes", []) if v.startswith("spark-events:")}
        assert mounts == {events}, f"{name} mounts spark-events at {mounts}, cluster.env says {events}"


def test_compose_and_make_cluster_run_airflow_on_the_same_drivers(tmp_path):
    """Metadata DB, Celery result backend and broker: same URL schemes (drivers) in both; client mode."""
    clean = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "MOLESCOPE_STATE": str(tmp_path / "state")}
    local = bash_environment(f". {REPO / 'scripts' / 'cluster_env.sh'}", clean)
    compose = load_compose()["x-airflow-common"]["environment"]
    for key in (
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CELERY__RESULT_BACKEND",
        "AIRFLOW__CELERY__BROKER_URL",
    ):
        assert local[key].split("://")[0] == compose[key].split("://")[0], key
    local_spark = json.loads(local["AIRFLOW_CONN_SPARK_DEFAULT"])
    compose_spark = compose["AIRFLOW_CONN_SPARK_DEFAULT"]
    assert local_spark["extra"]["deploy-mode"] == "client"
    assert '"deploy-mode": "${SPARK_DEPLOY_MODE:-client}"' in compose_spark
    assert local_spark["host"] == f"spark://127.0.0.1:{settings()['SPARK_MASTER_PORT']}"


def test_executors_fit_the_workers():
    values = settings()
    conf = spark_conf(values["MOLESCOPE_CLUSTER_SPARK_CONF"])
    workers, cores = int(values["MOLESCOPE_SPARK_WORKERS"]), int(values["SPARK_WORKER_CORES"])
    executor_cores = int(conf["spark.executor.cores"])
    assert cores % executor_cores == 0, "a worker's cores would be left idle"
    per_worker = cores // executor_cores
    assert memory_mb(conf["spark.executor.memory"]) * per_worker <= memory_mb(values["SPARK_WORKER_MEMORY"])
    # A job takes the whole cluster, and waits until all of it registered before its first task.
    assert int(conf["spark.cores.max"]) == workers * cores
    assert float(conf["spark.scheduler.minRegisteredResourcesRatio"]) == 1.0
    assert conf["spark.eventLog.enabled"] == "true"


def test_no_secret_in_cluster_env():
    assert not [key for key in settings() if re.search(r"PASSWORD|SECRET|TOKEN|_KEY\b|KEY_ID", key)]


@pytest.mark.parametrize("extra", ["", "spark.executor.memory=1g"])
def test_entrypoint_renders_the_cluster_conf_before_the_stacks_extras(tmp_path, extra):
    baked = tmp_path / "baked.conf"
    baked.write_text("spark.hadoop.fs.s3a.path.style.access true\n")
    env = {
        "PATH": os.environ["PATH"],
        "SPARK_CONF_DIR": str(tmp_path / "conf"),
        "MOLESCOPE_BAKED_SPARK_DEFAULTS": str(baked),
        "MOLESCOPE_CLUSTER_SPARK_CONF": settings()["MOLESCOPE_CLUSTER_SPARK_CONF"],
        "MOLESCOPE_SPARK_CONF": extra,
        "SPARK_EVENTS_DIR": "/events",
    }
    subprocess.run(["bash", str(ENTRYPOINT), "true"], env=env, check=True)
    lines = (tmp_path / "conf" / "spark-defaults.conf").read_text().splitlines()
    rendered = dict(line.split(" ", 1) for line in lines)  # a later line wins, as in Spark
    expected_memory = (
        extra.split("=")[1]
        if extra
        else spark_conf(env["MOLESCOPE_CLUSTER_SPARK_CONF"])["spark.executor.memory"]
    )
    assert rendered["spark.executor.memory"] == expected_memory
    assert rendered["spark.eventLog.dir"] == rendered["spark.history.fs.logDirectory"] == "file:/events"
    assert rendered["spark.hadoop.fs.s3a.path.style.access"] == "true"
