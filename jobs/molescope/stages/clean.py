"""Clean a landed batch: validate metadata and images, quarantine rejects, assign train/test, write curated.

A batch is a folder (local or s3a://) holding exactly one metadata CSV and JPEG images anywhere below it.
Outputs, each partitioned by `batch_id` and replaced as a whole when a batch is re-run:

- `<curated>/images/batch_id=<id>/<version>/`: one row per kept image (`molescope.io.tables.CURATED_SCHEMA`);
- `<curated>/quarantine/batch_id=<id>/<version>/`: one row per rejected input row or file, with a reason
  code (`molescope.core.registry.QUARANTINE_REASONS`);
- `<curated>/summaries/<id>.json` (the batch's manifest: counts, invariant, and the files of both tables)
  plus EDA figures in `<curated>/summaries/<id>/` (`molescope.intake.eda`).

Rows in. `rows_in` = metadata data rows + JPEG files that no metadata row claims: `orphan_image`,
`duplicate_image_file` (its stem repeats an earlier file's) and `hidden_image_file` (below a name starting
with `.` or `_`). Files count as the filesystem lists them (`molescope.intake.landed.list_batch`), zero-byte
ones included. Each input ends up in exactly one of curated or quarantine, so `rows_in == curated +
quarantined`; the run raises before publishing anything if that does not hold. Non-JPEG, non-CSV files
(READMEs, .DS_Store) are not inputs; they are counted as `ignored_files`.

Metadata rows are checked against the rules of `molescope.intake.metadata` (field count, UTF-8, ids, closed
vocabularies of dx / dx_type / sex / localization, age, and the study's two switchable rules).

Publishing (`molescope.io.tables`). The curated and quarantine rows are written as new versions nobody reads
yet; the batch summary `<curated>/summaries/<id>.json`, written last in one atomic PUT, names their files and
is what readers follow. A run killed or failing before that leaves the batch's previous summary, and so its
previous curated and quarantine rows, in place; its files are deleted by the next successful run.

Image bytes travel with the curated rows (the `image` column) instead of a path: featurization then reads a
few large Parquet files rather than millions of small objects, never re-lists the landing zone, and keeps
working after the landing zone is cleaned up. The bytes are the original JPEG, unmodified, so `sha256`
identifies the file; decoding (EXIF orientation, mode conversion) is redone by
`molescope.io.imaging.decode_rgb`.

Split: by lesion, from a hash of (seed, lesion_id) (`molescope.intake.split`), so all images of a lesion share
a side and a lesion keeps its side whichever batch its images arrive in.

Duplicates. Within a batch the first CSV row of an image_id wins; across batches an image_id already
curated in another batch wins. The same for content: an image whose bytes (sha256) another image_id kept in
this batch (by row order) or another batch has is `duplicate_image_content`, so one image never sits on both
sides of the split. Each duplicate is quarantined with a pointer to the winner.
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

from molescope.core.constants import CLASSES, SPLIT_TEST, SPLIT_TRAIN
from molescope.core.errors import InvariantError
from molescope.core.progress import Progress
from molescope.core.registry import (
    DEFAULT_MIN_SIZE,
    DEFAULT_SEED,
    DEFAULT_TEST_FRACTION,
    REASON_DUPLICATE_IMAGE_FILE,
    REASON_HIDDEN_IMAGE_FILE,
    REASON_ORPHAN_IMAGE,
    SUMMARIES_DIR,
    validate_batch_id,
)
from molescope.core.settings import option
from molescope.intake import eda, landed
from molescope.intake.metadata import (
    ROW,
    Rules,
    VocabularySettings,
    apply_rules,
    drop_duplicates,
    parse_metadata,
)
from molescope.intake.split import assign_split
from molescope.io import storage, tables

log = logging.getLogger(__name__)
#: Quarantine reasons of files no metadata row claims: each is an input of its own (rows_in).
UNCLAIMED_FILE_REASONS = (REASON_ORPHAN_IMAGE, REASON_DUPLICATE_IMAGE_FILE, REASON_HIDDEN_IMAGE_FILE)


@dataclass(frozen=True)
class Settings(VocabularySettings):
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
        return Rules(
            drop_missing_age=self.drop_missing_age,
            drop_unknown_sex=self.drop_unknown_sex,
            vocabulary=self.vocabulary,
        )

    def validate(self) -> None:
        validate_batch_id(self.batch_id)
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"--test-fraction must be in (0, 1), got {self.test_fraction}")
        if self.min_size < 1:
            raise ValueError(f"--min-size must be positive, got {self.min_size}")
        self.rules  # noqa: B018 (an empty vocabulary fails here, before any work)


@dataclass(frozen=True)
class Outputs:
    """The batch's tables and the summary (their manifest) and figures folder."""

    images: tables.Table
    quarantine: tables.Table
    summary_json: str
    figures: str

    @classmethod
    def of(cls, curated: str, batch_id: str) -> Outputs:
        return cls(
            images=tables.curated_images(curated),
            quarantine=tables.curated_quarantine(curated),
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
    #: path, length and hidden of every file below the batch folder.
    listing: DataFrame
    metadata_csv: str
    metadata_rows: int
    #: Images decoded (matched to a metadata row).
    decoded: int
    persisted: list[DataFrame]


def read_others(spark: SparkSession, outputs: Outputs, batch_id: str) -> DataFrame:
    """(image_id, batch_id, sha256) curated by the other published batches."""
    others = [b for b in tables.published_batches(spark, outputs.images) if b != batch_id]
    return tables.read_table(spark, outputs.images, others).select("image_id", "batch_id", "sha256")


def clean_batch(spark: SparkSession, settings: Settings, outputs: Outputs) -> Batch:
    """Read, check and split the batch: every input ends up in `curated` or `quarantine` (both persisted)."""
    listing = landed.list_batch(spark, settings.batch_dir).persist()
    csv_path = landed.metadata_csv(listing, required=True) or ""
    meta = parse_metadata(landed.read_metadata_csv(spark, csv_path), csv_path).persist()
    metadata_rows = meta.count()
    log.info("batch %s: %d metadata rows in %s", settings.batch_id, metadata_rows, csv_path)

    kept, q_rules = apply_rules(meta, settings.rules)
    others = read_others(spark, outputs, settings.batch_id).persist()
    kept, q_duplicates = drop_duplicates(kept, others, settings.batch_id)
    candidates, q_extra_files, q_hidden = landed.index_images(listing)
    matched, q_missing = landed.attach_images(kept, candidates)
    with_bytes = landed.with_content(matched, landed.read_contents(spark, settings.batch_dir))
    # One materialisation: every image is decoded once.
    inspected = landed.inspect_images(with_bytes, settings.min_size).localCheckpoint(eager=True)
    landed.check_read(inspected, settings.batch_dir)
    decoded = inspected.count()
    good, q_content = landed.drop_content_duplicates(inspected.where(F.col("reason").isNull()), others, ROW)
    curated = to_curated(assign_split(good, settings.test_fraction, settings.seed), settings.batch_id)
    parts = [q_rules, q_duplicates, q_missing, landed.image_quarantine(inspected), q_content]
    parts += [landed.find_orphans(candidates, meta), q_extra_files, q_hidden]
    quarantine = tables.quarantine_of(parts, settings.batch_id).persist()
    curated = curated.persist()
    persisted = [curated, quarantine, meta, listing, others]
    return Batch(curated, quarantine, listing, csv_path, metadata_rows, decoded, persisted)


def split_counts(curated: DataFrame) -> dict[str, dict[str, int]]:
    found: dict[str, dict[str, int]] = {dx: {SPLIT_TRAIN: 0, SPLIT_TEST: 0} for dx in CLASSES}
    for row in curated.groupBy("dx", "split").count().collect():
        found[row["dx"]][row["split"]] = int(row["count"])
    return found


def check_invariant(batch_id: str, rows_in: int, n_curated: int, n_quarantined: int) -> dict[str, Any]:
    """The summary's statement of `rows_in == curated + quarantined`; InvariantError when it does not hold."""
    if rows_in != n_curated + n_quarantined:
        raise InvariantError(
            f"invariant violated for batch {batch_id}: rows_in {rows_in} != curated {n_curated} "
            f"+ quarantined {n_quarantined}"
        )
    check = f"{rows_in} == {n_curated} + {n_quarantined}"
    return {"statement": "rows_in == curated + quarantined", "holds": True, "check": check}


def summarise(settings: Settings, batch: Batch) -> dict:
    """The batch summary (everything but timings, figures and files); checks the invariant first."""
    by_reason = eda.counts(batch.quarantine, "reason")
    images = landed.jpeg_files(batch.listing)
    image_files = images.count()
    csv_files = batch.listing.where(F.col("path").rlike(landed.CSV_PATH_REGEX) & ~F.col("hidden")).count()
    n_curated, n_quarantined = batch.curated.count(), sum(by_reason.values())
    unclaimed_files = sum(by_reason.get(reason, 0) for reason in UNCLAIMED_FILE_REASONS)
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
        "rows_in_definition": "metadata rows + JPEG files no metadata row claims (orphan, duplicate or "
        "hidden files)",
        "rows_in": rows_in,
        "metadata_rows": batch.metadata_rows,
        "listed_files": batch.listing.count(),
        "image_files": image_files,
        "empty_image_files": images.where(F.col("length") == 0).count(),
        "ignored_files": batch.listing.count() - image_files - csv_files,
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


def figures(spark: SparkSession, settings: Settings, outputs: Outputs, batch: Batch) -> list[str]:
    """The batch's and the cumulative figures (other published batches + this batch's new rows)."""
    others = [b for b in tables.published_batches(spark, outputs.images) if b != settings.batch_id]
    everything = tables.read_table(spark, outputs.images, others).unionByName(batch.curated)
    return eda.write_figures(spark, batch.curated, everything, outputs.figures)


def publish(spark: SparkSession, outputs: Outputs, batch: Batch, summary: dict[str, Any]) -> None:
    """Write both tables as new versions, then the summary naming them (the publish); drop old versions."""
    batch_id = summary["batch_id"]
    images = tables.write_version(spark, outputs.images, batch.curated, batch_id, summary["curated"])
    quarantine = tables.write_version(
        spark, outputs.quarantine, batch.quarantine, batch_id, summary["quarantined"]
    )
    versions = {outputs.images.name: images, outputs.quarantine.name: quarantine}
    tables.publish(spark, outputs.summary_json, tables.manifest(versions, **summary))
    for table in (outputs.images, outputs.quarantine):
        tables.collect_garbage(spark, table, batch_id)


def run(spark: SparkSession, settings: Settings) -> dict:
    """Clean one batch; returns (and publishes) its summary."""
    started = time.monotonic()
    batch_id = settings.batch_id
    outputs = Outputs.of(settings.curated, batch_id)
    batch = clean_batch(spark, settings, outputs)
    decode = Progress("clean images decoded", every_s=math.inf, _start=started)
    decode.add(batch.decoded)
    decode.finish()
    summary = summarise(settings, batch)
    if settings.figures:
        summary["figures"] = figures(spark, settings, outputs, batch)
    elapsed = time.monotonic() - started
    summary |= {
        "elapsed_s": round(elapsed, 3),
        "rows_per_s": round(summary["rows_in"] / max(elapsed, 1e-9), 1),
        "images_per_s": round(summary["image_files"] / max(elapsed, 1e-9), 1),
    }
    publish(spark, outputs, batch, summary)
    progress = Progress(
        f"clean batch {batch_id} rows", total=summary["rows_in"], every_s=math.inf, _start=started
    )
    progress.add(summary["rows_in"])
    progress.finish()
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
