"""Manifests: what makes a table's versions visible, and the clean-up of the versions no manifest names.

A manifest is written last, with one atomic PUT (`molescope.io.storage.write_bytes`):
`{"tables": {"<name>": {"files": [...], "rows": n}}, ...}` naming the version's files, relative to the
table's root. One manifest per (table, batch); one may publish several tables at once (clean: images +
quarantine in the batch summary; score: predictions + quarantine in summary.json), so they never disagree.
After a publish, version folders of the same batch that the manifest (read again) does not name are deleted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from molescope.core import failpoints
from molescope.core.errors import InputError
from molescope.io import storage
from molescope.io.tables.naming import Table
from molescope.io.tables.versions import EMPTY, Version, delete_versions, write_version

#: Manifest keys: its layout version and the published tables ({name: {"files": [...], "rows": n}}).
FORMAT_KEY = "manifest_format"
MANIFEST_FORMAT = 1
TABLES_KEY = "tables"


def manifest(versions: Mapping[str, Version], **extra: Any) -> dict[str, Any]:
    """A manifest document publishing `versions` ({table name: version}), with `extra` keys beside them."""
    published = datetime.now(UTC).isoformat(timespec="seconds")
    tables = {name: version.to_dict() for name, version in versions.items()}
    return {**extra, FORMAT_KEY: MANIFEST_FORMAT, TABLES_KEY: tables, "published_at": published}


def publish(spark: SparkSession, uri: str, document: dict[str, Any]) -> None:
    """Make the versions `document` names the published ones: one atomic write of the manifest at `uri`."""
    failpoints.pause(f"publish:{next(iter(document[TABLES_KEY]))}")
    storage.write_json(spark, uri, document)


def read_manifest(spark: SparkSession, uri: str) -> dict[str, Any] | None:
    """The manifest at `uri`, None when there is none (nothing published yet)."""
    document = storage.read_optional_json(spark, uri)
    if document is not None and not isinstance(
        document.get(TABLES_KEY) if isinstance(document, dict) else None, dict
    ):
        raise InputError(f"{uri}: not a manifest (no {TABLES_KEY!r}); was it written by this version?")
    return document


def version_in(document: dict[str, Any] | None, table: Table, source: str) -> Version | None:
    """The version of `table` a manifest document publishes (None: the document does not publish it)."""
    if document is None or table.name not in document[TABLES_KEY]:
        return None
    return Version.from_dict(document[TABLES_KEY][table.name], source)


def published(spark: SparkSession, table: Table, batch_id: str | None = None) -> Version | None:
    """The published version of `table` (of its batch `batch_id`), None when nothing is published."""
    uri = table.manifest_uri(batch_id)
    return version_in(read_manifest(spark, uri), table, uri)


def published_batches(
    spark: SparkSession, table: Table, batches: Sequence[str] | None = None
) -> dict[str, Version]:
    """{batch_id: published version} of a partitioned table: every batch, or those of `batches`."""
    if batches is not None:
        found = {batch: published(spark, table, batch) for batch in batches}
        return {batch: version for batch, version in found.items() if version is not None}
    names = [f.name for f in storage.list_dir(spark, table.manifests) if not f.is_dir]
    ids = sorted(n[: -len(".json")] for n in names if n.endswith(".json") and not n.startswith(("_", ".")))
    return published_batches(spark, table, ids)


def collect_garbage(spark: SparkSession, table: Table, batch_id: str | None = None) -> list[str]:
    """Delete the version folders of `batch_id` that its manifest, read again now, does not name.

    Run after a publish: the folders of killed or superseded attempts go. Only folders named like a
    version are touched. Returns the deleted URIs.
    """
    failpoints.pause(f"collect:{table.name}")
    current = published(spark, table, batch_id) or EMPTY
    return delete_versions(spark, table.folder(batch_id), {f.rsplit("/", 1)[-1] for f in current.folders})


def replace(
    spark: SparkSession,
    table: Table,
    df: DataFrame,
    batch_id: str | None = None,
    expected_rows: int | None = None,
    **extra: Any,
) -> Version:
    """Write `df` as the table's (batch's) new version, publish it alone, and delete older versions."""
    version = write_version(spark, table, df, batch_id, expected_rows)
    publish(spark, table.manifest_uri(batch_id), manifest({table.name: version}, batch_id=batch_id, **extra))
    collect_garbage(spark, table, batch_id)
    return version
