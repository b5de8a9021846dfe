"""A batch's metadata: its rows as a typed frame (Kaggle or Dataverse form), the row rules, duplicate ids.

Reading. `molescope.intake.metadata_csv` parses the CSV's bytes one physical line at a time; each data row
keeps its number, its line, its field count, its first column holding bytes that are not UTF-8 and what
made its line malformed, and the rules quarantine such rows (`malformed_row`, `wrong_field_count`,
`undecodable_row`) instead of curating them.

Rules. `rule_reason` reports the first rule a row breaks in the order of the list `rule_checks` returns: a
rule's position in that list is its precedence. `molescope.core.registry.QUARANTINE_REASONS` lists the same
codes in the same order (tests/unit/test_extension_contracts.py fails when the two differ), so a new rule is
one code there and one (condition, code) pair here, both at the position that sets its precedence. A row
that passes every rule can still be quarantined by clean's later checks, in this order: `duplicate_image_id`
(`drop_duplicates`), then the image's (`molescope.intake.landed`, `molescope.io.imaging`). Values of dx,
dx_type, sex and localization must be in their closed vocabularies (`Vocabulary`, HAM10000's by default),
compared after trimming and lower-casing. Scoring checks the same values (`label_checks`), but there a
blank value means "not given".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from molescope.core.constants import CLASSES, METADATA_COLUMNS
from molescope.core.errors import InputError
from molescope.core.registry import (
    DX_TYPE_VALUES,
    LOCALIZATION_VALUES,
    REASON_AGE_OUT_OF_RANGE,
    REASON_DUPLICATE_IMAGE_ID,
    REASON_INVALID_AGE,
    REASON_INVALID_DX_TYPE,
    REASON_INVALID_LOCALIZATION,
    REASON_INVALID_SEX,
    REASON_MALFORMED_IMAGE_ID,
    REASON_MALFORMED_LESION_ID,
    REASON_MALFORMED_ROW,
    REASON_MISSING_AGE,
    REASON_MISSING_LESION_ID,
    REASON_UNDECODABLE_ROW,
    REASON_UNKNOWN_DX,
    REASON_UNKNOWN_SEX,
    REASON_WRONG_FIELD_COUNT,
    SEX_VALUES,
    SOURCE_METADATA,
    UNKNOWN_VALUE,
)
from molescope.core.settings import CliSettings, comma_list, option
from molescope.intake.metadata_csv import FIELDS, LINE, MALFORMED, ROW, UNDECODABLE, read_csv

IMAGE_ID_PATTERN = r"^ISIC_[0-9]{7}$"
LESION_ID_PATTERN = r"^HAM_[0-9]{7}$"
MIN_AGE = 0.0
MAX_AGE = 120.0
DATASET_COLUMN = "dataset"


@dataclass(frozen=True)
class Vocabulary:
    """Allowed values (lower case) of the closed metadata columns; the defaults are HAM10000's."""

    dx: tuple[str, ...] = CLASSES
    dx_type: tuple[str, ...] = DX_TYPE_VALUES
    sex: tuple[str, ...] = SEX_VALUES
    localization: tuple[str, ...] = LOCALIZATION_VALUES

    def __post_init__(self) -> None:
        for name in ("dx_type", "sex", "localization"):
            values = getattr(self, name)
            if not values:
                raise InputError(f"the {name} vocabulary is empty")
            object.__setattr__(self, name, tuple(v.strip().lower() for v in values))


@dataclass(frozen=True, kw_only=True)
class VocabularySettings(CliSettings):
    """The vocabulary options of clean and score (`--dx-types`, `--sexes`, `--localizations`)."""

    dx_types: tuple[str, ...] = option(
        DX_TYPE_VALUES, type=comma_list, help="allowed dx_type values, comma list"
    )
    sexes: tuple[str, ...] = option(SEX_VALUES, type=comma_list, help="allowed sex values, comma list")
    localizations: tuple[str, ...] = option(
        LOCALIZATION_VALUES, type=comma_list, help="allowed localization values, comma list"
    )

    @property
    def vocabulary(self) -> Vocabulary:
        return Vocabulary(
            dx_type=self.dx_types or (), sex=self.sexes or (), localization=self.localizations or ()
        )


@dataclass(frozen=True)
class Rules:
    """Metadata rules; the defaults are the study's (drop empty age, drop sex 'unknown')."""

    drop_missing_age: bool = True
    drop_unknown_sex: bool = True
    min_age: float = MIN_AGE
    max_age: float = MAX_AGE
    vocabulary: Vocabulary = field(default_factory=Vocabulary)


# ------------------------------------------------------------------------------------------------ reading


def metadata_frame(spark: SparkSession, data: bytes, source: str) -> DataFrame:
    """The CSV's rows as strings (`read_csv`) with row number, line, field count and undecodable column."""
    header, rows = read_csv(data, source)
    names = [name if name else f"_column{i + 1}" for i, name in enumerate(header)]
    schema = T.StructType(
        [T.StructField(name, T.StringType()) for name in names]
        + [
            T.StructField(ROW, T.IntegerType()),
            T.StructField(LINE, T.IntegerType()),
            T.StructField(FIELDS, T.IntegerType()),
            T.StructField(UNDECODABLE, T.StringType()),
            T.StructField(MALFORMED, T.StringType()),
        ]
    )
    frame = spark.createDataFrame(rows, schema)
    return frame.withColumn("_header_fields", F.lit(len(header)))


def _blank_to_null(column: Column) -> Column:
    trimmed = F.trim(column)
    return F.when(trimmed == "", F.lit(None)).otherwise(trimmed)


def _lower(name: str) -> Column:
    return F.lower(_blank_to_null(F.col(name)))


def parse_metadata(raw: DataFrame, source_path: str) -> DataFrame:
    """Normalise metadata rows read as strings (Kaggle or Dataverse form) into typed columns.

    `raw` is `metadata_frame`'s output, or any frame with the metadata columns as strings (then every row
    counts as well-formed and `row` follows the frame's order). Unknown extra columns are dropped; blanks
    become null; dx, dx_type, sex and localization are lower-cased; `age` is a double (`age_raw` keeps the
    text so unparsable ages can be reported); a blank sex means 'unknown'.
    """
    renamed = raw.toDF(*[c.replace("\ufeff", "").strip().lower() for c in raw.columns])
    missing = [c for c in METADATA_COLUMNS if c not in renamed.columns]
    if missing:
        raise InputError(f"metadata CSV {source_path} lacks columns {missing}; has {raw.columns}")
    if ROW not in renamed.columns:
        # Small frames only (tests, tools): one ordered window numbers the rows.
        renamed = renamed.withColumn("_order", F.monotonically_increasing_id()).withColumn(
            ROW, F.row_number().over(Window.orderBy("_order"))
        )
    dataset = F.col(DATASET_COLUMN) if DATASET_COLUMN in renamed.columns else F.lit(None).cast(T.StringType())

    def extra(name: str, default: Column) -> Column:
        return (F.col(name) if name in renamed.columns else default).alias(name)

    return renamed.select(
        ROW,
        _blank_to_null(F.col("lesion_id")).alias("lesion_id"),
        _blank_to_null(F.col("image_id")).alias("image_id"),
        _lower("dx").alias("dx"),
        _lower("dx_type").alias("dx_type"),
        _blank_to_null(F.col("age")).alias("age_raw"),
        F.expr("try_cast(trim(age) AS DOUBLE)").alias("age"),
        F.coalesce(_lower("sex"), F.lit(UNKNOWN_VALUE)).alias("sex"),
        _lower("localization").alias("localization"),
        _blank_to_null(dataset).alias("dataset"),
        F.lit(source_path).alias("source_path"),
        extra(LINE, F.lit(None).cast(T.IntegerType())),
        extra(FIELDS, F.lit(None).cast(T.IntegerType())),
        extra("_header_fields", F.lit(None).cast(T.IntegerType())),
        extra(UNDECODABLE, F.lit(None).cast(T.StringType())),
        extra(MALFORMED, F.lit(None).cast(T.StringType())),
    )


# -------------------------------------------------------------------------------------------------- rules


def _outside(column: str, allowed: tuple[str, ...], *, blank_allowed: bool) -> Column:
    """True when the column's value is not in `allowed` (a null: only when blanks are not allowed)."""
    return F.coalesce(~F.col(column).isin(*allowed), F.lit(not blank_allowed))


def integrity_checks() -> list[tuple[Column, str]]:
    """Rows the CSV itself broke: a line holding no whole record, a field count other than the header's,
    bytes that are not UTF-8."""
    return [
        (F.col(MALFORMED).isNotNull(), REASON_MALFORMED_ROW),
        (F.col(FIELDS) != F.col("_header_fields"), REASON_WRONG_FIELD_COUNT),
        (F.col(UNDECODABLE).isNotNull(), REASON_UNDECODABLE_ROW),
    ]


def value_checks(vocabulary: Vocabulary, *, blank_allowed: bool) -> dict[str, tuple[Column, str]]:
    """{column: (condition, reason)} of the vocabulary and age checks."""
    return {
        "dx": (_outside("dx", vocabulary.dx, blank_allowed=blank_allowed), REASON_UNKNOWN_DX),
        "dx_type": (
            _outside("dx_type", vocabulary.dx_type, blank_allowed=blank_allowed),
            REASON_INVALID_DX_TYPE,
        ),
        "sex": (_outside("sex", vocabulary.sex, blank_allowed=blank_allowed), REASON_INVALID_SEX),
        "localization": (
            _outside("localization", vocabulary.localization, blank_allowed=blank_allowed),
            REASON_INVALID_LOCALIZATION,
        ),
        "age": (F.col("age_raw").isNotNull() & F.col("age").isNull(), REASON_INVALID_AGE),
    }


def rule_checks(rules: Rules) -> list[tuple[Column, str]]:
    """(condition, reason code) of every rule `rules` switches on, in the order they are reported."""
    values = value_checks(rules.vocabulary, blank_allowed=False)
    checks: list[tuple[Column, str]] = [
        *integrity_checks(),
        (F.col("lesion_id").isNull(), REASON_MISSING_LESION_ID),
        (~F.coalesce(F.col("image_id").rlike(IMAGE_ID_PATTERN), F.lit(False)), REASON_MALFORMED_IMAGE_ID),
        (~F.col("lesion_id").rlike(LESION_ID_PATTERN), REASON_MALFORMED_LESION_ID),
        values["dx"],
        values["dx_type"],
        values["sex"],
        values["localization"],
        values["age"],
        (~F.col("age").between(rules.min_age, rules.max_age), REASON_AGE_OUT_OF_RANGE),
    ]
    if rules.drop_missing_age:
        checks.append((F.col("age_raw").isNull(), REASON_MISSING_AGE))
    if rules.drop_unknown_sex:
        checks.append((F.col("sex") == UNKNOWN_VALUE, REASON_UNKNOWN_SEX))
    return checks


def label_checks(vocabulary: Vocabulary) -> list[tuple[Column, str]]:
    """The checks scoring makes of a metadata row that labels images: well-formed, and every value given is
    in its vocabulary (blank: not given). The study's training rules do not apply."""
    values = value_checks(vocabulary, blank_allowed=True)
    return [
        *integrity_checks(),
        (F.col("image_id").isNull(), REASON_MALFORMED_IMAGE_ID),
        *values.values(),
        (~F.col("age").between(MIN_AGE, MAX_AGE), REASON_AGE_OUT_OF_RANGE),
    ]


def first_reason(checks: list[tuple[Column, str]]) -> Column:
    """The code of the first check a row fails (null when it fails none)."""
    reason = F.lit(None).cast(T.StringType())
    for condition, code in reversed(checks):
        reason = F.when(F.coalesce(condition, F.lit(False)), F.lit(code)).otherwise(reason)
    return reason


def rule_reason(rules: Rules) -> Column:
    """The first metadata rule a row breaks, as a reason code (null when it breaks none)."""
    return first_reason(rule_checks(rules))


def _values_detail() -> Column:
    return F.concat(
        F.lit("lesion_id="),
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


def rule_detail(vocabulary: Vocabulary) -> Column:
    """What a quarantined row's `reason` is about: its row and line, and the offending value."""
    row = F.concat(F.lit("row "), F.col(ROW).cast(T.StringType()))
    at_line = F.concat(row, F.lit(" (line "), F.col(LINE).cast(T.StringType()), F.lit("): "))
    detail = F.concat(row, F.lit(": "), _values_detail())
    closed = {
        REASON_INVALID_DX_TYPE: ("dx_type", vocabulary.dx_type),
        REASON_INVALID_SEX: ("sex", vocabulary.sex),
        REASON_INVALID_LOCALIZATION: ("localization", vocabulary.localization),
    }
    for code, (column, allowed) in closed.items():
        value = F.concat(F.lit(f"{column}='"), F.coalesce(F.col(column), F.lit("")), F.lit("'"))
        text = F.concat(row, F.lit(": "), value, F.lit(f" not in {', '.join(allowed)}"))
        detail = F.when(F.col("reason") == code, text).otherwise(detail)
    fields = F.concat(
        at_line,
        F.col(FIELDS).cast(T.StringType()),
        F.lit(" fields, the header has "),
        F.col("_header_fields").cast(T.StringType()),
    )
    undecodable = F.concat(at_line, F.lit("bytes that are not UTF-8 in "), F.col(UNDECODABLE))
    detail = F.when(F.col("reason") == REASON_WRONG_FIELD_COUNT, fields).otherwise(detail)
    detail = F.when(F.col("reason") == REASON_MALFORMED_ROW, F.concat(at_line, F.col(MALFORMED))).otherwise(
        detail
    )
    return F.when(F.col("reason") == REASON_UNDECODABLE_ROW, undecodable).otherwise(detail)


def flag(
    meta: DataFrame, checks: list[tuple[Column, str]], vocabulary: Vocabulary
) -> tuple[DataFrame, DataFrame]:
    """Split parsed metadata into (rows passing `checks`, failing rows with `reason`, `detail`, `source`)."""
    flagged = meta.withColumn("reason", first_reason(checks))
    passing = flagged.where(F.col("reason").isNull()).drop("reason")
    failing = (
        flagged.where(F.col("reason").isNotNull())
        .withColumn("detail", rule_detail(vocabulary))
        .withColumn("source", F.lit(SOURCE_METADATA))
    )
    return passing, failing


def apply_rules(meta: DataFrame, rules: Rules) -> tuple[DataFrame, DataFrame]:
    """Split parsed metadata into (kept, quarantined); quarantined rows carry `reason` and `detail`."""
    return flag(meta, rule_checks(rules), rules.vocabulary)


def drop_duplicates(
    kept: DataFrame, existing: DataFrame | None, batch_id: str | None
) -> tuple[DataFrame, DataFrame]:
    """Quarantine repeated image_ids: the first row in this batch wins, unless another batch has it curated.

    `existing` holds (image_id, batch_id) of images curated by other batches, or None. The detail of a
    repeat names the row it repeats (and `batch_id`, when given).
    """
    first = Window.partitionBy("image_id").orderBy(ROW)
    ranked = kept.withColumn("_rank", F.row_number().over(first)).withColumn(
        "_first_row", F.min(ROW).over(Window.partitionBy("image_id"))
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
        F.col(ROW).cast(T.StringType()),
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
