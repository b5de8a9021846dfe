"""A batch's metadata CSV: parsing (Kaggle or Dataverse form), the row rules and duplicate image ids.

Pure transforms on Spark frames. `rule_reason` checks the rules in `molescope.registry.QUARANTINE_REASONS`
order and reports the first one a row breaks; a new rule is one entry there and one check here.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from molescope.constants import CLASSES, METADATA_COLUMNS
from molescope.registry import (
    REASON_AGE_OUT_OF_RANGE,
    REASON_DUPLICATE_IMAGE_ID,
    REASON_INVALID_AGE,
    REASON_MALFORMED_IMAGE_ID,
    REASON_MALFORMED_LESION_ID,
    REASON_MISSING_AGE,
    REASON_MISSING_LESION_ID,
    REASON_UNKNOWN_DX,
    REASON_UNKNOWN_SEX,
    SOURCE_METADATA,
)

IMAGE_ID_PATTERN = r"^ISIC_[0-9]{7}$"
LESION_ID_PATTERN = r"^HAM_[0-9]{7}$"
MIN_AGE = 0.0
MAX_AGE = 120.0
UNKNOWN = "unknown"
DATASET_COLUMN = "dataset"


@dataclass(frozen=True)
class Rules:
    """Metadata rules; the defaults are the study's (drop empty age, drop sex 'unknown')."""

    drop_missing_age: bool = True
    drop_unknown_sex: bool = True
    min_age: float = MIN_AGE
    max_age: float = MAX_AGE


def _blank_to_null(column: Column) -> Column:
    trimmed = F.trim(column)
    return F.when(trimmed == "", F.lit(None)).otherwise(trimmed)


def parse_metadata(raw: DataFrame, source_path: str) -> DataFrame:
    """Normalise a metadata CSV read as strings (Kaggle or Dataverse form) into typed columns.

    Header names are trimmed, lower-cased and stripped of a BOM; unknown extra columns are dropped; blanks
    become null; `age` is a double (`age_raw` keeps the text so unparsable ages can be reported); sex is
    lower-cased with a blank meaning 'unknown'. `row` is the 1-based data row in file order.
    """
    renamed = raw.toDF(*[c.replace("\ufeff", "").strip().lower() for c in raw.columns])
    missing = [c for c in METADATA_COLUMNS if c not in renamed.columns]
    if missing:
        raise ValueError(f"metadata CSV {source_path} lacks columns {missing}; has {raw.columns}")
    dataset = F.col(DATASET_COLUMN) if DATASET_COLUMN in renamed.columns else F.lit(None).cast(T.StringType())
    # Metadata files are small (10k rows for all of HAM10000), so one ordered window is cheap.
    order = Window.orderBy("_order")
    return (
        renamed.withColumn("_order", F.monotonically_increasing_id())
        .withColumn("row", F.row_number().over(order))
        .select(
            "row",
            _blank_to_null(F.col("lesion_id")).alias("lesion_id"),
            _blank_to_null(F.col("image_id")).alias("image_id"),
            F.lower(_blank_to_null(F.col("dx"))).alias("dx"),
            _blank_to_null(F.col("dx_type")).alias("dx_type"),
            _blank_to_null(F.col("age")).alias("age_raw"),
            F.expr("try_cast(trim(age) AS DOUBLE)").alias("age"),
            F.coalesce(F.lower(_blank_to_null(F.col("sex"))), F.lit(UNKNOWN)).alias("sex"),
            _blank_to_null(F.col("localization")).alias("localization"),
            _blank_to_null(dataset).alias("dataset"),
            F.lit(source_path).alias("source_path"),
        )
    )


def rule_checks(rules: Rules) -> list[tuple[Column, str]]:
    """(condition, reason code) of every rule `rules` switches on, in the order they are reported."""
    checks: list[tuple[Column, str]] = [
        (F.col("lesion_id").isNull(), REASON_MISSING_LESION_ID),
        (~F.coalesce(F.col("image_id").rlike(IMAGE_ID_PATTERN), F.lit(False)), REASON_MALFORMED_IMAGE_ID),
        (~F.col("lesion_id").rlike(LESION_ID_PATTERN), REASON_MALFORMED_LESION_ID),
        (~F.coalesce(F.col("dx").isin(*CLASSES), F.lit(False)), REASON_UNKNOWN_DX),
        (F.col("age_raw").isNotNull() & F.col("age").isNull(), REASON_INVALID_AGE),
        (~F.col("age").between(rules.min_age, rules.max_age), REASON_AGE_OUT_OF_RANGE),
    ]
    if rules.drop_missing_age:
        checks.append((F.col("age_raw").isNull(), REASON_MISSING_AGE))
    if rules.drop_unknown_sex:
        checks.append((F.col("sex") == UNKNOWN, REASON_UNKNOWN_SEX))
    return checks


def rule_reason(rules: Rules) -> Column:
    """The first metadata rule a row breaks, as a reason code (null when it breaks none)."""
    reason = F.lit(None).cast(T.StringType())
    for condition, code in reversed(rule_checks(rules)):
        reason = F.when(F.coalesce(condition, F.lit(False)), F.lit(code)).otherwise(reason)
    return reason


def _rule_detail() -> Column:
    return F.concat(
        F.lit("row "),
        F.col("row").cast(T.StringType()),
        F.lit(": lesion_id="),
        F.coalesce(F.col("lesion_id"), F.lit("")),
        F.lit(" image_id="),
        F.coalesce(F.col("image_id"), F.lit("")),
        F.lit(" dx="),
        F.coalesce(F.col("dx"), F.lit("")),
        F.lit(" age="),
        F.coalesce(F.col("age_raw"), F.lit("")),
        F.lit(" sex="),
        F.col("sex"),
    )


def apply_rules(meta: DataFrame, rules: Rules) -> tuple[DataFrame, DataFrame]:
    """Split parsed metadata into (kept, quarantined); quarantined rows carry `reason` and `detail`."""
    flagged = meta.withColumn("reason", rule_reason(rules))
    kept = flagged.where(F.col("reason").isNull()).drop("reason")
    quarantined = (
        flagged.where(F.col("reason").isNotNull())
        .withColumn("detail", _rule_detail())
        .withColumn("source", F.lit(SOURCE_METADATA))
    )
    return kept, quarantined


def drop_duplicates(
    kept: DataFrame, existing: DataFrame | None, batch_id: str | None
) -> tuple[DataFrame, DataFrame]:
    """Quarantine repeated image_ids: the first row in this batch wins, unless another batch has it curated.

    `existing` holds (image_id, batch_id) of images curated by other batches, or None. The detail of a
    repeat names the row it repeats (and `batch_id`, when given).
    """
    first = Window.partitionBy("image_id").orderBy("row")
    ranked = kept.withColumn("_rank", F.row_number().over(first)).withColumn(
        "_first_row", F.min("row").over(Window.partitionBy("image_id"))
    )
    if existing is None:
        ranked = ranked.withColumn("_curated_in", F.lit(None).cast(T.StringType()))
    else:
        earlier = existing.groupBy("image_id").agg(F.min("batch_id").alias("_curated_in"))
        ranked = ranked.join(earlier, on="image_id", how="left")
    reason = F.when(F.col("_curated_in").isNotNull() | (F.col("_rank") > 1), F.lit(REASON_DUPLICATE_IMAGE_ID))
    of_batch = [F.lit(f" of batch_id={batch_id}")] if batch_id else []
    repeat = F.concat(
        F.lit("row "),
        F.col("row").cast(T.StringType()),
        F.lit(" repeats row "),
        F.col("_first_row").cast(T.StringType()),
        *of_batch,
    )
    detail = F.when(
        F.col("_curated_in").isNotNull(),
        F.concat(F.lit("already curated in batch_id="), F.col("_curated_in")),
    ).otherwise(repeat)
    flagged = ranked.withColumn("reason", reason).withColumn("detail", detail)
    helpers = ["_rank", "_first_row", "_curated_in"]
    unique = flagged.where(F.col("reason").isNull()).drop("reason", "detail", *helpers)
    duplicates = (
        flagged.where(F.col("reason").isNotNull()).drop(*helpers).withColumn("source", F.lit(SOURCE_METADATA))
    )
    return unique, duplicates
