"""Train 7-class models, score the validation and test rows, pick a champion on validation.

Model types are registered in `molescope.registry.MODEL_TYPES` (lr, rf, gbt: Spark; mlp: a Keras head on
the driver; finetune: the backbone itself on the images) and fitted through their ModelSpec
(`molescope.model_specs`); their hyper-parameters are settings of this stage (`--lr-reg`, `--rf-trees`,
...), declared once in the registry.

Inputs: the run's `train_set` (features columns + weight, synthetic, source_image_id) and the features table
(`features/<backbone>/<weights_id>/`, partitioned by batch_id) whose `split == 'test'` rows are the test set;
with `--metadata` or an image model, the curated table (`--curated`).
Outputs under the run prefix `--out`:

- `models/<model>/`: the saved model (in a version folder) + `molescope_model.json` sidecar naming it (see
  `molescope.models`), with the model's validation figures and the decision rule fitted on validation
  (`metrics.fit_rule`: prior shift and melanoma threshold; `molescope score` applies it);
- `predictions/<model>/`: Parquet predictions (architecture.md schema) on the test split (`split = 'test'`)
  and on the validation part of the training split (`split = 'validation'`), a run table published by its
  `_manifest.json` (`molescope.tables`);
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
(`molescope.split`). A synthetic row belongs to the lesion of its source image, so copies of a held-out lesion
are dropped from fitting (no leakage) and are not scored.

Metadata fusion (`--metadata`): age, sex and localization of each image (curated table) are encoded
(`molescope.fusion`) and appended to every model's features (and to the fine-tuned head).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, replace
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from molescope import distributed_fit, fusion, models, storage, tables
from molescope.constants import CLASSES, SPLIT_TEST, SPLIT_VALIDATION
from molescope.evaluation import choose_champion, labelled, validation_choice
from molescope.model_specs import FitJob, ModelSpec, model_spec
from molescope.models import FeatureSpec, TrainedModel
from molescope.registry import (
    CHAMPION_FILE,
    CHAMPION_METRICS,
    DEFAULT_CHAMPION_METRIC,
    DEFAULT_METADATA,
    DEFAULT_MODELS,
    DEFAULT_NUM_PROC,
    DEFAULT_SEED,
    DEFAULT_TARGET_MEL_RECALL,
    DEFAULT_VALIDATION_FRACTION,
    DISTRIBUTED_CHOICES,
    DISTRIBUTED_NONE,
    HOROVOD_MODELS,
    INPUT_IMAGES,
    MODEL_TYPES,
    MODELS_DIR,
    UPSAMPLE_SUMMARY_FILE,
    hyper_parameters,
)
from molescope.settings import CliSettings, comma_list, extended, fraction, option, optional_int
from molescope.split import VALIDATION_ASSIGNMENT, split_validation

log = logging.getLogger(__name__)

_PARSERS = {"number": float, "integer": int, "string": str}


@dataclass(frozen=True)
class TrainOptions(CliSettings):
    """The stage's own settings; `Settings` adds one per model hyper-parameter of the registry."""

    train_set: str = option(help="train_set table URI (<run>/train_set)")
    features: str = option(help="features table URI or a *.json ref to it; split=='test' is scored")
    out: str = option(help="run prefix: writes models/ and predictions/")
    batches: tuple[str, ...] | None = option(
        None, type=comma_list, help="comma list of batch ids for the test set"
    )
    models: tuple[str, ...] = option(
        DEFAULT_MODELS, type=comma_list, help=f"comma list of {', '.join(MODEL_TYPES)}"
    )
    pca_k: int | None = option(
        None, flag="--pca", type=optional_int, help="PCA components before the classifier, or none"
    )
    use_weights: bool | None = option(
        None,
        action=argparse.BooleanOptionalAction,
        help="weight column as weightCol (default: on when the weights are not all 1)",
    )
    cv_folds: int = option(0, type=int, help="0: no search; K: lesion-grouped K-fold")
    seed: int = option(DEFAULT_SEED, type=int, help="seed of the validation part, folds and models")
    champion_metric: str = option(
        DEFAULT_CHAMPION_METRIC,
        choices=CHAMPION_METRICS,
        help="validation metric (at each model's decision rule) that picks the champion",
    )
    validation_fraction: float = option(
        DEFAULT_VALIDATION_FRACTION,
        type=float,
        help="share of training lesions held out and scored as split 'validation' (0: none, one model only)",
    )
    target_mel_recall: float = option(
        DEFAULT_TARGET_MEL_RECALL,
        type=fraction(),
        help="validation melanoma recall the decision rule's melanoma threshold must reach",
    )
    prior_shift: bool = option(
        True,
        action=argparse.BooleanOptionalAction,
        help="fit a class-prior shift of the probabilities on validation (part of the decision rule)",
    )
    metadata: bool = option(
        DEFAULT_METADATA,
        action=argparse.BooleanOptionalAction,
        help="append encoded age, sex and localization (from --curated) to every model's features",
    )
    curated: str | None = option(
        None, help="curated root (reads <curated>/images): image models and --metadata"
    )
    backbone: str | None = option(None, help="image models' backbone (default: the features' one)")
    weights: str | None = option(
        None,
        help="backbone weights source: imagenet | random | path | s3a:// (default: from the features ref)",
    )
    alpha: float | None = option(None, type=float, help="MobileNet width, with --backbone")
    distributed: str = option(
        DISTRIBUTED_NONE,
        choices=DISTRIBUTED_CHOICES,
        help=f"horovod: fit {', '.join(HOROVOD_MODELS)} data-parallel with Horovod on --num-proc Spark tasks "
        "(the other models train as usual; horovod without one of these is an error)",
    )
    num_proc: int = option(
        DEFAULT_NUM_PROC, type=int, help="Horovod ranks (free Spark task slots needed), with --distributed"
    )

    def validate(self) -> None:
        unknown = sorted(set(self.models or ()) - set(MODEL_TYPES))
        if unknown or not self.models:
            raise ValueError(f"unknown models {unknown}; expected some of {tuple(MODEL_TYPES)}")
        distributed_fit.check_settings(self.models, self.distributed, self.num_proc, self.metadata)
        if self.cv_folds == 1 or self.cv_folds < 0:
            raise ValueError("--cv-folds must be 0 (no search) or at least 2")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError("--validation-fraction must be in [0, 1)")
        if self.validation_fraction == 0 and len(self.models) > 1:
            raise ValueError(
                "--validation-fraction 0 leaves no rows to choose the champion among "
                f"{len(self.models)} models on (the test split is never used for choices)"
            )
        for h in hyper_parameters():
            problem = h.problem(getattr(self, h.name, None))
            if problem:
                raise ValueError(problem)
        for name in self.models:
            if MODEL_TYPES[name].input == INPUT_IMAGES and not self.curated:
                raise ValueError(f"model {name} needs --curated (the curated images root)")
        if self.metadata and not self.curated:
            raise ValueError(
                "--metadata needs --curated: age, sex and localization come from the curated table"
            )


def hyper_fields() -> list[tuple[str, Any, Any]]:
    """One setting (and flag) per registered hyper-parameter."""
    fields = []
    for h in hyper_parameters():
        kind = _PARSERS[h.kind]
        annotation = kind if h.default is not None else kind | None
        fields.append(
            (
                h.name,
                annotation,
                option(h.default, flag=h.flag, type=kind, choices=h.choices or None, help=h.help),
            )
        )
    return fields


Settings = extended(TrainOptions, "Settings", hyper_fields())


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
        raise models.FeatureSpecMismatch(f"train_set must have one feature spec, found {specs}")
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


def validation_result(written: DataFrame, s: Any) -> tuple[dict[str, Any] | None, dict[str, Any]]:
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
    spark: SparkSession, s: Any, trained: TrainedModel, predictions: DataFrame
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
    fitted = distributed_fit.fit(spec, job)
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


def metadata_of(spark: SparkSession, s: Any, train: DataFrame) -> tuple[Any, DataFrame | None]:
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


def prepare(spark: SparkSession, s: Any) -> tuple[FitJob, dict[str, Any], list[DataFrame]]:
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
        "strategy": read_strategy(spark, s.train_set),
        **summary,
        "validation": validation_summary(fit_rows, validation, s.validation_fraction),
    }
    cached = [frame for frame in (train, fit_rows, scoring, metadata) if frame is not None]
    return FitJob(spark, s, fit_rows, scoring, spec, weighted, encoding), training_set, cached


def run(spark: SparkSession, settings: Any) -> dict:
    distributed_fit.preflight(spark, settings)
    job, training_set, cached = prepare(spark, settings)
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
