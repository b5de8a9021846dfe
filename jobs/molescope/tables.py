"""The tables the stages hand each other: schemas (the `select` contract of their writer) and readers.

Readers pass the schema explicitly: partition discovery would otherwise turn a `batch_id` of "007" into 7, and
an empty or half-created folder reads as an empty table instead of failing. docs/architecture.md describes
each table; `molescope.registry` holds the folder and file names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from molescope import storage
from molescope.registry import FEATURES_REF_SUFFIX, IMAGES_DIR

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
#: The curated columns that image consumers read (augment, finetune); batch_id is the partition.
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


# ------------------------------------------------------------------------------------------------- readers


def curated_images_uri(curated: str) -> str:
    return storage.join(curated, IMAGES_DIR)


def read_curated(
    spark: SparkSession, curated: str, batch_id: str | None = None, schema: T.StructType = CURATED_SCHEMA
) -> DataFrame:
    """The curated images table (every batch, or one), with `schema`'s columns."""
    images = spark.read.schema(schema).parquet(curated_images_uri(curated))
    return images if batch_id is None else images.where(F.col("batch_id") == batch_id)


def read_ref(spark: SparkSession, uri: str) -> dict[str, Any] | None:
    """The features reference JSON at `uri` (`{"uri": <table>, "weights": ...}`); None for a table URI."""
    if not uri.endswith(FEATURES_REF_SUFFIX):
        return None
    ref = storage.read_json(spark, uri)
    if not isinstance(ref, dict) or not isinstance(ref.get(REF_URI_KEY), str):
        raise ValueError(f"{uri}: no features table URI under {REF_URI_KEY!r}")
    return ref


def resolve_features_uri(spark: SparkSession, uri: str) -> str:
    """The features table: `uri` itself, or the one named by a reference JSON (the DAG's features.json)."""
    ref = read_ref(spark, uri)
    return uri if ref is None else ref[REF_URI_KEY]


def read_features(spark: SparkSession, uri: str, batches: Sequence[str] | None = None) -> DataFrame:
    """The features table at `uri` (or named by the reference `uri`), limited to `batches` when given."""
    df = spark.read.schema(FEATURES_SCHEMA).parquet(resolve_features_uri(spark, uri))
    return df.filter(F.col("batch_id").isin(list(batches))) if batches else df


def with_curated_images(spark: SparkSession, rows: DataFrame, curated: str) -> DataFrame:
    """`rows` joined to their curated JPEG bytes (`image`); rows without an image drop out.

    image_id alone is the key: clean keeps one curated row per image_id across batches.
    """
    images = read_curated(spark, curated, schema=CURATED_IMAGE_SCHEMA)
    return rows.join(images.select("image_id", "image"), on="image_id", how="inner")
