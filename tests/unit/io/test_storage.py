"""Small-file helpers, literal paths and listings on local paths (the same code runs on s3a://)."""

from __future__ import annotations

import os

import pytest

from molescope.core.errors import StorageError
from molescope.io import storage


def test_json_round_trip_and_listing(spark, tmp_path):
    uri = f"file://{tmp_path}/a/b/summary.json"
    storage.write_json(spark, uri, {"rows_in": 3, "classes": ["nv", "mel"]})
    assert storage.read_json(spark, uri) == {"rows_in": 3, "classes": ["nv", "mel"]}
    assert storage.exists(spark, uri)
    assert [f.size for f in storage.list_tree(spark, f"file://{tmp_path}/a")] == [
        len(storage.read_bytes(spark, uri))
    ]
    storage.delete(spark, f"file://{tmp_path}/a")
    assert not storage.exists(spark, uri)
    assert storage.read_optional_json(spark, uri) is None


def test_local_writes_replace_atomically_and_leave_no_temporary_file(spark, tmp_path):
    target = tmp_path / "out" / "doc.json"
    # A checksum an earlier Hadoop write left: it must not make the new bytes unreadable.
    storage.write_bytes(spark, str(target), b"old")
    (target.parent / ".doc.json.crc").write_bytes(b"stale checksum")
    storage.write_bytes(spark, str(target), b"new content")
    assert target.read_bytes() == b"new content"
    assert storage.read_bytes(spark, str(target)) == b"new content"
    assert sorted(os.listdir(target.parent)) == ["doc.json"]


def test_renamed_write_replaces_through_file_context(spark, tmp_path):
    """The path for filesystems other than local and object stores (HDFS): temporary file + rename."""
    target = tmp_path / "doc.bin"
    target.write_bytes(b"old")
    fs, path = storage._path(spark, f"file://{target}")
    storage._write_renamed(spark, fs, path, b"replaced")
    assert target.read_bytes() == b"replaced"
    assert [name for name in os.listdir(tmp_path) if not name.endswith(".crc")] == ["doc.bin"]


def test_list_tree_counts_empty_and_hidden_files_and_takes_names_literally(spark, tmp_path):
    batch = tmp_path / "batch[1]{x}"
    (batch / "sub" / ".thumbs").mkdir(parents=True)
    (batch / "a.jpg").write_bytes(b"abc")
    (batch / "empty.jpg").write_bytes(b"")
    (batch / "_hidden.jpg").write_bytes(b"h")
    (batch / "sub" / ".thumbs" / "t.jpg").write_bytes(b"t")
    root = storage.qualified(spark, str(batch))
    listed = {storage.relative(f.uri, root): f.size for f in storage.list_tree(spark, str(batch))}
    assert listed == {"a.jpg": 3, "empty.jpg": 0, "_hidden.jpg": 1, "sub/.thumbs/t.jpg": 1}
    with pytest.raises(FileNotFoundError):
        storage.list_tree(spark, str(tmp_path / "missing"))


def test_literal_paths_are_read_by_spark_as_named(spark, tmp_path):
    batch = tmp_path / "batch[1]"
    batch.mkdir()
    (batch / "a.txt").write_text("x")
    (tmp_path / "batch1").mkdir()  # what the glob `batch[1]` would match instead
    (tmp_path / "batch1" / "b.txt").write_text("y")
    rows = spark.read.text(storage.literal(str(batch))).collect()
    assert [r.value for r in rows] == ["x"]
    assert storage.literal("s3a://b/x*?{a,b}\\") == "s3a://b/x\\*\\?\\{a,b\\}\\\\"


def test_refused_write_is_one_storage_error_naming_the_path(spark, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder is needed")
    with pytest.raises(StorageError, match=r"cannot write .*file/x\.json"):
        storage.write_bytes(spark, str(blocker / "x.json"), b"{}")


def test_join_and_relative():
    assert storage.join("s3a://b/", "/runs/", "x") == "s3a://b/runs/x"
    assert storage.relative("s3a://b/t/batch_id=1/v/p.parquet", "s3a://b/t/") == "batch_id=1/v/p.parquet"
    with pytest.raises(ValueError, match="not below"):
        storage.relative("s3a://b/other/p", "s3a://b/t")


def java_open(spark, uri: str):
    """A real Java IOException through py4j: open a file that does not exist via Hadoop's FileSystem."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).open(path)


def test_a_java_storage_failure_anywhere_in_a_stage_is_one_storage_error(spark, tmp_path):
    missing = tmp_path / "nowhere" / "part-0.parquet"
    with pytest.raises(StorageError) as raised, storage.job_storage_errors(spark):
        java_open(spark, f"file:{missing}")
    message = str(raised.value)
    assert message.startswith(f"storage failed at {missing}: FileNotFoundException: ")
    assert "\n" not in message


def test_other_errors_pass_the_job_guard_unchanged(spark, tmp_path):
    with pytest.raises(FileNotFoundError), storage.job_storage_errors(spark):
        raise FileNotFoundError(str(tmp_path / "missing"))  # Python's own: the CLI reports it as it is
    with pytest.raises(ValueError, match="not storage"), storage.job_storage_errors(spark):
        raise ValueError("not storage")


@pytest.mark.parametrize(
    ("message", "path"),
    [
        (
            "getFileStatus on s3a://bucket/landing/b1: software.amazon.SdkException: refused",
            "s3a://bucket/landing/b1",
        ),
        (
            "Mkdirs failed to create file:/data/curated/images/batch_id=b1 (exists=false)",
            "/data/curated/images/batch_id=b1",
        ),
        ("Connection refused", None),
    ],
)
def test_failure_path_is_the_first_path_the_java_chain_names(spark, message, path):
    jvm = spark.sparkContext._jvm
    error = type("Captured", (Exception,), {})()
    error.java_exception = jvm.java.io.IOException("wrapper", jvm.java.io.IOException(message))
    assert storage.failure_path(error) == path
