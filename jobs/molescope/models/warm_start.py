"""Warm start of the fine-tune: the daily run retrains on all batches from the newest fine-tuned model.

A scheduled run trains on every curated batch. From scratch, its cost grows with the data; warm-started from
the newest fine-tuned model it costs `--finetune-warm-epochs` epochs (a few) instead of the recipe's twelve.
A rule keeps the chain of warm starts honest (`Rule`): a full retrain every `--full-retrain-every` fits
(the full one counted), and whenever the fit rows grew by more than `--full-retrain-growth` since the last
full retrain.

`--warm-start` says where the previous model is: `none` (always full), a model folder
(`<run>/models/finetune`) or a runs root (`s3a://bucket/runs`: the newest `*/models/finetune` there of the
same network, by the modification time of its sidecar; newer ones of another backbone, input size, class set
or metadata encoding are passed over, each logged, and none at all is a full retrain whose reason is
recorded). A model folder named explicitly of another network fails the stage in one line: a warm start
never turns silently into a cold one, and a cold one is asked for with `--warm-start none`.

The decision and the chain are recorded in the new model's params (`warm_start`), which the next run reads.
A re-run of a run (a cleared task, a backfill run again) repeats the decision its earlier attempt recorded,
from the same previous model, so it rewrites the same model even when newer runs exist by then.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pyspark.sql import SparkSession

from molescope.core.constants import CLASSES
from molescope.core.errors import InputError
from molescope.core.registry import MODELS_DIR, SIDECAR_FILE, WARM_START_NONE
from molescope.features.backbones import BackboneSpec
from molescope.io import storage

log = logging.getLogger(__name__)

#: The fine-tune's model folder name under `<run>/models/`.
FINETUNE_MODEL = "finetune"
#: The backbone fields that must agree for the previous weights to fit the new network.
SAME_NETWORK = ("name", "alpha", "input_size", "feature_dim")


@dataclass(frozen=True)
class Rule:
    #: A full retrain every this many fits (1: always full).
    every: int
    #: A full retrain when the fit rows grew by more than this share of those of the last full retrain.
    growth: float


@dataclass(frozen=True)
class Decision:
    """Whether this fit starts from `previous` (a model folder) and why; `record` goes into its params."""

    warm: bool
    why: str
    previous: str | None
    record: dict[str, Any]


def plan(
    spark: SparkSession,
    where: str,
    out: str,
    rule: Rule,
    fit_rows: int,
    network: tuple[BackboneSpec, int],
) -> Decision:
    """The decision for a fit of `fit_rows` images into the run prefix `out`, with `--warm-start where`;
    `network`: the backbone and the metadata input width about to be trained (the previous must match)."""
    if where == WARM_START_NONE:
        return full(fit_rows, f"--warm-start {WARM_START_NONE}")
    earlier = earlier_attempt(spark, out)
    if earlier is not None and earlier.get("from") is None:
        return full(fit_rows, "as this run's earlier attempt decided (a re-run repeats it)")
    previous = earlier["from"] if earlier is not None else None
    if previous is not None and not storage.exists(spark, storage.join(previous, SIDECAR_FILE)):
        log.warning("warm start: %s, where this run's earlier attempt started, is gone; searching", previous)
        previous = None
    previous = previous or find_previous(spark, where, out, network)
    if previous is None:
        return decide(None, None, fit_rows, rule)
    sidecar = storage.read_json(spark, storage.join(previous, SIDECAR_FILE))
    check_compatible(previous, sidecar, *network)
    return decide(previous, sidecar, fit_rows, rule)


def earlier_attempt(spark: SparkSession, out: str) -> dict[str, Any] | None:
    """The warm-start record of the fine-tuned model an earlier attempt of this run published, if any."""
    uri = storage.join(out, MODELS_DIR, FINETUNE_MODEL, SIDECAR_FILE)
    if not storage.exists(spark, uri):
        return None
    return storage.read_json(spark, uri).get("params", {}).get("warm_start")


def find_previous(spark: SparkSession, where: str, out: str, network: tuple[BackboneSpec, int]) -> str | None:
    """The model folder `where` names: itself when it holds a sidecar, else the newest
    `<where>/*/models/finetune` of the same `network` outside this run's prefix `out` (None when there is
    none: the first run, or the first since the backbone changed; the models of other networks are logged)."""
    where = where.rstrip("/")
    if storage.exists(spark, storage.join(where, SIDECAR_FILE)):
        return where
    pattern = storage.join(storage.literal(where), f"*/{MODELS_DIR}/{FINETUNE_MODEL}/{SIDECAR_FILE}")
    own = storage.qualified(spark, out).rstrip("/") + "/"  # the glob answers qualified URIs (file:/...)
    found = [f for f in storage.glob(spark, pattern) if not f.uri.startswith(own)]
    for newest in sorted(found, key=lambda f: (f.modified_ms, f.uri), reverse=True):
        folder = newest.uri.rsplit("/", 1)[0]
        try:
            check_compatible(folder, storage.read_json(spark, newest.uri), *network)
        except InputError as other:
            log.info("warm start: passing over %s", other)
            continue
        return folder
    return None


def check_compatible(
    previous: str, sidecar: dict[str, Any], backbone: BackboneSpec, metadata_dim: int
) -> None:
    """InputError (one line) unless the previous model's network is the one about to be trained."""
    if sidecar.get("model") != FINETUNE_MODEL:
        raise InputError(
            f"--warm-start {previous}: a {sidecar.get('model')!r} model, not a fine-tuned network"
        )
    before = sidecar["params"]["backbone_spec"]
    now = {key: getattr(backbone, key) for key in SAME_NETWORK}
    differs = {key: (before.get(key), value) for key, value in now.items() if before.get(key) != value}
    if differs:
        said = ", ".join(f"{key} {a} → {b}" for key, (a, b) in differs.items())
        raise InputError(f"--warm-start {previous}: another network ({said}); use --warm-start none")
    classes = tuple(sidecar.get("classes") or CLASSES)
    if classes != CLASSES:
        raise InputError(f"--warm-start {previous}: classes {classes} differ from {CLASSES}")
    dim_before = len((sidecar.get("metadata") or {}).get("names", []))
    if dim_before != metadata_dim:
        raise InputError(
            f"--warm-start {previous}: metadata input of {dim_before} values, this fit has {metadata_dim}"
            "; use --warm-start none"
        )


def decide(previous: str | None, sidecar: dict[str, Any] | None, fit_rows: int, rule: Rule) -> Decision:
    """Warm or full, by the rule, from the previous model's recorded chain."""
    if previous is None or sidecar is None:
        return full(fit_rows, "no earlier fine-tuned model of this network")
    chain = sidecar["params"].get("warm_start") or {}
    length = int(chain.get("chain", 1))
    # A model from before warm starts were recorded: its own fit was full.
    base_rows = int(
        chain.get("full_fit_rows") or (sidecar.get("keras_history") or {}).get("train_images") or 0
    )
    growth = fit_rows / base_rows - 1 if base_rows else float("inf")
    if length + 1 > rule.every:
        return full(fit_rows, f"fit {length + 1} since the last full retrain, the rule allows {rule.every}")
    if growth > rule.growth:
        why = f"the fit rows grew {growth:.1%} since the last full retrain (rule: ≤ {rule.growth:.0%})"
        return full(fit_rows, why)
    record = {"chain": length + 1, "full_fit_rows": base_rows, "from": previous}
    why = f"fit {length + 1} of {rule.every} since the last full retrain, rows +{growth:.1%}"
    return Decision(True, why, previous, record)


def full(fit_rows: int, why: str) -> Decision:
    """A full retrain of `fit_rows` images: it starts a new chain."""
    record = {"chain": 1, "full_fit_rows": fit_rows, "from": None}
    return Decision(False, f"full retrain: {why}", None, record)
