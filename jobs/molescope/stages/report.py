"""report: score every model of a run and write metrics JSON, ISIC submission CSVs and one HTML report.

Reads `<run>/predictions/<model>/` (Parquet, the train stage's contract) plus whatever optional context
exists (model sidecars, champion.json, upsample_summary.json, params.json, cleaning summaries), writes under
the run prefix and keeps a run history so the report can compare this run with earlier ones. It works on the
predictions alone, so it reports on any model, registered or not.

Predictions are read through their manifests (`<run>/predictions/<model>/_manifest.json`,
molescope.io.tables): a model whose predictions were never published is not reported. Every file is replaced
atomically; the run history is one object per run (`<runs>/_history/<run_id>.json`, its rows), listed to
compare runs and never read-modify-written, so reports of different runs at the same time cannot lose each
other's rows.

Splits. Rows with `split == 'validation'` (the lesion-grouped part of the training split held out of fitting)
are where every choice was made; all other rows are the test split, evaluated here once for every model,
the champion and the others alike. Each model's decision rule (prior shift + melanoma threshold) is the one
train fitted on validation (its sidecar), or, for a model without one, fitted here on the validation rows;
without validation rows there is no operating point (nothing is ever fitted on the test rows). metrics.json
and the page say for every figure which split it comes from: a model's top-level figures and its
`operating_point` are test figures (`split: test`), its `validation` block and `operating_point.validation`
are validation figures, and the champion was chosen on validation (`champion_selection`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from pyspark.sql import SparkSession

from molescope.core.champion import champion_name
from molescope.core.constants import CLASS_INDEX, SPLIT_TEST, SPLIT_VALIDATION
from molescope.core.registry import (
    CHAMPION_FILE,
    DEFAULT_TARGET_MEL_RECALL,
    HISTORY_DIR,
    METRICS_DIR,
    METRICS_FILE,
    MODELS_DIR,
    PARAMS_FILE,
    PREDICTIONS_DIR,
    REPORT_FILE,
    SIDECAR_FILE,
    SUMMARIES_DIR,
    UPSAMPLE_SUMMARY_FILE,
)
from molescope.core.settings import CliSettings, fraction, option
from molescope.evaluation.calibration import calibrate
from molescope.evaluation.metrics import evaluate
from molescope.evaluation.outcomes import (
    find_values,
    isic_submission,
    labelled,
    model_summary,
    random_weights,
    split_rows,
    summary_table,
)
from molescope.evaluation.report_html import ReportContent, render
from molescope.evaluation.rules import DecisionRule
from molescope.evaluation.scores import roc_curves
from molescope.io import storage, tables

log = logging.getLogger(__name__)

#: upsample_summary.json keys holding {dx: count}, and their names in the class distribution figure.
UPSAMPLE_DISTRIBUTIONS = {
    "before": "train before upsampling",
    "after": "train after upsampling",
    "weighted_after": "train after (sum of weights)",
}
#: Key of a run-history object holding its rows (one per model).
HISTORY_ROWS = "rows"


@dataclass(frozen=True)
class Settings(CliSettings):
    run: str = option(help="run prefix, e.g. s3a://molescope/runs/<run_id>")
    curated: str | None = option(None, help="curated root; adds <curated>/summaries/*.json")
    history: str | None = option(
        None, help="run-history folder, one <run_id>.json per run (default: <run>/../_history)"
    )
    target_mel_recall: float = option(
        DEFAULT_TARGET_MEL_RECALL, type=fraction(), help="melanoma recall the operating point must reach"
    )

    def validate(self) -> None:
        if not 0 < self.target_mel_recall <= 1:
            raise ValueError(f"--target-mel-recall must be in (0, 1], got {self.target_mel_recall}")

    @property
    def run_id(self) -> str:
        return self.run.rstrip("/").rsplit("/", 1)[-1]

    @property
    def history_uri(self) -> str:
        return self.history or storage.join(self.run.rstrip("/").rsplit("/", 1)[0], HISTORY_DIR)


# ---- pure transforms (pandas / dicts in, no I/O) ----


def class_distributions(test_counts: dict[str, int], upsample: Any) -> dict[str, dict[str, float]]:
    """Named {dx: count} mappings to plot: the test split, and training counts from upsample_summary.json."""
    found = {"test": test_counts}
    if isinstance(upsample, dict):
        for key, name in UPSAMPLE_DISTRIBUTIONS.items():
            counts = upsample.get(key)
            if isinstance(counts, dict) and counts:
                found[name] = {dx: v for dx, v in counts.items() if dx in CLASS_INDEX}
    return found


def history_rows(
    run_id: str, run: str, metrics: dict[str, dict[str, Any]], sidecars: dict[str, Any], champion: str | None
) -> list[dict[str, Any]]:
    reported_at = datetime.now(UTC).isoformat(timespec="seconds")
    rows = []
    for model, m in metrics.items():
        weights = find_values(sidecars.get(model), "weights_id")
        headline = {key: m[key] for key in ("n", "accuracy", "balanced_accuracy", "melanoma_recall")}
        rows.append(
            {
                "run_id": run_id,
                "run": run,
                "model": model,
                "reported_at": reported_at,
                "champion": model == champion,
                "weights_id": str(weights[0]) if weights else None,
                **headline,
                "auc_mean": m["auc"]["mean"],
            }
        )
    return rows


# ---- I/O shell ----


def discover_models(spark: SparkSession, run: str) -> list[str]:
    """Models with published predictions (`<run>/predictions/<model>/_manifest.json`)."""
    folders = [f.name for f in storage.list_dir(spark, storage.join(run, PREDICTIONS_DIR)) if f.is_dir]
    return sorted(m for m in folders if tables.published(spark, tables.model_predictions(run, m)) is not None)


def read_cleaning_summaries(spark: SparkSession, curated: str | None) -> dict[str, Any]:
    if not curated:
        return {}
    files = [f for f in storage.list_dir(spark, storage.join(curated, SUMMARIES_DIR)) if not f.is_dir]
    return {
        f.name: storage.read_json(spark, f.uri)
        for f in sorted(files, key=lambda f: f.name)
        if f.name.endswith(".json")
    }


def history_uri(folder: str, run_id: str) -> str:
    return storage.join(folder, f"{run_id}.json")


def read_history(spark: SparkSession, folder: str) -> list[dict[str, Any]]:
    """Every run's rows in the history folder, in run-id order."""
    found = [f for f in storage.list_dir(spark, folder) if f.name.endswith(".json") and not f.is_dir]
    rows = []
    for entry in sorted(found, key=lambda f: f.name):
        rows.extend(storage.read_json(spark, entry.uri)[HISTORY_ROWS])
    return rows


def write_history(spark: SparkSession, folder: str, run_id: str, rows: list[dict[str, Any]]) -> None:
    """Replace the run's own history object (a re-report replaces its rows instead of adding more)."""
    storage.write_json(spark, history_uri(folder, run_id), {"run_id": run_id, HISTORY_ROWS: rows})


#: What each split is, written beside the figures.
SPLITS = {
    SPLIT_TEST: "lesion-grouped test split of clean: evaluated once, here, for every model",
    SPLIT_VALIDATION: "lesion-grouped part of the training split held out of fitting: early stopping, "
    "hyper-parameters, decision rules and the champion were chosen on it",
}


def sidecar_rule(sidecar: Any, target_mel_recall: float) -> DecisionRule | None:
    """The decision rule train fitted on validation for this model, if it aimed at the same recall."""
    payload = sidecar.get("decision_rule") if isinstance(sidecar, dict) else None
    if not payload or payload.get("target_mel_recall") != target_mel_recall:
        return None
    return DecisionRule.from_dict(payload)


def score_model(
    spark: SparkSession, settings: Settings, model: str, sidecar: Any = None
) -> tuple[dict[str, Any], dict[str, Any], pd.DataFrame]:
    """(metrics, ROC curve points, test rows) of one model; writes its metrics JSON and ISIC CSV."""
    predictions = tables.read_table(spark, tables.model_predictions(settings.run, model)).toPandas()
    test, validation = split_rows(predictions)
    y, proba = labelled(test)
    y_val, proba_val = labelled(validation)
    if len(y) == 0:
        raise ValueError(f"{model}: no test rows with a known dx to score")
    rule = sidecar_rule(sidecar, settings.target_mel_recall)
    figures = evaluate(
        y,
        proba,
        y_val=y_val,
        proba_val=proba_val,
        target_mel_recall=settings.target_mel_recall,
        rule=rule,
        split=SPLIT_TEST,
    )
    figures["operating_point"]["rule_from"] = "model sidecar (train)" if rule else "validation rows (report)"
    params = sidecar.get("params", {}) if isinstance(sidecar, dict) else {}
    # The test-time augmentation views train predicted with (image models; None: features, no TTA).
    metrics = {"model": model, "tta": params.get("tta"), **figures}
    storage.write_json(spark, storage.join(settings.run, METRICS_DIR, f"{model}.json"), metrics)
    temperature = figures["calibration"]["temperature"]
    storage.write_text(
        spark,
        storage.join(settings.run, PREDICTIONS_DIR, f"{model}.csv"),
        isic_submission(test, temperature),
    )
    return metrics, roc_curves(y, calibrate(proba, temperature)), test


def read_sidecars(spark: SparkSession, run: str, models: list[str]) -> dict[str, Any]:
    found = {
        model: storage.read_optional_json(spark, storage.join(run, MODELS_DIR, model, SIDECAR_FILE))
        for model in models
    }
    return {model: sidecar for model, sidecar in found.items() if sidecar is not None}


def champion_selection(champion_file: Any) -> dict[str, Any] | None:
    """How train chose the champion (metric, split, value, rule), from champion.json."""
    if not isinstance(champion_file, dict):
        return None
    keys = ("champion", "metric", "split", "value", "selection")
    return {key: champion_file.get(key) for key in keys}


def gather(spark: SparkSession, settings: Settings, models: list[str]) -> ReportContent:
    """Score every model, read the run's context and update the run history: what the page shows."""
    metrics, curves, test_counts = {}, {}, {}
    sidecars = read_sidecars(spark, settings.run, models)
    for model in models:
        metrics[model], curves[model], test = score_model(spark, settings, model, sidecars.get(model))
        test_counts = test["dx"].value_counts().to_dict()  # the same test split for every model
    params = storage.read_optional_json(spark, storage.join(settings.run, PARAMS_FILE))
    champion_file = storage.read_optional_json(spark, storage.join(settings.run, MODELS_DIR, CHAMPION_FILE))
    champion = champion_name(champion_file)
    upsample = storage.read_optional_json(spark, storage.join(settings.run, UPSAMPLE_SUMMARY_FILE))
    new_rows = history_rows(settings.run_id, settings.run, metrics, sidecars, champion)
    write_history(spark, settings.history_uri, settings.run_id, new_rows)
    history = read_history(spark, settings.history_uri)
    return ReportContent(
        run_id=settings.run_id,
        run_uri=settings.run,
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        metrics=metrics,
        curves=curves,
        champion=champion,
        champion_selection=champion_selection(champion_file),
        random_weights=random_weights(sidecars, params),
        sidecars=sidecars,
        params=params,
        distributions=class_distributions(test_counts, upsample),
        cleaning=read_cleaning_summaries(spark, settings.curated),
        history=history,
    )


def run(spark: SparkSession, settings: Settings) -> dict[str, Any]:
    models = discover_models(spark, settings.run)
    if not models:
        raise FileNotFoundError(f"no predictions under {storage.join(settings.run, PREDICTIONS_DIR)}")
    log.info("reporting on %d model(s): %s", len(models), ", ".join(models))
    content = gather(spark, settings, models)
    report_uri = storage.join(settings.run, REPORT_FILE)
    metrics_uri = storage.join(settings.run, METRICS_FILE)
    storage.write_text(spark, report_uri, render(content))
    run_metrics = {
        "run_id": settings.run_id,
        "generated_at": content.generated_at,
        "champion": content.champion,
        "champion_selection": content.champion_selection,
        "splits": SPLITS,
    }
    storage.write_json(spark, metrics_uri, {**run_metrics, "models": dict(content.metrics)})
    # stdout, not the logger: the Airflow task log shows the spark-submit driver's stdout as is.
    print(summary_table(dict(content.metrics)), flush=True)
    return {
        "report": report_uri,
        "metrics": metrics_uri,
        "history": settings.history_uri,
        "champion": content.champion,
        "random_weights": list(content.random_weights),
        "models": {model: model_summary(m) for model, m in content.metrics.items()},
    }
