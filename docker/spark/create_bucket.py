#!/usr/bin/env python3
"""Create the molescope bucket on the S3 service unless it exists (the compose one-shot job `bucket-init`).

The client is molescope's S3 client (`molescope.io.s3`): endpoint from MOLESCOPE_S3_ENDPOINT (unset or empty:
AWS S3), credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, region from AWS_REGION, like the jobs.
botocore's standard retry mode waits (with backoff) while the endpoint is not reachable yet; any other error
(e.g. bad credentials) fails the job at once.
"""

from __future__ import annotations

import os
import sys

from botocore.exceptions import ClientError, EndpointConnectionError

from molescope.io import s3

#: Retries while the S3 service starts (botocore backoff: about a minute in all).
RETRIES = 10
MISSING = {"404", "NoSuchBucket", "NotFound"}


def main() -> int:
    bucket = os.environ.get("MOLESCOPE_BUCKET") or "molescope"
    client = s3.client(retries=RETRIES)
    where = os.environ.get("MOLESCOPE_S3_ENDPOINT") or "AWS S3"
    try:
        client.head_bucket(Bucket=bucket)
        print(f"bucket {bucket} exists at {where}")
        return 0
    except EndpointConnectionError as exc:
        print(f"S3 endpoint {where} not reachable after {RETRIES} retries: {exc}", file=sys.stderr)
        return 1
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in MISSING:
            raise
    region = client.meta.region_name
    kwargs = {}
    if not os.environ.get("MOLESCOPE_S3_ENDPOINT") and region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    client.create_bucket(Bucket=bucket, **kwargs)
    print(f"bucket {bucket} created at {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
