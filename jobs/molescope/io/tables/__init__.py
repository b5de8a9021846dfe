"""The tables the stages hand each other: schemas (their writer's `select` contract), publishing, readers.

Publishing. A table's data is written once per version, into a fresh folder nobody reads yet
(`<root>/batch_id=<id>/v<UTC time>-<random>/` for a table partitioned by batch, `<root>/v.../` otherwise),
and made visible by a small manifest written last with one atomic PUT (`molescope.io.storage.write_bytes`):
`{"tables": {"<name>": {"files": [...], "rows": n}}, ...}` naming the version's files, relative to the
table's root. Readers read exactly the files manifests name (never by listing folders), so a job killed at
any point (before a task committed, after some did, in the middle of the job commit) leaves files nobody
reads, and its re-run writes a new version; a re-run that fails never touches the manifest, so the last good
version stays in place. One manifest per (table, batch): runs on different batches never write the same
object. After a publish, version folders of the same batch that the manifest (read again) does not name are
deleted. docs/architecture.md, "Failure semantics", says what each stage leaves.

A manifest may publish several tables at once (clean: images + quarantine in the batch summary; score:
predictions + quarantine in summary.json), so they never disagree.

Readers pass the schema explicitly: an empty or half-written table reads as what its manifest says, and a
`batch_id` of "007" stays a string (it is a column of the data files, not parsed from folder names).
docs/architecture.md describes each table; `molescope.core.registry` holds the folder and file names.

Modules, each importing only those above it:
- `schemas`: the table schemas and the helpers that shape a frame to one (`conform`, `to_quarantine`);
- `naming`: `Table` and where each table lives (`curated_images`, `features_table`, `run_table`, ...);
- `versions`: `Version`, writing a version (`write_version`) and reading its files (`read_files`);
- `publishing`: manifests (`manifest`, `publish`, `published`), `collect_garbage` and `replace`;
- `reading`: `read_table`, `read_curated`, `read_features`, `with_curated_images`.

Use the names exported here (`from molescope.io import tables`; `tables.read_table`). A name is looked up in
the module that defines it: a test that replaces one for code inside this package patches that module.
"""

from __future__ import annotations

from molescope.io.tables.naming import (
    BATCH_COLUMN,
    Table,
    curated_images,
    curated_quarantine,
    features_table,
    model_predictions,
    run_table,
    train_set,
)
from molescope.io.tables.publishing import (
    FORMAT_KEY,
    MANIFEST_FORMAT,
    TABLES_KEY,
    collect_garbage,
    manifest,
    publish,
    published,
    published_batches,
    read_manifest,
    replace,
    version_in,
)
from molescope.io.tables.reading import (
    REF_URI_KEY,
    read_curated,
    read_features,
    read_ref,
    read_table,
    resolve_features_uri,
    with_curated_images,
)
from molescope.io.tables.schemas import (
    CURATED_IMAGE_SCHEMA,
    CURATED_SCHEMA,
    FEATURE_COLUMNS,
    FEATURES_SCHEMA,
    PREDICTIONS_SCHEMA,
    QUARANTINE_SCHEMA,
    TRAIN_SET_COLUMNS,
    TRAIN_SET_SCHEMA,
    conform,
    quarantine_of,
    to_quarantine,
)
from molescope.io.tables.versions import (
    EMPTY,
    VERSION_FOLDER,
    Version,
    count_rows,
    delete_versions,
    new_version_folder,
    read_files,
    version_name,
    write_version,
)

__all__ = [
    "BATCH_COLUMN",
    "CURATED_IMAGE_SCHEMA",
    "CURATED_SCHEMA",
    "EMPTY",
    "FEATURES_SCHEMA",
    "FEATURE_COLUMNS",
    "FORMAT_KEY",
    "MANIFEST_FORMAT",
    "PREDICTIONS_SCHEMA",
    "QUARANTINE_SCHEMA",
    "REF_URI_KEY",
    "TABLES_KEY",
    "TRAIN_SET_COLUMNS",
    "TRAIN_SET_SCHEMA",
    "VERSION_FOLDER",
    "Table",
    "Version",
    "collect_garbage",
    "conform",
    "count_rows",
    "curated_images",
    "curated_quarantine",
    "delete_versions",
    "features_table",
    "manifest",
    "model_predictions",
    "new_version_folder",
    "publish",
    "published",
    "published_batches",
    "quarantine_of",
    "read_curated",
    "read_features",
    "read_files",
    "read_manifest",
    "read_ref",
    "read_table",
    "replace",
    "resolve_features_uri",
    "run_table",
    "to_quarantine",
    "train_set",
    "version_in",
    "version_name",
    "with_curated_images",
    "write_version",
]
