"""Small-file I/O and listings on any Hadoop URI (s3a://, file://, plain paths) via the JVM FileSystem API.

Spark reads and writes the tables (`molescope.io.tables`); these helpers carry the JSON summaries, manifests,
reports and model sidecars, and list folders, so that one URI scheme works everywhere without a second client
library. The main user of the JVM through py4j (docs/architecture.md lists the others).

Crash safety. `write_bytes` replaces a file atomically: a reader sees the old content or the new, never a
part. On an object store (S3A, GCS) that is what one PUT does (the object appears when the upload
completes); on a local disk the bytes go to a hidden temporary file that is renamed over the target; on any
other Hadoop filesystem (HDFS) through FileContext's rename with OVERWRITE.

Literal paths. Hadoop and Spark treat `* ? [ ] { } \\` in a path as a glob. Listings here take URIs
literally; `literal(uri)` escapes a URI for the Spark readers that glob.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyspark.sql import SparkSession

from molescope.core.errors import StorageError

#: Bytes per call between Python and the JVM: large files (a converted ResNet50 is ~94 MB) move in pieces
#: instead of one driver-heap-sized message.
CHUNK_BYTES = 8 << 20
#: Filesystems where a created file becomes visible, whole, when its stream closes (one PUT / upload).
OBJECT_STORE_SCHEMES = frozenset({"s3a", "s3", "s3n", "gs"})
LOCAL_SCHEME = "file"
#: Characters Hadoop's glob (and so Spark's file readers) give a meaning.
GLOB_CHARACTERS = re.compile(r"([\\*?\[\]{}])")
#: Java exceptions that are the storage's answer (disk full, permission, unreachable, missing).
JAVA_IO_EXCEPTION = "java.io.IOException"


def _path(spark: SparkSession, uri: str):
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs, path


# ------------------------------------------------------------------------------------------------ errors


def _java_throwable(error: BaseException) -> Any:
    """The Java throwable behind a py4j / PySpark exception, or None."""
    return getattr(error, "java_exception", None) or getattr(error, "_origin", None)


def root_cause(error: BaseException) -> str:
    """One line: the innermost Java cause of `error` (`IOException: No space left on device`) or its text."""
    throwable = _java_throwable(error)
    if throwable is not None:
        *_, cause = _chain(throwable)
        message = cause.getMessage() or ""
        text = f"{cause.getClass().getSimpleName()}: {message}"
    else:
        text = f"{type(error).__name__}: {error}"
    return " ".join(text.split())


def _chain(throwable: Any) -> Iterator[Any]:
    """`throwable` and its causes, outermost first (at most 50: a cycle must not hang the error path)."""
    seen = 0
    while throwable is not None and seen < 50:
        yield throwable
        throwable, seen = throwable.getCause(), seen + 1


def is_storage_failure(spark: SparkSession, error: BaseException) -> bool:
    """True when `error` is an OSError or a Java error with an IOException in its chain of causes: the
    storage refused (a full disk, a denied write, an unreachable endpoint, a missing bucket, refused
    credentials: S3A wraps the SDK's exception in an IOException such as AccessDeniedException)."""
    if isinstance(error, OSError):
        return True
    io_class = spark.sparkContext._jvm.java.lang.Class.forName(JAVA_IO_EXCEPTION)
    return any(io_class.isInstance(t) for t in _chain(_java_throwable(error)))


@contextlib.contextmanager
def storage_errors(spark: SparkSession, action: str, uri: str) -> Iterator[None]:
    """Turn the storage's refusals inside the block into one StorageError naming `action` and `uri`."""
    try:
        yield
    except StorageError:
        raise
    except Exception as error:
        if is_storage_failure(spark, error):
            raise StorageError(f"cannot {action} {uri}: {root_cause(error)}") from error
        raise


#: A URI or absolute path in a Java error's message (`getFileStatus on s3a://bucket/key: ...`).
_MENTIONED_PATH = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s:;,]+|(?<![\w/])/[\w.\[\]=~-]+(?:/[\w.\[\]=~-]+)+")


def failure_path(error: BaseException) -> str | None:
    """The first URI or path a Java error's chain of causes names (outermost first), or None."""
    for throwable in _chain(_java_throwable(error)):
        found = _MENTIONED_PATH.search(throwable.getMessage() or "")
        if found:
            return found.group(0)
    return None


@contextlib.contextmanager
def job_storage_errors(spark: SparkSession) -> Iterator[None]:
    """Around a whole stage: a storage refusal that surfaces anywhere (a lazy read failing in a later
    action, an executor's write task) becomes one StorageError naming the path the error names and the
    innermost cause, instead of a Python and a Java stack. Other errors (Python's own OSErrors included,
    which the CLI already reports on one line) pass unchanged."""
    try:
        yield
    except StorageError:
        raise
    except Exception as error:
        if _java_throwable(error) is not None and is_storage_failure(spark, error):
            where = failure_path(error) or "an unnamed path"
            raise StorageError(f"storage failed at {where}: {root_cause(error)}") from error
        raise


# ------------------------------------------------------------------------------------------- small files


def _write_local(target: str, data: bytes) -> None:
    """Write `data` to a hidden temporary file beside `target`, sync it and rename it over `target`."""
    folder, name = os.path.split(target)
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # Hadoop's local filesystem checks a `.<name>.crc` beside a file it reads; one left by an earlier
        # Hadoop write would not match the new bytes. Removed first: a reader then reads old bytes unchecked.
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, f".{name}.crc"))
        os.replace(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)


def _write_stream(fs: Any, path: Any, data: bytes) -> None:
    stream = fs.create(path, True)
    try:
        for start in range(0, len(data), CHUNK_BYTES):
            stream.write(bytearray(data[start : start + CHUNK_BYTES]))
    finally:
        stream.close()


def _write_renamed(spark: SparkSession, fs: Any, path: Any, data: bytes) -> None:
    """Write a temporary file beside `path`, then rename it over `path` (atomic on HDFS)."""
    jvm = spark.sparkContext._jvm
    temporary = jvm.org.apache.hadoop.fs.Path(path.getParent(), f".{path.getName()}.{uuid.uuid4().hex}.tmp")
    _write_stream(fs, temporary, data)
    context = jvm.org.apache.hadoop.fs.FileContext.getFileContext(
        path.toUri(), spark.sparkContext._jsc.hadoopConfiguration()
    )
    rename = jvm.org.apache.hadoop.fs.Options.Rename
    options = spark.sparkContext._gateway.new_array(rename, 1)
    options[0] = rename.OVERWRITE
    context.rename(temporary, path, options)


def write_bytes(spark: SparkSession, uri: str, data: bytes) -> None:
    """Replace `uri` with `data` atomically (see the module docstring); StorageError when refused."""
    fs, path = _path(spark, uri)
    scheme = fs.getScheme()
    with storage_errors(spark, "write", uri):
        if scheme == LOCAL_SCHEME:
            _write_local(path.toUri().getPath(), data)
        elif scheme in OBJECT_STORE_SCHEMES:
            _write_stream(fs, path, data)
        else:
            _write_renamed(spark, fs, path, data)


def read_bytes(spark: SparkSession, uri: str) -> bytes:
    """Read one whole file (JSON, sidecars, weights, converted models) through the driver's Hadoop client."""
    fs, path = _path(spark, uri)
    with storage_errors(spark, "read", uri):
        found = fs.exists(path)
    if not found:
        raise FileNotFoundError(uri)
    chunks = []
    with storage_errors(spark, "read", uri):
        stream = fs.open(path)
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


def read_optional_json(spark: SparkSession, uri: str) -> Any:
    """The JSON document at `uri`, or None when there is none."""
    try:
        return read_json(spark, uri)
    except FileNotFoundError:
        return None


def exists(spark: SparkSession, uri: str) -> bool:
    fs, path = _path(spark, uri)
    with storage_errors(spark, "look up", uri):
        return bool(fs.exists(path))


def delete(spark: SparkSession, uri: str) -> None:
    fs, path = _path(spark, uri)
    with storage_errors(spark, "delete", uri):
        if fs.exists(path):
            fs.delete(path, True)


# ---------------------------------------------------------------------------------------------- listings


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
    """The immediate children of `uri`, taken literally; [] when it does not exist (S3: an empty folder)."""
    fs, path = _path(spark, uri)
    with storage_errors(spark, "list", uri):
        if not fs.exists(path):
            return []
        return [FileInfo.of(status) for status in fs.listStatus(path)]


def list_tree(spark: SparkSession, uri: str) -> list[FileInfo]:
    """Every file below `uri`, at any depth, sorted by URI: empty and hidden (`.x`, `_x`) files included.

    One listing per folder (not per file). FileNotFoundError when `uri` does not exist.
    """
    fs, path = _path(spark, uri)
    with storage_errors(spark, "list", uri):
        there = fs.exists(path)
    if not there:
        raise FileNotFoundError(uri)
    found: list[FileInfo] = []
    folders = [uri]
    while folders:
        for entry in list_dir(spark, folders.pop()):
            if entry.is_dir:
                folders.append(entry.uri)
            else:
                found.append(entry)
    return sorted(found, key=lambda f: f.uri)


# ------------------------------------------------------------------------------------------------- paths


def join(base: str, *parts: str) -> str:
    """Join URI segments with single slashes."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def partition_uri(root: str, column: str, value: str) -> str:
    """Hive-style partition folder `<root>/<column>=<value>`."""
    return join(root, f"{column}={value}")


def qualified(spark: SparkSession, uri: str) -> str:
    """`uri` as listings print it (`/tmp/x` → `file:/tmp/x`), so that listed URIs can be made relative."""
    fs, path = _path(spark, uri)
    return fs.makeQualified(path).toString()


def literal(uri: str) -> str:
    """`uri` with glob characters escaped, for Spark readers (which glob every path they are given)."""
    return GLOB_CHARACTERS.sub(r"\\\1", uri)


def relative(uri: str, root: str) -> str:
    """`uri` relative to `root` (both as listings print them); ValueError when it is not below `root`."""
    base = root.rstrip("/") + "/"
    if not uri.startswith(base):
        raise ValueError(f"{uri} is not below {root}")
    return uri[len(base) :]
