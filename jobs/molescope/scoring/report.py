"""What a scored batch says beyond its predictions: metrics.json and report.html on its labelled rows, the
images per class under the model's decision rule, and whether its metadata reached a metadata model.

Pure reads of the model's sidecar and the batch's predictions, and the two report files (each replaced
atomically); `molescope score` composes them into the batch's summary.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from molescope.core.constants import CLASSES
from molescope.core.registry import METRICS_FILE, REPORT_FILE
from molescope.evaluation import outcomes
from molescope.evaluation.metrics import evaluate
from molescope.evaluation.report_html import ReportContent, render
from molescope.evaluation.scores import roc_curves
from molescope.io import storage
from molescope.models.trained import TrainedModel


def metadata_note(model: TrainedModel, images: DataFrame, n_images: int) -> dict[str, Any]:
    """Whether the model uses metadata and how many scored images had some (the others: unknown)."""
    if model.metadata is None:
        return {"model_uses": False, "note": "the model uses no metadata (images only)"}
    known = images.where(
        F.col("age").isNotNull() | F.col("sex").isNotNull() | F.col("localization").isNotNull()
    ).count()
    note = (
        "age, sex and localization from the batch's metadata CSV"
        if known == n_images
        else f"scored WITHOUT metadata for {n_images - known} of {n_images} images (no metadata CSV, or no "
        "row naming them): their age, sex and localization were encoded as unknown"
    )
    return {
        "model_uses": True,
        "images_with_metadata": known,
        "images_without": n_images - known,
        "note": note,
    }


def write_report(
    spark: SparkSession,
    out: str,
    model: TrainedModel,
    predictions: pd.DataFrame,
    batch_id: str | None,
    target_mel_recall: float,
    summary: dict,
) -> dict[str, Any]:
    """metrics.json + report.html for the labelled rows, at the model's decision rule (from its sidecar,
    fitted on its run's validation rows); returns the model's headline figures."""
    y, proba = outcomes.labelled(predictions)
    rule = model.rule
    figures = evaluate(y, proba, rule=rule, target_mel_recall=target_mel_recall, split="scored batch")
    metrics = {"model": model.name, **figures}
    generated_at = datetime.now(UTC).isoformat(timespec="seconds")
    content = ReportContent(
        run_id=f"score {batch_id} ({model.name})",
        run_uri=out,
        generated_at=generated_at,
        metrics={model.name: metrics},
        curves={model.name: roc_curves(y, rule.calibrated(proba) if rule else proba)},
        random_weights=outcomes.random_weights({model.name: model.sidecar}, None),
        sidecars={model.name: model.sidecar},
        params={"scoring": summary},
        distributions={
            "scored batch": predictions[predictions["dx"].isin(CLASSES)]["dx"].value_counts().to_dict()
        },
    )
    storage.write_text(spark, storage.join(out, REPORT_FILE), render(content))
    payload = {"batch_id": batch_id, "generated_at": generated_at, "models": {model.name: metrics}}
    storage.write_json(spark, storage.join(out, METRICS_FILE), payload)
    print(outcomes.summary_table({model.name: metrics}), flush=True)
    return outcomes.model_summary(metrics)


def decided_per_class(model: TrainedModel, predictions: pd.DataFrame) -> dict[str, int] | None:
    """Images per class under the model's decision rule (fitted on validation), None without one."""
    rule = model.rule
    if rule is None:
        return None
    decided = rule.decide(outcomes.probabilities(predictions))
    return {dx: int((decided == i).sum()) for i, dx in enumerate(CLASSES)}
