"""score: apply a trained model (default: the latest champion) to a batch of images, or to every pending one.

What to score, exactly one of:

- `--batch-dir <folder> --batch-id <id>`: that one folder (local or s3a://), as batch `<id>`;
- `--scoring-root <folder> --batch-id <id>`: the one batch `<scoring-root>/<id>/`;
- `--scoring-root <folder>` without a batch id (or with `--batch-id ""`, as Airflow renders an empty param):
  *pending mode*. Every immediate subfolder of the scoring root is a batch named after the folder. Folders
  whose names are not valid batch ids (clean's `BATCH_ID_PATTERN`) are ignored, with a WARNING and the
  reason in the job summary (`ignored_folders`); files directly under the root are no batches, and a root
  that does not exist (on S3: an empty one) holds none. Each valid batch that has no
  `<out>/<batch_id>/<model run id>/<model>/summary.json` yet is scored, in sorted order; the others are
  `already_scored`. `summary.json` is written last, so a batch that failed half-way is pending again, and a
  re-run after a success scores nothing. A batch that fails (for instance, a folder without a usable image)
  does not stop the others: it is listed under `failed`, and once every pending batch has been tried the job
  raises `PendingBatchesFailed` (a RuntimeError) naming each failed batch.

A batch folder holds JPEG images anywhere below it, with at most one optional metadata CSV (the HAM10000
columns, as clean reads them). Without a CSV the image ids are the file stems and there are no labels; with
one, each image takes `lesion_id` and `dx` from the row naming it (the first such row), and `dx` values
outside the 7 classes (or blank) mean "no label". Labels are optional either way.

Model: `--model <run>/models/<model>` or `--model champion` (the default) with `--champion-of <warehouse>`:
the latest champion is the `<warehouse>/runs/*/models/champion.json` with the newest modification time (the
train stage rewrites it at the end of each run; ties go to the larger run id), and its `champion` names the
model folder beside it. Runs whose champion is null are skipped. The model is resolved, loaded and checked
once per job; every batch of the job is scored with it.

Features are computed with the clean stage's image inspection and the featurize stage's `compute_features`,
using the backbone and weights recorded in the model's sidecar (`feature_spec`). `--weights auto` (the
default) derives the source from the sidecar's `weights_id` (`imagenet`, `random-seed<N>`); a model trained on
a weights *file* (`weights_id` `sha256:<hex>`) needs `--weights <path or s3a:// URI>` and the file's hash must
equal the model's `weights_id`. Any mismatch of backbone, weights or feature dim is refused with
`FeatureSpecMismatch` before a single image is featurized, and `TrainedModel.predict` checks the rows again.
Image models (`finetune`, see `molescope.models.IMAGE_MODELS`) hold their fine-tuned backbone in
`model.keras`: they score the JPEG bytes directly (`TrainedModel.predict_images`) and `--weights` is unused.

Rows in. `rows_in` = JPEG files + metadata rows that name no file + metadata rows repeating an image_id.
Each ends up in exactly one of scored or quarantined (reasons: the image codes of `molescope.imaging`,
`duplicate_image_file`, `image_missing`, `duplicate_image_id`); the run raises if that does not hold.

Outputs of each batch under `<out>/<batch_id>/<model run id>/<model>/`:

- `predictions/` (Parquet, the predictions schema of docs/architecture.md) and `predictions.csv` (ISIC 2018
  Task 3: `image,MEL,NV,BCC,AKIEC,BKL,DF,VASC`);
- `quarantine/` (Parquet, clean's quarantine schema) when any input was rejected;
- `summary.json` (counts, model, feature spec);
- when some images carry a label: `metrics.json` and `report.html`, computed by the report stage's functions
  on the labelled rows (unlabelled rows are scored but not evaluated).

`run` returns that batch's summary for one batch; in pending mode the job summary (`mode: pending`,
`scoring_root`, `model`, `model_uri`, `champion_file`, `scored`, `already_scored`, `ignored_folders`,
`failed`, and `batches`: the summary of each batch scored by this job).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from molescope import storage
from molescope.backbones import BackboneSpec, resolve_backbone
from molescope.champion import champion_name, run_id_of
from molescope.constants import CLASSES
from molescope.engines import KERAS, Engine
from molescope.metrics import evaluate, roc_curves
from molescope.models import (
    IMAGE_MODELS,
    SIDECAR,
    FeatureSpec,
    FeatureSpecMismatch,
    TrainedModel,
    load_model,
)
from molescope.registry import (
    CHAMPION_FILE,
    DEFAULT_BATCH_SIZE,
    DEFAULT_MIN_SIZE,
    DEFAULT_TARGET_MEL_RECALL,
    ENGINE_AUTO,
    ENGINES,
    METRICS_FILE,
    MODEL_CHAMPION,
    MODELS_DIR,
    PREDICTIONS_CSV,
    PREDICTIONS_DIR,
    QUARANTINE_DIR,
    RANDOM_WEIGHTS_PREFIX,
    REPORT_FILE,
    RUNS_DIR,
    SCORE_SUMMARY_FILE,
    SHA256_WEIGHTS_PREFIX,
    WEIGHTS_AUTO,
    WEIGHTS_IMAGENET,
    WEIGHTS_RANDOM,
    validate_batch_id,
)
from molescope.report_html import ReportContent, render
from molescope.stages import clean, featurize, report

log = logging.getLogger(__name__)

CHAMPION_GLOB = f"{RUNS_DIR}/*/{MODELS_DIR}/{CHAMPION_FILE}"


@dataclass(frozen=True)
class Settings:
    """What to score (one batch folder, or the pending batches under a scoring root), with which model and
    weights, and where the outputs go.

    Empty strings mean "not given" (Airflow renders an empty param as ""). Exactly one of `batch_dir` and
    `scoring_root` is given; `batch_dir` needs a `batch_id`; `scoring_root` without one is pending mode.
    """

    out: str
    batch_dir: str | None = None
    batch_id: str | None = None
    scoring_root: str | None = None
    model: str = MODEL_CHAMPION
    champion_of: str | None = None
    weights: str = WEIGHTS_AUTO
    batch_size: int = DEFAULT_BATCH_SIZE
    min_size: int = DEFAULT_MIN_SIZE
    target_mel_recall: float = DEFAULT_TARGET_MEL_RECALL
    engine: str = ENGINE_AUTO

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--batch-dir",
            default=None,
            help="one batch folder of JPEGs (+ optional metadata CSV); needs --batch-id",
        )
        parser.add_argument(
            "--scoring-root",
            default=None,
            help="folder whose immediate subfolders are batches (<scoring-root>/<batch_id>/): with "
            "--batch-id, scores that one; without (or with --batch-id ''), every batch the model has not "
            "scored yet (pending mode)",
        )
        parser.add_argument(
            "--batch-id", default=None, help="batch id: [A-Za-z0-9._-], at most 64 chars; '' means not given"
        )
        parser.add_argument(
            "--out", required=True, help="scores root: writes <out>/<batch_id>/<run id>/<model>/ per batch"
        )
        parser.add_argument(
            "--model",
            default=MODEL_CHAMPION,
            help="model folder <run>/models/<model>, or 'champion' (latest champion under --champion-of)",
        )
        parser.add_argument("--champion-of", default=None, help="warehouse root searched for runs/*/models/")
        parser.add_argument(
            "--weights",
            default=WEIGHTS_AUTO,
            help="auto (from the model's weights_id) | imagenet | random | file path | s3a:// URI",
        )
        parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
        parser.add_argument("--min-size", type=int, default=DEFAULT_MIN_SIZE, help="min px")
        parser.add_argument("--target-mel-recall", type=float, default=DEFAULT_TARGET_MEL_RECALL)
        parser.add_argument("--engine", choices=ENGINES, default=ENGINE_AUTO, help="featurize's --engine")

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> Settings:
        settings = cls(
            out=ns.out,
            batch_dir=ns.batch_dir,
            batch_id=ns.batch_id,
            scoring_root=ns.scoring_root,
            model=ns.model,
            champion_of=ns.champion_of,
            weights=ns.weights,
            batch_size=ns.batch_size,
            min_size=ns.min_size,
            target_mel_recall=ns.target_mel_recall,
            engine=ns.engine,
        )
        settings.validate()
        return settings

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
        if self.batch_size < 1 or self.min_size < 1:
            raise ValueError(f"--batch-size and --min-size must be >= 1: {self.batch_size}, {self.min_size}")
        if not 0 < self.target_mel_recall <= 1:
            raise ValueError(f"--target-mel-recall must be in (0, 1], got {self.target_mel_recall}")


# ---------------------------------------------------------------------------------------------- model choice


@dataclass(frozen=True)
class ChampionFile:
    """One `<run>/models/champion.json`: where it is, when it was written, what it names."""

    uri: str
    modified_ms: int
    champion: str | None


def latest_champion(found: list[ChampionFile]) -> ChampionFile:
    """The newest champion file that names a model (ties: the larger URI); ValueError when none does."""
    named = [c for c in found if c.champion]
    if not named:
        raise ValueError(f"no champion.json naming a model among {[c.uri for c in found]}")
    return max(named, key=lambda c: (c.modified_ms, c.uri))


def champion_model_uri(champion: ChampionFile) -> str:
    """`<run>/models/<champion>` for `<run>/models/champion.json`."""
    return storage.join(champion.uri.rsplit("/", 1)[0], champion.champion or "")


def list_champions(spark: SparkSession, warehouse: str) -> list[ChampionFile]:
    """Every `<warehouse>/runs/*/models/champion.json` (one Hadoop glob), with its modification time."""
    jvm = spark.sparkContext._jvm
    pattern = jvm.org.apache.hadoop.fs.Path(storage.join(warehouse, CHAMPION_GLOB))
    fs = pattern.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    found = []
    for status in fs.globStatus(pattern) or []:
        uri = status.getPath().toString()
        payload = storage.read_json(spark, uri)
        found.append(ChampionFile(uri, int(status.getModificationTime()), champion_name(payload)))
    return found


def resolve_model_uri(spark: SparkSession, settings: Settings) -> tuple[str, str | None]:
    """(model folder, champion.json it came from or None)."""
    if settings.model != MODEL_CHAMPION:
        return settings.model.rstrip("/"), None
    champion = latest_champion(list_champions(spark, settings.champion_of or ""))
    log.info("latest champion: %s in %s", champion.champion, champion.uri)
    return champion_model_uri(champion), champion.uri


def weights_source(spec: FeatureSpec, weights: str) -> tuple[str, int]:
    """(weights source, seed) to rebuild the model's backbone; `auto` derives the source from the weights_id.

    A `random-seed<N>` model is rebuilt with seed N (also when `random` is given explicitly).
    """
    suffix = spec.weights_id.removeprefix(RANDOM_WEIGHTS_PREFIX)
    random_seed = suffix != spec.weights_id and suffix.isdigit()
    seed = int(suffix) if random_seed else 0
    if weights != WEIGHTS_AUTO:
        return weights, seed
    if random_seed:
        return WEIGHTS_RANDOM, seed
    if spec.weights_id == WEIGHTS_IMAGENET:
        return WEIGHTS_IMAGENET, seed
    if spec.weights_id.startswith(SHA256_WEIGHTS_PREFIX):
        raise ValueError(
            f"the model was trained on a weights file ({spec.weights_id}): pass --weights with the path "
            "or s3a:// URI of that file"
        )
    raise ValueError(f"cannot derive a weights source from weights_id {spec.weights_id!r}; pass --weights")


def check_backbone(model_spec: FeatureSpec, backbone: BackboneSpec) -> None:
    """Raise FeatureSpecMismatch unless `backbone` yields the features the model was trained on."""
    expected = (model_spec.backbone, model_spec.weights_id, model_spec.feature_dim)
    found = (backbone.name, backbone.weights_id, backbone.feature_dim)
    if expected != found:
        raise FeatureSpecMismatch(
            "refusing to score: the model was trained on features (backbone, weights_id, feature_dim) = "
            f"{expected}, but the batch would be featurized with {found} (weights {backbone.weights!r})"
        )


def resolve_scoring_backbone(model_spec: FeatureSpec, weights: str) -> BackboneSpec:
    """The model's backbone with the given (or derived) weights, checked against the model's feature spec.

    A weights file is hashed here (s3a:// URIs are fetched first), so a wrong file is refused on the driver.
    """
    source, seed = weights_source(model_spec, weights)
    backbone = resolve_backbone(model_spec.backbone, source, seed=seed)
    check_backbone(model_spec, backbone)
    return backbone


@dataclass(frozen=True)
class ScoringModel:
    """The model of a job, resolved, loaded and checked once; every batch of the job is scored with it."""

    uri: str
    champion_file: str | None
    model: TrainedModel
    #: The backbone that featurizes the batches; None for an image model (it scores the JPEG bytes).
    backbone: BackboneSpec | None
    #: featurize's inference engine for `backbone`, prepared once for all batches.
    engine: Engine = KERAS

    @property
    def name(self) -> str:
        return self.model.name


def resolve_scoring_model(spark: SparkSession, settings: Settings) -> ScoringModel:
    """Find and load the model, and check its backbone + weights, before any image is read."""
    model_uri, champion_file = resolve_model_uri(spark, settings)
    if not storage.exists(spark, storage.join(model_uri, SIDECAR)):
        raise FileNotFoundError(f"no model at {model_uri} (missing {SIDECAR})")
    model = load_model(spark, model_uri)
    # Refused here, before any image is read, when the weights or backbone differ from the model's. An image
    # model (finetune) carries its own backbone weights in model.keras and needs no features.
    image_model = model.name in IMAGE_MODELS
    backbone = None if image_model else resolve_scoring_backbone(model.feature_spec, settings.weights)
    if backbone is None:
        return ScoringModel(model_uri, champion_file, model, backbone)
    # The training features' root holds the engine cache featurize filled: its conversion is reused.
    table = model.sidecar.get("training_set", {}).get("features_uri")
    engine = featurize.engine_for_table(spark, backbone, settings.engine, settings.batch_size, table)
    return ScoringModel(model_uri, champion_file, model, backbone, engine)


# ------------------------------------------------------------------------------------------ pending batches


def batch_id_problem(name: str) -> str | None:
    """Why the folder `name` cannot be a batch id (clean.validate_batch_id's message), None when it can."""
    try:
        validate_batch_id(name)
    except ValueError as error:
        return str(error)
    return None


def pending_batches(folders: list[str], scored: set[str]) -> tuple[list[str], list[str], dict[str, str]]:
    """(batches to score, batches already scored, {ignored folder: reason}) of the folders of a scoring root.

    Folders whose names are not valid batch ids are ignored; the batch lists are sorted.
    """
    ignored = {name: problem for name in folders if (problem := batch_id_problem(name))}
    batches = sorted(set(folders) - set(ignored))
    return (
        [b for b in batches if b not in scored],
        [b for b in batches if b in scored],
        dict(sorted(ignored.items())),
    )


def list_folders(spark: SparkSession, root: str) -> list[str]:
    """Names of the immediate subfolders of `root` (one Hadoop listStatus; files are skipped).

    A root that does not exist has no folders: on S3 an empty "folder" does not exist either.
    """
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(root)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(path):
        log.warning("scoring root %s does not exist (or is empty): no batch to score", root)
        return []
    return sorted(status.getPath().getName() for status in fs.listStatus(path) if status.isDirectory())


def summary_uri(settings: Settings, scoring: ScoringModel, batch_id: str) -> str:
    """`<out>/<batch_id>/<run id>/<model>/summary.json`: written last, it marks a batch as scored."""
    out = output_uri(settings.for_batch(batch_id), scoring.uri, scoring.name)
    return storage.join(out, SCORE_SUMMARY_FILE)


def scored_batches(
    spark: SparkSession, settings: Settings, scoring: ScoringModel, folders: list[str]
) -> set[str]:
    """The folders (valid batch ids only) whose batch the model has already scored."""
    candidates = [name for name in folders if batch_id_problem(name) is None]
    return {b for b in candidates if storage.exists(spark, summary_uri(settings, scoring, b))}


def error_message(error: Exception, limit: int = 500) -> str:
    """`<type>: <message>` on one line, cut at `limit` characters (Java errors carry their stack trace)."""
    text = f"{type(error).__name__}: {' '.join(str(error).split())}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class PendingBatchesFailed(RuntimeError):
    """Some pending batches failed (the others were scored); `summary` is the job summary."""

    def __init__(self, summary: dict[str, Any]) -> None:
        failed = summary["failed"]
        listed = "; ".join(f"{batch}: {message}" for batch, message in failed.items())
        super().__init__(f"{len(failed)} pending batch(es) failed under {summary['scoring_root']}: {listed}")
        self.summary = summary


# ---------------------------------------------------------------------------------------------- transforms


def metadata_labels(meta: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(one row per image_id: image_id, lesion_id, dx or null, source_path; rejected metadata rows).

    `meta` is clean.parse_metadata output. dx outside CLASSES (or blank) becomes null: no label. Rows without
    an image_id are rejected as `malformed_image_id`, repeats of an image_id (all but the first row) as
    `duplicate_image_id`.
    """
    unnamed = (
        meta.where(F.col("image_id").isNull())
        .withColumn("reason", F.lit(clean.REASON_MALFORMED_IMAGE_ID))
        .withColumn(
            "detail", F.concat(F.lit("row "), F.col("row").cast(T.StringType()), F.lit(": no image_id"))
        )
        .withColumn("source", F.lit(clean.SOURCE_METADATA))
    )
    unique, duplicates = clean.drop_duplicates(meta.where(F.col("image_id").isNotNull()), None, "")
    duplicates = duplicates.withColumn("detail", F.regexp_replace("detail", " of batch_id=$", ""))
    known = F.when(F.col("dx").isin(*CLASSES), F.col("dx"))
    labels = unique.select("image_id", "lesion_id", known.alias("dx"), "source_path")
    return labels, duplicates.unionByName(unnamed)


def attach_metadata(candidates: DataFrame, labels: DataFrame | None) -> tuple[DataFrame, DataFrame | None]:
    """(image files with `image_path`, lesion_id and dx; metadata rows naming no file, quarantined).

    Without metadata every file is scored with null lesion_id and dx, and nothing is missing.
    """
    files = candidates.select("image_id", F.col("path").alias("image_path"))
    if labels is None:
        none = F.lit(None).cast(T.StringType())
        return files.select("image_id", none.alias("lesion_id"), none.alias("dx"), "image_path"), None
    joined = files.join(labels.select("image_id", "lesion_id", "dx"), on="image_id", how="left")
    _, missing = clean.attach_images(labels, candidates)
    return joined.select("image_id", "lesion_id", "dx", "image_path"), missing


def image_quarantine(inspected: DataFrame) -> DataFrame:
    """Rejected images (clean's inspection reasons) in the shape clean.to_quarantine takes."""
    return inspected.where(F.col("reason").isNotNull()).select(
        "image_id",
        "lesion_id",
        "reason",
        "detail",
        F.lit(clean.SOURCE_IMAGE).alias("source"),
        F.col("image_path").alias("source_path"),
    )


def scoring_images(inspected: DataFrame, batch_id: str) -> DataFrame:
    """Usable images as compute_features input (image_id, image bytes and the passthrough columns)."""
    return inspected.where(F.col("reason").isNull()).select(
        "image_id",
        F.col("content").alias("image"),
        "lesion_id",
        "dx",
        F.lit(None).cast(T.StringType()).alias("split"),  # neither train nor test of the model's run
        F.lit(batch_id).alias("batch_id"),
    )


# ---------------------------------------------------------------------------------------------- I/O shell


def find_optional_csv(listing: DataFrame) -> str | None:
    """The one *.csv below the batch folder, None without one; ValueError for several."""
    found = [
        r.path for r in listing.where(F.col("path").rlike(clean.CSV_PATH_REGEX)).select("path").collect()
    ]
    if len(found) > 1:
        raise ValueError(f"a scoring batch holds at most one metadata *.csv, found {len(found)}: {found}")
    return found[0] if found else None


def read_labels(
    spark: SparkSession, csv_path: str | None
) -> tuple[DataFrame | None, DataFrame | None, DataFrame | None]:
    """(labels per image_id, rejected metadata rows, parsed metadata, persisted); all None without a CSV.

    The caller unpersists the metadata once it is done with the batch (a job may score many batches).
    """
    if csv_path is None:
        return None, None, None
    raw = spark.read.option("header", "true").option("inferSchema", "false").csv(csv_path)
    meta = clean.parse_metadata(raw, csv_path).persist()
    labels, duplicates = metadata_labels(meta)
    return labels, duplicates, meta


def quarantine_table(parts: list[DataFrame | None], batch_id: str) -> DataFrame:
    frames = [clean.to_quarantine(part, batch_id) for part in parts if part is not None]
    table = frames[0]
    for frame in frames[1:]:
        table = table.unionByName(frame)
    return table


def output_uri(settings: Settings, model_uri: str, model_name: str) -> str:
    return storage.join(settings.out, settings.batch_id, run_id_of(model_uri), model_name)


def evaluate_labelled(predictions: pd.DataFrame, target_mel_recall: float) -> tuple[dict[str, Any], dict]:
    """(metrics, ROC curves) of the labelled rows, through the report stage's helpers."""
    y, proba = report.labelled(predictions)
    metrics = evaluate(y, proba, target_mel_recall=target_mel_recall)
    return metrics, roc_curves(y, proba)


def write_report(
    spark: SparkSession,
    out: str,
    model: TrainedModel,
    predictions: pd.DataFrame,
    settings: Settings,
    summary: dict[str, Any],
) -> dict[str, Any]:
    """metrics.json + report.html for the labelled rows; returns the model's headline figures."""
    metrics, curves = evaluate_labelled(predictions, settings.target_mel_recall)
    metrics = {"model": model.name, **metrics}
    labelled = predictions[predictions["dx"].isin(CLASSES)]
    generated_at = datetime.now(UTC).isoformat(timespec="seconds")
    content = ReportContent(
        run_id=f"score {settings.batch_id} ({model.name})",
        run_uri=out,
        generated_at=generated_at,
        metrics={model.name: metrics},
        curves={model.name: curves},
        random_weights=report.random_weights({model.name: model.sidecar}, None),
        sidecars={model.name: model.sidecar},
        params={"scoring": summary},
        distributions={"scored batch": labelled["dx"].value_counts().to_dict()},
    )
    storage.write_text(spark, storage.join(out, REPORT_FILE), render(content))
    payload = {"batch_id": settings.batch_id, "generated_at": generated_at, "models": {model.name: metrics}}
    storage.write_json(spark, storage.join(out, METRICS_FILE), payload)
    print(report.summary_table({model.name: metrics}), flush=True)
    return report.model_summary(metrics)


def featurize_batch(
    spark: SparkSession,
    images: DataFrame,
    backbone: BackboneSpec,
    batch_size: int,
    n_images: int,
    engine: Engine = KERAS,
) -> DataFrame:
    """Features of the usable images, computed once (checkpointed: the spec check and predict reuse them)."""
    partitions = featurize.partition_count(n_images, featurize.task_slots(spark))
    features = featurize.compute_features(images, backbone, batch_size, partitions=partitions, engine=engine)
    return features.localCheckpoint(eager=True)


def predict(
    spark: SparkSession,
    model: TrainedModel,
    backbone: BackboneSpec | None,
    images: DataFrame,
    n_images: int,
    settings: Settings,
    engine: Engine = KERAS,
) -> DataFrame:
    """Predictions of `model` for the usable images: through features, or on the JPEG bytes (image models)."""
    if backbone is None:
        return model.predict_images(images, settings.batch_size)
    features = featurize_batch(spark, images, backbone, settings.batch_size, n_images, engine)
    return model.predict(features)  # checks the features' spec again, on the rows themselves


@dataclass(frozen=True)
class Counts:
    """Where every input went: `rows_in == scored + quarantined` (see the module docstring)."""

    image_files: int
    metadata_rows: int
    metadata_only_rows: int
    scored: int
    quarantined: int
    labelled: int

    @property
    def rows_in(self) -> int:
        return self.image_files + self.metadata_only_rows

    def check(self, batch_id: str) -> None:
        if self.rows_in != self.scored + self.quarantined:
            raise RuntimeError(
                f"invariant violated for scoring batch {batch_id}: rows_in {self.rows_in} != scored "
                f"{self.scored} + quarantined {self.quarantined}"
            )


def count_rows(df: DataFrame | None) -> int:
    return 0 if df is None else df.count()


def read_inputs(spark: SparkSession, settings: Settings) -> tuple[DataFrame, DataFrame, Counts]:
    """(usable images for compute_features, quarantine table, counts) of the batch folder."""
    files = clean.read_batch(spark, settings.batch_dir)
    listing = files.select("path").persist()
    csv_path = find_optional_csv(listing)
    labels, q_duplicates, meta = read_labels(spark, csv_path)
    metadata_rows = count_rows(meta)
    log.info("batch %s: metadata %s (%d rows)", settings.batch_id, csv_path, metadata_rows)
    candidates, q_extra_files = clean.index_images(clean.jpeg_files(files).select("path"))
    attached, q_missing = attach_metadata(candidates, labels)
    with_bytes = clean.with_content(attached, clean.jpeg_files(files))
    # One materialisation: every image is decoded once by the inspection.
    inspected = clean.inspect_images(with_bytes, settings.min_size).localCheckpoint(eager=True)
    parts = [image_quarantine(inspected), q_extra_files, q_missing, q_duplicates]
    quarantine = quarantine_table(parts, settings.batch_id).persist()
    images = scoring_images(inspected, settings.batch_id)
    counts = Counts(
        image_files=inspected.count() + q_extra_files.count(),
        metadata_rows=metadata_rows,
        metadata_only_rows=count_rows(q_missing) + count_rows(q_duplicates),
        scored=images.count(),
        quarantined=quarantine.count(),
        labelled=images.where(F.col("dx").isNotNull()).count(),
    )
    listing.unpersist()
    if meta is not None:
        meta.unpersist()  # what the batch still needs of it is in the (persisted) quarantine and checkpoint
    counts.check(settings.batch_id)
    return images, quarantine, counts


def write_outputs(
    spark: SparkSession, out: str, scored: DataFrame, quarantine: DataFrame, n_quarantined: int
) -> pd.DataFrame:
    """Replace `out` with the predictions (Parquet + ISIC CSV) and quarantine; returns the predictions."""
    storage.delete(spark, out)
    scored.write.mode("overwrite").parquet(storage.join(out, PREDICTIONS_DIR))
    if n_quarantined:
        quarantine.coalesce(1).write.mode("overwrite").parquet(storage.join(out, QUARANTINE_DIR))
    predictions = scored.orderBy("image_id").toPandas()
    storage.write_text(spark, storage.join(out, PREDICTIONS_CSV), report.isic_submission(predictions))
    return predictions


def batch_summary(
    settings: Settings,
    scoring: ScoringModel,
    out: str,
    counts: Counts,
    quarantine: DataFrame,
    predictions: pd.DataFrame,
) -> dict[str, Any]:
    """The summary of one scored batch (without metrics, report and elapsed time)."""
    by_reason = {r["reason"]: int(r["count"]) for r in quarantine.groupBy("reason").count().collect()}
    return {
        "batch_id": settings.batch_id,
        "batch_dir": settings.batch_dir,
        "out": out,
        "model": scoring.name,
        "model_uri": scoring.uri,
        "champion_file": scoring.champion_file,
        "feature_spec": scoring.model.feature_spec.to_dict(),
        "weights": None if scoring.backbone is None else scoring.backbone.weights,
        "scored_on": "images" if scoring.backbone is None else "features",
        "engine": None if scoring.backbone is None else scoring.engine.name,
        "rows_in_definition": "JPEG files + metadata rows naming no file or repeating an image_id",
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


def score_batch(
    spark: SparkSession, settings: Settings, scoring: ScoringModel, started: float | None = None
) -> dict[str, Any]:
    """Score the one batch of single-batch `settings` with `scoring`; returns (and writes) its summary.

    `started` (time.monotonic) is when the batch's clock started, by default now.
    """
    started = time.monotonic() if started is None else started
    out = output_uri(settings, scoring.uri, scoring.name)
    log.info("scoring %s with %s (%s)", settings.batch_id, scoring.uri, scoring.model.feature_spec)
    images, quarantine, counts = read_inputs(spark, settings)
    try:
        if counts.scored == 0:
            raise ValueError(f"batch {settings.batch_id}: no usable image below {settings.batch_dir}")
        scored = predict(
            spark, scoring.model, scoring.backbone, images, counts.scored, settings, scoring.engine
        )
        predictions = write_outputs(spark, out, scored, quarantine, counts.quarantined)
        summary = batch_summary(settings, scoring, out, counts, quarantine, predictions)
        if counts.labelled:
            summary["metrics"] = write_report(spark, out, scoring.model, predictions, settings, summary)
            summary["report"] = storage.join(out, REPORT_FILE)
        summary["elapsed_s"] = round(time.monotonic() - started, 3)
        # Last: it marks the batch scored.
        storage.write_json(spark, storage.join(out, SCORE_SUMMARY_FILE), summary)
    finally:
        quarantine.unpersist()
    log.info("batch %s: rows_in %d = scored %d + quarantined %d %s", settings.batch_id, counts.rows_in,
             counts.scored, counts.quarantined, summary["quarantined_by_reason"])  # fmt: skip
    return summary


def score_pending(spark: SparkSession, settings: Settings, scoring: ScoringModel) -> dict[str, Any]:
    """Score every batch under `settings.scoring_root` that `scoring` has not scored yet; the job summary.

    A failed batch does not stop the others; PendingBatchesFailed is raised at the end when any failed.
    """
    root = settings.scoring_root or ""
    folders = list_folders(spark, root)
    to_score, already_scored, ignored = pending_batches(
        folders, scored_batches(spark, settings, scoring, folders)
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
    log.info("pending batches under %s: %d scored, %d already scored, %d failed, %d folders ignored", root,
             len(batches), len(already_scored), len(failed), len(ignored))  # fmt: skip
    if failed:
        raise PendingBatchesFailed(summary)
    return summary


def run(spark: SparkSession, settings: Settings) -> dict[str, Any]:
    """Score one batch (its summary) or every pending batch under the scoring root (the job summary).

    The model is resolved, loaded and checked once, before any image is read.
    """
    settings.validate()
    started = time.monotonic()
    scoring = resolve_scoring_model(spark, settings)
    if settings.pending:
        return score_pending(spark, settings, scoring)
    return score_batch(
        spark, settings.for_batch(settings.batch_id or "", settings.batch_dir), scoring, started
    )
