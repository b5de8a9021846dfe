"""score: apply a trained model (default: the latest champion) to a batch of images, or to every pending one.

What to score, exactly one of:

- `--batch-dir <folder> --batch-id <id>`: that one folder (local or s3a://), as batch `<id>`;
- `--scoring-root <folder> --batch-id <id>`: the one batch `<scoring-root>/<id>/`;
- `--scoring-root <folder>` without a batch id (or with `--batch-id ""`, as Airflow renders an empty param):
  *pending mode*: every batch folder the model has not scored yet (`molescope.scoring.pending`), in sorted
  order; folders that are not valid batch ids are listed under `ignored_folders`. A batch that fails does not
  stop the others: it is listed under `failed`, and once every pending batch has been tried the job raises
  `PendingBatchesFailed` (a RuntimeError) naming each failed batch.

This module composes the pieces: the model (`molescope.scoring.model`, resolved, loaded and checked once per
job), the batch's inputs (`molescope.scoring.inputs`: images, optional labels, quarantine, counts), the
features (`molescope.features.extract`, with the backbone and weights the model was trained with), the
tables, CSV and summary it writes (`molescope.scoring.outputs`), the report (`molescope.scoring.report`) and
the case review (`molescope.scoring.review`).

Outputs of each batch under `<out>/<batch_id>/<model run id>/<model>/`:

- `predictions/<version>/` (Parquet, the predictions schema of docs/architecture.md: the model's own
  probabilities) and `predictions.csv` (ISIC 2018 Task 3: `image,MEL,NV,BCC,AKIEC,BKL,DF,VASC`, the
  probabilities calibrated by the temperature of the model's decision rule, `calibration_temperature`);
- `quarantine/<version>/` (Parquet, the quarantine schema), one row per rejected input;
- `review.html`: the case-review page (`molescope.scoring.review`): the worklist by calibrated melanoma
  probability, each shown image with its probabilities, whether it passes the operating point, and its most
  similar confirmed training cases (feature models), its Grad-CAM overlay (also written to `saliency/`,
  Parquet); the batch's class mix, quarantine and drift from the training data;
- `summary.json` (counts, model, feature spec, and the files of both tables: it is their manifest,
  `molescope.io.tables`), written last: it marks the batch scored;
- when some images carry a label: `metrics.json` and `report.html` on the labelled rows (unlabelled rows are
  scored but not evaluated), at the model's own decision rule (fitted on its run's validation rows and stored
  in its sidecar: never re-fitted on the batch being evaluated).

Predictions are made as the model was evaluated: an image model averages the test-time augmentation views
recorded in its sidecar (`--tta auto`; another `--tta` overrides them; a feature model cannot be augmented
and refuses one), and a model trained with metadata fusion reads age, sex and localization from the batch's
metadata CSV; without one (or for images it does not name) they are encoded as unknown, and the summary says
so (`metadata`).

A run killed or failing before summary.json leaves the batch's previous summary and tables as they were (or
the batch pending); the CSV, metrics and report files, each replaced atomically, may then already hold the
re-run's (equal, for the same model and images) content.

`run` returns that batch's summary for one batch; in pending mode the job summary (`mode: pending`,
`scoring_root`, `model`, `model_uri`, `champion_file`, `scored`, `already_scored`, `ignored_folders`,
`failed`, and `batches`: the summary of each batch scored by this job).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from molescope.core.champion import run_id_of
from molescope.core.registry import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MIN_SIZE,
    DEFAULT_REVIEW_TOP,
    DEFAULT_SIMILAR_K,
    DEFAULT_TARGET_MEL_RECALL,
    ENGINE_AUTO,
    ENGINES,
    MODEL_CHAMPION,
    REPORT_FILE,
    SCORE_SUMMARY_FILE,
    TTA_AUTO,
    TTA_CHOICES,
    WEIGHTS_AUTO,
    validate_batch_id,
)
from molescope.core.settings import option
from molescope.features.extract import compute_features, partition_count, task_slots
from molescope.intake.metadata import VocabularySettings
from molescope.io import storage, tables
from molescope.models.fusion import METADATA_FIELDS
from molescope.scoring.inputs import read_inputs
from molescope.scoring.model import ScoringModel, resolve_scoring_model
from molescope.scoring.outputs import BatchRef, batch_summary, output_tables, write_predictions
from molescope.scoring.pending import (
    PendingBatchesFailed,
    batch_id_problem,
    error_message,
    list_folders,
    pending_batches,
)
from molescope.scoring.report import metadata_note, write_report
from molescope.scoring.review import ReviewInputs, write_review

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings(VocabularySettings):
    """What to score (one batch folder, or the pending batches under a scoring root), with which model and
    weights, and where the outputs go.

    Empty strings mean "not given" (Airflow renders an empty param as ""). Exactly one of `batch_dir` and
    `scoring_root` is given; `batch_dir` needs a `batch_id`; `scoring_root` without one is pending mode.
    """

    out: str = option(help="scores root: writes <out>/<batch_id>/<run id>/<model>/ per batch")
    batch_dir: str | None = option(
        None, help="one batch folder of JPEGs (+ optional metadata CSV); needs --batch-id"
    )
    batch_id: str | None = option(None, help="batch id: [A-Za-z0-9._-], at most 64 chars; '' means not given")
    scoring_root: str | None = option(
        None,
        help="folder whose immediate subfolders are batches (<scoring-root>/<batch_id>/): with --batch-id, "
        "scores that one; without (or with --batch-id ''), every batch the model has not scored yet (pending "
        "mode)",
    )
    model: str = option(
        MODEL_CHAMPION,
        help="model folder <run>/models/<model>, or 'champion' (latest champion under --champion-of)",
    )
    champion_of: str | None = option(None, help="warehouse root searched for runs/*/models/")
    weights: str = option(
        WEIGHTS_AUTO, help="auto (from the model's weights_id) | imagenet | random | file path | s3a:// URI"
    )
    batch_size: int = option(DEFAULT_BATCH_SIZE, type=int, help="images per inference call")
    min_size: int = option(DEFAULT_MIN_SIZE, type=int, help="min px")
    target_mel_recall: float = option(
        DEFAULT_TARGET_MEL_RECALL, type=float, help="melanoma recall of the operating point"
    )
    engine: str = option(ENGINE_AUTO, choices=ENGINES, help="featurize's --engine")
    review_top: int = option(
        DEFAULT_REVIEW_TOP,
        type=int,
        help="case review: cards shown besides every flagged image and missed melanoma (highest calibrated "
        "melanoma probability first)",
    )
    similar_k: int = option(
        DEFAULT_SIMILAR_K, type=int, help="case review: similar training cases per card (0: none)"
    )
    tta: str = option(
        TTA_AUTO,
        choices=(TTA_AUTO, *TTA_CHOICES),
        help="test-time augmentation of an image model: auto (the views it was evaluated with) or views",
    )

    @property
    def pending(self) -> bool:
        """Pending mode: every batch under `scoring_root` that the model has not scored yet."""
        return bool(self.scoring_root) and not self.batch_id

    def for_batch(self, batch_id: str, batch_dir: str | None = None) -> Settings:
        """The single-batch settings of `batch_id` (its folder: `batch_dir`, else under `scoring_root`)."""
        folder = batch_dir or storage.join(self.scoring_root or "", batch_id)
        return replace(self, batch_id=batch_id, batch_dir=folder, scoring_root=None)

    def validate(self) -> None:
        if bool(self.batch_dir) == bool(self.scoring_root):
            given = "both" if self.batch_dir else "neither"
            raise ValueError(f"exactly one of --batch-dir and --scoring-root is required, got {given}")
        if self.batch_dir and not self.batch_id:
            raise ValueError("--batch-dir needs a non-empty --batch-id")
        if self.batch_id:
            validate_batch_id(self.batch_id)
        if self.model == MODEL_CHAMPION and not self.champion_of:
            raise ValueError("--model champion needs --champion-of <warehouse root>")
        if self.review_top < 0 or self.similar_k < 0:
            raise ValueError(
                f"--review-top and --similar-k must be >= 0: {self.review_top}, {self.similar_k}"
            )
        if self.batch_size < 1 or self.min_size < 1:
            raise ValueError(f"--batch-size and --min-size must be >= 1: {self.batch_size}, {self.min_size}")
        if not 0 < self.target_mel_recall <= 1:
            raise ValueError(f"--target-mel-recall must be in (0, 1], got {self.target_mel_recall}")
        self.vocabulary  # noqa: B018 (an empty vocabulary fails here, before any work)


def output_uri(settings: Settings, model_uri: str, model_name: str) -> str:
    return storage.join(settings.out, settings.batch_id or "", run_id_of(model_uri), model_name)


# ---------------------------------------------------------------------------------------------- one batch


def predict(
    spark: SparkSession, scoring: ScoringModel, images: DataFrame, n_images: int, settings: Settings
) -> tuple[DataFrame, DataFrame | None]:
    """(predictions, features) of the usable images: through features (computed once, checkpointed: the
    spec check, predict and the case review's similar cases reuse them), or on the JPEG bytes for an image
    model (with its TTA views; features None)."""
    if scoring.backbone is None:
        return scoring.model.predict(images, tta=scoring.tta_views(settings.tta)), None
    partitions = partition_count(n_images, task_slots(spark))
    extra = METADATA_FIELDS if scoring.model.metadata is not None else ()
    features = compute_features(
        images,
        scoring.backbone,
        settings.batch_size,
        partitions=partitions,
        engine=scoring.engine,
        extra_columns=extra,
    )
    features = features.localCheckpoint(eager=True)
    return scoring.model.predict(features), features  # predict checks the rows' spec again


def score_batch(
    spark: SparkSession, settings: Settings, scoring: ScoringModel, started: float | None = None
) -> dict[str, Any]:
    """Score the one batch of single-batch `settings` with `scoring`; returns (and writes) its summary.

    `started` (time.monotonic) is when the batch's clock started, by default now.
    """
    started = time.monotonic() if started is None else started
    out = output_uri(settings, scoring.uri, scoring.name)
    log.info("scoring %s with %s (%s)", settings.batch_id, scoring.uri, scoring.model.feature_spec)
    images, quarantine, counts = read_inputs(
        spark, settings.batch_dir or "", settings.batch_id or "", settings.min_size, settings.vocabulary
    )
    try:
        if counts.scored == 0:
            raise ValueError(f"batch {settings.batch_id}: no usable image below {settings.batch_dir}")
        scored, features = predict(spark, scoring, images, counts.scored, settings)
        predictions, versions = write_predictions(
            spark, out, scored, quarantine, counts, scoring.model.temperature
        )
        batch = BatchRef(settings.batch_id, settings.batch_dir, settings.tta)
        summary = batch_summary(batch, scoring, out, counts, quarantine, predictions)
        summary["metadata"] = metadata_note(scoring.model, images, counts.scored)
        if summary["metadata"].get("images_without"):
            log.warning("batch %s: %s", settings.batch_id, summary["metadata"]["note"])
        if counts.labelled:
            summary["metrics"] = write_report(
                spark, out, scoring.model, predictions, settings.batch_id, settings.target_mel_recall, summary
            )
            summary["report"] = storage.join(out, REPORT_FILE)
        inputs = ReviewInputs(
            predictions,
            images,
            features,
            summary["quarantined_by_reason"],
            settings.review_top,
            settings.similar_k,
        )
        summary |= write_review(spark, out, settings.batch_id or "", scoring, inputs, summary.get("metrics"))
        summary["elapsed_s"] = round(time.monotonic() - started, 3)
        # Last: it publishes the tables and marks the batch scored. The summary returned is the one written.
        summary = tables.manifest(versions, **summary)
        tables.publish(spark, storage.join(out, SCORE_SUMMARY_FILE), summary)
        for table in output_tables(out):
            tables.collect_garbage(spark, table)
    finally:
        quarantine.unpersist()
    log.info(
        "batch %s: rows_in %d = scored %d + quarantined %d %s",
        settings.batch_id,
        counts.rows_in,
        counts.scored,
        counts.quarantined,
        summary["quarantined_by_reason"],
    )
    return summary


# ------------------------------------------------------------------------------------------ pending batches


def scored_batches(
    spark: SparkSession, settings: Settings, scoring: ScoringModel, batches: list[str]
) -> set[str]:
    """The batches whose `summary.json` for this model exists."""
    done = set()
    for batch in batches:
        out = output_uri(settings.for_batch(batch), scoring.uri, scoring.name)
        if storage.exists(spark, storage.join(out, SCORE_SUMMARY_FILE)):
            done.add(batch)
    return done


def score_pending(spark: SparkSession, settings: Settings, scoring: ScoringModel) -> dict[str, Any]:
    """Score every batch under `settings.scoring_root` that `scoring` has not scored yet; the job summary.

    A failed batch does not stop the others; PendingBatchesFailed is raised at the end when any failed.
    """
    root = settings.scoring_root or ""
    folders = list_folders(spark, root)
    valid = [name for name in folders if batch_id_problem(name) is None]
    to_score, already_scored, ignored = pending_batches(
        folders, scored_batches(spark, settings, scoring, valid)
    )
    for name, reason in ignored.items():
        log.warning("ignoring folder %r under %s: %s", name, root, reason)
    batches: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for i, batch_id in enumerate(to_score, start=1):
        log.info("scoring batch %d/%d %s", i, len(to_score), batch_id)
        try:
            batches[batch_id] = score_batch(spark, settings.for_batch(batch_id), scoring)
        except Exception as error:  # recorded; raised at the end
            log.exception("batch %s failed", batch_id)
            failed[batch_id] = error_message(error)
    summary: dict[str, Any] = {
        "mode": "pending",
        "scoring_root": root,
        "model": scoring.name,
        "model_uri": scoring.uri,
        "champion_file": scoring.champion_file,
        "scored": list(batches),
        "already_scored": already_scored,
        "ignored_folders": ignored,
        "failed": failed,
        "batches": batches,
    }
    log.info(
        "pending batches under %s: %d scored, %d already scored, %d failed, %d folders ignored",
        root,
        len(batches),
        len(already_scored),
        len(failed),
        len(ignored),
    )
    if failed:
        raise PendingBatchesFailed(summary)
    return summary


def run(spark: SparkSession, settings: Settings) -> dict[str, Any]:
    """Score one batch (its summary) or every pending batch under the scoring root (the job summary).

    The model is resolved, loaded and checked once, before any image is read.
    """
    settings.validate()
    started = time.monotonic()
    scoring = resolve_scoring_model(
        spark, settings.model, settings.champion_of, settings.weights, settings.engine, settings.batch_size
    )
    scoring.check_tta(settings.tta)
    if settings.pending:
        return score_pending(spark, settings, scoring)
    return score_batch(
        spark, settings.for_batch(settings.batch_id or "", settings.batch_dir), scoring, started
    )
