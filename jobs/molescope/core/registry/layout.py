"""The warehouse layout (folder and file names under the warehouse root and a run prefix) and batch ids."""

from __future__ import annotations

import re

# ------------------------------------------------------------------------------------ warehouse layout

LANDING_DIR = "landing"
CURATED_DIR = "curated"
FEATURES_DIR = "features"
RUNS_DIR = "runs"
#: Where users put batches to score, and where the scores go.
SCORING_DIR = "scoring"
SCORES_DIR = "scores"
#: Inside the curated root.
IMAGES_DIR = "images"
QUARANTINE_DIR = "quarantine"
SUMMARIES_DIR = "summaries"
#: Inside a run prefix.
TRAIN_SET_DIR = "train_set"
MODELS_DIR = "models"
PREDICTIONS_DIR = "predictions"
METRICS_DIR = "metrics"
PARAMS_FILE = "params.json"
#: Reference JSON naming the features table a run uses (`featurize --ref-out`).
FEATURES_REF_FILE = "features.json"
#: A `--features` value ending so is such a reference, not the table itself.
FEATURES_REF_SUFFIX = ".json"
UPSAMPLE_SUMMARY_FILE = "upsample_summary.json"
UPSAMPLE_CHART_FILE = "upsample_classes.png"
#: `<run>/models/champion.json`: which of the run's models scoring uses by default.
CHAMPION_FILE = "champion.json"
#: Beside each saved model: what it is and how it was trained.
SIDECAR_FILE = "molescope_model.json"
REPORT_FILE = "report.html"
#: Beside each scored batch: the case-review page (worklist by calibrated melanoma probability).
REVIEW_FILE = "review.html"
#: Beside each scored batch: the Grad-CAM overlays of the images its review page shows (Parquet).
SALIENCY_DIR = "saliency"
METRICS_FILE = "metrics.json"
PREDICTIONS_CSV = "predictions.csv"
#: Written last for each scored batch (`<scores>/<batch_id>/<run id>/<model>/summary.json`): marks it scored.
SCORE_SUMMARY_FILE = "summary.json"
#: Run history of the report, under the runs root: one `<run_id>.json` per reported run.
HISTORY_DIR = "_history"
#: Manifests of a table partitioned by batch (`<table>/_manifests/<batch_id>.json`), and of a run's table
#: (`<table>/_manifest.json`): the files they name are the published data (molescope.io.tables).
MANIFESTS_DIR = "_manifests"
MANIFEST_FILE = "_manifest.json"
#: Converted inference engines, under the features root (hidden from Spark: it starts with `_`).
ENGINES_DIR = "_engines"

# ------------------------------------------------------------------------------------------ batch ids

#: Letters, digits, '.', '_' and '-', starting with a letter or digit, at most 64 characters, and never '..':
#: a batch id becomes a path segment, so it can never climb out of its prefix or fake a partition.
BATCH_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_BATCH_ID = re.compile(BATCH_ID_PATTERN)


def is_batch_id(name: str) -> bool:
    return bool(_BATCH_ID.match(name)) and ".." not in name


def validate_batch_id(batch_id: str) -> str:
    """`batch_id` if it is a safe path segment, else ValueError."""
    if not is_batch_id(batch_id):
        raise ValueError(f"invalid batch id {batch_id!r}: must match {BATCH_ID_PATTERN} and not contain '..'")
    return batch_id
