"""Operator extra link: a button on the report task that opens the run's report.html."""

from __future__ import annotations

from urllib.parse import urlparse

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

#: Presigned report URLs stay valid for 7 days, the S3 SigV4 maximum.
PRESIGN_SECONDS = 7 * 24 * 3600
#: botocore settings of the S3 hook: path-style addressing, as the Spark side uses (sparkconf.S3Endpoint),
#: so that an S3-compatible endpoint by host name works; SigV4, the only signature presigned URLs need.
S3_CLIENT_CONFIG = {"s3": {"addressing_style": "path"}, "signature_version": "s3v4"}


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
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    parsed = urlparse(uri)
    params = {"Bucket": parsed.netloc, "Key": parsed.path.lstrip("/"), "ResponseContentType": "text/html"}
    hook = S3Hook(aws_conn_id=s3_conn_id, config=S3_CLIENT_CONFIG)
    url = hook.generate_presigned_url("get_object", params=params, expires_in=PRESIGN_SECONDS)
    if url is None:
        raise ValueError(f"cannot presign {uri} with connection {s3_conn_id!r} (see the error above)")
    return url
