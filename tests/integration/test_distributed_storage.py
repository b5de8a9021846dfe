"""What a Horovod rank does with s3a:// staging (molescope.distributed.launch), against the real SeaweedFS
server: read its shard with pyarrow's S3 client configured like S3A from the environment, and save the
model."""

from __future__ import annotations

import io

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from molescope.distributed import common
from molescope.models.keras_head import build_keras_head

pytestmark = pytest.mark.integration


@pytest.fixture
def rank_env(s3_server, monkeypatch):
    """The variables an executor (and so a rank) has: endpoint, region and credentials, nothing else."""
    monkeypatch.setenv("MOLESCOPE_S3_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    return s3_server


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def test_a_rank_reads_its_shard_and_saves_the_model_on_s3(rank_env, tmp_path):
    client, bucket = rank_env.client(), rank_env.bucket
    staging = f"s3a://{bucket}/distributed-test/staging"
    for rank, ids in enumerate((["a", "b", "c"], ["d"])):
        table = pa.table({"image_id": ids, "label": list(range(len(ids)))})
        key = f"distributed-test/staging/train/_shard={rank}/part-0000{rank}.parquet"
        client.put_object(Bucket=bucket, Key=key, Body=parquet_bytes(table))
    train = common.join(staging, "train")
    assert common.read_shard(train, 0).column("image_id").to_pylist() == ["a", "b", "c"]
    assert common.read_shard(train, 1).column("image_id").to_pylist() == ["d"]
    assert common.read_shard(train, 2) is None

    model = build_keras_head(4, 0.0, 1e-3, seed=1)
    common.save_model(model, common.join(staging, common.MODEL_FILE))
    saved = rank_env.get(f"distributed-test/staging/{common.MODEL_FILE}")
    assert saved[:2] == b"PK"  # a .keras file is a zip archive
    path = tmp_path / common.MODEL_FILE
    path.write_bytes(saved)
    reloaded = keras.models.load_model(path)
    for a, b in zip(model.get_weights(), reloaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_unknown_staging_scheme_is_refused():
    with pytest.raises(common.DistributedTrainingError, match="use a local path, file: or s3a://"):
        common.filesystem("hdfs://namenode/staging")
