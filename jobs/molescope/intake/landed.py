"""Reading a landed batch folder (clean) or a folder of images to score (score): files, JPEGs, inspection.

A batch folder holds JPEG images anywhere below it and metadata CSV(s). What counts is what the filesystem
lists: the folder is listed once through the Hadoop FileSystem API (`list_batch`: every file with its length,
zero-byte and hidden ones included; the folder's name is taken literally, `batch[1]` is no glob). Spark's
binaryFile reader, which skips zero-byte files and names starting with `.` or `_`, only supplies the bytes
of the files the listing says it can read (`read_contents`). JPEGs are keyed by file stem (= image_id),
matched to metadata rows, and decoded once in a pandas UDF with `molescope.io.imaging`.

Every listed JPEG ends up somewhere: decoded (kept, or quarantined with the image's reason: a zero-byte file
is `image_empty`), `orphan_image` (no metadata row names it), `duplicate_image_file` (its stem repeats an
earlier file's) or `hidden_image_file` (below a name starting with `.` or `_`, which Spark's readers skip).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from pyspark import TaskContext
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from molescope.core import failpoints
from molescope.core.errors import InputError
from molescope.core.registry import (
    REASON_DUPLICATE_IMAGE_CONTENT,
    REASON_DUPLICATE_IMAGE_FILE,
    REASON_HIDDEN_IMAGE_FILE,
    REASON_IMAGE_MISSING,
    REASON_ORPHAN_IMAGE,
    SOURCE_IMAGE,
    SOURCE_METADATA,
)
from molescope.intake import metadata
from molescope.io import storage, tables
from molescope.io.imaging import ImageError, inspect_image

JPEG_PATH_REGEX = r"(?i)\.jpe?g$"
JPEG_STEM_REGEX = r"([^/]+)\.(?i:jpe?g)$"
CSV_PATH_REGEX = r"(?i)\.csv$"
#: Names Spark's file readers skip: a path with such a component below the batch folder is hidden.
HIDDEN_PREFIXES = (".", "_")
LISTING_SCHEMA = T.StructType(
    [
        T.StructField("path", T.StringType()),
        T.StructField("length", T.LongType()),
        T.StructField("hidden", T.BooleanType()),
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


# ------------------------------------------------------------------------------------------------ listing


def is_hidden(relative_path: str) -> bool:
    return any(part.startswith(HIDDEN_PREFIXES) for part in relative_path.split("/"))


def list_batch(spark: SparkSession, batch_dir: str) -> DataFrame:
    """Every file below `batch_dir` as the filesystem lists it: `path`, `length`, `hidden`.

    The listing runs on the driver (one call per folder); InputError when the folder does not exist.
    """
    try:
        files = storage.list_tree(spark, batch_dir)
    except FileNotFoundError:
        raise InputError(f"batch folder not found: {batch_dir}") from None
    root = storage.qualified(spark, batch_dir)
    rows = [(f.uri, f.size, is_hidden(storage.relative(f.uri, root))) for f in files]
    return spark.createDataFrame(rows, LISTING_SCHEMA)


def read_contents(spark: SparkSession, batch_dir: str) -> DataFrame:
    """(path, content) of the non-empty, non-hidden files below `batch_dir` (binaryFile, read lazily)."""
    reader = spark.read.format("binaryFile").option("recursiveFileLookup", "true")
    return reader.load(storage.literal(batch_dir)).select("path", "content")


def jpeg_files(listing: DataFrame) -> DataFrame:
    return listing.where(F.col("path").rlike(JPEG_PATH_REGEX))


def metadata_csv(listing: DataFrame, *, required: bool) -> str | None:
    """The one visible *.csv below the batch folder (None when there is none and it is not `required`).

    InputError for several, or for none when `required` (a landed batch needs exactly one).
    """
    csvs = listing.where(F.col("path").rlike(CSV_PATH_REGEX) & ~F.col("hidden"))
    found = sorted(row.path for row in csvs.select("path").collect())
    if len(found) > 1 or (required and not found):
        need = "exactly one" if required else "at most one"
        raise InputError(f"a batch needs {need} metadata *.csv below it, found {len(found)}: {found}")
    return found[0] if found else None


def read_metadata_csv(spark: SparkSession, path: str) -> DataFrame:
    """The CSV's rows as strings with row, line and field count (`metadata.parse_metadata` types it)."""
    return metadata.metadata_frame(spark, storage.read_bytes(spark, path), path)


# -------------------------------------------------------------------------------------- files and rows


def _file_quarantine(files: DataFrame, reason: str, detail: Any) -> DataFrame:
    return files.select(
        "image_id",
        F.lit(None).cast(T.StringType()).alias("lesion_id"),
        F.lit(reason).alias("reason"),
        detail.alias("detail"),
        F.lit(SOURCE_IMAGE).alias("source"),
        F.col("path").alias("source_path"),
    )


def index_images(listing: DataFrame) -> tuple[DataFrame, DataFrame, DataFrame]:
    """Key listed JPEG files by stem: (candidates, extra files whose stem an earlier path has, hidden files).

    Candidates keep `path` and `length`; among visible files the first path in sort order wins.
    """
    keyed = jpeg_files(listing).withColumn("image_id", F.regexp_extract("path", JPEG_STEM_REGEX, 1))
    hidden = _file_quarantine(
        keyed.where(F.col("hidden")),
        REASON_HIDDEN_IMAGE_FILE,
        F.lit("a folder or file name starts with '.' or '_': rename it to include the image"),
    )
    visible = keyed.where(~F.col("hidden")).drop("hidden")
    ranked = visible.withColumn("_rank", F.row_number().over(Window.partitionBy("image_id").orderBy("path")))
    candidates = ranked.where(F.col("_rank") == 1).drop("_rank")
    winners = candidates.select("image_id", F.col("path").alias("_winner"))
    extras = ranked.where(F.col("_rank") > 1).join(winners, on="image_id", how="inner")
    extras = _file_quarantine(
        extras, REASON_DUPLICATE_IMAGE_FILE, F.concat(F.lit("same image_id as "), F.col("_winner"))
    )
    return candidates, extras, hidden


def find_orphans(candidates: DataFrame, meta: DataFrame) -> DataFrame:
    """JPEG files whose image_id no metadata row (kept or not) names."""
    claimed = meta.where(F.col("image_id").isNotNull()).select("image_id").distinct()
    orphans = candidates.join(claimed, on="image_id", how="left_anti")
    return _file_quarantine(orphans, REASON_ORPHAN_IMAGE, F.lit("no metadata row names this image"))


def attach_images(kept: DataFrame, candidates: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Join kept rows to their files: (matched rows with `image_path` and `length`, rows with no file)."""
    files = candidates.select("image_id", F.col("path").alias("image_path"), "length")
    joined = kept.join(files, on="image_id", how="left")
    matched = joined.where(F.col("image_path").isNotNull())
    missing = (
        joined.where(F.col("image_path").isNull())
        .drop("image_path", "length")
        .withColumn("reason", F.lit(REASON_IMAGE_MISSING))
        .withColumn("detail", F.concat(F.lit("no file "), F.col("image_id"), F.lit(".jpg below the batch")))
        .withColumn("source", F.lit(SOURCE_METADATA))
    )
    return matched, missing


def with_content(matched: DataFrame, contents: DataFrame) -> DataFrame:
    """Add each matched row's image bytes (`content`; null for a zero-byte file) from `read_contents`."""
    found = contents.select(F.col("path").alias("image_path"), "content")
    return matched.join(found, on="image_path", how="left")


def check_read(inspected: DataFrame, batch_dir: str) -> None:
    """InputError when a listed non-empty file was not read (it changed or vanished while being read)."""
    unread = inspected.where((F.col("length") > 0) & F.col("content").isNull()).select("image_path").limit(3)
    paths = [row.image_path for row in unread.collect()]
    if paths:
        raise InputError(f"files below {batch_dir} changed while they were read (e.g. {paths}); run again")


# -------------------------------------------------------------------------------------------- inspection


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
        context = TaskContext.get()
        failpoints.pause("task:inspect", context.partitionId() if context else None)
        return _inspect_series(content, min_size)

    inspected = matched.withColumn("_inspection", inspect(F.col("content")))
    return inspected.select("*", "_inspection.*").drop("_inspection")


def image_quarantine(inspected: DataFrame) -> DataFrame:
    """Images the inspection rejected, as quarantine rows (reason, detail, source, source_path)."""
    return inspected.where(F.col("reason").isNotNull()).select(
        "image_id",
        "lesion_id",
        "reason",
        "detail",
        F.lit(SOURCE_IMAGE).alias("source"),
        F.col("image_path").alias("source_path"),
    )


#: Quarantine rows of content duplicates, before the batch column is added (`tables.to_quarantine`).
CONTENT_DUPLICATE_SCHEMA = T.StructType([f for f in tables.QUARANTINE_SCHEMA.fields if f.name != "batch_id"])


def drop_content_duplicates(
    good: DataFrame, existing: DataFrame | None, order: str
) -> tuple[DataFrame, DataFrame]:
    """Quarantine images whose bytes (sha256) another kept image has: (kept, `duplicate_image_content` rows).

    An image kept by another batch (`existing`: image_id, batch_id, sha256) wins; within the batch the first
    by `order` does. The detail names the image kept, so one copy can never sit on both sides of a split.
    Only the narrow (id, hash) columns are shuffled; the duplicates (few) are collected and dropped from
    `good` by a broadcast anti-join, which keeps `good`'s partitioning (and so the written file count).
    """
    hashes = good.select("image_id", "lesion_id", "sha256", order, "image_path")
    first = Window.partitionBy("sha256").orderBy(order, "image_id")
    ranked = hashes.withColumn("_rank", F.row_number().over(first)).withColumn(
        "_first", F.first("image_id").over(first)
    )
    if existing is None:
        ranked = ranked.withColumn("_kept_in", F.lit(None).cast(T.StringType())).withColumn(
            "_kept_id", F.lit(None).cast(T.StringType())
        )
    else:
        earlier = existing.groupBy("sha256").agg(F.min(F.struct("batch_id", "image_id")).alias("_e"))
        kept_in = earlier.select(
            "sha256", F.col("_e.batch_id").alias("_kept_in"), F.col("_e.image_id").alias("_kept_id")
        )
        ranked = ranked.join(kept_in, on="sha256", how="left")
    detail = F.when(
        F.col("_kept_in").isNotNull(),
        F.concat(
            F.lit("same bytes as "), F.col("_kept_id"), F.lit(" curated in batch_id="), F.col("_kept_in")
        ),
    ).otherwise(F.concat(F.lit("same bytes as "), F.col("_first"), F.lit(" in this batch")))
    found = ranked.where(F.col("_kept_in").isNotNull() | (F.col("_rank") > 1)).select(
        "image_id",
        "lesion_id",
        F.lit(REASON_DUPLICATE_IMAGE_CONTENT).alias("reason"),
        detail.alias("detail"),
        F.lit(SOURCE_IMAGE).alias("source"),
        F.col("image_path").alias("source_path"),
    )
    duplicates = good.sparkSession.createDataFrame(found.collect(), CONTENT_DUPLICATE_SCHEMA)
    kept = good.join(F.broadcast(duplicates.select("image_id")), on="image_id", how="left_anti")
    return kept, duplicates
