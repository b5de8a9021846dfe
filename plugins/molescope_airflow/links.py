"""Operator extra link: a button on the report task that opens the run's report.html."""

from __future__ import annotations

from urllib.parse import urlparse

from airflow.sdk import BaseHook, BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

#: Presigned report URLs stay valid for 7 days, the S3 SigV4 maximum.
PRESIGN_SECONDS = 7 * 24 * 3600


class ReportLink(BaseOperatorLink):
    """Links to the report of the run; the URL is stored in XCom by the task when it succeeds."""

    name = "Report"

    def get_link(self, operator, *, ti_key) -> str:
        # Only tasks with a report output push the URL; asking the others' XCom logs a "not found" error.
        if "report" not in (getattr(operator, "outputs", None) or {}):
            return ""
        return XCom.get_value(ti_key=ti_key, key=self.xcom_key) or ""


def presigned_url(uri: str, s3_conn_id: str) -> str:
    """An HTTP(S) URL for the s3a:// object `uri` that a browser can open without credentials."""
    import boto3
    from botocore.config import Config

    parsed = urlparse(uri)
    conn = BaseHook.get_connection(s3_conn_id)
    client = boto3.client(
        "s3",
        endpoint_url=conn.extra_dejson.get("endpoint_url") or None,
        aws_access_key_id=conn.login or None,
        aws_secret_access_key=conn.password or None,
        region_name=conn.extra_dejson.get("region_name") or "us-east-1",
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
    )
    return client.generate_presigned_url(
        "get_object",
        Params={"Bucket": parsed.netloc, "Key": parsed.path.lstrip("/"), "ResponseContentType": "text/html"},
        ExpiresIn=PRESIGN_SECONDS,
    )
