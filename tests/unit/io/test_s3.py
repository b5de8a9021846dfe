"""molescope.io.s3: the one boto3 client factory is configured like the Spark side (no network needed)."""

from __future__ import annotations

import pytest

from molescope.core.sparkconf import S3Endpoint
from molescope.io import s3


def test_client_uses_the_spark_sides_endpoint_and_path_style(monkeypatch):
    monkeypatch.setenv("MOLESCOPE_S3_ENDPOINT", "http://seaweedfs:8333")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    client = s3.client(retries=3)
    assert client.meta.endpoint_url == "http://seaweedfs:8333"
    assert client.meta.region_name == "eu-west-3"
    assert client.meta.config.s3["addressing_style"] == "path"
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 4}


def test_virtual_host_style_and_aws_endpoint(monkeypatch):
    monkeypatch.delenv("MOLESCOPE_S3_ENDPOINT", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    client = s3.client(S3Endpoint(path_style=False, region="us-west-2"))
    assert client.meta.config.s3["addressing_style"] == "virtual"
    assert client.meta.region_name == "us-west-2"
    assert "amazonaws.com" in client.meta.endpoint_url


def test_split_uri():
    assert s3.split_uri("s3a://bucket/landing/b1/") == ("bucket", "landing/b1")
    assert s3.split_uri("s3://bucket/key.h5") == ("bucket", "key.h5")
    assert s3.is_s3_uri("s3a://b/k") and not s3.is_s3_uri("/local/k")
    with pytest.raises(ValueError, match="not an S3 URI"):
        s3.split_uri("/local/path")


def test_each_client_takes_the_credentials_the_environment_names_now(monkeypatch):
    """boto3's default session would keep the first credentials it resolved for the whole process."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "first-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "first-secret")
    first = s3.client()._request_signer._credentials.get_frozen_credentials()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "rotated-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "rotated-secret")
    rotated = s3.client()._request_signer._credentials.get_frozen_credentials()
    assert (first.access_key, first.secret_key) == ("first-key", "first-secret")
    assert (rotated.access_key, rotated.secret_key) == ("rotated-key", "rotated-secret")
