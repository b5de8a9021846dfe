"""Small-file helpers and per-partition writes on local paths (the same code runs on s3a://)."""

from __future__ import annotations

from molescope import storage


def test_json_round_trip_and_listing(spark, tmp_path):
    uri = f"file://{tmp_path}/a/b/summary.json"
    storage.write_json(spark, uri, {"rows_in": 3, "classes": ["nv", "mel"]})
    assert storage.read_json(spark, uri) == {"rows_in": 3, "classes": ["nv", "mel"]}
    assert storage.exists(spark, uri)
    assert [size for _, size in storage.list_files(spark, f"file://{tmp_path}/a")] == [
        len(storage.read_bytes(spark, uri))
    ]
    storage.delete(spark, f"file://{tmp_path}/a")
    assert not storage.exists(spark, uri)


def test_write_partition_replaces_only_its_batch(spark, tmp_path):
    root = f"file://{tmp_path}/table"
    for batch, n in (("b1", 5), ("b2", 3)):
        storage.write_partition(
            spark.range(n).selectExpr("id", f"'{batch}' AS batch_id"), root, "batch_id", batch
        )
    storage.write_partition(spark.range(2).selectExpr("id", "'b1' AS batch_id"), root, "batch_id", "b1")
    counts = {r.batch_id: r["count"] for r in spark.read.parquet(root).groupBy("batch_id").count().collect()}
    assert counts == {"b1": 2, "b2": 3}


def test_join_collapses_slashes():
    assert storage.join("s3a://b/", "/runs/", "x") == "s3a://b/runs/x"
