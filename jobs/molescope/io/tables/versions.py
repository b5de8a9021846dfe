"""Versions: a table's data, written once into a fresh folder that nobody reads until a manifest names it.

A version folder is `<root>/batch_id=<id>/v<UTC time>-<random>/` for a table partitioned by batch,
`<root>/v.../` otherwise. `write_version` writes one; `read_files` reads the files a manifest names;
`delete_versions` removes the folders no manifest names any more (`molescope.io.tables.publishing`).
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from molescope.core import failpoints
from molescope.core.errors import InputError, InvariantError
from molescope.io import storage
from molescope.io.tables.naming import Table

log = logging.getLogger(__name__)

#: Name of a version folder: `v<UTC yyyymmddTHHMMSSZ>-<8 hex>`; only folders so named are ever deleted.
VERSION_FOLDER = re.compile(r"^v\d{8}T\d{6}Z-[0-9a-f]{8}$")


@dataclass(frozen=True)
class Version:
    """The data files of a published table (or batch partition), relative to the table root, and rows."""

    files: tuple[str, ...]
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return {"files": list(self.files), "rows": self.rows}

    @classmethod
    def from_dict(cls, payload: Any, source: str) -> Version:
        files, rows = (payload or {}).get("files"), (payload or {}).get("rows")
        if (
            not isinstance(files, list)
            or not all(isinstance(f, str) for f in files)
            or not isinstance(rows, int)
        ):
            raise InputError(f"{source}: not a manifest entry {{'files': [...], 'rows': n}}: {payload!r}")
        return cls(tuple(files), rows)

    def __add__(self, other: Version) -> Version:
        return Version(self.files + other.files, self.rows + other.rows)

    @property
    def folders(self) -> set[str]:
        """The version folders (relative) holding its files."""
        return {f.rsplit("/", 1)[0] for f in self.files}


EMPTY = Version((), 0)


def version_name() -> str:
    """A new version folder name: `v<UTC time>-<8 random hex>` (sorts by time, never repeats)."""
    return f"v{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(4)}"


def new_version_folder(table: Table, batch_id: str | None = None) -> str:
    return storage.join(table.folder(batch_id), version_name())


def delete_versions(spark: SparkSession, folder: str, keep: set[str]) -> list[str]:
    """Delete the version folders directly below `folder` whose names are not in `keep`; their URIs.

    Only folders named like a version (`VERSION_FOLDER`) are touched.
    """
    deleted = []
    for entry in storage.list_dir(spark, folder):
        if entry.is_dir and VERSION_FOLDER.match(entry.name) and entry.name not in keep:
            storage.delete(spark, entry.uri)
            deleted.append(entry.uri)
    if deleted:
        log.info("%s: deleted %d unpublished or superseded version(s)", folder, len(deleted))
    return deleted


def _data_files(listing: Sequence[storage.FileInfo]) -> list[storage.FileInfo]:
    """Data files of a written folder: committers' markers and checksums start with `_` or `.`."""
    return [f for f in listing if not f.name.startswith(("_", "."))]


def read_files(
    spark: SparkSession, table: Table, files: Sequence[str], schema: T.StructType | None = None
) -> DataFrame:
    """The rows of `files` (relative to the table root) with `schema` (default: the table's)."""
    schema = schema or table.schema
    if not files:
        return spark.createDataFrame([], schema)
    paths = [storage.literal(storage.join(table.root, f)) for f in files]
    # recursiveFileLookup: no partition discovery from folder names (batch_id is a column of the files).
    return spark.read.schema(schema).option("recursiveFileLookup", "true").parquet(*paths)


def count_rows(spark: SparkSession, table: Table, files: Sequence[str]) -> int:
    """Rows of `files` (relative to the table root), from the Parquet footers."""
    return read_files(spark, table, files).count() if files else 0


def write_version(
    spark: SparkSession,
    table: Table,
    df: DataFrame,
    batch_id: str | None = None,
    expected_rows: int | None = None,
) -> Version:
    """Write `df` (the table's columns) as a new, unpublished version; InvariantError when the rows written
    differ from `expected_rows`. Nothing reads it until a manifest names it (`publish`)."""
    folder = new_version_folder(table, batch_id)
    failpoints.pause(f"write:{table.name}")
    with storage.storage_errors(spark, "write", folder):
        df.select(*table.schema.fieldNames()).write.mode("errorifexists").parquet(folder)
    root = storage.qualified(spark, table.root)
    files = tuple(storage.relative(f.uri, root) for f in _data_files(storage.list_tree(spark, folder)))
    rows = count_rows(spark, table, files)
    if expected_rows is not None and rows != expected_rows:
        raise InvariantError(f"{folder}: wrote {rows} rows, expected {expected_rows}")
    return Version(files, rows)
