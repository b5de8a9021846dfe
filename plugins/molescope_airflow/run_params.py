"""Record a run's effective parameters next to its outputs (`<run>/params.json`)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlparse

from molescope.core.registry import PARAMS_FILE


def params_document(params: dict[str, Any], run_id: str, logical_date: str | None) -> str:
    """The JSON written to `<run>/params.json`: what the run was asked to do, nothing secret."""
    return json.dumps(
        {"run_id": run_id, "logical_date": logical_date, "params": dict(params)},
        indent=2,
        sort_keys=True,
        default=str,
    )


def write_params(run_uri: str, document: str, s3_conn_id: str) -> str:
    """Write `document` to `<run_uri>/params.json` through the S3 connection; returns the object URI."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    parsed = urlparse(run_uri)
    key = f"{parsed.path.strip('/')}/{PARAMS_FILE}"
    S3Hook(aws_conn_id=s3_conn_id).load_string(document, key=key, bucket_name=parsed.netloc, replace=True)
    return f"{parsed.scheme}://{parsed.netloc}/{key}"
