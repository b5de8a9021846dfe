"""The one boto3 S3 client factory, configured like the Spark side (`molescope.core.sparkconf.S3Endpoint`).

The endpoint comes from `MOLESCOPE_S3_ENDPOINT` (unset: AWS S3), path-style addressing as S3A uses it, and
credentials from the standard AWS environment (`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`), the same
variables S3A reads; nothing here takes a secret. boto3 is imported when a client is made: the CLI and the
DAG files stay light. Airflow tasks use the `molescope_s3` connection through the S3 hook instead.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

from molescope.core.sparkconf import S3Endpoint

#: Connection errors and throttling are retried with backoff (botocore's standard mode) this many times.
DEFAULT_RETRIES = 5
S3_SCHEMES = ("s3a", "s3")


def client(endpoint: S3Endpoint | None = None, *, retries: int = DEFAULT_RETRIES) -> Any:
    """A boto3 S3 client for `endpoint` (default: `S3Endpoint.from_env()`)."""
    import boto3
    from botocore.config import Config

    endpoint = endpoint or S3Endpoint.from_env()
    config = Config(
        s3={"addressing_style": "path" if endpoint.path_style else "virtual"},
        retries={"max_attempts": retries, "mode": "standard"},  # botocore: retries after the first try
    )
    region = os.environ.get("AWS_REGION") or endpoint.region
    # A session of its own: boto3's default session keeps the credentials it resolved first, so a process
    # whose environment names other credentials later (a rotated key, a test's own server) would sign with
    # the old ones.
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint.url, region_name=region, config=config)


def is_s3_uri(uri: str) -> bool:
    return urlparse(uri).scheme in S3_SCHEMES


def split_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of an `s3a://` or `s3://` URI; ValueError for any other scheme."""
    parsed = urlparse(uri)
    if parsed.scheme not in S3_SCHEMES:
        raise ValueError(f"not an S3 URI: {uri}")
    return parsed.netloc, parsed.path.strip("/")
