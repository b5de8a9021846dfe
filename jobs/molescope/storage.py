"""Small-file I/O and listings on any Hadoop URI (s3a://, file://, plain paths) via the JVM FileSystem API.

Spark reads and writes the tables; these helpers carry the JSON summaries, reports and model sidecars, and
list folders, so that one URI scheme works everywhere without a second client library. The only module that
talks to the JVM through py4j.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pyspark.sql import SparkSession

#: Bytes per call between Python and the JVM: large files (a converted ResNet50 is ~94 MB) move in pieces
#: instead of one driver-heap-sized message.
CHUNK_BYTES = 8 << 20


def _path(spark: SparkSession, uri: str):
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs, path


def write_bytes(spark: SparkSession, uri: str, data: bytes) -> None:
    """Write `data` to `uri`, replacing what was there."""
    fs, path = _path(spark, uri)
    stream = fs.create(path, True)
    try:
        for start in range(0, len(data), CHUNK_BYTES):
            stream.write(bytearray(data[start : start + CHUNK_BYTES]))
    finally:
        stream.close()


def read_bytes(spark: SparkSession, uri: str) -> bytes:
    """Read one whole file (JSON, sidecars, weights, converted models) through the driver's Hadoop client."""
    fs, path = _path(spark, uri)
    if not fs.exists(path):
        raise FileNotFoundError(uri)
    stream = fs.open(path)
    chunks = []
    try:
        while chunk := stream.readNBytes(CHUNK_BYTES):
            chunks.append(bytes(chunk))
    finally:
        stream.close()
    return b"".join(chunks)


def write_text(spark: SparkSession, uri: str, text: str) -> None:
    write_bytes(spark, uri, text.encode("utf-8"))


def read_text(spark: SparkSession, uri: str) -> str:
    return read_bytes(spark, uri).decode("utf-8")


def write_json(spark: SparkSession, uri: str, payload: Any) -> None:
    write_text(spark, uri, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_json(spark: SparkSession, uri: str) -> Any:
    return json.loads(read_text(spark, uri))


def exists(spark: SparkSession, uri: str) -> bool:
    fs, path = _path(spark, uri)
    return bool(fs.exists(path))


def delete(spark: SparkSession, uri: str) -> None:
    fs, path = _path(spark, uri)
    if fs.exists(path):
        fs.delete(path, True)


@dataclass(frozen=True)
class FileInfo:
    """One entry of a listing or glob."""

    uri: str
    name: str
    size: int
    is_dir: bool
    modified_ms: int

    @classmethod
    def of(cls, status: Any) -> FileInfo:
        path = status.getPath()
        return cls(
            path.toString(),
            path.getName(),
            int(status.getLen()),
            bool(status.isDirectory()),
            int(status.getModificationTime()),
        )


def glob(spark: SparkSession, pattern: str) -> list[FileInfo]:
    """Entries matching a Hadoop glob pattern (`*`, `{a,b}`, ...): one call, however many folders it spans."""
    fs, path = _path(spark, pattern)
    return [FileInfo.of(status) for status in fs.globStatus(path) or []]


def list_dir(spark: SparkSession, uri: str) -> list[FileInfo]:
    """The immediate children of `uri`; [] when it does not exist (on S3: an empty "folder" does not)."""
    fs, path = _path(spark, uri)
    if not fs.exists(path):
        return []
    return [FileInfo.of(status) for status in fs.listStatus(path)]


def list_files(spark: SparkSession, uri: str, recursive: bool = True) -> list[tuple[str, int]]:
    """(uri, size) of every file below `uri`."""
    fs, path = _path(spark, uri)
    if not fs.exists(path):
        return []
    found = []
    iterator = fs.listFiles(path, recursive)
    while iterator.hasNext():
        status = iterator.next()
        found.append((status.getPath().toString(), int(status.getLen())))
    return found


def join(base: str, *parts: str) -> str:
    """Join URI segments with single slashes."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def partition_uri(root: str, column: str, value: str) -> str:
    """Hive-style partition folder `<root>/<column>=<value>`."""
    return join(root, f"{column}={value}")


def write_partition(df, root: str, column: str, value: str, mode: str = "overwrite") -> str:
    """Write `df` (without `column`) as the one partition `<root>/<column>=<value>` and return its URI.

    The S3A magic committer cannot do Spark's dynamic partition overwrite, so stages replace exactly the
    partition of the batch they process by writing to its folder; readers of `root` see `column` again
    through partition discovery. Re-running a batch rewrites that folder and touches no other.
    """
    target = partition_uri(root, column, value)
    df.drop(column).write.mode(mode).parquet(target)
    return target
