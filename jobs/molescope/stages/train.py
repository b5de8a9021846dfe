"""Train 7-class models, score the validation and test rows, pick a champion on validation.

Model types are registered in `molescope.core.registry.MODEL_TYPES` (lr, rf, gbt: Spark; mlp: a Keras head on
the driver; finetune: the backbone itself on the images) and fitted through their ModelSpec
(`molescope.models.model_specs`); their hyper-parameters are settings of this stage (`--lr-reg`, `--rf-trees`,
...), declared once in the registry. `Settings` is the typed `molescope.models.train_settings.TrainSettings`
(what every trainer reads) with the `--distributed` checks added here.

Inputs: the run's `train_set` (features columns + weight, synthetic, source_image_id) and the features table
(`features/<backbone>/<weights_id>/`, partitioned by batch_id) whose `split == 'test'` rows are the test set;
with `--metadata` or an image model, the curated table (`--curated`).
Outputs under the run prefix `--out`:

- `models/<model>/`: the saved model (in a version folder) + `molescope_model.json` sidecar naming it (see
  `molescope.models.trained`), with the model's validation figures and the decision rule fitted on validation
  (`rules.fit_rule`: prior shift and melanoma threshold; `molescope score` applies it);
- `predictions/<model>/`: Parquet predictions (architecture.md schema) on the test split (`split = 'test'`)
  and on the validation part of the training split (`split = 'validation'`), a run table published by its
  `_manifest.json` (`molescope.io.tables`);
- `models/champion.json`: the best model by `--champion-metric` **on the validation part** (at each model's
  decision rule), with every model's validation figures.

Honest selection. Everything is chosen on the validation part: hyper-parameters (`--cv-folds`, lesion-grouped
folds inside the fit part), early stopping, the decision rule and the champion. The test rows are predicted
and written, never read here: the report evaluates them once, for every model alike.

Writes are crash-safe per model: artefacts and predictions go to new version folders, then the predictions'
manifest and the sidecar are written (one atomic write each); champion.json last, once every model is
published. A killed or failing re-run leaves each model's previous sidecar, artefacts and predictions
readable (a model already re-published keeps its new ones; the re-run rewrites them all).

Validation part (`--validation-fraction`, default 0.1; 0 only for a single model): lesions held out of fitting
(`molescope.intake.split`). A synthetic row belongs to the lesion of its source image, so copies of a held-out
lesion are dropped from fitting (no leakage) and are not scored.

Metadata fusion (`--metadata`): age, sex and localization of each image (curated table) are encoded
(`molescope.models.fusion`) and appended to every model's features (and to the fine-tuned head).

Time budget (`--time-budget`, seconds from this stage's start; the DAG passes the task's execution timeout):
a fine-tune estimates its wall time from its first measured steps and fails at once, in one line naming the
estimate and the knobs, when it cannot end inside what is left (`molescope.models.budget`).

Warm start (`--warm-start <runs root or model folder>`; the DAG's `warm_start` Param): the fine-tune starts
from the newest fine-tuned model of another run for `--finetune-warm-epochs` epochs, unless the rule asks for
a full retrain (`--full-retrain-every` fits, `--full-retrain-growth` more rows); the decision, its reason and
the chain are logged and recorded in the model's params; a re-run repeats its earlier attempt's decision
(`molescope.models.warm_start`). The other models always fit from scratch: they cost seconds to minutes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from molescope.core.constants import CLASSES, SPLIT_TEST, SPLIT_VALIDATION
from molescope.core.registry import CHAMPION_FILE, INPUT_IMAGES, MODELS_DIR, UPSAMPLE_SUMMARY_FILE
from molescope.core.settings import with_registry_hypers
from molescope.distributed import trainers
from molescope.evaluation import drift
from molescope.evaluation.outcomes import choose_champion, labelled, validation_choice
from molescope.features import image_stats
from molescope.features.spec import FeatureSpec, FeatureSpecMismatch
from molescope.intake.split import VALIDATION_ASSIGNMENT, split_validation
from molescope.io import storage, tables
from molescope.models import fusion
from molescope.models import trained as models
from molescope.models.model_specs import FitJob, ModelSpec, model_spec
from molescope.models.train_settings import TrainSettings
from molescope.models.trained import TrainedModel

log = logging.getLogger(__name__)


@with_registry_hypers
@dataclass(frozen=True)
class Settings(TrainSettings):
    """`molescope train`'s settings: `TrainSettings` (molescope.models.train_settings, where every field is
    declared) with the `--distributed` checks, which live in molescope.distributed."""

    def check_distributed(self) -> None:
        trainers.check_settings(self.models, self.distributed, self.num_proc, self.metadata)


# ---------------------------------------------------------------- pure transforms


def test_split(features: DataFrame) -> DataFrame:
    return features.where(F.col("split") == SPLIT_TEST)


def scoring_rows(validation: DataFrame, test: DataFrame, with_metadata: bool = False) -> DataFrame:
    """Validation + test rows in the features schema (what every model scores), plus age, sex and
    localization for models with metadata."""
    schema = fusion.SCORING_SCHEMA if with_metadata else tables.FEATURES_SCHEMA
    return tables.conform(validation, schema).unionByName(tables.conform(test, schema))


def training_rows(train_set: DataFrame, encoding: fusion.MetadataEncoding | None = None) -> DataFrame:
    """Labelled training rows with a vector column (features, then the encoded metadata with `encoding`);
    rows with an unknown diagnosis cannot be used."""
    labelled_rows = models.with_label(train_set).where(F.col(models.LABEL_COL).isNotNull())
    return models.with_vectors(labelled_rows, encoding)


def training_summary(train: DataFrame) -> dict[str, Any]:
    """Rows per class, synthetic rows and weight range of the (labelled) training rows."""
    by_class = train.groupBy("dx").agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.col("synthetic").cast("int")).alias("synthetic"),
        F.sum("weight").alias("weight"),
        F.min("weight").alias("min_weight"),
        F.max("weight").alias("max_weight"),
    )
    rows = {r["dx"]: r for r in by_class.collect()}
    return {
        "rows": int(sum(r["rows"] for r in rows.values())),
        "rows_per_class": {dx: int(rows[dx]["rows"]) if dx in rows else 0 for dx in CLASSES},
        "synthetic_rows": int(sum(r["synthetic"] or 0 for r in rows.values())),
        "weight_per_class": {dx: float(rows[dx]["weight"]) if dx in rows else 0.0 for dx in CLASSES},
        "weights_all_one": all(r["min_weight"] == 1.0 and r["max_weight"] == 1.0 for r in rows.values()),
    }


def feature_spec_of(train: DataFrame, pca_k: int | None, standardize: bool) -> FeatureSpec:
    """The train_set's single (backbone, weights_id, feature_dim); several mean a broken train_set."""
    specs = train.select("backbone", "weights_id", "feature_dim").distinct().limit(2).collect()
    if len(specs) != 1:
        raise FeatureSpecMismatch(f"train_set must have one feature spec, found {specs}")
    backbone, weights_id, dim = specs[0]
    return FeatureSpec(backbone, weights_id, int(dim), pca_k, standardize)


def validation_summary(fit_rows: DataFrame, validation: DataFrame, fraction: float) -> dict[str, Any]:
    counts = validation.agg(F.count(F.lit(1)).alias("rows"), F.countDistinct("lesion_id").alias("lesions"))
    row = counts.first()
    return {
        "fraction": fraction,
        "assignment": VALIDATION_ASSIGNMENT,
        "validation_rows": int(row["rows"]),
        "validation_lesions": int(row["lesions"]),
        "fit_rows": int(fit_rows.count()),
    }


# ---------------------------------------------------------------- I/O shell


def read_strategy(spark: SparkSession, train_set_uri: str) -> str | None:
    """Rebalancing strategy from the upsample summary beside the train_set, when there is one."""
    uri = storage.join(train_set_uri.rstrip("/").rsplit("/", 1)[0], UPSAMPLE_SUMMARY_FILE)
    if not storage.exists(spark, uri):
        return None
    summary = storage.read_json(spark, uri)
    return summary.get("strategy") if isinstance(summary, dict) else None


def validation_result(written: DataFrame, s: TrainSettings) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(decision rule, validation figures) from the written predictions' validation rows only: the test
    rows are never read here."""
    pdf = (
        written.where((F.col("split") == SPLIT_VALIDATION) & F.col("label").isNotNull())
        .select("dx", "probability")
        .toPandas()
    )
    rule, figures = validation_choice(*labelled(pdf), s.target_mel_recall, s.prior_shift)
    return (None if rule is None else rule.to_dict()), figures


def write_outputs(
    spark: SparkSession, s: TrainSettings, trained: TrainedModel, predictions: DataFrame
) -> dict[str, Any]:
    """Write the predictions as a new version, fit the decision rule on their validation rows, then publish
    them and the model's sidecar (each one atomic write; the sidecar last: it names the model's artefacts)."""
    table = tables.model_predictions(s.out, trained.name)
    version = tables.write_version(spark, table, predictions)
    rule, figures = validation_result(tables.read_files(spark, table, version.files), s)
    tables.publish(spark, table.manifest_uri(), tables.manifest({table.name: version}, model=trained.name))
    tables.collect_garbage(spark, table)
    sidecar = {**trained.sidecar, "decision_rule": rule, "validation": figures}
    models.publish_sidecar(spark, storage.join(s.out, MODELS_DIR, trained.name), sidecar)
    log.info("%s on validation: %s", trained.name, {k: v for k, v in figures.items() if k != "argmax"})
    return figures


def train_model(spec: ModelSpec, job: FitJob, training_set: dict[str, Any]) -> dict[str, Any]:
    """Fit, save, score (validation + test) one model; returns fit seconds + its validation figures."""
    spark, s = job.spark, job.settings
    log.info("fitting %s (weighted=%s, pca=%s, cv_folds=%d)", spec.name, job.weighted, s.pca_k, s.cv_folds)
    fitted = trainers.fit(spec, job)
    log.info("fitted %s in %.1fs", spec.name, fitted.seconds)
    sidecar = {
        "sidecar_version": models.SIDECAR_VERSION,
        "model": spec.name,
        "format": spec.format,
        "classes": list(CLASSES),
        "params": {**fitted.params, "weighted": job.weighted},
        "feature_spec": fitted.feature_spec.to_dict(),
        "metadata": None if job.metadata is None else job.metadata.to_dict(),
        "fit_seconds": round(fitted.seconds, 3),
        "seed": s.seed,
        "validation_fraction": s.validation_fraction,
        "training_set": {**training_set, **fitted.training_set},
        "cv": fitted.cv,
        "keras_history": fitted.history,
    }
    model_uri = storage.join(s.out, MODELS_DIR, spec.name)
    sidecar["artifacts"] = models.save_artifacts(spark, model_uri, fitted.model)
    trained = replace(fitted.model, sidecar=sidecar)
    rows = (
        job.scoring
        if spec.input != INPUT_IMAGES
        else tables.with_curated_images(spark, job.scoring, s.curated)
    )
    return {
        "fit_seconds": round(fitted.seconds, 3),
        **write_outputs(spark, s, trained, trained.predict(rows)),
    }


def metadata_of(spark: SparkSession, s: TrainSettings, train: DataFrame) -> tuple[Any, DataFrame | None]:
    """(encoding, curated metadata) with --metadata, else (None, None); refuses training rows without any
    age, sex or localization before anything is fitted."""
    if not s.metadata:
        return None, None
    metadata = fusion.read_metadata(spark, s.curated).cache()
    if fusion.known_metadata_rows(fusion.with_metadata(train, metadata)) == 0:
        metadata.unpersist()
        raise ValueError(
            f"--metadata: the training rows have no age, sex or localization in {s.curated}; "
            "train without --metadata"
        )
    return fusion.MetadataEncoding(), metadata


def image_reference(spark: SparkSession, s: TrainSettings, fit_rows: DataFrame) -> dict[str, Any] | None:
    """The drift reference of a sample of the training images (`drift.reference`); None without --curated
    or when none of the training rows has a curated image (e.g. a train_set from another curated root)."""
    if not s.curated:
        return None
    started = time.monotonic()
    # Real images only: upsample's synthetic rows (augmented copies, SMOTE) have ids no curated image has.
    real = (
        fit_rows.where(~F.coalesce("synthetic", F.lit(False)))
        if "synthetic" in fit_rows.columns
        else fit_rows
    )
    sample = tables.with_curated_images(spark, image_stats.reference_sample(real), s.curated)
    values = image_stats.image_statistics(sample)
    if len(values) == 0:
        log.warning("no curated image for the training rows under %s: no drift reference", s.curated)
        return None
    log.info("drift reference: %d training images in %.1fs", len(values), time.monotonic() - started)
    return drift.reference(values)


def prepare(
    spark: SparkSession, s: TrainSettings, deadline: float | None = None
) -> tuple[FitJob, dict[str, Any], list[DataFrame]]:
    """The job every model is fitted from, the training-set description, and the frames cached for it."""
    train_set = tables.read_table(spark, tables.train_set(s.train_set))
    encoding, metadata = metadata_of(spark, s, train_set)
    if metadata is not None:
        train_set = fusion.with_metadata(train_set, metadata)
    train = training_rows(train_set, encoding).cache()
    summary = training_summary(train)
    if summary["rows"] == 0:
        raise ValueError(f"no labelled rows in {s.train_set}")
    weighted = s.use_weights if s.use_weights is not None else not summary["weights_all_one"]
    spec = feature_spec_of(train, s.pca_k, standardize=False)
    # --features is the table or the DAG's `<run>/features.json` reference to it.
    features_table = tables.resolve_features_uri(spark, s.features)
    test = test_split(tables.read_features(spark, features_table, s.batches))
    models.check_feature_spec(spec, test)
    if metadata is not None:
        test = fusion.with_metadata(test, metadata)
    fit_rows, validation = split_validation(train, s.validation_fraction, s.seed)
    fit_rows, scoring = fit_rows.cache(), scoring_rows(validation, test, metadata is not None).cache()
    training_set = {
        "uri": s.train_set,
        "features_uri": features_table,
        # Where score's case review finds the training images' dx_type and thumbnails (its similar cases).
        **({"curated": s.curated} if s.curated else {}),
        # What score's drift check compares a batch's images with (none without the curated images).
        "image_statistics": image_reference(spark, s, fit_rows),
        "strategy": read_strategy(spark, s.train_set),
        **summary,
        "validation": validation_summary(fit_rows, validation, s.validation_fraction),
    }
    cached = [frame for frame in (train, fit_rows, scoring, metadata) if frame is not None]
    return FitJob(spark, s, fit_rows, scoring, spec, weighted, encoding, deadline), training_set, cached


def run(spark: SparkSession, settings: TrainSettings) -> dict:
    budget = settings.time_budget
    deadline = None if budget is None else time.monotonic() + budget
    trainers.preflight(spark, settings)
    job, training_set, cached = prepare(spark, settings, deadline)
    per_model = {name: train_model(model_spec(name), job, training_set) for name in settings.models}
    for frame in cached:
        frame.unpersist()
    champion = choose_champion(per_model, settings.champion_metric)
    document = {
        "champion": champion,
        "metric": settings.champion_metric,
        "split": SPLIT_VALIDATION,
        "selection": f"highest validation {settings.champion_metric} at each model's decision rule "
        "(fitted on validation); the test split is evaluated by the report only",
        "value": per_model[champion].get(settings.champion_metric) if champion else None,
        "models": per_model,
    }
    storage.write_json(spark, storage.join(settings.out, MODELS_DIR, CHAMPION_FILE), document)
    for name, model_metrics in per_model.items():
        model_metrics["champion"] = name == champion
    return {
        "models": per_model,
        "champion": champion,
        "champion_metric": settings.champion_metric,
        "champion_split": SPLIT_VALIDATION,
        "metadata": job.metadata is not None,
        "weighted": job.weighted,
        "training_rows": training_set["rows"],
        "validation_rows": training_set["validation"]["validation_rows"],
    }
