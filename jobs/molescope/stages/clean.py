"""Clean a landed batch: validate metadata and images, quarantine rejects, assign train/test, write curated.

A batch is a folder (local or s3a://) holding exactly one metadata CSV and JPEG images anywhere below it.
Outputs, each partitioned by `batch_id` and rewritten as a whole when a batch is re-run:

- `<curated>/images/batch_id=<id>/`: one row per kept image (schema `CURATED_SCHEMA`);
- `<curated>/quarantine/batch_id=<id>/`: one row per rejected input row or file, with a reason code;
- `<curated>/summaries/<id>.json` plus EDA figures in `<curated>/summaries/<id>/`.

Rows in. `rows_in` = metadata data rows + JPEG files that no metadata row claims (quarantined as
`orphan_image`) + extra JPEG files whose stem repeats an earlier file's (`duplicate_image_file`).
Each of these ends up in exactly one of curated or quarantine, so `rows_in == curated + quarantined`;
the run raises before writing anything if that does not hold. Non-JPEG, non-CSV files (READMEs,
.DS_Store) are not inputs; they are counted as `ignored_files`. Spark's file sources skip zero-byte
files, so a zero-byte JPEG is only seen when a metadata row names it (then `image_empty`, via a targeted
glob); a zero-byte file nobody names is not counted.

Image bytes travel with the curated rows (the `image` column) instead of a path: featurization then reads a
few large Parquet files rather than millions of small objects, never re-lists the landing zone, and keeps
working after the landing zone is cleaned up. The bytes are the original JPEG, unmodified, so `sha256`
identifies the file; decoding (EXIF orientation, mode conversion) is redone by `molescope.imaging.decode_rgb`.

Split. A lesion is on the test side iff `lesion_unit(seed, lesion_id) < test_fraction`, where `lesion_unit`
maps SHA-256 of `"<seed>:<lesion_id>"` to [0, 1). It depends on nothing but the lesion id and the seed, so all
images of a lesion share a side, and a lesion keeps its side whichever batch its images arrive in.
Stratification by dx is in expectation: every class gets a Bernoulli(test_fraction) draw per lesion, so its
test share converges to test_fraction (exact per-batch stratification would move lesions as batches arrive).
SHA-256 rather than Spark's xxhash64 so that the split can be recomputed outside Spark (`lesion_unit`).

Duplicates. Within a batch the first CSV row of an image_id wins; across batches an image_id already
curated in another batch partition wins. The duplicate is quarantined with a pointer to the winner.

Batch ids match `BATCH_ID_PATTERN`: letters, digits, `.`, `_`, `-`, starting with a letter or digit,
at most 64 characters, and never `..` (they become path segments).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import math
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from molescope import storage
from molescope.constants import CLASSES, MALIGNANT, METADATA_COLUMNS, SPLIT_TEST, SPLIT_TRAIN
from molescope.imaging import ImageError, inspect_image
from molescope.progress import Progress
from molescope.registry import (
    DEFAULT_MIN_SIZE,
    DEFAULT_SEED,
    DEFAULT_TEST_FRACTION,
    REASON_AGE_OUT_OF_RANGE,
    REASON_DUPLICATE_IMAGE_FILE,
    REASON_DUPLICATE_IMAGE_ID,
    REASON_IMAGE_EMPTY,
    REASON_IMAGE_MISSING,
    REASON_INVALID_AGE,
    REASON_MALFORMED_IMAGE_ID,
    REASON_MALFORMED_LESION_ID,
    REASON_MISSING_AGE,
    REASON_MISSING_LESION_ID,
    REASON_ORPHAN_IMAGE,
    REASON_UNKNOWN_DX,
    REASON_UNKNOWN_SEX,
    SOURCE_IMAGE,
    SOURCE_METADATA,
    validate_batch_id,
)

log = logging.getLogger(__name__)

IMAGE_ID_PATTERN = r"^ISIC_[0-9]{7}$"
LESION_ID_PATTERN = r"^HAM_[0-9]{7}$"
MIN_AGE = 0.0
MAX_AGE = 120.0
UNKNOWN = "unknown"
DATASET_COLUMN = "dataset"
#: Hex digits of the SHA-256 used by `lesion_unit`: 60 bits fit a signed long and a double's exponent range.
SPLIT_HASH_HEX_DIGITS = 15
SPLIT_HASH_SCALE = float(16**SPLIT_HASH_HEX_DIGITS)
JPEG_PATH_REGEX = r"(?i)\.jpe?g$"
JPEG_STEM_REGEX = r"([^/]+)\.(?i:jpe?g)$"
CSV_PATH_REGEX = r"(?i)\.csv$"
#: How deep below the batch folder find_empty_files looks (HAM10000 layouts use 1).
MAX_GLOB_DEPTH = 3
#: Bar charts with more x labels than this get them rotated.
MAX_UPRIGHT_LABELS = 7
#: Bin width of the age histogram, years (HAM10000 ages are multiples of 5).
AGE_BIN_YEARS = 5

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
INSPECTION_SCHEMA = T.StructType(
    [
        T.StructField("width", T.IntegerType()),
        T.StructField("height", T.IntegerType()),
        T.StructField("sha256", T.StringType()),
        T.StructField("reason", T.StringType()),
        T.StructField("detail", T.StringType()),
    ]
)


@dataclass(frozen=True)
class Rules:
    """Metadata rules; the defaults are the study's (drop empty age, drop sex 'unknown')."""

    drop_missing_age: bool = True
    drop_unknown_sex: bool = True
    min_age: float = MIN_AGE
    max_age: float = MAX_AGE


@dataclass(frozen=True)
class Settings:
    batch_dir: str
    batch_id: str
    curated: str
    test_fraction: float = DEFAULT_TEST_FRACTION
    seed: int = DEFAULT_SEED
    min_size: int = DEFAULT_MIN_SIZE
    rules: Rules = Rules()
    figures: bool = True

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--batch-dir", required=True, help="landed batch folder (local path or s3a://)")
        parser.add_argument("--batch-id", required=True, help="batch id: [A-Za-z0-9._-], at most 64 chars")
        parser.add_argument("--curated", required=True, help="curated root URI")
        parser.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION)
        parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="split hash seed")
        parser.add_argument("--min-size", type=int, default=DEFAULT_MIN_SIZE, help="min width/height, px")
        parser.add_argument("--keep-missing-age", action="store_true", help="keep rows with an empty age")
        parser.add_argument("--keep-unknown-sex", action="store_true", help="keep rows with sex 'unknown'")
        parser.add_argument("--no-figures", action="store_true", help="skip the EDA figures")

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> Settings:
        settings = cls(
            batch_dir=ns.batch_dir,
            batch_id=ns.batch_id,
            curated=ns.curated,
            test_fraction=ns.test_fraction,
            seed=ns.seed,
            min_size=ns.min_size,
            rules=Rules(drop_missing_age=not ns.keep_missing_age, drop_unknown_sex=not ns.keep_unknown_sex),
            figures=not ns.no_figures,
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        validate_batch_id(self.batch_id)
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"--test-fraction must be in (0, 1), got {self.test_fraction}")
        if self.min_size < 1:
            raise ValueError(f"--min-size must be positive, got {self.min_size}")


# ---------------------------------------------------------------------------------------------- transforms


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


def rule_reason(rules: Rules) -> Column:
    """The first metadata rule a row breaks, as a reason code (null when it breaks none)."""
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
    reason = F.lit(None).cast(T.StringType())
    for condition, code in reversed(checks):
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
    kept: DataFrame, existing: DataFrame | None, batch_id: str
) -> tuple[DataFrame, DataFrame]:
    """Quarantine repeated image_ids: the first row in this batch wins, unless another batch has it curated.

    `existing` holds (image_id, batch_id) of images curated by other batches, or None.
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
    detail = F.when(
        F.col("_curated_in").isNotNull(),
        F.concat(F.lit("already curated in batch_id="), F.col("_curated_in")),
    ).otherwise(
        F.concat(
            F.lit("row "),
            F.col("row").cast(T.StringType()),
            F.lit(" repeats row "),
            F.col("_first_row").cast(T.StringType()),
            F.lit(f" of batch_id={batch_id}"),
        )
    )
    flagged = ranked.withColumn("reason", reason).withColumn("detail", detail)
    helpers = ["_rank", "_first_row", "_curated_in"]
    unique = flagged.where(F.col("reason").isNull()).drop("reason", "detail", *helpers)
    duplicates = (
        flagged.where(F.col("reason").isNotNull()).drop(*helpers).withColumn("source", F.lit(SOURCE_METADATA))
    )
    return unique, duplicates


def index_images(files: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Key JPEG files by stem: (candidates, extra files whose stem an earlier path already has).

    `files` has binaryFile's `path` (content is joined later, by `with_content`); the first path in sort
    order wins.
    """
    keyed = files.withColumn("image_id", F.regexp_extract("path", JPEG_STEM_REGEX, 1))
    ranked = keyed.withColumn("_rank", F.row_number().over(Window.partitionBy("image_id").orderBy("path")))
    candidates = ranked.where(F.col("_rank") == 1).drop("_rank")
    extras = (
        ranked.where(F.col("_rank") > 1)
        .join(candidates.select("image_id", F.col("path").alias("_winner")), on="image_id", how="inner")
        .select(
            "image_id",
            F.lit(None).cast(T.StringType()).alias("lesion_id"),
            F.lit(REASON_DUPLICATE_IMAGE_FILE).alias("reason"),
            F.concat(F.lit("same image_id as "), F.col("_winner")).alias("detail"),
            F.lit(SOURCE_IMAGE).alias("source"),
            F.col("path").alias("source_path"),
        )
    )
    return candidates, extras


def find_orphans(candidates: DataFrame, meta: DataFrame) -> DataFrame:
    """JPEG files whose image_id no metadata row (kept or not) names."""
    claimed = meta.where(F.col("image_id").isNotNull()).select("image_id").distinct()
    return candidates.join(claimed, on="image_id", how="left_anti").select(
        "image_id",
        F.lit(None).cast(T.StringType()).alias("lesion_id"),
        F.lit(REASON_ORPHAN_IMAGE).alias("reason"),
        F.lit("no metadata row names this image").alias("detail"),
        F.lit(SOURCE_IMAGE).alias("source"),
        F.col("path").alias("source_path"),
    )


def attach_images(kept: DataFrame, candidates: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Join kept rows to their files: (matched rows with `image_path`, rows with no file)."""
    files = candidates.select("image_id", F.col("path").alias("image_path"))
    joined = kept.join(files, on="image_id", how="left")
    matched = joined.where(F.col("image_path").isNotNull())
    missing = (
        joined.where(F.col("image_path").isNull())
        .drop("image_path")
        .withColumn("reason", F.lit(REASON_IMAGE_MISSING))
        .withColumn("detail", F.concat(F.lit("no file "), F.col("image_id"), F.lit(".jpg below the batch")))
        .withColumn("source", F.lit(SOURCE_METADATA))
    )
    return matched, missing


def with_content(matched: DataFrame, files: DataFrame) -> DataFrame:
    """Add each matched row's image bytes (`content`) from binaryFile rows (path, content)."""
    contents = files.select(F.col("path").alias("image_path"), "content")
    return matched.join(contents, on="image_path", how="inner")


def relabel_empty_files(missing: DataFrame, empty_files: DataFrame) -> DataFrame:
    """Turn `image_missing` rows into `image_empty` where a zero-byte file of that image_id exists.

    Spark's file sources skip zero-length files, so these rows reach attach_images as missing; `empty_files`
    (image_id, path) comes from a targeted glob (`find_empty_files`).
    """
    found = empty_files.select("image_id", F.col("path").alias("_empty_path"))
    joined = missing.join(found, on="image_id", how="left")
    is_empty = F.col("_empty_path").isNotNull()
    return (
        joined.withColumn("reason", F.when(is_empty, F.lit(REASON_IMAGE_EMPTY)).otherwise(F.col("reason")))
        .withColumn("detail", F.when(is_empty, F.lit("zero bytes")).otherwise(F.col("detail")))
        .withColumn("source", F.when(is_empty, F.lit(SOURCE_IMAGE)).otherwise(F.col("source")))
        .withColumn("source_path", F.coalesce(F.col("_empty_path"), F.col("source_path")))
        .drop("_empty_path")
    )


def _inspect_series(content: pd.Series, min_size: int) -> pd.DataFrame:
    records: list[dict[str, Any]] = []
    for data in content:
        try:
            info = inspect_image(data, min_size)
        except ImageError as exc:
            records.append(
                {"width": None, "height": None, "sha256": None, "reason": exc.reason, "detail": exc.detail}
            )
        else:
            records.append(
                {
                    "width": info.width,
                    "height": info.height,
                    "sha256": info.sha256,
                    "reason": None,
                    "detail": None,
                }
            )
    frame = pd.DataFrame.from_records(records, columns=list(INSPECTION_SCHEMA.fieldNames()))
    return frame.astype({"width": "Int32", "height": "Int32"})


def inspect_images(matched: DataFrame, min_size: int) -> DataFrame:
    """Decode matched images in a pandas UDF: adds width, height, sha256, and reason/detail for rejects."""

    @F.pandas_udf(INSPECTION_SCHEMA)
    def inspect(content: pd.Series) -> pd.DataFrame:
        return _inspect_series(content, min_size)

    inspected = matched.withColumn("_inspection", inspect(F.col("content")))
    return inspected.select("*", "_inspection.*").drop("_inspection")


def lesion_unit(seed: int, lesion_id: str) -> float:
    """Map (seed, lesion_id) to [0, 1): the pure-Python twin of `lesion_unit_column`."""
    digest = hashlib.sha256(f"{seed}:{lesion_id}".encode()).hexdigest()
    return int(digest[:SPLIT_HASH_HEX_DIGITS], 16) / SPLIT_HASH_SCALE


def lesion_unit_column(seed: int, lesion_id: Column) -> Column:
    digest = F.sha2(F.concat(F.lit(f"{seed}:"), lesion_id), 256)
    prefix = F.conv(F.substring(digest, 1, SPLIT_HASH_HEX_DIGITS), 16, 10).cast(T.LongType())
    return prefix.cast(T.DoubleType()) / F.lit(SPLIT_HASH_SCALE)


def assign_split(df: DataFrame, test_fraction: float, seed: int) -> DataFrame:
    """Add `split`: 'test' iff lesion_unit(seed, lesion_id) < test_fraction (see the module docstring)."""
    is_test = lesion_unit_column(seed, F.col("lesion_id")) < F.lit(test_fraction)
    return df.withColumn("split", F.when(is_test, F.lit(SPLIT_TEST)).otherwise(F.lit(SPLIT_TRAIN)))


def to_curated(df: DataFrame, batch_id: str) -> DataFrame:
    """The curated table contract (CURATED_SCHEMA)."""
    return df.select(
        "image_id",
        "lesion_id",
        "dx",
        "dx_type",
        F.col("age").cast(T.DoubleType()).alias("age"),
        "sex",
        "localization",
        "dataset",
        "split",
        F.col("width").cast(T.IntegerType()).alias("width"),
        F.col("height").cast(T.IntegerType()).alias("height"),
        "sha256",
        F.col("content").alias("image"),
        F.col("image_path").alias("source_path"),
        F.lit(batch_id).alias("batch_id"),
    )


def to_quarantine(df: DataFrame, batch_id: str) -> DataFrame:
    """The quarantine table contract (QUARANTINE_SCHEMA)."""
    return df.select(
        F.col("image_id").cast(T.StringType()).alias("image_id"),
        F.col("lesion_id").cast(T.StringType()).alias("lesion_id"),
        "reason",
        "detail",
        "source",
        "source_path",
        F.lit(batch_id).alias("batch_id"),
    )


# ---------------------------------------------------------------------------------------------- I/O shell


@dataclass(frozen=True)
class Paths:
    images: str
    quarantine: str
    summary_json: str
    figures: str

    @classmethod
    def of(cls, curated: str, batch_id: str) -> Paths:
        return cls(
            images=storage.join(curated, "images"),
            quarantine=storage.join(curated, "quarantine"),
            summary_json=storage.join(curated, "summaries", f"{batch_id}.json"),
            figures=storage.join(curated, "summaries", batch_id),
        )


def read_batch(spark: SparkSession, batch_dir: str) -> DataFrame:
    """Every file below `batch_dir` (binaryFile: path, length, content), listed once.

    Listing is the slow part on object stores, so the listing and the image reads share this one relation;
    content is only read by queries that select it (the listing queries do not).
    """
    return spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(batch_dir)


def jpeg_files(files: DataFrame) -> DataFrame:
    return files.where(F.col("path").rlike(JPEG_PATH_REGEX)).select("path", "content")


def find_metadata_csv(listing: DataFrame) -> str:
    """The single *.csv below the batch folder; ValueError if there is none or more than one."""
    found = [row.path for row in listing.where(F.col("path").rlike(CSV_PATH_REGEX)).select("path").collect()]
    if len(found) != 1:
        raise ValueError(f"a batch needs exactly one metadata *.csv below it, found {len(found)}: {found}")
    return found[0]


def find_empty_files(spark: SparkSession, batch_dir: str, image_ids: list[str]) -> DataFrame:
    """Zero-byte JPEG files named after `image_ids`, up to MAX_GLOB_DEPTH folders below `batch_dir`.

    One Hadoop glob call (not a listing of the whole batch through py4j); only used for the few missing rows.
    """
    schema = T.StructType([T.StructField("image_id", T.StringType()), T.StructField("path", T.StringType())])
    if not image_ids:
        return spark.createDataFrame([], schema)
    names = "{" + ",".join(sorted(set(image_ids))) + "}.{jpg,jpeg,JPG,JPEG}"
    levels = ",".join("*/" * depth + names for depth in range(MAX_GLOB_DEPTH + 1))
    jvm = spark.sparkContext._jvm
    pattern = jvm.org.apache.hadoop.fs.Path(storage.join(batch_dir, "{" + levels + "}"))
    fs = pattern.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    statuses = fs.globStatus(pattern) or []
    found = [
        (re.sub(r"\.[^.]*$", "", status.getPath().getName()), status.getPath().toString())
        for status in statuses
        if status.isFile() and status.getLen() == 0
    ]
    return spark.createDataFrame(found, schema)


def read_existing(spark: SparkSession, images_root: str, batch_id: str) -> DataFrame | None:
    """(image_id, batch_id) curated by other batches; None before the first batch."""
    if not storage.exists(spark, images_root):
        return None
    # An explicit schema keeps batch_id a string (partition type inference would turn '001' into 1).
    curated = spark.read.schema(CURATED_SCHEMA).parquet(images_root)
    return curated.where(F.col("batch_id") != batch_id).select("image_id", "batch_id")


def write_partition(spark: SparkSession, df: DataFrame, root: str, batch_id: str, rows: int) -> None:
    """Replace `root/batch_id=<id>/` with `df`; an empty result removes the partition (overwrite keeps it)."""
    if rows == 0:
        storage.delete(spark, storage.partition_uri(root, "batch_id", batch_id))
        return
    storage.write_partition(df, root, "batch_id", batch_id)


def _counts(df: DataFrame, column: str) -> dict[str, int]:
    return {row[0]: int(row[1]) for row in df.groupBy(column).count().collect()}


def _split_counts(curated: DataFrame) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {dx: {SPLIT_TRAIN: 0, SPLIT_TEST: 0} for dx in CLASSES}
    for row in curated.groupBy("dx", "split").count().collect():
        counts[row["dx"]][row["split"]] = int(row["count"])
    return counts


def run(spark: SparkSession, settings: Settings) -> dict:
    """Clean one batch; returns (and writes) its summary."""
    settings.validate()
    started = time.monotonic()
    batch_id = settings.batch_id
    paths = Paths.of(settings.curated, batch_id)

    files = read_batch(spark, settings.batch_dir)
    listing = files.select("path", "length").persist()
    # File names only (no bytes), computed once: missing, orphan and duplicate-file checks all use it.
    jpeg_index = jpeg_files(files).select("path").persist()
    csv_path = find_metadata_csv(listing)
    raw = spark.read.option("header", "true").option("inferSchema", "false").csv(csv_path)
    meta = parse_metadata(raw, csv_path).persist()
    metadata_rows = meta.count()
    log.info("batch %s: %d metadata rows in %s", batch_id, metadata_rows, csv_path)

    kept, q_rules = apply_rules(meta, settings.rules)
    kept, q_duplicates = drop_duplicates(kept, read_existing(spark, paths.images, batch_id), batch_id)
    candidates, q_extra_files = index_images(jpeg_index)
    matched, q_missing = attach_images(kept, candidates)
    missing_ids = [row.image_id for row in q_missing.select("image_id").collect()]
    q_missing = relabel_empty_files(q_missing, find_empty_files(spark, settings.batch_dir, missing_ids))
    # One materialisation: images are decoded once, and the curated plan no longer reads the curated table
    # it overwrites (Spark refuses to overwrite a path the same plan reads).
    with_bytes = with_content(matched, jpeg_files(files))
    inspected = inspect_images(with_bytes, settings.min_size).localCheckpoint(eager=True)
    decode = Progress("clean images decoded", every_s=math.inf, _start=started)
    decode.add(inspected.count())
    decode.finish()

    good = inspected.where(F.col("reason").isNull())
    curated = to_curated(assign_split(good, settings.test_fraction, settings.seed), batch_id).persist()
    q_images = inspected.where(F.col("reason").isNotNull()).withColumn("source", F.lit(SOURCE_IMAGE))
    q_images = q_images.withColumn("source_path", F.col("image_path"))
    parts = [q_rules, q_duplicates, q_missing, q_images]
    quarantine = to_quarantine(parts[0], batch_id)
    for part in parts[1:]:
        quarantine = quarantine.unionByName(to_quarantine(part, batch_id))
    quarantine = quarantine.unionByName(to_quarantine(find_orphans(candidates, meta), batch_id))
    quarantine = quarantine.unionByName(to_quarantine(q_extra_files, batch_id)).persist()

    n_curated = curated.count()
    by_reason = _counts(quarantine, "reason")
    n_quarantined = sum(by_reason.values())
    unclaimed_files = by_reason.get(REASON_ORPHAN_IMAGE, 0) + by_reason.get(REASON_DUPLICATE_IMAGE_FILE, 0)
    rows_in = metadata_rows + unclaimed_files
    if rows_in != n_curated + n_quarantined:
        raise RuntimeError(
            f"invariant violated for batch {batch_id}: rows_in {rows_in} != curated {n_curated} "
            f"+ quarantined {n_quarantined}"
        )

    write_partition(spark, curated, paths.images, batch_id, n_curated)
    write_partition(spark, quarantine, paths.quarantine, batch_id, n_quarantined)
    image_files = listing.where(F.col("path").rlike(JPEG_PATH_REGEX)).count()
    total_files = listing.count()
    elapsed = time.monotonic() - started
    progress = Progress(f"clean batch {batch_id} rows", total=rows_in, every_s=math.inf, _start=started)
    progress.add(rows_in)
    progress.finish()

    per_class = dict.fromkeys(CLASSES, 0) | _counts(curated, "dx")
    summary: dict[str, Any] = {
        "batch_id": batch_id,
        "batch_dir": settings.batch_dir,
        "metadata_csv": csv_path,
        "curated_root": settings.curated,
        "rules": asdict(settings.rules),
        "test_fraction": settings.test_fraction,
        "seed": settings.seed,
        "min_size": settings.min_size,
        "rows_in_definition": "metadata rows + JPEG files no metadata row claims (orphan or duplicate files)",
        "rows_in": rows_in,
        "metadata_rows": metadata_rows,
        "image_files": image_files,
        "ignored_files": total_files - image_files - 1,
        "curated": n_curated,
        "quarantined": n_quarantined,
        "quarantined_by_reason": dict(sorted(by_reason.items())),
        "quarantined_by_source": _counts(quarantine, "source"),
        "per_class": per_class,
        "per_class_split": _split_counts(curated),
        "lesions": {
            split: curated.where(F.col("split") == split).select("lesion_id").distinct().count()
            for split in (SPLIT_TRAIN, SPLIT_TEST)
        },
        "invariant": {
            "statement": "rows_in == curated + quarantined",
            "holds": True,
            "check": f"{rows_in} == {n_curated} + {n_quarantined}",
        },
        "elapsed_s": round(elapsed, 3),
        "rows_per_s": round(rows_in / max(elapsed, 1e-9), 1),
        "images_per_s": round(image_files / max(elapsed, 1e-9), 1),
    }
    if settings.figures:
        summary["figures"] = write_figures(spark, curated, paths)
    storage.write_json(spark, paths.summary_json, summary)
    for df in (curated, quarantine, meta, listing, jpeg_index):
        df.unpersist()
    log.info(
        "batch %s: rows_in %d = curated %d + quarantined %d %s",
        batch_id,
        rows_in,
        n_curated,
        n_quarantined,
        summary["quarantined_by_reason"],
    )
    return summary


# ---------------------------------------------------------------------------------------------- EDA figures


@dataclass(frozen=True)
class Profile:
    """Counts behind the EDA figures, aggregated in Spark (no image bytes leave the executors)."""

    dx: dict[str, int]
    age: dict[float, int]
    sex: dict[str, int]
    localization: dict[str, int]


def profile(df: DataFrame) -> Profile:
    age_bin = (F.floor(F.col("age") / AGE_BIN_YEARS) * AGE_BIN_YEARS).cast(T.DoubleType())
    ages = {
        float(row[0]): int(row[1])
        for row in df.where(F.col("age").isNotNull()).groupBy(age_bin).count().collect()
    }
    return Profile(
        dx=_counts(df, "dx"),
        age=dict(sorted(ages.items())),
        sex=_counts(df, "sex"),
        localization=_counts(df.fillna({"localization": UNKNOWN}), "localization"),
    )


def _bar_png(
    title: str, counts: dict[Any, int], colors: list[str] | None = None, width: float = 0.8
) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    labels = list(counts)  # numbers (age bins) give a numeric axis, strings a categorical one
    ax.bar(labels, list(counts.values()), color=colors, width=width)
    ax.set_title(title)
    ax.set_ylabel("images")
    if len(labels) > MAX_UPRIGHT_LABELS:  # long category names (localization) would overlap
        plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def figure_pngs(prof: Profile, scope: str) -> dict[str, bytes]:
    """PNG bytes by file name: class distribution (malignant in red), age histogram, sex, localization."""
    dx = {c: prof.dx.get(c, 0) for c in CLASSES}
    dx_colors = ["tab:red" if c in MALIGNANT else "tab:blue" for c in CLASSES]
    localization = dict(sorted(prof.localization.items(), key=lambda item: -item[1]))
    return {
        f"{scope}_class_distribution.png": _bar_png(
            f"{scope}: diagnosis (red = malignant, blue = benign)", dx, dx_colors
        ),
        f"{scope}_age.png": _bar_png(
            f"{scope}: age ({AGE_BIN_YEARS}-year bins)", prof.age, width=AGE_BIN_YEARS * 0.9
        )
        if prof.age
        else _bar_png(f"{scope}: age (none)", {}),
        f"{scope}_sex.png": _bar_png(f"{scope}: sex", dict(sorted(prof.sex.items()))),
        f"{scope}_localization.png": _bar_png(f"{scope}: localization", localization),
    }


def write_figures(spark: SparkSession, curated: DataFrame, paths: Paths) -> list[str]:
    """Write per-batch and cumulative (all curated partitions) figures; return their URIs."""
    columns = ["dx", "age", "sex", "localization"]
    everything = (
        spark.read.schema(CURATED_SCHEMA).parquet(paths.images)
        if storage.exists(spark, paths.images)
        else None
    )
    scopes = {"batch": curated.select(*columns)}
    if everything is not None:
        scopes["cumulative"] = everything.select(*columns)
    written = []
    for scope, df in scopes.items():
        for name, png in figure_pngs(profile(df), scope).items():
            uri = storage.join(paths.figures, name)
            storage.write_bytes(spark, uri, png)
            written.append(uri)
    return written
