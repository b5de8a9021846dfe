"""report: score every model of a run and write metrics JSON, ISIC submission CSVs and one HTML report.

Reads `<run>/predictions/<model>/` (Parquet, the train stage's contract) plus whatever optional context
exists (model sidecars, champion.json, upsample_summary.json, params.json, cleaning summaries), writes under
the run prefix and keeps one run-history table so the report can compare this run with earlier ones.

Predictions may carry a `split` column; rows in a validation split choose the melanoma threshold and all
other rows are scored as the test split. Without validation rows the threshold comes from the test rows and
the output says so (`threshold_source`).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession

from molescope import storage
from molescope.champion import champion_name
from molescope.constants import CLASS_INDEX, CLASSES, ISIC_COLUMNS, SPLIT_VALIDATION
from molescope.metrics import evaluate, roc_curves
from molescope.registry import (
    CHAMPION_FILE,
    DEFAULT_TARGET_MEL_RECALL,
    HISTORY_DIR,
    HISTORY_FILE,
    PARAMS_FILE,
    RANDOM_WEIGHTS_PREFIX,
    SIDECAR_FILE,
    UPSAMPLE_SUMMARY_FILE,
)
from molescope.report_html import ReportContent, render

log = logging.getLogger(__name__)

#: upsample_summary.json keys holding {dx: count}, and their names in the class distribution figure.
UPSAMPLE_DISTRIBUTIONS = {
    "before": "train before upsampling",
    "after": "train after upsampling",
    "weighted_after": "train after (sum of weights)",
}
#: Run-history columns, one row per (run_id, model); the Parquet form needs a fixed schema.
HISTORY_SCHEMA = (
    "run_id string, run string, model string, reported_at string, champion boolean, weights_id string, "
    "n long, accuracy double, balanced_accuracy double, melanoma_recall double, auc_mean double"
)
HISTORY_COLUMNS = tuple(part.strip().split()[0] for part in HISTORY_SCHEMA.split(","))


@dataclass(frozen=True)
class Settings:
    run: str
    curated: str | None = None
    history: str | None = None
    target_mel_recall: float = DEFAULT_TARGET_MEL_RECALL

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--run", required=True, help="run prefix, e.g. s3a://molescope/runs/<run_id>")
        parser.add_argument("--curated", default=None, help="curated root; adds <curated>/summaries/*.json")
        parser.add_argument(
            "--history",
            default=None,
            help="run-history table: a .jsonl file or Parquet folder (default: <run>/../_history/runs.jsonl)",
        )
        parser.add_argument("--target-mel-recall", type=float, default=DEFAULT_TARGET_MEL_RECALL)

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> Settings:
        if not 0 < ns.target_mel_recall <= 1:
            raise SystemExit(f"--target-mel-recall must be in (0, 1], got {ns.target_mel_recall}")
        return cls(run=ns.run, curated=ns.curated, history=ns.history, target_mel_recall=ns.target_mel_recall)

    @property
    def run_id(self) -> str:
        return self.run.rstrip("/").rsplit("/", 1)[-1]

    @property
    def history_uri(self) -> str:
        return self.history or storage.join(self.run.rstrip("/").rsplit("/", 1)[0], HISTORY_DIR, HISTORY_FILE)


# ---- pure transforms (pandas / dicts in, no I/O) ----


def split_rows(predictions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scored rows, validation rows). Without a `split` column every row is a test row."""
    if "split" not in predictions.columns:
        return predictions, predictions.iloc[0:0]
    is_val = predictions["split"] == SPLIT_VALIDATION
    return predictions[~is_val], predictions[is_val]


def probabilities(predictions: pd.DataFrame) -> np.ndarray:
    if predictions.empty:
        return np.zeros((0, len(CLASSES)))
    return np.vstack([np.asarray(p, dtype=float) for p in predictions["probability"]])


def labelled(predictions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) of the rows whose dx is known; labels follow CLASSES, as `label` does."""
    known = predictions[predictions["dx"].isin(CLASS_INDEX)]
    return known["dx"].map(CLASS_INDEX).to_numpy(dtype=int), probabilities(known)


def isic_submission(predictions: pd.DataFrame) -> str:
    """ISIC 2018 Task 3 CSV: `image,MEL,NV,...`, one row per image, each row's 7 probabilities summing to 1.

    Rows are renormalised because float32 softmax outputs can miss 1 by more than a strict checker allows.
    """
    proba = probabilities(predictions)
    proba = proba / proba.sum(axis=1, keepdims=True) if len(proba) else proba
    order = [CLASS_INDEX[column.lower()] for column in ISIC_COLUMNS]
    frame = pd.DataFrame(proba[:, order], columns=list(ISIC_COLUMNS))
    frame.insert(0, "image", predictions["image_id"].to_numpy())
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue()


def find_values(payload: Any, key: str) -> list[Any]:
    """Every value stored under `key` at any depth of nested dicts/lists."""
    if isinstance(payload, dict):
        here = [payload[key]] if key in payload else []
        return here + [found for value in payload.values() for found in find_values(value, key)]
    if isinstance(payload, list):
        return [found for value in payload for found in find_values(value, key)]
    return []


def random_weights(sidecars: dict[str, Any], params: Any) -> list[str]:
    """Names (models or 'params.json') whose weights_id says the backbone was random."""
    sources = {**sidecars, PARAMS_FILE: params}
    return [
        name
        for name, payload in sources.items()
        if any(str(v).lower().startswith(RANDOM_WEIGHTS_PREFIX) for v in find_values(payload, "weights_id"))
    ]


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
        rows.append(
            {
                "run_id": run_id,
                "run": run,
                "model": model,
                "reported_at": reported_at,
                "champion": model == champion,
                "weights_id": str(weights[0]) if weights else None,
                "n": m["n"],
                "accuracy": m["accuracy"],
                "balanced_accuracy": m["balanced_accuracy"],
                "melanoma_recall": m["melanoma_recall"],
                "auc_mean": m["auc"]["mean"],
            }
        )
    return rows


def merge_history(
    existing: list[dict[str, Any]], new: list[dict[str, Any]], run_id: str
) -> list[dict[str, Any]]:
    """Earlier runs' rows, then this run's: re-reporting a run replaces its rows instead of adding more."""
    return [row for row in existing if row.get("run_id") != run_id] + new


def summary_table(metrics: dict[str, dict[str, Any]]) -> str:
    def cell(value: float | None) -> str:
        return "    n/a" if value is None else f"{value:7.3f}"

    lines = [f"{'model':<24} {'n':>6} {'acc':>7} {'bal_acc':>7} {'mel_rec':>7}"]
    for model, m in metrics.items():
        lines.append(
            f"{model:<24} {m['n']:>6} {cell(m['accuracy'])} {cell(m['balanced_accuracy'])} "
            f"{cell(m['melanoma_recall'])}"
        )
    return "\n".join(lines)


# ---- I/O shell ----


def discover_models(spark: SparkSession, run: str) -> list[str]:
    """Folders under <run>/predictions/ holding data files; the report's CSVs sit beside them."""
    marker = f"/{run.rstrip('/').rsplit('/', 1)[-1]}/predictions/"
    models = set()
    for uri, _ in storage.list_files(spark, storage.join(run, "predictions")):
        relative = uri[uri.find(marker) + len(marker) :] if marker in uri else ""
        parts = relative.split("/")
        if len(parts) > 1 and not parts[-1].startswith(("_", ".")):
            models.add(parts[0])
    return sorted(models)


def read_optional_json(spark: SparkSession, uri: str) -> Any:
    return storage.read_json(spark, uri) if storage.exists(spark, uri) else None


def read_cleaning_summaries(spark: SparkSession, curated: str | None) -> dict[str, Any]:
    if not curated:
        return {}
    files = storage.list_files(spark, storage.join(curated, "summaries"), recursive=False)
    return {
        uri.rsplit("/", 1)[-1]: storage.read_json(spark, uri)
        for uri, _ in sorted(files)
        if uri.endswith(".json")
    }


def read_history(spark: SparkSession, uri: str) -> list[dict[str, Any]]:
    if not storage.exists(spark, uri):
        return []
    if uri.endswith(".jsonl"):
        return [json.loads(line) for line in storage.read_text(spark, uri).splitlines() if line.strip()]
    frame = spark.read.parquet(uri).toPandas()
    return json.loads(frame.to_json(orient="records"))


def write_history(spark: SparkSession, uri: str, rows: list[dict[str, Any]]) -> None:
    if uri.endswith(".jsonl"):
        storage.write_text(spark, uri, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
        return
    # The rows are already on the driver, so overwriting the folder they were read from is safe.
    records = [tuple(row.get(column) for column in HISTORY_COLUMNS) for row in rows]
    spark.createDataFrame(records, HISTORY_SCHEMA).coalesce(1).write.mode("overwrite").parquet(uri)


def score_model(
    spark: SparkSession, settings: Settings, model: str
) -> tuple[dict[str, Any], dict[str, Any], pd.DataFrame]:
    """(metrics, ROC curve points, test rows) of one model; writes its metrics JSON and ISIC CSV."""
    predictions = spark.read.parquet(storage.join(settings.run, "predictions", model)).toPandas()
    test, validation = split_rows(predictions)
    y, proba = labelled(test)
    y_val, proba_val = labelled(validation)
    if len(y) == 0:
        raise ValueError(f"{model}: no test rows with a known dx to score")
    metrics = {
        "model": model,
        **evaluate(y, proba, y_val=y_val, proba_val=proba_val, target_mel_recall=settings.target_mel_recall),
    }
    storage.write_json(spark, storage.join(settings.run, "metrics", f"{model}.json"), metrics)
    storage.write_text(
        spark, storage.join(settings.run, "predictions", f"{model}.csv"), isic_submission(test)
    )
    return metrics, roc_curves(y, proba), test


def read_sidecars(spark: SparkSession, run: str, models: list[str]) -> dict[str, Any]:
    found = {
        model: read_optional_json(spark, storage.join(run, "models", model, SIDECAR_FILE)) for model in models
    }
    return {model: sidecar for model, sidecar in found.items() if sidecar is not None}


def model_summary(m: dict[str, Any]) -> dict[str, Any]:
    """The per-model figures the stage returns (and the CLI logs as its summary line)."""
    return {key: m[key] for key in ("n", "accuracy", "balanced_accuracy", "melanoma_recall")} | {
        "auc_mean": m["auc"]["mean"],
        "threshold_source": m["operating_point"]["threshold_source"],
    }


def run(spark: SparkSession, settings: Settings) -> dict[str, Any]:
    models = discover_models(spark, settings.run)
    if not models:
        raise FileNotFoundError(f"no predictions under {storage.join(settings.run, 'predictions')}")
    log.info("reporting on %d model(s): %s", len(models), ", ".join(models))
    metrics, curves, test_counts = {}, {}, {}
    for model in models:
        metrics[model], curves[model], test = score_model(spark, settings, model)
        test_counts = test["dx"].value_counts().to_dict()  # the same test split for every model
    sidecars = read_sidecars(spark, settings.run, models)
    params = read_optional_json(spark, storage.join(settings.run, PARAMS_FILE))
    champion = champion_name(read_optional_json(spark, storage.join(settings.run, "models", CHAMPION_FILE)))
    upsample = read_optional_json(spark, storage.join(settings.run, UPSAMPLE_SUMMARY_FILE))
    new_rows = history_rows(settings.run_id, settings.run, metrics, sidecars, champion)
    history = merge_history(read_history(spark, settings.history_uri), new_rows, settings.run_id)
    write_history(spark, settings.history_uri, history)
    content = ReportContent(
        run_id=settings.run_id,
        run_uri=settings.run,
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        metrics=metrics,
        curves=curves,
        champion=champion,
        random_weights=random_weights(sidecars, params),
        sidecars=sidecars,
        params=params,
        distributions=class_distributions(test_counts, upsample),
        cleaning=read_cleaning_summaries(spark, settings.curated),
        history=history,
    )
    report_uri = storage.join(settings.run, "report.html")
    metrics_uri = storage.join(settings.run, "metrics.json")
    storage.write_text(spark, report_uri, render(content))
    run_metrics = {"run_id": settings.run_id, "generated_at": content.generated_at, "champion": champion}
    storage.write_json(spark, metrics_uri, {**run_metrics, "models": metrics})
    # stdout, not the logger: the Airflow task log shows the spark-submit driver's stdout as is.
    print(summary_table(metrics), flush=True)
    return {
        "report": report_uri,
        "metrics": metrics_uri,
        "history": settings.history_uri,
        "champion": champion,
        "random_weights": list(content.random_weights),
        "models": {model: model_summary(m) for model, m in metrics.items()},
    }
