"""The S3A settings and jar versions agree with the installed pyspark and the lock file."""

from __future__ import annotations

import re
from pathlib import Path

import pyspark

from molescope.core.sparkconf import (
    COMMITTER_CONF,
    HADOOP_VERSION,
    JAR_COORDINATES,
    SPARK_VERSION,
    S3Endpoint,
    executor_env_conf,
    jar_filename,
    jar_url,
    s3a_conf,
    spark_conf,
    spark_defaults_text,
)

REPO = Path(__file__).resolve().parents[3]


def test_spark_version_matches_installed_pyspark():
    assert pyspark.__version__ == SPARK_VERSION


def test_hadoop_version_matches_pyspark_bundled_jars():
    jars = Path(pyspark.__file__).parent / "jars"
    assert (jars / f"hadoop-client-api-{HADOOP_VERSION}.jar").exists()
    assert any(c.startswith(f"org.apache.hadoop:hadoop-aws:{HADOOP_VERSION}") for c in JAR_COORDINATES)


def test_lock_pins_pyspark_and_pyspark_client_to_the_same_version():
    lock = (REPO / "requirements.lock").read_text()
    pins = dict(re.findall(r"^(pyspark|pyspark-client)==(\S+)$", lock, flags=re.M))
    assert pins == {"pyspark": SPARK_VERSION, "pyspark-client": SPARK_VERSION}


def test_jar_urls_follow_maven_layout():
    url = jar_url("org.apache.hadoop:hadoop-aws:3.4.2")
    assert url == "https://repo1.maven.org/maven2/org/apache/hadoop/hadoop-aws/3.4.2/hadoop-aws-3.4.2.jar"
    assert jar_filename("software.amazon.awssdk:bundle:2.29.52") == "bundle-2.29.52.jar"


def test_local_endpoint_is_path_style_without_ssl():
    conf = s3a_conf(S3Endpoint(url="http://127.0.0.1:8333"))
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:8333"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert not any("secret" in key or "access.key" in key for key in conf)


def test_aws_endpoint_has_no_endpoint_override_and_uses_ssl():
    conf = s3a_conf(S3Endpoint())
    assert "spark.hadoop.fs.s3a.endpoint" not in conf
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "true"


def test_spark_conf_adds_jars_and_magic_committer():
    conf = spark_conf(S3Endpoint(url="http://s3:8333"), "/opt/jars")
    jars = [f"/opt/jars/{jar_filename(c)}" for c in JAR_COORDINATES]
    # On the classpath of the driver and of every executor, read from each machine's own copy (not shipped).
    assert conf["spark.driver.extraClassPath"].split(":") == jars
    assert conf["spark.executor.extraClassPath"].split(":") == jars
    assert "spark.jars" not in conf
    assert conf["spark.hadoop.fs.s3a.committer.name"] == "magic"
    assert COMMITTER_CONF.items() <= conf.items()


def test_spark_defaults_text_is_the_spark_conf():
    endpoint = S3Endpoint(url="http://seaweedfs:8333")
    text = spark_defaults_text(endpoint, "/opt/jars")
    parsed = dict(line.split(" ", 1) for line in text.strip().splitlines())
    assert parsed == spark_conf(endpoint, "/opt/jars")


def test_executor_env_forwards_the_drivers_s3_settings_only():
    environ = {
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "MOLESCOPE_S3_ENDPOINT": "",
        "HOME": "/x",
    }
    assert executor_env_conf(environ) == {
        "spark.executorEnv.AWS_ACCESS_KEY_ID": "id",
        "spark.executorEnv.AWS_SECRET_ACCESS_KEY": "secret",
    }
