#!/usr/bin/env python3
"""Create the molescope bucket on the S3 service unless it exists (the compose one-shot job `bucket-init`).

Reads MOLESCOPE_S3_ENDPOINT (unset or empty: AWS S3), MOLESCOPE_BUCKET, AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY and AWS_REGION from the environment, like the jobs do. Retries while the endpoint is not
reachable yet; any other error (e.g. bad credentials) fails the job at once.
"""

from __future__ import annotations

import os
import sys
import time

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

ATTEMPTS = 30
PAUSE_S = 2.0
MISSING = {"404", "NoSuchBucket", "NotFound"}


def main() -> int:
    endpoint = os.environ.get("MOLESCOPE_S3_ENDPOINT") or None
    bucket = os.environ.get("MOLESCOPE_BUCKET") or "molescope"
    region = os.environ.get("AWS_REGION") or "us-east-1"
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
    )
    for _ in range(ATTEMPTS):
        try:
            s3.head_bucket(Bucket=bucket)
            print(f"bucket {bucket} exists at {endpoint or 'AWS S3'}")
            return 0
        except (EndpointConnectionError, ConnectionClosedError):
            time.sleep(PAUSE_S)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in MISSING:
                raise
            kwargs = {}
            if endpoint is None and region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
            s3.create_bucket(Bucket=bucket, **kwargs)
            print(f"bucket {bucket} created at {endpoint or 'AWS S3'}")
            return 0
    print(f"S3 endpoint {endpoint} not reachable after {ATTEMPTS} attempts", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
