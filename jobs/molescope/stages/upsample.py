"""Rebalance the training split: oversample, augment, SMOTE or class weights, chosen per run.

HAM10000 is 67 % nv and has 115 df images; a model trained on it as-is under-calls the minority classes.
This stage reads a features table, keeps only the rows with split == 'train' (the test split is never read
into the result, so it cannot be rebalanced or leaked) and writes `<out>/train_set/` with the features
columns plus `weight double, synthetic boolean, source_image_id string`, a summary of class counts before
and after (`<out>/upsample_summary.json`) and a bar chart of them (`<out>/upsample_classes.png`).

The strategies, the targets (`--target`) and their limits are `molescope.rebalance.strategies`; this module is
the I/O around them. `augment` also reads the curated images and featurizes its new images with the backbone
and weights the table was made with (`--weights` names the source when the weights_id cannot, see
`molescope.features.weights`).

Writes. `train_set/` is a published run table (`molescope.io.tables`): its rows go to a new version folder and
`train_set/_manifest.json`, written last, names them; the summary and the chart follow. A killed or failing
re-run leaves the previous train set as it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from molescope.core.constants import SPLIT_TRAIN
from molescope.core.errors import InvariantError
from molescope.core.registry import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_K_NEIGHBORS,
    DEFAULT_SEED,
    DEFAULT_STRATEGY,
    ENGINE_AUTO,
    ENGINES,
    RESAMPLING,
    STRATEGIES,
    STRATEGY_AUGMENT,
    STRATEGY_CLASS_WEIGHT,
    STRATEGY_OVERSAMPLE,
    STRATEGY_SMOTE,
    TARGET_MAJORITY,
    TRAIN_SET_DIR,
    UPSAMPLE_CHART_FILE,
    UPSAMPLE_SUMMARY_FILE,
)
from molescope.core.settings import CliSettings, comma_list, option
from molescope.evaluation.charts import bar_chart, png_bytes
from molescope.features.engines import Engine
from molescope.features.extract import engine_for_table
from molescope.features.spec import FeatureSpec
from molescope.features.weights import matching_backbone
from molescope.io import storage, tables
from molescope.rebalance import strategies

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings(CliSettings):
    features: str = option(help="features table (<features>/<backbone>/<weights_id>) or a *.json ref to it")
    out: str = option(help="run prefix: writes train_set/ and the summary there")
    batches: tuple[str, ...] | None = option(
        None, type=comma_list, help="comma-separated batch ids to include (default all)"
    )
    strategy: str = option(DEFAULT_STRATEGY, choices=STRATEGIES, help="how the train split is rebalanced")
    target: str = option(TARGET_MAJORITY, help="per-class target: majority | <count> | ratio:<float>")
    seed: int = option(DEFAULT_SEED, type=int, help="seed of the remainder draw, SMOTE and augmentation")
    k_neighbors: int = option(DEFAULT_K_NEIGHBORS, type=int, help="SMOTE neighbours")
    curated: str | None = option(None, help="curated root (augment reads <curated>/images)")
    weights: str | None = option(
        None, help="augment: the weights source featurize used, needed when weights_id is sha256:..."
    )
    featurize_batch_size: int = option(DEFAULT_BATCH_SIZE, type=int, help="augment only")
    engine: str = option(ENGINE_AUTO, choices=ENGINES, help="augment only: featurize's --engine")

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        strategies.parse_target(self.target)
        if self.k_neighbors < 1:
            raise ValueError("k-neighbors must be >= 1")
        if self.strategy == STRATEGY_AUGMENT and not self.curated:
            raise ValueError("strategy augment needs --curated (the curated images root)")


@dataclass(frozen=True)
class AugmentInputs:
    """What `augment` needs besides the train rows, prepared by the I/O shell."""

    images: DataFrame
    spec: Any
    batch_size: int
    engine: Engine


def augment_inputs(spark: SparkSession, settings: Settings, train: DataFrame, table: str) -> AugmentInputs:
    """The curated images, and the backbone + engine of the table's single backbone/weights_id."""
    pairs = train.select("backbone", "weights_id", "feature_dim").distinct().collect()
    if len(pairs) != 1:
        raise ValueError(f"augment needs one backbone/weights_id in the features table, found {pairs}")
    backbone, weights_id, dim = pairs[0]
    spec = matching_backbone(
        FeatureSpec(backbone, weights_id, int(dim), None, False), settings.weights, "augment"
    )
    batch_size = settings.featurize_batch_size
    engine = engine_for_table(spark, spec, settings.engine, batch_size, table)
    images = tables.read_curated(spark, settings.curated or "", schema=tables.CURATED_IMAGE_SCHEMA)
    return AugmentInputs(images, spec, batch_size, engine)


def rebalanced(
    train: DataFrame, settings: Settings, class_targets: dict[str, int], extra: AugmentInputs | None
) -> DataFrame:
    """The chosen strategy applied to the train rows (pure: `extra` carries augment's inputs)."""
    if settings.strategy == STRATEGY_OVERSAMPLE:
        return strategies.oversample(train, class_targets, settings.seed)
    if settings.strategy == STRATEGY_SMOTE:
        return strategies.smote(train, class_targets, settings.k_neighbors, settings.seed)
    if settings.strategy == STRATEGY_CLASS_WEIGHT:
        return strategies.class_weights(train)
    if settings.strategy == STRATEGY_AUGMENT and extra is not None:
        return strategies.augment(
            train, extra.images, class_targets, settings.seed, extra.spec, extra.batch_size, extra.engine
        )
    return strategies.no_rebalance(train)


def chart_png(strategy: str, before: dict[str, int], after: dict[str, float]) -> bytes:
    """Grouped bar chart of class counts before and after (weighted for class_weight)."""
    label = "after (sum of weights)" if strategy == STRATEGY_CLASS_WEIGHT else "after"
    classes = list(before)
    series = {"before": [before[c] for c in classes], label: [after.get(c, 0) for c in classes]}
    title = f"Training class counts, strategy: {strategy}"
    return png_bytes(bar_chart(classes, series, title=title, ylabel="training rows", value_labels=True))


def summarise(
    settings: Settings, table: str, out_table: str, before: dict, targets: dict, written: DataFrame
) -> dict:
    after = strategies.after_counts(written)
    resampling = settings.strategy in RESAMPLING
    return {
        "strategy": settings.strategy,
        "target": settings.target if resampling else None,
        "seed": settings.seed,
        "k_neighbors": settings.k_neighbors if settings.strategy == STRATEGY_SMOTE else None,
        "batches": list(settings.batches) if settings.batches else None,
        "features": table,
        "train_set": out_table,
        "before": before,
        "targets": targets,
        "after": {dx: v["rows"] for dx, v in after.items()},
        "synthetic": {dx: v["synthetic"] for dx, v in after.items()},
        "weighted_after": {dx: round(v["weighted"], 6) for dx, v in after.items()},
        "rows_before": sum(before.values()),
        "rows_after": sum(v["rows"] for v in after.values()),
        "target_met": all(after.get(dx, {"rows": 0})["rows"] >= t for dx, t in targets.items()),
    }


def run(spark: SparkSession, settings: Settings) -> dict:
    table = tables.resolve_features_uri(spark, settings.features)
    # Only the train split goes any further: test rows are never resampled, weighted or written.
    train = tables.read_features(spark, table, settings.batches).filter(F.col("split") == SPLIT_TRAIN)
    before = strategies.class_counts(train)
    if not before:
        raise ValueError(f"no train rows in {settings.features} (batches {settings.batches})")
    resampling = settings.strategy in RESAMPLING
    class_targets = strategies.targets(before, settings.target) if resampling else dict(before)
    extra = augment_inputs(spark, settings, train, table) if settings.strategy == STRATEGY_AUGMENT else None
    out = tables.train_set(storage.join(settings.out, TRAIN_SET_DIR))
    result = rebalanced(train, settings, class_targets, extra).select(*tables.TRAIN_SET_COLUMNS)
    version = tables.write_version(spark, out, result)
    written = tables.read_files(spark, out, version.files)
    if written.filter(F.col("split") != SPLIT_TRAIN).limit(1).count():
        raise InvariantError("train_set holds non-train rows")
    tables.publish(
        spark, out.manifest_uri(), tables.manifest({out.name: version}, strategy=settings.strategy)
    )
    tables.collect_garbage(spark, out)
    summary = summarise(settings, table, out.root, before, class_targets, written)
    storage.write_json(spark, storage.join(settings.out, UPSAMPLE_SUMMARY_FILE), summary)
    chart_after = summary["weighted_after" if settings.strategy == STRATEGY_CLASS_WEIGHT else "after"]
    chart = chart_png(settings.strategy, before, chart_after)
    storage.write_bytes(spark, storage.join(settings.out, UPSAMPLE_CHART_FILE), chart)
    log.info("upsample %s: %s -> %s", settings.strategy, before, summary["after"])
    return summary
