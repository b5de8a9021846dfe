"""The schemas of the tables (their writer's `select` contract) and the helpers that shape a frame to one.

docs/architecture.md describes each table.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

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
