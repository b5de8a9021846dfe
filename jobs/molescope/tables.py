"""The tables the stages hand each other: schemas (their writer's `select` contract), publishing, readers.

Publishing. A table's data is written once per version, into a fresh folder nobody reads yet
(`<root>/batch_id=<id>/v<UTC time>-<random>/` for a table partitioned by batch, `<root>/v.../` otherwise),
and made visible by a small manifest written last with one atomic PUT (`molescope.storage.write_bytes`):
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
docs/architecture.md describes each table; `molescope.registry` holds the folder and file names.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from molescope import failpoints, storage
from molescope.errors import InputError, InvariantError
from molescope.registry import (
    FEATURES_REF_SUFFIX,
    IMAGES_DIR,
    MANIFEST_FILE,
    MANIFESTS_DIR,
    PREDICTIONS_DIR,
    QUARANTINE_DIR,
    SUMMARIES_DIR,
    TRAIN_SET_DIR,
    validate_batch_id,
)

log = logging.getLogger(__name__)

CURATED_SCHEMA = T.StructType(
    [
        T.StructField("image_id", T.StringType()),
        T.StructField("lesion_id", T.StringType()),
        T.StructField("dx", T.StringType()),
        T.StructField("dx_type", T.StringType()),
        T.StructField("age", T.DoubleType()),
        T.StructField("sex", T.StringType()),
        T.StructField("localization", T.StringType()),
        T.StructField("dataset", T.StringType()),
        T.StructField("split", T.StringType()),
        T.StructField("width", T.IntegerType()),
        T.StructField("height", T.IntegerType()),
        T.StructField("sha256", T.StringType()),
        T.StructField("image", T.BinaryType()),
        T.StructField("source_path", T.StringType()),
        T.StructField("batch_id", T.StringType()),
    ]
)
#: The curated columns that image consumers read (augment, finetune).
CURATED_IMAGE_SCHEMA = T.StructType(
    [
        T.StructField("image_id", T.StringType()),
        T.StructField("image", T.BinaryType()),
        T.StructField("batch_id", T.StringType()),
    ]
)
QUARANTINE_SCHEMA = T.StructType(
    [
        T.StructField("image_id", T.StringType()),
        T.StructField("lesion_id", T.StringType()),
        T.StructField("reason", T.StringType()),
        T.StructField("detail", T.StringType()),
        T.StructField("source", T.StringType()),
        T.StructField("source_path", T.StringType()),
        T.StructField("batch_id", T.StringType()),
    ]
)
FEATURES_SCHEMA = T.StructType(
    [
        T.StructField("image_id", T.StringType()),
        T.StructField("lesion_id", T.StringType()),
        T.StructField("dx", T.StringType()),
        T.StructField("split", T.StringType()),
        T.StructField("backbone", T.StringType()),
        T.StructField("weights_id", T.StringType()),
        T.StructField("feature_dim", T.IntegerType()),
        T.StructField("features", T.ArrayType(T.FloatType())),
        T.StructField("batch_id", T.StringType()),
    ]
)
FEATURE_COLUMNS: tuple[str, ...] = tuple(FEATURES_SCHEMA.fieldNames())
TRAIN_SET_SCHEMA = T.StructType(
    [
        *FEATURES_SCHEMA.fields,
        T.StructField("weight", T.DoubleType()),
        T.StructField("synthetic", T.BooleanType()),
        T.StructField("source_image_id", T.StringType()),
    ]
)
TRAIN_SET_COLUMNS: tuple[str, ...] = tuple(TRAIN_SET_SCHEMA.fieldNames())
PREDICTIONS_SCHEMA = T.StructType(
    [
        T.StructField("image_id", T.StringType()),
        T.StructField("lesion_id", T.StringType()),
        T.StructField("dx", T.StringType()),
        T.StructField("label", T.IntegerType()),
        T.StructField("prediction", T.IntegerType()),
        T.StructField("probability", T.ArrayType(T.DoubleType())),
        T.StructField("model", T.StringType()),
        T.StructField("split", T.StringType()),
    ]
)
#: The key of a features reference JSON naming the table (`featurize --ref-out` writes it).
REF_URI_KEY = "uri"
#: Manifest keys: its layout version and the published tables ({name: {"files": [...], "rows": n}}).
FORMAT_KEY = "manifest_format"
MANIFEST_FORMAT = 1
TABLES_KEY = "tables"
#: Name of a version folder: `v<UTC yyyymmddTHHMMSSZ>-<8 hex>`; only folders so named are ever deleted.
VERSION_FOLDER = re.compile(r"^v\d{8}T\d{6}Z-[0-9a-f]{8}$")
BATCH_COLUMN = "batch_id"


# ----------------------------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Table:
    """A published table: where its versions and manifests live, its name in a manifest, and its schema.

    Partitioned by batch: versions under `<root>/batch_id=<id>/`, one manifest per batch in the folder
    `manifests` (`<manifests>/<id>.json`). Otherwise versions under `<root>/` and the manifest file
    `manifests`.
    """

    root: str
    name: str
    schema: T.StructType
    manifests: str
    partitioned: bool = True

    def folder(self, batch_id: str | None = None) -> str:
        """Where the versions of `batch_id` (or of the unpartitioned table) go."""
        if not self.partitioned:
            return self.root
        return storage.partition_uri(self.root, BATCH_COLUMN, validate_batch_id(batch_id or ""))

    def manifest_uri(self, batch_id: str | None = None) -> str:
        if not self.partitioned:
            return self.manifests
        return storage.join(self.manifests, f"{validate_batch_id(batch_id or '')}.json")


def curated_images(curated: str) -> Table:
    """Curated images, published with the quarantine by the batch summary `<curated>/summaries/<id>.json`."""
    return Table(storage.join(curated, IMAGES_DIR), IMAGES_DIR, CURATED_SCHEMA, _summaries(curated))


def curated_quarantine(curated: str) -> Table:
    return Table(
        storage.join(curated, QUARANTINE_DIR), QUARANTINE_DIR, QUARANTINE_SCHEMA, _summaries(curated)
    )


def _summaries(curated: str) -> str:
    return storage.join(curated, SUMMARIES_DIR)


def features_table(uri: str) -> Table:
    """A features table (`<features>/<backbone>/<weights dir>`): manifests in `<uri>/_manifests/`."""
    return Table(uri, "features", FEATURES_SCHEMA, storage.join(uri, MANIFESTS_DIR))


def run_table(uri: str, name: str, schema: T.StructType) -> Table:
    """A table of one run (train_set, a model's predictions): one manifest, `<uri>/_manifest.json`."""
    return Table(uri, name, schema, storage.join(uri, MANIFEST_FILE), partitioned=False)


def train_set(uri: str) -> Table:
    """A run's training set (`<run>/train_set/`): upsample writes it, train reads it."""
    return run_table(uri, TRAIN_SET_DIR, TRAIN_SET_SCHEMA)


def model_predictions(run: str, model: str) -> Table:
    """`<run>/predictions/<model>/`: what train predicted with one model (train writes, report reads)."""
    return run_table(storage.join(run, PREDICTIONS_DIR, model), PREDICTIONS_DIR, PREDICTIONS_SCHEMA)


# --------------------------------------------------------------------------------------------- versions


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


# -------------------------------------------------------------------------------------------- manifests


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


# ----------------------------------------------------------------------------------------------- readers


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


def read_table(
    spark: SparkSession,
    table: Table,
    batches: Sequence[str] | None = None,
    schema: T.StructType | None = None,
) -> DataFrame:
    """What the manifests of `table` publish: every batch or those in `batches` (unpartitioned: all)."""
    if not table.partitioned:
        version = published(spark, table)
        if version is None:
            raise InputError(f"{table.root}: no published {table.name} table (no {table.manifests})")
        return read_files(spark, table, version.files, schema)
    versions = published_batches(spark, table, batches).values()
    return read_files(spark, table, [f for v in versions for f in v.files], schema)


def read_curated(
    spark: SparkSession, curated: str, batch_id: str | None = None, schema: T.StructType = CURATED_SCHEMA
) -> DataFrame:
    """The curated images table (every published batch, or one), with `schema`'s columns."""
    batches = None if batch_id is None else [batch_id]
    return read_table(spark, curated_images(curated), batches, schema)


def read_ref(spark: SparkSession, uri: str) -> dict[str, Any] | None:
    """The features reference JSON at `uri` (`{"uri": <table>, "weights": ...}`); None for a table URI."""
    if not uri.endswith(FEATURES_REF_SUFFIX):
        return None
    ref = storage.read_json(spark, uri)
    if not isinstance(ref, dict) or not isinstance(ref.get(REF_URI_KEY), str):
        raise InputError(f"{uri}: no features table URI under {REF_URI_KEY!r}")
    return ref


def resolve_features_uri(spark: SparkSession, uri: str) -> str:
    """The features table: `uri` itself, or the one named by a reference JSON (the DAG's features.json)."""
    ref = read_ref(spark, uri)
    return uri if ref is None else ref[REF_URI_KEY]


def read_features(spark: SparkSession, uri: str, batches: Sequence[str] | None = None) -> DataFrame:
    """The features table at `uri` (or named by the reference `uri`), limited to `batches` when given."""
    return read_table(spark, features_table(resolve_features_uri(spark, uri)), batches)


def with_curated_images(spark: SparkSession, rows: DataFrame, curated: str) -> DataFrame:
    """`rows` joined to their curated JPEG bytes (`image`); rows without an image drop out.

    image_id alone is the key: clean keeps one curated row per image_id across batches.
    """
    images = read_curated(spark, curated, schema=CURATED_IMAGE_SCHEMA)
    return rows.join(images.select("image_id", "image"), on="image_id", how="inner")


# ----------------------------------------------------------------------------------------------- contracts


def conform(df: DataFrame, schema: T.StructType) -> DataFrame:
    """`df` with exactly `schema`'s columns, in order; a column `df` lacks is null."""
    return df.select(
        *[
            F.col(f.name) if f.name in df.columns else F.lit(None).cast(f.dataType).alias(f.name)
            for f in schema.fields
        ]
    )


def to_quarantine(df: DataFrame, batch_id: str) -> DataFrame:
    """The quarantine table contract (QUARANTINE_SCHEMA) of rows carrying reason, detail, source and path."""
    return df.select(
        F.col("image_id").cast(T.StringType()).alias("image_id"),
        F.col("lesion_id").cast(T.StringType()).alias("lesion_id"),
        "reason",
        "detail",
        "source",
        "source_path",
        F.lit(batch_id).alias("batch_id"),
    )


def quarantine_of(parts: Sequence[DataFrame | None], batch_id: str) -> DataFrame:
    """One quarantine table from the rejected rows of several checks (None: a check that found nothing)."""
    frames = [to_quarantine(part, batch_id) for part in parts if part is not None]
    table = frames[0]
    for frame in frames[1:]:
        table = table.unionByName(frame)
    return table
