"""Spark/Hadoop settings for S3-compatible storage: the single source of truth.

Pure Python on purpose (no pyspark import): the Airflow operator factory, the local set-up scripts, the
SparkSession builder and the Docker image's spark-defaults.conf (`molescope spark-defaults`) all derive from
the values here, and a test checks they agree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

#: Versions the jars must match: pyspark 4.1.2 bundles Hadoop 3.4.2 (jars/hadoop-client-api-3.4.2.jar).
SPARK_VERSION = "4.1.2"
SCALA_BINARY = "2.13"
HADOOP_VERSION = "3.4.2"
#: hadoop-project 3.4.2 pins AWS SDK v2 2.29.52 and analytics-accelerator 1.2.1.
AWS_SDK_V2_VERSION = "2.29.52"
ANALYTICS_ACCELERATOR_VERSION = "1.2.1"

#: Maven coordinates (group:artifact:version) fetched once by `make setup` into the jars folder.
JAR_COORDINATES: tuple[str, ...] = (
    f"org.apache.hadoop:hadoop-aws:{HADOOP_VERSION}",
    f"software.amazon.awssdk:bundle:{AWS_SDK_V2_VERSION}",
    f"software.amazon.s3.analyticsaccelerator:analyticsaccelerator-s3:{ANALYTICS_ACCELERATOR_VERSION}",
    f"org.apache.spark:spark-hadoop-cloud_{SCALA_BINARY}:{SPARK_VERSION}",
)


def jar_filename(coordinate: str) -> str:
    """File name Maven gives the jar of `group:artifact:version`."""
    _group, artifact, version = coordinate.split(":")
    return f"{artifact}-{version}.jar"


def jar_url(coordinate: str, repository: str = "https://repo1.maven.org/maven2") -> str:
    """Download URL of a coordinate's jar in a Maven-layout repository."""
    group, artifact, version = coordinate.split(":")
    return f"{repository}/{group.replace('.', '/')}/{artifact}/{version}/{jar_filename(coordinate)}"


#: Environment variable naming the S3 endpoint (e.g. http://127.0.0.1:8333); unset means AWS S3.
ENV_S3_ENDPOINT = "MOLESCOPE_S3_ENDPOINT"
#: Environment variable naming the folder with the S3A jars (`make setup` fetches them into .jars/).
ENV_JARS_DIR = "MOLESCOPE_JARS_DIR"


@dataclass(frozen=True)
class S3Endpoint:
    """Where the S3-compatible service is; credentials are never part of it (they come from the env)."""

    url: str | None = None
    path_style: bool = True
    region: str = "us-east-1"

    @classmethod
    def from_env(cls) -> S3Endpoint:
        """The endpoint of `MOLESCOPE_S3_ENDPOINT` (unset or empty: AWS S3): Spark's and boto3's alike."""
        return cls(url=os.environ.get(ENV_S3_ENDPOINT) or None)

    @property
    def ssl(self) -> bool:
        return self.url is None or self.url.startswith("https://")


#: S3A magic committer. It writes task output straight to its final object key and completes the multipart
#: uploads only at job commit, so no rename (a copy, on S3) happens and failed tasks leave no output.
#: The classes live in spark-hadoop-cloud: only set these when that jar is on the classpath.
_CLOUD = "org.apache.spark.internal.io.cloud"
COMMITTER_CONF: dict[str, str] = {
    "spark.hadoop.fs.s3a.committer.name": "magic",
    "spark.hadoop.fs.s3a.committer.magic.enabled": "true",
    "spark.hadoop.mapreduce.outputcommitter.factory.scheme.s3a": (
        "org.apache.hadoop.fs.s3a.commit.S3ACommitterFactory"
    ),
    "spark.sql.sources.commitProtocolClass": f"{_CLOUD}.PathOutputCommitProtocol",
    "spark.sql.parquet.output.committer.class": f"{_CLOUD}.BindingParquetOutputCommitter",
}
#: The classes those settings name (hadoop-aws, spark-hadoop-cloud): the driver JVM must load them.
COMMITTER_CLASSES: tuple[str, ...] = tuple(v for v in COMMITTER_CONF.values() if v.startswith("org.apache."))


def s3a_conf(endpoint: S3Endpoint) -> dict[str, str]:
    """Spark conf entries that make `s3a://` work against `endpoint` (no committer, no jars)."""
    conf = {
        "spark.hadoop.fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3a.path.style.access": str(endpoint.path_style).lower(),
        "spark.hadoop.fs.s3a.connection.ssl.enabled": str(endpoint.ssl).lower(),
        "spark.hadoop.fs.s3a.endpoint.region": endpoint.region,
        # Credentials: S3A reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the process environment.
        "spark.hadoop.fs.s3a.aws.credentials.provider": (
            "software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider"
        ),
    }
    if endpoint.url:
        conf["spark.hadoop.fs.s3a.endpoint"] = endpoint.url
    return conf


def jar_paths(jars_dir: str) -> list[str]:
    """Paths of the S3A jars inside `jars_dir` (as fetched by `make setup`)."""
    return [f"{jars_dir.rstrip('/')}/{jar_filename(c)}" for c in JAR_COORDINATES]


def spark_conf(endpoint: S3Endpoint, jars_dir: str) -> dict[str, str]:
    """Everything a job needs for S3: jars, filesystem settings and the magic committer.

    The jars go on the driver's and the executors' classpath from `jars_dir` on each machine (the images bake
    them at the same path; the one-machine cluster shares .jars/). `spark.jars` would instead copy them from
    the driver into every executor of every job: 640 MB of AWS SDK bundle per executor and stage.
    """
    classpath = ":".join(jar_paths(jars_dir))
    return {
        "spark.driver.extraClassPath": classpath,
        "spark.executor.extraClassPath": classpath,
        **s3a_conf(endpoint),
        **COMMITTER_CONF,
    }


#: What a job hands its executors from the driver's environment (`spark.executorEnv.*`): on a cluster the
#: executors run in the workers' environment, which holds no S3 credentials; the job brings its own (those
#: of the Airflow connection, which the operator puts into spark-submit's environment).
EXECUTOR_ENV: tuple[str, ...] = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    ENV_S3_ENDPOINT,
)


def executor_env_conf(environ: Mapping[str, str]) -> dict[str, str]:
    """`spark.executorEnv.<NAME>` for each EXECUTOR_ENV variable set in `environ` (Spark redacts secrets)."""
    return {f"spark.executorEnv.{name}": environ[name] for name in EXECUTOR_ENV if environ.get(name)}


def spark_defaults_text(endpoint: S3Endpoint, jars_dir: str) -> str:
    """Render a spark-defaults.conf for `endpoint` with the jars in `jars_dir` on the classpath."""
    lines = [f"{key} {value}" for key, value in sorted(spark_conf(endpoint, jars_dir).items())]
    return "\n".join(lines) + "\n"
