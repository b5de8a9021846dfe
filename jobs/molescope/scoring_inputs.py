"""A scoring batch folder's usable images (labelled when a metadata CSV says so), rejects and counts.

A batch folder holds JPEG images anywhere below it, with at most one optional metadata CSV (the HAM10000
columns, as clean reads them). Without a CSV the image ids are the file stems and there are no labels; with
one, each image takes `lesion_id` and `dx` from the row naming it (the first such row), and `dx` values
outside the 7 classes (or blank) mean "no label".

Rows in. `rows_in` = JPEG files + metadata rows that name no file + metadata rows repeating an image_id.
Each ends up in exactly one of scored or quarantined (reasons: the image codes, `duplicate_image_file`,
`image_missing`, `duplicate_image_id`, `malformed_image_id`); `read_inputs` raises if that does not hold.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from molescope import intake, tables
from molescope.constants import CLASSES
from molescope.fusion import METADATA_FIELDS, METADATA_SCHEMA
from molescope.metadata import drop_duplicates, parse_metadata
from molescope.registry import REASON_MALFORMED_IMAGE_ID, SOURCE_METADATA

log = logging.getLogger(__name__)


def metadata_labels(meta: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(one row per image_id: image_id, lesion_id, dx or null, source_path; rejected metadata rows).

    `meta` is parse_metadata output. dx outside CLASSES (or blank) becomes null: no label. Rows without an
    image_id are rejected as `malformed_image_id`, repeats of an image_id (all but the first row) as
    `duplicate_image_id`.
    """
    no_image_id = F.concat(F.lit("row "), F.col("row").cast(T.StringType()), F.lit(": no image_id"))
    unnamed = (
        meta.where(F.col("image_id").isNull())
        .withColumn("reason", F.lit(REASON_MALFORMED_IMAGE_ID))
        .withColumn("detail", no_image_id)
        .withColumn("source", F.lit(SOURCE_METADATA))
    )
    unique, duplicates = drop_duplicates(meta.where(F.col("image_id").isNotNull()), None, None)
    known = F.when(F.col("dx").isin(*CLASSES), F.col("dx"))
    labels = unique.select("image_id", "lesion_id", known.alias("dx"), *METADATA_FIELDS, "source_path")
    return labels, duplicates.unionByName(unnamed)


def attach_metadata(candidates: DataFrame, labels: DataFrame | None) -> tuple[DataFrame, DataFrame | None]:
    """(image files with `image_path`, lesion_id, dx and the metadata fields; metadata rows naming no file,
    quarantined).

    Without metadata every file is scored with null lesion_id, dx, age, sex and localization, and nothing is
    missing.
    """
    files = candidates.select("image_id", F.col("path").alias("image_path"))
    if labels is None:
        none = F.lit(None).cast(T.StringType())
        nulls = [
            F.lit(None).cast(f.dataType).alias(f.name) for f in METADATA_SCHEMA if f.name in METADATA_FIELDS
        ]
        return files.select("image_id", none.alias("lesion_id"), none.alias("dx"), *nulls, "image_path"), None
    passed = ["lesion_id", "dx", *METADATA_FIELDS]
    joined = files.join(labels.select("image_id", *passed), on="image_id", how="left")
    _, missing = intake.attach_images(labels, candidates)
    return joined.select("image_id", *passed, "image_path"), missing


def scoring_images(inspected: DataFrame, batch_id: str) -> DataFrame:
    """Usable images as compute_features input (image_id, image bytes and the passthrough columns)."""
    return inspected.where(F.col("reason").isNull()).select(
        "image_id",
        F.col("content").alias("image"),
        "lesion_id",
        "dx",
        *METADATA_FIELDS,  # used by models trained with metadata fusion
        F.lit(None).cast(T.StringType()).alias("split"),  # neither train nor test of the model's run
        F.lit(batch_id).alias("batch_id"),
    )


@dataclass(frozen=True)
class Counts:
    """Where every input went: `rows_in == scored + quarantined` (see the module docstring)."""

    image_files: int
    metadata_rows: int
    metadata_only_rows: int
    scored: int
    quarantined: int
    labelled: int

    @property
    def rows_in(self) -> int:
        return self.image_files + self.metadata_only_rows

    def check(self, batch_id: str) -> None:
        if self.rows_in != self.scored + self.quarantined:
            raise RuntimeError(
                f"invariant violated for scoring batch {batch_id}: rows_in {self.rows_in} != scored "
                f"{self.scored} + quarantined {self.quarantined}"
            )


def count_rows(df: DataFrame | None) -> int:
    return 0 if df is None else df.count()


def read_labels(
    spark: SparkSession, listing: DataFrame
) -> tuple[DataFrame | None, DataFrame | None, DataFrame | None]:
    """(labels per image_id, rejected metadata rows, parsed metadata, persisted); all None without a CSV.

    The caller unpersists the metadata once it is done with the batch (a job may score many batches).
    """
    csv_path = intake.metadata_csv(listing, required=False)
    if csv_path is None:
        return None, None, None
    meta = parse_metadata(intake.read_metadata_csv(spark, csv_path), csv_path).persist()
    labels, duplicates = metadata_labels(meta)
    log.info("metadata %s", csv_path)
    return labels, duplicates, meta


def read_inputs(
    spark: SparkSession, batch_dir: str, batch_id: str, min_size: int
) -> tuple[DataFrame, DataFrame, Counts]:
    """(usable images for compute_features, quarantine table (persisted), counts) of the batch folder."""
    files = intake.read_batch(spark, batch_dir)
    listing = files.select("path").persist()
    labels, q_duplicates, meta = read_labels(spark, listing)
    candidates, q_extra_files = intake.index_images(intake.jpeg_files(files).select("path"))
    attached, q_missing = attach_metadata(candidates, labels)
    with_bytes = intake.with_content(attached, intake.jpeg_files(files))
    # One materialisation: every image is decoded once by the inspection.
    inspected = intake.inspect_images(with_bytes, min_size).localCheckpoint(eager=True)
    parts = [intake.image_quarantine(inspected), q_extra_files, q_missing, q_duplicates]
    quarantine = tables.quarantine_of(parts, batch_id).persist()
    images = scoring_images(inspected, batch_id)
    counts = Counts(
        image_files=inspected.count() + q_extra_files.count(),
        metadata_rows=count_rows(meta),
        metadata_only_rows=count_rows(q_missing) + count_rows(q_duplicates),
        scored=images.count(),
        quarantined=quarantine.count(),
        labelled=images.where(F.col("dx").isNotNull()).count(),
    )
    listing.unpersist()
    if meta is not None:
        meta.unpersist()  # what the batch still needs of it is in the (persisted) quarantine and checkpoint
    counts.check(batch_id)
    return images, quarantine, counts
