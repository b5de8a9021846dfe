"""What the score stage writes for one batch: its predictions and quarantine tables (new versions, published
by the batch's summary), the ISIC CSV of calibrated probabilities, and the summary itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from molescope.core.constants import CLASSES
from molescope.core.registry import PREDICTIONS_CSV, PREDICTIONS_DIR, QUARANTINE_DIR, SCORE_SUMMARY_FILE
from molescope.evaluation import outcomes
from molescope.io import storage, tables
from molescope.scoring.inputs import Counts
from molescope.scoring.model import ScoringModel
from molescope.scoring.report import decided_per_class


@dataclass(frozen=True)
class BatchRef:
    """Which batch a summary describes, and the --tta it was scored with."""

    batch_id: str | None
    batch_dir: str | None
    tta: str


def output_tables(out: str) -> tuple[tables.Table, tables.Table]:
    """The predictions and quarantine tables of one scored batch, both published by its summary.json."""
    summary = storage.join(out, SCORE_SUMMARY_FILE)
    return tuple(
        tables.Table(storage.join(out, name), name, schema, summary, partitioned=False)
        for name, schema in (
            (PREDICTIONS_DIR, tables.PREDICTIONS_SCHEMA),
            (QUARANTINE_DIR, tables.QUARANTINE_SCHEMA),
        )
    )


def write_predictions(
    spark: SparkSession,
    out: str,
    scored: DataFrame,
    quarantine: DataFrame,
    counts: Counts,
    temperature: float,
) -> tuple[pd.DataFrame, dict[str, tables.Version]]:
    """Write the predictions (the model's own probabilities, which its decision rule applies to) and the
    quarantine as new versions, and the ISIC CSV with the probabilities calibrated by `temperature`;
    (predictions, versions)."""
    predictions_table, quarantine_table = output_tables(out)
    version = tables.write_version(spark, predictions_table, scored, expected_rows=counts.scored)
    rejected = tables.write_version(
        spark, quarantine_table, quarantine.coalesce(1), expected_rows=counts.quarantined
    )
    predictions = tables.read_files(spark, predictions_table, version.files).orderBy("image_id").toPandas()
    storage.write_text(
        spark, storage.join(out, PREDICTIONS_CSV), outcomes.isic_submission(predictions, temperature)
    )
    return predictions, {predictions_table.name: version, quarantine_table.name: rejected}


def batch_summary(
    batch: BatchRef,
    scoring: ScoringModel,
    out: str,
    counts: Counts,
    quarantine: DataFrame,
    predictions: pd.DataFrame,
) -> dict[str, Any]:
    """The summary of one scored batch (without metrics, report and elapsed time)."""
    by_reason = {r["reason"]: int(r["count"]) for r in quarantine.groupBy("reason").count().collect()}
    on_images = scoring.backbone is None
    return {
        "batch_id": batch.batch_id,
        "batch_dir": batch.batch_dir,
        "out": out,
        "model": scoring.name,
        "model_uri": scoring.uri,
        "champion_file": scoring.champion_file,
        "feature_spec": scoring.model.feature_spec.to_dict(),
        "weights": None if on_images else scoring.backbone.weights,
        "scored_on": "images" if on_images else "features",
        "engine": None if on_images else scoring.engine.name,
        "tta": scoring.tta_views(batch.tta),
        "decision_rule": scoring.model.sidecar.get("decision_rule"),
        "calibration_temperature": scoring.model.temperature,
        "decided_per_class": decided_per_class(scoring.model, predictions),
        "rows_in_definition": "JPEG files as listed (zero-byte and hidden ones too) + metadata rows "
        "describing no file (naming none, repeating an image_id, without one)",
        "rows_in": counts.rows_in,
        "image_files": counts.image_files,
        "metadata_rows": counts.metadata_rows,
        "scored": counts.scored,
        "quarantined": counts.quarantined,
        "quarantined_by_reason": dict(sorted(by_reason.items())),
        "labelled": counts.labelled,
        "predicted_per_class": {
            dx: int((predictions["prediction"] == i).sum()) for i, dx in enumerate(CLASSES)
        },
        "invariant": {
            "statement": "rows_in == scored + quarantined",
            "holds": True,
            "check": f"{counts.rows_in} == {counts.scored} + {counts.quarantined}",
        },
        "predictions": storage.join(out, PREDICTIONS_CSV),
    }
