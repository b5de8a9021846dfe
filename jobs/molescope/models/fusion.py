"""Metadata fusion: a lesion's age, sex and localization as numbers appended to what a model sees.

A model trained with `--metadata` gets, next to its image features (the frozen-backbone vector for the Spark
models and the Keras head, the pooled backbone output for `finetune`), the vector

    [age / 100, age missing, sex one-hot (SEX_VALUES), localization one-hot (LOCALIZATION_VALUES)]

with the vocabularies of `molescope.core.registry` (`unknown` excluded: an unknown, blank or unlisted value
encodes as all zeros; a missing age as AGE_FILL with the missing flag set). The vocabularies a model was
trained with are stored in its sidecar (`MetadataEncoding.to_dict`), so a later change of the registry's lists
never changes what an old model sees.

Rows get the columns from the curated table (`with_metadata`): training rows through their source image
(synthetic rows are copies), scored rows through their own image_id. Scoring without metadata works: every
row is encoded as unknown and the score summary says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from molescope.core.registry import LOCALIZATION_VALUES, SEX_VALUES, UNKNOWN_VALUE
from molescope.io import tables

#: Columns of the curated table the encoding reads.
METADATA_FIELDS: tuple[str, ...] = ("age", "sex", "localization")
METADATA_SCHEMA = T.StructType(
    [
        T.StructField("image_id", T.StringType()),
        T.StructField("age", T.DoubleType()),
        T.StructField("sex", T.StringType()),
        T.StructField("localization", T.StringType()),
        T.StructField("batch_id", T.StringType()),
    ]
)
#: Rows a model with metadata scores: the features schema plus the metadata columns.
SCORING_SCHEMA = T.StructType(
    [*tables.FEATURES_SCHEMA.fields, *(f for f in METADATA_SCHEMA.fields if f.name in METADATA_FIELDS)]
)
#: Ages are divided by this (HAM10000: 0-85), so the value is on the scale of the other entries.
AGE_SCALE = 100.0
#: Encoded age of a row without one: about the middle of the range (HAM10000's mean age is 52).
AGE_FILL = 0.5
#: Column holding the encoded vector (array<float>).
METADATA_COL = "metadata"
ENCODING_VERSION = 1


def _known(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(v for v in values if v != UNKNOWN_VALUE)


@dataclass(frozen=True)
class MetadataEncoding:
    """The vocabularies of one model's metadata vector (see the module docstring)."""

    sex_values: tuple[str, ...] = _known(SEX_VALUES)
    localization_values: tuple[str, ...] = _known(LOCALIZATION_VALUES)
    version: int = ENCODING_VERSION

    @property
    def names(self) -> list[str]:
        """One name per entry of the vector, in order."""
        return [
            "age",
            "age_missing",
            *(f"sex={v}" for v in self.sex_values),
            *(f"localization={v}" for v in self.localization_values),
        ]

    @property
    def dim(self) -> int:
        return len(self.names)

    def unknown(self) -> list[float]:
        """The vector of a row whose age, sex and localization are all unknown."""
        return [AGE_FILL, 1.0] + [0.0] * (self.dim - 2)

    def column(self) -> Column:
        """The encoded vector (array<float>) from the row's age, sex and localization columns."""
        age = F.col("age").cast(T.DoubleType())
        sex = F.lower(F.trim(F.col("sex")))
        site = F.lower(F.trim(F.col("localization")))
        entries = [
            F.coalesce(age / F.lit(AGE_SCALE), F.lit(AGE_FILL)),
            F.when(age.isNull(), 1.0).otherwise(0.0),
            *(F.when(sex == value, 1.0).otherwise(0.0) for value in self.sex_values),
            *(F.when(site == value, 1.0).otherwise(0.0) for value in self.localization_values),
        ]
        return F.array(*[e.cast(T.FloatType()) for e in entries])

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "sex_values": list(self.sex_values),
            "localization_values": list(self.localization_values),
            "names": self.names,
        }

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any] | None) -> MetadataEncoding | None:
        if not payload:
            return None
        return cls(tuple(payload["sex_values"]), tuple(payload["localization_values"]), payload["version"])


def has_metadata_columns(df: DataFrame) -> bool:
    return all(name in df.columns for name in METADATA_FIELDS)


def without_metadata(df: DataFrame) -> DataFrame:
    """`df` with null age, sex and localization where it lacks them (they encode as unknown)."""
    for f in METADATA_SCHEMA.fields:
        if f.name in METADATA_FIELDS and f.name not in df.columns:
            df = df.withColumn(f.name, F.lit(None).cast(f.dataType))
    return df


def read_metadata(spark: SparkSession, curated: str) -> DataFrame:
    """image_id, age, sex, localization of every curated image (one row per image_id, as clean keeps it)."""
    return tables.read_curated(spark, curated, schema=METADATA_SCHEMA).select("image_id", *METADATA_FIELDS)


def with_metadata(rows: DataFrame, metadata: DataFrame) -> DataFrame:
    """`rows` with age, sex and localization of their image: through `source_image_id` when the rows have it
    (a synthetic row is a copy of its source), else `image_id`. Rows whose image has none get nulls."""
    key = (
        F.coalesce(F.col("source_image_id"), F.col("image_id"))
        if "source_image_id" in rows.columns
        else F.col("image_id")
    )
    renamed = metadata.select(F.col("image_id").alias("_meta_id"), *METADATA_FIELDS)
    base = rows.drop(*[c for c in METADATA_FIELDS if c in rows.columns]).withColumn("_meta_key", key)
    joined = base.join(renamed, on=base["_meta_key"] == renamed["_meta_id"], how="left")
    return joined.drop("_meta_key", "_meta_id")


def known_metadata_rows(rows: DataFrame) -> int:
    """Rows with at least one of age, sex (other than unknown) or localization (other than unknown)."""
    known = (
        F.col("age").isNotNull()
        | (F.coalesce(F.lower(F.col("sex")), F.lit(UNKNOWN_VALUE)) != UNKNOWN_VALUE)
        | (F.coalesce(F.lower(F.col("localization")), F.lit(UNKNOWN_VALUE)) != UNKNOWN_VALUE)
    )
    return rows.where(known).count()
