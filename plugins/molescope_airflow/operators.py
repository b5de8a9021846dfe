"""SparkSubmitOperator that takes S3 credentials from an Airflow connection at run time."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import BaseHook

from molescope.core.registry import S3_CONN_ID
from molescope.core.sparkconf import ENV_JARS_DIR, ENV_S3_ENDPOINT, S3Endpoint, spark_conf
from molescope_airflow import assets
from molescope_airflow.champion import champion_extra, read_champion
from molescope_airflow.links import ReportLink, presigned_url

#: Seconds a task waits for a TCP connection to a standalone master before it fails.
MASTER_CONNECT_TIMEOUT_S = 10.0


class StageFailedError(RuntimeError):
    """A Spark stage failed; the message names the stage and the batch."""


def unreachable_masters(master: str, timeout_s: float = MASTER_CONNECT_TIMEOUT_S) -> list[str]:
    """`host:port (reason)` of each master of a `spark://` URL (HA: comma-separated) refusing a connection.

    spark-submit itself retries an absent master for a minute and a half before it gives up.
    """
    if not master.startswith("spark://"):
        return []
    failures = []
    for address in master.removeprefix("spark://").split(","):
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=timeout_s).close()
        except (OSError, ValueError) as exc:
            failures.append(f"{address} ({exc})")
    return failures


class MolescopeSparkSubmitOperator(SparkSubmitOperator):
    """Submit one molescope stage (`molescope/cli/spark_entry.py <stage> ...`).

    Credentials and the S3 endpoint are read from the `s3_conn_id` connection when the task runs and handed
    to spark-submit through its process environment, so they never appear on the command line, in rendered
    templates or in the DAG file. The S3A settings come from `molescope.core.sparkconf`, the same source the
    jobs, the Docker images and the local set-up use.
    """

    template_fields: Sequence[str] = (*SparkSubmitOperator.template_fields, "batch_id", "outputs", "champion")
    template_fields_renderers = {
        **SparkSubmitOperator.template_fields_renderers,
        "outputs": "json",
        "champion": "json",
    }
    operator_extra_links = (ReportLink(),)
    ui_color = "#e8d5c4"

    def __init__(
        self,
        *,
        stage: str,
        batch_id: str = "",
        outputs: dict[str, str] | None = None,
        s3_conn_id: str = S3_CONN_ID,
        champion: dict[str, str] | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        #: {"models": <run>/models URI, "weights": weights source}: on success, the champion.json there is
        #: announced as the extra of the `molescope_champion` asset event (needs that asset in `outlets`).
        self.champion = champion
        self.stage = stage
        self.batch_id = batch_id
        #: Output URIs pushed to XCom on success (key -> URI); `report` also feeds the Report link.
        self.outputs = outputs or {}
        self.s3_conn_id = s3_conn_id

    def _storage_settings(self) -> tuple[dict[str, str], dict[str, str]]:
        conn = BaseHook.get_connection(self.s3_conn_id)
        endpoint_url = conn.extra_dejson.get("endpoint_url") or None
        env = {ENV_S3_ENDPOINT: endpoint_url or ""}
        if conn.login:
            env["AWS_ACCESS_KEY_ID"] = conn.login
            env["AWS_SECRET_ACCESS_KEY"] = conn.password or ""
        jars_dir = os.environ.get(ENV_JARS_DIR)
        if not jars_dir:
            raise StageFailedError(
                f"stage {self.stage!r}: {ENV_JARS_DIR} is not set on this worker; it must name the folder "
                "holding the S3A jars (make setup fetches them into .jars/)"
            )
        env[ENV_JARS_DIR] = jars_dir
        return env, spark_conf(S3Endpoint(url=endpoint_url), jars_dir)

    def _check_master(self) -> None:
        """Fail at task start, naming the connection, when no master of a standalone cluster answers."""
        master = self._get_hook()._connection["master"]
        failures = unreachable_masters(master)
        if failures and len(failures) == master.count(",") + 1:
            raise StageFailedError(
                f"stage {self.stage!r}: the Spark master {master} (connection {self._conn_id!r}) is not "
                f"reachable: {'; '.join(failures)}. Is the cluster up?"
            )

    def execute(self, context: Any) -> None:
        self._check_master()
        env, storage_conf = self._storage_settings()
        self.env_vars = {**(self.env_vars or {}), **env}
        # Stage-specific conf (set in the factory or the DAG) wins over the shared storage settings.
        self.conf = {**storage_conf, **(self.conf or {})}
        try:
            super().execute(context)
        except Exception as exc:
            raise StageFailedError(
                f"molescope stage {self.stage!r} failed for batch {self.batch_id!r}: {exc}"
            ) from exc
        ti = context["ti"]
        for key, uri in self.outputs.items():
            ti.xcom_push(key=key, value=uri)
            self.log.info("%s: %s", key, uri)
        if self.champion:
            self._announce_champion(context)
        if "report" in self.outputs:
            url = presigned_url(self.outputs["report"], self.s3_conn_id)
            ti.xcom_push(key=ReportLink().xcom_key, value=url)
            self.log.info("report link (valid 7 days): %s", url.split("?", 1)[0])

    def _announce_champion(self, context: Any) -> None:
        """Put the exact champion model into the `molescope_champion` event, for the scoring DAG."""
        models = self.champion["models"]
        payload = read_champion(models, self.s3_conn_id)
        extra = champion_extra(models, payload, self.champion.get("weights", ""), self.batch_id)
        context["outlet_events"][assets.CHAMPION].extra = extra
        self.log.info("champion: %s (weights %s)", extra["model_uri"], extra["weights"])
