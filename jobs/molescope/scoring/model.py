"""Which model a scoring job uses, loaded and checked once before any image is read.

`--model <run>/models/<model>` names it; `--model champion` (the default) takes the latest champion under
`--champion-of <warehouse>`: the `<warehouse>/runs/*/models/champion.json` with the newest modification time
(the train stage rewrites it at the end of each run; ties go to the larger run id), whose `champion` names the
model folder beside it. Runs whose champion is null are skipped.

A feature model's backbone is rebuilt from its sidecar's `feature_spec` with `--weights` (auto: derived from
the weights_id, `molescope.features.weights`); any mismatch of backbone, weights or feature dim is refused
with `FeatureSpecMismatch` here. An image model (`finetune`) holds its fine-tuned backbone in `model.keras`:
it scores the JPEG bytes directly and needs no weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property

from pyspark.sql import SparkSession

from molescope.core.champion import champion_name
from molescope.core.registry import (
    CHAMPION_FILE,
    MODEL_CHAMPION,
    MODELS_DIR,
    RUNS_DIR,
    SIDECAR_FILE,
    TTA_AUTO,
    TTA_NONE,
)
from molescope.features.backbones import BackboneSpec
from molescope.features.engines import KERAS, Engine
from molescope.features.extract import engine_for_table
from molescope.features.weights import matching_backbone
from molescope.io import storage
from molescope.models.saliency import SaliencyModel, saliency_model
from molescope.models.trained import TrainedModel, load_model

log = logging.getLogger(__name__)

CHAMPION_GLOB = f"{RUNS_DIR}/*/{MODELS_DIR}/{CHAMPION_FILE}"


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
    return [
        ChampionFile(f.uri, f.modified_ms, champion_name(storage.read_json(spark, f.uri)))
        for f in storage.glob(spark, storage.join(storage.literal(warehouse), CHAMPION_GLOB))
    ]


def resolve_model_uri(spark: SparkSession, model: str, champion_of: str | None) -> tuple[str, str | None]:
    """(model folder, champion.json it came from or None)."""
    if model != MODEL_CHAMPION:
        return model.rstrip("/"), None
    champion = latest_champion(list_champions(spark, champion_of or ""))
    log.info("latest champion: %s in %s", champion.champion, champion.uri)
    return champion_model_uri(champion), champion.uri


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

    @cached_property
    def saliency(self) -> SaliencyModel | str:
        """The model's Grad-CAM maps (built on first use, once per job: it loads the backbone on the
        driver), or why it has none."""
        return saliency_model(self.model, self.backbone)

    def check_tta(self, tta: str) -> None:
        """Refuse test-time augmentation for a model scoring frozen features (before any image is read)."""
        if tta not in (TTA_AUTO, TTA_NONE) and not self.model.scores_images:
            raise ValueError(
                f"--tta {tta}: model {self.name} scores frozen-backbone features, which cannot be "
                "test-time augmented; only image models (finetune) can: use --tta auto"
            )

    def tta_views(self, tta: str) -> str | None:
        """The TTA views batches are scored with: the sidecar's for `auto`, else `tta` (None: features)."""
        if not self.model.scores_images:
            return None
        return self.model.sidecar["params"].get("tta", TTA_NONE) if tta == TTA_AUTO else tta


def resolve_scoring_model(
    spark: SparkSession, model: str, champion_of: str | None, weights: str, engine: str, batch_size: int
) -> ScoringModel:
    """Find and load the model, and check its backbone + weights, before any image is read."""
    model_uri, champion_file = resolve_model_uri(spark, model, champion_of)
    if not storage.exists(spark, storage.join(model_uri, SIDECAR_FILE)):
        raise FileNotFoundError(f"no model at {model_uri} (missing {SIDECAR_FILE})")
    trained = load_model(spark, model_uri)
    if trained.scores_images:
        return ScoringModel(model_uri, champion_file, trained, None)
    backbone = matching_backbone(trained.feature_spec, weights, "score")
    # The training features' root holds the engine cache featurize filled: its conversion is reused.
    table = trained.sidecar.get("training_set", {}).get("features_uri")
    prepared = engine_for_table(spark, backbone, engine, batch_size, table)
    return ScoringModel(model_uri, champion_file, trained, backbone, prepared)
