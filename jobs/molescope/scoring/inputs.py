"""A scoring batch folder's usable images (labelled when a metadata CSV says so), rejects and counts.

A batch folder holds JPEG images anywhere below it, with at most one optional metadata CSV (the HAM10000
columns, as clean reads them). Without a CSV the image ids are the file stems and there are no labels. With
one, the first row naming an image_id describes it (later rows: `duplicate_image_id`; rows without an
image_id: `malformed_image_id`), and that row is checked as clean checks rows (`molescope.intake.metadata
.label_checks`: a whole record on its line, field count, UTF-8, the closed vocabularies, age), except that a
blank value means "not given": a blank dx is an unlabelled image. A file whose row fails a check is
quarantined with that reason instead of being scored on a label that may be shifted or wrong.

Rows in. `rows_in` = JPEG files as the filesystem lists them (zero-byte and hidden ones included) + metadata
rows that describe no file (repeats, rows without an image_id, rows naming no file). Each ends up in exactly
one of scored or quarantined; `read_inputs` raises if that does not hold.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from molescope.core.errors import InvariantError
from molescope.core.registry import REASON_MALFORMED_IMAGE_ID, SOURCE_METADATA
from molescope.intake import landed
from molescope.intake.metadata import Vocabulary, drop_duplicates, flag, label_checks, parse_metadata
from molescope.intake.metadata_csv import MALFORMED
from molescope.io import tables
from molescope.models.fusion import METADATA_FIELDS, METADATA_SCHEMA

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Labels:
    """What a scoring batch's metadata says: one valid row per image_id, the invalid ones, and the rows
    that describe no image (repeats and rows without an image_id), already quarantine rows."""

    valid: DataFrame
    invalid: DataFrame
    unused: DataFrame


def metadata_labels(meta: DataFrame, vocabulary: Vocabulary) -> Labels:
    """Split parsed metadata (`parse_metadata` output) into valid and invalid first rows per image_id and
    the rows no image uses."""
    no_image_id = F.concat(F.lit("row "), F.col("row").cast(T.StringType()), F.lit(": no image_id"))
    malformed = F.col(MALFORMED).isNotNull()
    unnamed = (
        meta.where(F.col("image_id").isNull() & ~malformed)
        .withColumn("reason", F.lit(REASON_MALFORMED_IMAGE_ID))
        .withColumn("detail", no_image_id)
        .withColumn("source", F.lit(SOURCE_METADATA))
    )
    first, repeats = drop_duplicates(meta.where(F.col("image_id").isNotNull()), None, None)
    # A malformed line is quarantined as such (by label_checks) even when no image_id could be read from it.
    checked = first.unionByName(meta.where(F.col("image_id").isNull() & malformed))
    valid, invalid = flag(checked, label_checks(vocabulary), vocabulary)
    return Labels(valid, invalid, repeats.unionByName(unnamed))


def attach_metadata(
    candidates: DataFrame, labels: Labels | None
) -> tuple[DataFrame, DataFrame | None, DataFrame | None]:
    """(image files to inspect, with `image_path`, `length`, lesion_id, dx and the metadata fields; files
    whose row is invalid; rows that describe no file), the last two as quarantine rows (None without
    metadata: every file is then scored with null lesion_id, dx, age, sex and localization)."""
    files = candidates.select("image_id", F.col("path").alias("image_path"), "length")
    passed = ["lesion_id", "dx", *METADATA_FIELDS]
    if labels is None:
        none = F.lit(None).cast(T.StringType())
        nulls = [
            F.lit(None).cast(f.dataType).alias(f.name) for f in METADATA_SCHEMA if f.name in METADATA_FIELDS
        ]
        return (
            files.select(
                "image_id", none.alias("lesion_id"), none.alias("dx"), *nulls, "image_path", "length"
            ),
            None,
            None,
        )
    invalid = labels.invalid.select("image_id", "lesion_id", "reason", "detail", "source")
    rejected = files.join(invalid, on="image_id", how="inner").select(
        "image_id", "lesion_id", "reason", "detail", "source", F.col("image_path").alias("source_path")
    )
    usable = files.join(invalid.select("image_id"), on="image_id", how="left_anti")
    known = F.when(F.col("dx").isNotNull(), F.col("dx"))
    valid = labels.valid.select("image_id", "lesion_id", known.alias("dx"), *METADATA_FIELDS)
    joined = usable.join(valid, on="image_id", how="left")
    _, missing = landed.attach_images(labels.valid, candidates)
    no_file = labels.invalid.join(files.select("image_id"), on="image_id", how="left_anti")
    unused = [
        part.select(*tables.QUARANTINE_SCHEMA.fieldNames()[:-1]) for part in (labels.unused, missing, no_file)
    ]
    described = unused[0].unionByName(unused[1]).unionByName(unused[2])
    return joined.select("image_id", *passed, "image_path", "length"), rejected, described


def scoring_images(inspected: DataFrame, batch_id: str) -> DataFrame:
    """Usable images as compute_features input (image_id, image bytes and the passthrough columns)."""
    return inspected.select(
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
            raise InvariantError(
                f"invariant violated for scoring batch {batch_id}: rows_in {self.rows_in} != scored "
                f"{self.scored} + quarantined {self.quarantined}"
            )


def count_rows(df: DataFrame | None) -> int:
    return 0 if df is None else df.count()


def read_labels(
    spark: SparkSession, listing: DataFrame, vocabulary: Vocabulary
) -> tuple[Labels | None, DataFrame | None]:
    """(the metadata's labels, the parsed metadata, persisted); both None without a CSV.

    The caller unpersists the metadata once it is done with the batch (a job may score many batches).
    """
    csv_path = landed.metadata_csv(listing, required=False)
    if csv_path is None:
        return None, None
    meta = parse_metadata(landed.read_metadata_csv(spark, csv_path), csv_path).persist()
    log.info("metadata %s", csv_path)
    return metadata_labels(meta, vocabulary), meta


def read_inputs(
    spark: SparkSession, batch_dir: str, batch_id: str, min_size: int, vocabulary: Vocabulary
) -> tuple[DataFrame, DataFrame, Counts]:
    """(usable images for compute_features, quarantine table (persisted), counts) of the batch folder."""
    listing = landed.list_batch(spark, batch_dir).persist()
    labels, meta = read_labels(spark, listing, vocabulary)
    candidates, q_extra_files, q_hidden = landed.index_images(listing)
    attached, q_invalid, q_described = attach_metadata(candidates, labels)
    with_bytes = landed.with_content(attached, landed.read_contents(spark, batch_dir))
    # One materialisation: every image is decoded once by the inspection.
    inspected = landed.inspect_images(with_bytes, min_size).localCheckpoint(eager=True)
    landed.check_read(inspected, batch_dir)
    good, q_content = landed.drop_content_duplicates(
        inspected.where(F.col("reason").isNull()), None, "image_id"
    )
    parts = [landed.image_quarantine(inspected), q_content, q_extra_files, q_hidden, q_invalid, q_described]
    quarantine = tables.quarantine_of(parts, batch_id).persist()
    images = scoring_images(good, batch_id).localCheckpoint(eager=True)
    counts = Counts(
        image_files=landed.jpeg_files(listing).count(),
        metadata_rows=count_rows(meta),
        metadata_only_rows=count_rows(q_described),
        scored=images.count(),
        quarantined=quarantine.count(),
        labelled=images.where(F.col("dx").isNotNull()).count(),
    )
    listing.unpersist()
    if meta is not None:
        meta.unpersist()  # what the batch still needs of it is in the (persisted) quarantine and checkpoints
    counts.check(batch_id)
    return images, quarantine, counts
