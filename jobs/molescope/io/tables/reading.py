"""Readers: what the manifests publish, never what a folder listing finds.

Readers pass the schema explicitly: an empty or half-written table reads as what its manifest says, and a
`batch_id` of "007" stays a string (it is a column of the data files, not parsed from folder names).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from molescope.core.errors import InputError
from molescope.core.registry import FEATURES_REF_SUFFIX
from molescope.io import storage
from molescope.io.tables.naming import Table, curated_images, features_table
from molescope.io.tables.publishing import published, published_batches
from molescope.io.tables.schemas import CURATED_IMAGE_SCHEMA, CURATED_SCHEMA
from molescope.io.tables.versions import read_files

#: The key of a features reference JSON naming the table (`featurize --ref-out` writes it).
REF_URI_KEY = "uri"


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
