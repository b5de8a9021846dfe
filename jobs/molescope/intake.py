"""Reading a landed batch folder (clean) or a folder of images to score (score): files, JPEGs, inspection.

A batch folder holds JPEG images anywhere below it and metadata CSV(s). Files are listed once (binaryFile:
path, length, content; content is read only by the queries that select it), JPEGs are keyed by file stem
(= image_id), matched to metadata rows, and decoded once in a pandas UDF with `molescope.imaging`.
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from molescope import storage
from molescope.imaging import ImageError, inspect_image
from molescope.registry import (
    REASON_DUPLICATE_IMAGE_FILE,
    REASON_IMAGE_EMPTY,
    REASON_IMAGE_MISSING,
    REASON_ORPHAN_IMAGE,
    SOURCE_IMAGE,
    SOURCE_METADATA,
)

JPEG_PATH_REGEX = r"(?i)\.jpe?g$"
JPEG_STEM_REGEX = r"([^/]+)\.(?i:jpe?g)$"
CSV_PATH_REGEX = r"(?i)\.csv$"
#: How deep below the batch folder find_empty_files looks (HAM10000 layouts use 1).
MAX_GLOB_DEPTH = 3
INSPECTION_SCHEMA = T.StructType(
    [
        T.StructField("width", T.IntegerType()),
        T.StructField("height", T.IntegerType()),
        T.StructField("sha256", T.StringType()),
        T.StructField("reason", T.StringType()),
        T.StructField("detail", T.StringType()),
    ]
)


def read_batch(spark: SparkSession, batch_dir: str) -> DataFrame:
    """Every file below `batch_dir` (binaryFile: path, length, content), listed once.

    Listing is the slow part on object stores, so the listing and the image reads share this one relation;
    content is only read by queries that select it (the listing queries do not).
    """
    return spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(batch_dir)


def jpeg_files(files: DataFrame) -> DataFrame:
    return files.where(F.col("path").rlike(JPEG_PATH_REGEX)).select("path", "content")


def metadata_csv(listing: DataFrame, *, required: bool) -> str | None:
    """The one *.csv below the batch folder (None when there is none and it is not `required`).

    ValueError for several, or for none when `required` (a landed batch needs exactly one).
    """
    found = [row.path for row in listing.where(F.col("path").rlike(CSV_PATH_REGEX)).select("path").collect()]
    if len(found) > 1 or (required and not found):
        need = "exactly one" if required else "at most one"
        raise ValueError(f"a batch needs {need} metadata *.csv below it, found {len(found)}: {found}")
    return found[0] if found else None


def read_metadata_csv(spark: SparkSession, path: str) -> DataFrame:
    """The CSV as strings (header row; molescope.metadata.parse_metadata types it)."""
    return spark.read.option("header", "true").option("inferSchema", "false").csv(path)


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


def find_empty_files(spark: SparkSession, batch_dir: str, image_ids: list[str]) -> DataFrame:
    """Zero-byte JPEG files named after `image_ids`, up to MAX_GLOB_DEPTH folders below `batch_dir`.

    One Hadoop glob (not a listing of the whole batch through py4j); only used for the few missing rows.
    """
    schema = T.StructType([T.StructField("image_id", T.StringType()), T.StructField("path", T.StringType())])
    if not image_ids:
        return spark.createDataFrame([], schema)
    names = "{" + ",".join(sorted(set(image_ids))) + "}.{jpg,jpeg,JPG,JPEG}"
    levels = ",".join("*/" * depth + names for depth in range(MAX_GLOB_DEPTH + 1))
    found = [
        (re.sub(r"\.[^.]*$", "", f.name), f.uri)
        for f in storage.glob(spark, storage.join(batch_dir, "{" + levels + "}"))
        if not f.is_dir and f.size == 0
    ]
    return spark.createDataFrame(found, schema)


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
