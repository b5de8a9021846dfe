"""Clean a landed batch: validate metadata and images, quarantine rejects, assign train/test, write curated.

A batch is a folder (local or s3a://) holding exactly one metadata CSV and JPEG images anywhere below it.
Outputs, each partitioned by `batch_id` and rewritten as a whole when a batch is re-run:

- `<curated>/images/batch_id=<id>/`: one row per kept image (`molescope.tables.CURATED_SCHEMA`);
- `<curated>/quarantine/batch_id=<id>/`: one row per rejected input row or file, with a reason code
  (`molescope.registry.QUARANTINE_REASONS`);
- `<curated>/summaries/<id>.json` plus EDA figures in `<curated>/summaries/<id>/` (`molescope.eda`).

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

Split: by lesion, from a hash of (seed, lesion_id) (`molescope.split`), so all images of a lesion share a
side and a lesion keeps its side whichever batch its images arrive in.

Duplicates. Within a batch the first CSV row of an image_id wins; across batches an image_id already
curated in another batch partition wins. The duplicate is quarantined with a pointer to the winner.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from molescope import eda, intake, storage, tables
from molescope.constants import CLASSES, SPLIT_TEST, SPLIT_TRAIN
from molescope.metadata import Rules, apply_rules, drop_duplicates, parse_metadata
from molescope.progress import Progress
from molescope.registry import (
    DEFAULT_MIN_SIZE,
    DEFAULT_SEED,
    DEFAULT_TEST_FRACTION,
    IMAGES_DIR,
    QUARANTINE_DIR,
    REASON_DUPLICATE_IMAGE_FILE,
    REASON_ORPHAN_IMAGE,
    SUMMARIES_DIR,
    validate_batch_id,
)
from molescope.settings import CliSettings, option
from molescope.split import assign_split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings(CliSettings):
    batch_dir: str = option(help="landed batch folder (local path or s3a://)")
    batch_id: str = option(help="batch id: [A-Za-z0-9._-], at most 64 chars")
    curated: str = option(help="curated root URI")
    test_fraction: float = option(DEFAULT_TEST_FRACTION, type=float, help="share of lesions on the test side")
    seed: int = option(DEFAULT_SEED, type=int, help="split hash seed")
    min_size: int = option(DEFAULT_MIN_SIZE, type=int, help="min width/height, px")
    drop_missing_age: bool = option(
        True, flag="--keep-missing-age", action="store_false", help="keep rows with an empty age"
    )
    drop_unknown_sex: bool = option(
        True, flag="--keep-unknown-sex", action="store_false", help="keep rows with sex 'unknown'"
    )
    figures: bool = option(True, flag="--no-figures", action="store_false", help="skip the EDA figures")

    @property
    def rules(self) -> Rules:
        return Rules(drop_missing_age=self.drop_missing_age, drop_unknown_sex=self.drop_unknown_sex)

    def validate(self) -> None:
        validate_batch_id(self.batch_id)
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"--test-fraction must be in (0, 1), got {self.test_fraction}")
        if self.min_size < 1:
            raise ValueError(f"--min-size must be positive, got {self.min_size}")


@dataclass(frozen=True)
class Paths:
    images: str
    quarantine: str
    summary_json: str
    figures: str

    @classmethod
    def of(cls, curated: str, batch_id: str) -> Paths:
        return cls(
            images=storage.join(curated, IMAGES_DIR),
            quarantine=storage.join(curated, QUARANTINE_DIR),
            summary_json=storage.join(curated, SUMMARIES_DIR, f"{batch_id}.json"),
            figures=storage.join(curated, SUMMARIES_DIR, batch_id),
        )


# ---------------------------------------------------------------------------------------------- transforms


def to_curated(df: DataFrame, batch_id: str) -> DataFrame:
    """The curated table contract (tables.CURATED_SCHEMA)."""
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


# ---------------------------------------------------------------------------------------------- I/O shell


@dataclass
class Batch:
    """What one batch folder yields: kept images, every rejected input, and the counts behind rows_in."""

    curated: DataFrame
    quarantine: DataFrame
    #: path and length of every file below the batch folder.
    listing: DataFrame
    metadata_csv: str
    metadata_rows: int
    #: Images decoded (matched to a metadata row).
    decoded: int
    persisted: list[DataFrame]


def read_existing(spark: SparkSession, images_root: str, batch_id: str) -> DataFrame | None:
    """(image_id, batch_id) curated by other batches; None before the first batch."""
    if not storage.exists(spark, images_root):
        return None
    curated = spark.read.schema(tables.CURATED_SCHEMA).parquet(images_root)
    return curated.where(F.col("batch_id") != batch_id).select("image_id", "batch_id")


def clean_batch(spark: SparkSession, settings: Settings, paths: Paths) -> Batch:
    """Read, check and split the batch: every input ends up in `curated` or `quarantine` (both persisted)."""
    files = intake.read_batch(spark, settings.batch_dir)
    listing = files.select("path", "length").persist()
    # File names only (no bytes), computed once: missing, orphan and duplicate-file checks all use it.
    jpeg_index = intake.jpeg_files(files).select("path").persist()
    csv_path = intake.metadata_csv(listing, required=True) or ""
    meta = parse_metadata(intake.read_metadata_csv(spark, csv_path), csv_path).persist()
    metadata_rows = meta.count()
    log.info("batch %s: %d metadata rows in %s", settings.batch_id, metadata_rows, csv_path)

    kept, q_rules = apply_rules(meta, settings.rules)
    existing = read_existing(spark, paths.images, settings.batch_id)
    kept, q_duplicates = drop_duplicates(kept, existing, settings.batch_id)
    candidates, q_extra_files = intake.index_images(jpeg_index)
    matched, q_missing = intake.attach_images(kept, candidates)
    missing_ids = [row.image_id for row in q_missing.select("image_id").collect()]
    empty = intake.find_empty_files(spark, settings.batch_dir, missing_ids)
    q_missing = intake.relabel_empty_files(q_missing, empty)
    # One materialisation: images are decoded once, and the curated plan no longer reads the curated table
    # it overwrites (Spark refuses to overwrite a path the same plan reads).
    with_bytes = intake.with_content(matched, intake.jpeg_files(files))
    inspected = intake.inspect_images(with_bytes, settings.min_size).localCheckpoint(eager=True)
    decoded = inspected.count()
    good = inspected.where(F.col("reason").isNull())
    curated = to_curated(assign_split(good, settings.test_fraction, settings.seed), settings.batch_id)
    parts = [q_rules, q_duplicates, q_missing, intake.image_quarantine(inspected)]
    parts += [intake.find_orphans(candidates, meta), q_extra_files]
    quarantine = tables.quarantine_of(parts, settings.batch_id).persist()
    curated = curated.persist()
    persisted = [curated, quarantine, meta, listing, jpeg_index]
    return Batch(curated, quarantine, listing, csv_path, metadata_rows, decoded, persisted)


def write_partition(spark: SparkSession, df: DataFrame, root: str, batch_id: str, rows: int) -> None:
    """Replace `root/batch_id=<id>/` with `df`; an empty result removes the partition (overwrite keeps it)."""
    if rows == 0:
        storage.delete(spark, storage.partition_uri(root, "batch_id", batch_id))
        return
    storage.write_partition(df, root, "batch_id", batch_id)


def split_counts(curated: DataFrame) -> dict[str, dict[str, int]]:
    found: dict[str, dict[str, int]] = {dx: {SPLIT_TRAIN: 0, SPLIT_TEST: 0} for dx in CLASSES}
    for row in curated.groupBy("dx", "split").count().collect():
        found[row["dx"]][row["split"]] = int(row["count"])
    return found


def check_invariant(batch_id: str, rows_in: int, n_curated: int, n_quarantined: int) -> dict[str, Any]:
    """The summary's statement of `rows_in == curated + quarantined`; RuntimeError when it does not hold."""
    if rows_in != n_curated + n_quarantined:
        raise RuntimeError(
            f"invariant violated for batch {batch_id}: rows_in {rows_in} != curated {n_curated} "
            f"+ quarantined {n_quarantined}"
        )
    check = f"{rows_in} == {n_curated} + {n_quarantined}"
    return {"statement": "rows_in == curated + quarantined", "holds": True, "check": check}


def summarise(settings: Settings, batch: Batch) -> dict:
    """The batch summary (everything but timings and figures); checks the invariant first."""
    by_reason = eda.counts(batch.quarantine, "reason")
    image_files = batch.listing.where(F.col("path").rlike(intake.JPEG_PATH_REGEX)).count()
    total_files = batch.listing.count()
    n_curated, n_quarantined = batch.curated.count(), sum(by_reason.values())
    unclaimed_files = by_reason.get(REASON_ORPHAN_IMAGE, 0) + by_reason.get(REASON_DUPLICATE_IMAGE_FILE, 0)
    rows_in = batch.metadata_rows + unclaimed_files
    invariant = check_invariant(settings.batch_id, rows_in, n_curated, n_quarantined)
    lesions = batch.curated.select("lesion_id", "split").distinct()
    return {
        "batch_id": settings.batch_id,
        "batch_dir": settings.batch_dir,
        "metadata_csv": batch.metadata_csv,
        "curated_root": settings.curated,
        "rules": asdict(settings.rules),
        "test_fraction": settings.test_fraction,
        "seed": settings.seed,
        "min_size": settings.min_size,
        "rows_in_definition": "metadata rows + JPEG files no metadata row claims (orphan or duplicate files)",
        "rows_in": rows_in,
        "metadata_rows": batch.metadata_rows,
        "image_files": image_files,
        "ignored_files": total_files - image_files - 1,
        "curated": n_curated,
        "quarantined": n_quarantined,
        "quarantined_by_reason": dict(sorted(by_reason.items())),
        "quarantined_by_source": eda.counts(batch.quarantine, "source"),
        "per_class": dict.fromkeys(CLASSES, 0) | eda.counts(batch.curated, "dx"),
        "per_class_split": split_counts(batch.curated),
        "lesions": {
            split: lesions.where(F.col("split") == split).count() for split in (SPLIT_TRAIN, SPLIT_TEST)
        },
        "invariant": invariant,
    }


def run(spark: SparkSession, settings: Settings) -> dict:
    """Clean one batch; returns (and writes) its summary."""
    started = time.monotonic()
    batch_id = settings.batch_id
    paths = Paths.of(settings.curated, batch_id)
    batch = clean_batch(spark, settings, paths)
    decode = Progress("clean images decoded", every_s=math.inf, _start=started)
    decode.add(batch.decoded)
    decode.finish()
    summary = summarise(settings, batch)

    write_partition(spark, batch.curated, paths.images, batch_id, summary["curated"])
    write_partition(spark, batch.quarantine, paths.quarantine, batch_id, summary["quarantined"])
    elapsed = time.monotonic() - started
    progress = Progress(
        f"clean batch {batch_id} rows", total=summary["rows_in"], every_s=math.inf, _start=started
    )
    progress.add(summary["rows_in"])
    progress.finish()
    summary |= {
        "elapsed_s": round(elapsed, 3),
        "rows_per_s": round(summary["rows_in"] / max(elapsed, 1e-9), 1),
        "images_per_s": round(summary["image_files"] / max(elapsed, 1e-9), 1),
    }
    if settings.figures:
        everything = (
            tables.read_curated(spark, settings.curated) if storage.exists(spark, paths.images) else None
        )
        summary["figures"] = eda.write_figures(spark, batch.curated, everything, paths.figures)
    storage.write_json(spark, paths.summary_json, summary)
    for df in batch.persisted:
        df.unpersist()
    log.info(
        "batch %s: rows_in %d = curated %d + quarantined %d %s",
        batch_id,
        summary["rows_in"],
        summary["curated"],
        summary["quarantined"],
        summary["quarantined_by_reason"],
    )
    return summary
